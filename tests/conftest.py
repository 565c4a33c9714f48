"""Test-session settings that must be in place before torch is imported, and shared fixtures."""

import os

# Spinning OpenMP waiters make tiny-model ops 5-10x slower when other processes share the cores;
# passive waiting costs little on an idle machine (see glassformer/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# A small English + Python corpus for training tests (40 copies of four lines).
TRAIN_TEXT = textwrap.dedent("""\
    The quick brown fox jumps over the lazy dog. A list holds items in order; a dict maps keys to values.
    def add(a, b):
        return a + b
    Iteration visits each element once. Exceptions unwind the stack until a handler catches them.
""") * 40

SRC = str(Path(__file__).resolve().parents[1] / "src")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_module(name: str):
    """``benchmarks/NAME.py`` imported as module ``NAME``, for a test to call its ``main``.

    Its folder is on ``sys.path`` meanwhile (scripts import their siblings), the module is in
    ``sys.modules`` (dataclasses look their module up there), and afterwards every module the
    import added and torch's thread count (``--threads``) are put back."""
    import importlib.util

    import torch

    threads, before = torch.get_num_threads(), set(sys.modules)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(BENCHMARKS))
        for added in set(sys.modules) - before:
            file = getattr(sys.modules[added], "__file__", None)
            if file and Path(file).parent == BENCHMARKS:
                del sys.modules[added]


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    """``TRAIN_TEXT`` in a file, with the token cache in this test's own directory."""
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(TRAIN_TEXT)
    return path


def tiny_flags(corpus: Path) -> list[str]:
    """``glassformer train gpt`` flags for a run of a few seconds on one core."""
    return ["--data", str(corpus), "--n-layers", "1", "--n-heads", "2", "--d-model", "32", "--context", "32",
            "--batch-size", "4", "--eval-batches", "2", "--sample-tokens", "0", "--progress", "none",
            "--log-every", "1", "--dropout", "0.2", "--lr", "1e-2", "--warmup-steps", "2", "--seed", "7"]


def losses(run: Path) -> list[tuple]:
    """(step, train_loss, val_loss, lr) of every metrics.jsonl line."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r.get("val_loss"), r["lr"]) for r in rows]


def subprocess_env(tmp_path: Path, threads: int | None = None) -> dict:
    """The environment for a ``python -m glassformer`` child: this tree's sources, this test's cache.

    ``threads`` defaults to the test process's thread count, so reductions (and losses) match bit
    for bit."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return {**os.environ, "GLASSFORMER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def glassformer_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "glassformer", *map(str, args)]


def fingerprint(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` and its bytes (the lock file, which names its holder, aside)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``glassformer ARGV`` in this process: (exit code, stderr)."""
    from glassformer.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors exit from inside the parser
        rc = e.code
    err = capsys.readouterr().err
    return rc, err


# ------------------------------------------------------------------ tiny models for generation and the CLI

NO_EOS = []  # eos_token_id=[]: never stop early

TINY_TEXT = "hello world, the cat sat on the mat. a dog ran by."  # the tiny saved models' char vocabulary


def importorskip_unless_ci(modname: str, *args, **kwargs):
    """``pytest.importorskip`` that skips on a developer machine but fails when ``CI`` is set (as
    the Chromium check does): a test tier that cannot run on CI must not pass as skipped."""
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(modname)  # ModuleNotFoundError: the test fails
    return _importorskip(modname, *args, **kwargs)


_importorskip = pytest.importorskip
pytest.importorskip = importorskip_unless_ci  # every module-level importorskip of the suite


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine extra threads wait
    for each other (measured 20x slower under load); restore the setting afterwards. A module
    asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize(model, std=0.3):
    """Redraw every matrix of ``model`` from N(0, std²), so greedy choices are varied and clear-cut; eval mode."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    return model.eval()


def random_gpt(std=0.3, seed=0, **kw):
    """A tiny GPT (``gpt-tiny`` with ``kw`` changed) with large random weights, seeded."""
    import torch

    from glassformer.models import GPT, GPTConfig

    torch.manual_seed(seed)
    return randomize(GPT(GPTConfig.from_name("gpt-tiny", **kw)).eval(), std)


def random_transformer(seed=0, std=0.1, **kw):
    """A tiny untied Transformer with random weights that give varied, clear-cut choices."""
    import torch

    from glassformer.models import Transformer, TransformerConfig

    torch.manual_seed(seed)
    cfg = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, dropout=0.0, tie_embeddings=False)
    return randomize(Transformer(TransformerConfig.from_name("transformer-tiny", **{**cfg, **kw})).eval(), std)


def random_prompt(n, seed, v=64):
    """``n`` token ids below ``v``, drawn from a generator seeded ``seed``."""
    import torch

    return torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def save_tiny_models(root: Path) -> dict:
    """A GPT, a BERT classifier and a Transformer, each saved under ``root`` with a char tokenizer
    over ``TINY_TEXT``: ``{"gpt": dir, "bert": dir, "seq2seq": dir, "tok": tokenizer}``."""
    import torch

    from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("char", TINY_TEXT)
    torch.manual_seed(0)
    v, ids = tok.vocab_size, dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    models = {
        "gpt": randomize(GPT(GPTConfig.from_name("gpt-tiny", vocab_size=v, **ids))),
        "bert": randomize(BERT(BERTConfig.from_name("bert-tiny", vocab_size=v, num_labels=3, mask_token_id=tok.mask_id,
                                                    label_names=["neg", "neutral", "pos"], **ids)), std=0.1),
        "seq2seq": randomize(Transformer(TransformerConfig.from_name("transformer-tiny", vocab_size=v, dropout=0.0,
                                                                    tie_embeddings=False, **ids)), std=0.1),
    }
    out = {}
    for name, model in models.items():
        d = root / name
        model.save_pretrained(d)
        tok.save(d)
        out[name] = d
    out["tok"] = tok
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict:
    """:func:`save_tiny_models` once per test module."""
    return save_tiny_models(tmp_path_factory.mktemp("models"))


# --------------------------------------------------------------------------- the CLI in this process


def run_main(capsys, *argv, stdin=None, monkeypatch=None) -> tuple[int, str, str]:
    """``glassformer ARGV`` in this process (arguments made str, ``stdin`` text fed through
    ``monkeypatch``): (exit code, stdout, stderr). argparse's SystemExit is not caught."""
    import io

    from glassformer.cli import main

    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(capsys, *argv, match):
    """``glassformer ARGV`` exits 2 with a one-line error holding ``match`` and no traceback."""
    code, out, err = run_main(capsys, *argv)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err and match in err, err


# ------------------------------------------------------------------ demo runs beside the rest of the suite
#
# The demo-quality tests each read a run of minutes; most other tests use one core (`one_thread`),
# so the second core sits idle while they run. A test marked ``@pytest.mark.background("NAME")``
# asks for the run registered as NAME with :func:`background_run`: when collection ends, the runs
# of the selected tests start in child processes, one after another, and those tests move to the
# end of the session. The rest of the suite runs beside the demos, and the demo tests find their
# runs finished (or wait for them). Each run is a fresh process with 2 threads, as a user on 2
# cores runs it, so its result depends on nothing the tests before it did.

BACKGROUND_THREADS = 2
BACKGROUND_TIMEOUT = 1500  # seconds for one run (a quiet machine needs about a sixth of that)
RUNS: dict[str, Callable[[Path], list[str]]] = {}  # name -> argv of the run, given its out directory
FIRST: set[str] = set()  # runs that start before the others


def background_run(name: str, first: bool = False):
    """Register ``fn(out) -> argv`` (a ``glassformer`` command line writing into ``out``) as the
    run ``name`` for ``@pytest.mark.background(name)`` tests. Runs start in the order of their
    tests, those registered with ``first=True`` before the rest."""
    def register(fn: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
        RUNS[name] = fn
        if first:
            FIRST.add(name)
        return fn
    return register


@dataclass
class Finished:
    """A background run's exit code, output and run directory."""

    returncode: int
    stdout: str
    stderr: str
    out: Path


class BackgroundRuns:
    """The runs of one session, started in order in a thread; :meth:`result` waits for one."""

    def __init__(self, names: list[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="glassformer-demos-"))
        self.results: dict[str, Finished] = {}
        self.done = {name: threading.Event() for name in names}
        self.running: subprocess.Popen | None = None
        self.closed = False
        self.lock = threading.Lock()  # closing and starting a run never interleave
        self.thread = threading.Thread(target=self._run_all, args=(names,), daemon=True)
        self.thread.start()

    def _run_all(self, names: list[str]) -> None:
        for name in names:
            out = self.root / name
            env = subprocess_env(self.root, threads=BACKGROUND_THREADS)
            try:
                with self.lock:
                    if self.closed:
                        raise RuntimeError("the test session ended first")
                    self.running = subprocess.Popen(RUNS[name](out), env=env, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True)
                try:
                    stdout, stderr = self.running.communicate(timeout=BACKGROUND_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.running.kill()
                    stdout, stderr = self.running.communicate()
                    stderr += f"\n(killed after {BACKGROUND_TIMEOUT} s)"
                self.results[name] = Finished(self.running.returncode, stdout, stderr, out)
            except Exception as e:  # noqa: BLE001 - reported by the test that reads this run
                self.results[name] = Finished(-1, "", f"{type(e).__name__}: {e}", out)
            finally:
                self.done[name].set()

    def result(self, name: str) -> Finished:
        self.done[name].wait()
        return self.results[name]

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.running is not None and self.running.poll() is None:
                self.running.kill()
        self.thread.join(timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


_background: BackgroundRuns | None = None


def pytest_configure(config):
    config.addinivalue_line("markers", "background(name): reads a demo run made beside the suite (conftest.py)")


def _run_name(item) -> str | None:
    marker = item.get_closest_marker("background")
    return marker.args[0] if marker is not None else None


def pytest_collection_modifyitems(config, items):
    # the tests that read background runs go last (in their order), so the suite runs beside the runs
    items[:] = [i for i in items if _run_name(i) is None] + [i for i in items if _run_name(i) is not None]


def pytest_collection_finish(session):
    global _background
    if session.config.option.collectonly:
        return
    names = list(dict.fromkeys(n for n in map(_run_name, session.items) if n is not None))
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise pytest.UsageError(f"no background run registered as {unknown}")
    if names:
        _background = BackgroundRuns(sorted(names, key=lambda n: n not in FIRST))  # stable: test order otherwise


def pytest_sessionfinish(session):
    if _background is not None:
        _background.close()


@pytest.fixture
def background(request) -> Finished:
    """The finished run named by the test's ``background`` marker (it must have exited 0)."""
    name = _run_name(request.node)
    assert name is not None and _background is not None, "mark the test @pytest.mark.background(NAME)"
    run = _background.result(name)
    assert run.returncode == 0, f"{name}: exit {run.returncode}\n{run.stderr[-3000:]}"
    return run

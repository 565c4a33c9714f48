"""Nothing lost (issue 30, item 0): the three data-loss paths found by the adversarial pass are
closed, and the smaller state defects beside them.

1. ``convert SRC RUN --overwrite`` takes RUN's lock: a live run is refused, its files untouched;
2. a destination that contains (or is inside) the source is refused, the source untouched;
3. a ``.lock`` that is a symbolic link is refused, never written through;

and: ``--overwrite`` moves ``summary.json`` aside with the rest of the run; a killed convert's
``.DST.partial-PID-RAND/`` is removed by the next one; a failed start leaves no trace in
``--out``; the data fingerprint hashes a file whole up to 64 MB, and says when it only sampled.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from conftest import TRAIN_TEXT, fingerprint, run_main, tiny_flags
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig
from glassformer.training import rundir
from glassformer.training.rundir import RunDirError, RunLock

pytestmark = pytest.mark.usefixtures("one_thread")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def model_dir(tmp_path):
    """A glassformer GPT directory (convert's source, with ``--to hf``)."""
    d = tmp_path / "src"
    torch.manual_seed(0)
    GPT(GPTConfig.from_name("gpt-tiny")).save_pretrained(d)
    return d


def fake_run(d):
    """A run directory's files (what ``convert --overwrite`` would replace)."""
    d.mkdir(parents=True, exist_ok=True)
    for name, text in (("train_config.json", '{"task": "gpt"}\n'), ("data.json", '{"files": []}\n'),
                       ("metrics.jsonl", '{"step": 1}\n')):
        (d / name).write_text(text)
    return d


HOLD_LOCK = """
import sys, time
from glassformer.training.rundir import RunLock
RunLock(sys.argv[1]).acquire()
print("LOCKED", flush=True)
time.sleep(600)
"""


# ------------------------------------------------------------------- 1. convert and a live run


def test_convert_over_a_live_run_is_refused_and_the_run_keeps_its_files(model_dir, tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        before = fingerprint(run)
        code, _, err = run_main(capsys, "convert", model_dir, run, "--to", "hf", "--overwrite")
        one_line(code, err, f"PID {holder.pid}", str(run))
        assert fingerprint(run) == before and (run / ".lock").is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "src"]  # no partial left either
    finally:
        holder.kill()
        holder.wait()
    # the run has ended: the same command now replaces it, and leaves no lock file behind
    code, _, err = run_main(capsys, "convert", model_dir, run, "--to", "hf", "--overwrite")
    assert code == 0, err
    assert (run / "model.safetensors").is_file() and not (run / "train_config.json").exists()
    assert not (run / ".lock").exists()


def test_a_run_lock_conflicts_with_a_convert_holding_it(model_dir, tmp_path, monkeypatch):
    """The lock is the training run's own: a convert in progress keeps `train` out too."""
    dst = tmp_path / "dst"
    dst.mkdir()
    from glassformer import convert as conv

    seen = {}
    real = conv._write_atomically

    def spy(path, write, overwrite):
        with pytest.raises(RunDirError, match=f"PID {os.getpid()}"):
            RunLock(dst).acquire()
        seen["checked"] = True
        return real(path, write, overwrite)

    monkeypatch.setattr(conv, "_write_atomically", spy)
    conv.convert(model_dir, dst, to="hf")
    assert seen == {"checked": True}


# ---------------------------------------------------------------- 2. destination and source overlap


def test_a_destination_containing_the_source_is_refused_and_the_source_kept(tmp_path, capsys):
    parent = tmp_path / "out" / "par"
    src = parent / "src"
    torch.manual_seed(0)
    GPT(GPTConfig.from_name("gpt-tiny")).save_pretrained(src)
    (parent / "notes.txt").write_text("mine")
    before = fingerprint(tmp_path / "out")
    for dst in (parent, tmp_path / "out"):
        code, _, err = run_main(capsys, "convert", src, dst, "--to", "hf", "--overwrite")
        one_line(code, err, "contains the source")
    code, _, err = run_main(capsys, "convert", src, src / "inner", "--to", "hf", "--overwrite")
    one_line(code, err, "inside the source")
    assert fingerprint(tmp_path / "out") == before and not (src / "inner").exists()


# ------------------------------------------------------------------------ 3. a .lock that is a link


def test_a_lock_file_that_is_a_symlink_is_refused_not_followed(tmp_path, corpus, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    code, _, err = run_main(capsys, "train", "gpt", "--out", run, *tiny_flags(corpus), "--max-steps", "2",
                            "--eval-every", "2")
    assert code == 0, err
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(victim)
    before = fingerprint(run)
    with pytest.raises(RunDirError, match="symbolic link"):
        RunLock(run).acquire()
    for extra in (["--resume", "--max-steps", "3"], ["--overwrite", *tiny_flags(corpus), "--max-steps", "1"]):
        code, _, err = run_main(capsys, "train", "gpt", "--out", run, *extra)
        one_line(code, err, "symbolic link", ".lock")
    assert victim.read_text() == "precious\n" and (run / ".lock").is_symlink()
    assert fingerprint(run) == before


# ------------------------------------------------------------------------------- smaller defects


def test_overwrite_moves_the_old_summary_aside_with_the_rest_of_the_run(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "summary.json").write_text('{"demo": "gpt", "words": 0.9}\n')
    (run / "notes.txt").write_text("not a run file")
    replaced = rundir.Replaced(run)
    assert replaced.move_aside()
    assert not (run / "summary.json").exists() and (replaced.aside / "summary.json").is_file()
    replaced.discard()  # the new run's first checkpoint: the old run, summary included, is gone
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_a_killed_converts_partial_directory_is_removed_by_the_next_convert(model_dir, tmp_path, capsys):
    dst = tmp_path / "dst"
    dead, alive = dead_pid(), os.getppid()
    stale = tmp_path / f".dst.partial-{dead}-0123abcd"
    live = tmp_path / f".dst.partial-{alive}-4567cdef"
    other = tmp_path / f".other.partial-{dead}-89abcdef"  # another destination's: not ours to judge
    for d in (stale, live, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 100)
    code, _, err = run_main(capsys, "convert", model_dir, dst, "--to", "hf")
    assert code == 0, err
    assert not stale.exists() and live.is_dir() and other.is_dir()


def test_a_convert_killed_mid_swap_gets_the_previous_destination_back(model_dir, tmp_path, capsys):
    dst = tmp_path / "dst"
    old = tmp_path / f".dst.old-{dead_pid()}-0123abcd"  # the swap moved DST here, then the process died
    old.mkdir()
    (old / "keep.txt").write_text("previous output")
    code, _, err = run_main(capsys, "convert", model_dir, dst, "--to", "hf")
    assert code == 2 and "already exists" in err  # DST is back, and not replaced without --overwrite
    assert (dst / "keep.txt").read_text() == "previous output" and not old.exists()


def gpt_with_nan_weights(d):
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("char", TRAIN_TEXT + "\n")
    model = GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.save_pretrained(d)
    tok.save(d)
    return d


def bert_without_mlm_head(d):
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("char", TRAIN_TEXT + "\n")
    BERT(BERTConfig.from_name("bert-tiny", vocab_size=tok.vocab_size, mlm_head=False,
                              mask_token_id=tok.mask_id)).save_pretrained(d)
    tok.save(d)
    return d


@pytest.mark.parametrize("case", ["nan-weights", "bert-no-head"])
def test_a_failed_start_leaves_no_trace_and_the_next_run_is_not_refused(case, tmp_path, corpus, capsys):
    task, make = {"nan-weights": ("gpt", gpt_with_nan_weights), "bert-no-head": ("bert", bert_without_mlm_head)}[case]
    init = make(tmp_path / "init")
    out = tmp_path / "run"
    argv = ["train", task, "--init", init, "--data", corpus, "--out", out, "--max-steps", "2", "--progress", "none",
            "--batch-size", "2", "--context", "16", "--eval-batches", "1", "--sample-tokens", "0"]
    code, _, err = run_main(capsys, *argv)
    assert code == 2 and "Traceback" not in err, err
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    out.mkdir()  # an empty directory the user made: the lock file the run made is removed, the directory kept
    code, _, err = run_main(capsys, *argv)
    assert code == 2 and sorted(os.listdir(out)) == []


def test_a_failed_overwrite_gives_back_the_old_run_without_the_new_runs_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}\n")  # an old run without data.json (from before fingerprints)
    replaced = rundir.Replaced(run, fresh=True)
    replaced.move_aside()
    for name in ("config.json", "data.json", "train_config.json", "metrics.jsonl"):
        (run / name).write_text("new\n")
    replaced.restore()
    assert sorted(os.listdir(run)) == ["config.json"] and (run / "config.json").read_text() == "{}\n"


# ------------------------------------------------------------------------------------ fingerprint


def test_an_edit_between_the_old_samples_is_noticed_when_size_and_mtime_are_restored(tmp_path):
    data = tmp_path / "big.txt"
    data.write_bytes(b"a" * (4 << 20))  # 4 MB: sampled in 16 blocks before, hashed whole now
    run = tmp_path / "run"
    run.mkdir()
    rundir.write_data_fingerprint(run, rundir.data_fingerprint(str(data)))
    assert json.loads((run / "data.json").read_text())["files"][0]["hashed"] == "whole"
    st = data.stat()
    with open(data, "r+b") as f:  # a byte between two sampled blocks
        f.seek((4 << 20) // 30)
        f.write(b"b")
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(RunDirError, match="same size, different contents"):
        rundir.check_data_unchanged(run, str(data), allow_change=False)


def test_a_file_too_large_to_hash_whole_is_sampled_and_says_so(tmp_path, caplog):
    data = tmp_path / "huge.txt"
    with open(data, "wb") as f:
        f.truncate(rundir.WHOLE_HASH_LIMIT + 1)  # sparse: no disk used
    with caplog.at_level(logging.INFO, logger="glassformer.training"):
        fp = rundir.file_fingerprint(data)
    assert fp["hashed"].startswith("sampled")
    assert any("sampled blocks" in r.getMessage() and str(data) in r.getMessage() for r in caplog.records)


def test_a_fingerprint_from_before_whole_hashing_still_matches_unchanged_data(tmp_path):
    data = tmp_path / "mid.txt"
    data.write_bytes(bytes(range(256)) * 8192)  # 2 MB: the old rule sampled it
    run = tmp_path / "run"
    run.mkdir()
    st = data.stat()
    legacy = {"path": str(data.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
              "sampled_sha256": rundir._legacy_sampled_sha256(str(data), st.st_size)}
    (run / "data.json").write_text(json.dumps({"data": str(data), "files": [legacy]}))
    rundir.check_data_unchanged(run, str(data), allow_change=False)  # no false alarm on an old run
    legacy["sampled_sha256"] = "0" * 64
    (run / "data.json").write_text(json.dumps({"data": str(data), "files": [legacy]}))
    with pytest.raises(RunDirError, match="changed since the run started"):
        rundir.check_data_unchanged(run, str(data), allow_change=False)

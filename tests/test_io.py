"""glassformer.io: atomic writes with umask permissions, one JSON reader, stale temp cleanup."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from glassformer import io
from glassformer.errors import CheckpointError, GlassformerError


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_honours_umask_for_every_form(tmp_path, umask022):
    a = io.atomic_write(tmp_path / "a.bin", b"\x00\x01")
    b = io.atomic_write_text(tmp_path / "b.txt", "héllo")
    c = io.atomic_write_json(tmp_path / "c.json", {"x": [1, 2]})
    d = io.atomic_write(tmp_path / "d.out", lambda p: p.write_bytes(b"via a writer"))
    for path in (a, b, c, d):
        assert mode(path) == 0o644, path
    assert a.read_bytes() == b"\x00\x01" and b.read_text(encoding="utf-8") == "héllo"
    assert io.read_json(c) == {"x": [1, 2]} and d.read_bytes() == b"via a writer"
    os.umask(0o077)
    assert mode(io.atomic_write(tmp_path / "private", b"")) == 0o600
    os.umask(0o022)
    assert mode(io.make_dirs(tmp_path / "x" / "y")) == 0o755


def test_atomic_write_replaces_whole_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "f.json"
    io.atomic_write_json(target, {"v": 1})

    def broken(path):
        path.write_text('{"v": 2, "half')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.atomic_write(target, broken)
    assert io.read_json(target) == {"v": 1}  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]  # no temp left behind


def test_atomic_path_refuses_a_writer_that_wrote_nothing(tmp_path):
    with pytest.raises(FileNotFoundError), io.atomic_path(tmp_path / "never"):
        pass
    assert not (tmp_path / "never").exists()


def test_read_json_names_the_file_in_every_failure(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    arr = tmp_path / "arr.json"
    arr.write_text("[1]")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "\xe9"}')
    cases = {
        tmp_path / "missing.json": "no such file",
        bad: "not valid JSON",
        arr: "must hold a JSON object",
        latin: "not UTF-8",
        tmp_path: "is a directory",
    }
    for path, why in cases.items():
        with pytest.raises(GlassformerError) as e:
            io.read_json(path)
        assert str(path) in str(e.value) and why in str(e.value)
    assert io.read_json(arr, expect=list) == [1]
    with pytest.raises(CheckpointError):  # the caller picks the error class
        io.read_json(bad, error=CheckpointError)


def test_remove_stale_temps_only_removes_dead_writers_files(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".loss.png.tmp-{dead_pid}-0123abcd"
    mine = tmp_path / f".loss.png.tmp-{os.getpid()}-0123abcd"
    alive = tmp_path / ".x.tmp-1-89abcdef"  # pid 1 is always alive
    other = tmp_path / ".loss.png.tmp-notours"
    for p in (stale, mine, alive, other):
        p.write_text("")
    link = tmp_path / f".link.tmp-{dead_pid}-00000000"
    outside = tmp_path.parent / f"outside-{dead_pid}"
    outside.write_text("keep")
    link.symlink_to(outside)
    removed = io.remove_stale_temps(tmp_path)
    assert removed == [stale]
    assert mine.exists() and alive.exists() and other.exists() and link.is_symlink() and outside.exists()


def test_unwrap_model_strips_compile_and_ddp_wrappers():
    import torch

    inner = torch.nn.Linear(2, 2)
    compiled = torch.compile(inner)
    assert io.unwrap_model(compiled) is inner
    assert io.unwrap_model(inner) is inner

    class DistributedDataParallel(torch.nn.Module):  # the name is what unwrap_model keys on
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert io.unwrap_model(DistributedDataParallel(compiled)) is inner
    assert io.IGNORE_INDEX == -100

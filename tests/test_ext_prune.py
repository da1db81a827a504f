"""Pruning the compiled extensions' old builds (``rnnkit.kernels.ext.prune``): every change of the
sources or flags made a new build directory (tens of MB) and the old ones stayed forever. Every
test works in a cache root under ``tmp_path`` (``$RNNKIT_EXT_DIR``)."""

import importlib
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from rnnkit.kernels import ext

fcntl = pytest.importorskip("fcntl")
DAY = 86400


@pytest.fixture
def root(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNKIT_EXT_DIR", str(tmp_path / "cache"))
    for var in ("RNNKIT_NO_EXT", "RNNKIT_NO_EXT_PRUNE", "RNNKIT_EXT_KEEP_DAYS"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


def build(root: Path, name: str, days: float, files=("rnnkit.flock", "rnnkit_ext.so", ext.USED)) -> Path:
    """A fake build ``root/name`` last used ``days`` ago."""
    d = root / name
    d.mkdir()
    t = time.time() - days * DAY
    for f in files:
        (d / f).touch()
        os.utime(d / f, (t, t))
    os.utime(d, (t, t))
    return d


def names(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


def prune(current: Path) -> list[Path]:
    return ext.prune(current, ext._BUILDS, "rnnkit_ext", logging.getLogger("rnnkit.test"))


def test_stale_builds_go_recent_and_current_ones_stay(root, monkeypatch):
    monkeypatch.setattr(ext, "KEEP_RECENT", 0)
    current = build(root, ext.build_dir().name, 100)  # (an old current one stays: it is in use)
    stale = build(root, "torch2.0.0-py39-aaaaaaaaaaaa", 31)
    recent = build(root, "torch2.1.0-py310-bbbbbbbbbbbb", 29)
    no_marker = build(root, "torch1.13.0-py38-cccccccccccc", 60, files=("rnnkit_ext.so",))  # (before markers)
    assert sorted(prune(current)) == sorted([stale, no_marker])
    assert names(root) == {current.name, recent.name}


def test_the_last_used_old_builds_stay_whatever_their_age(root):
    current = root / ext.build_dir().name
    olds = [build(root, f"torch2.{i}.0-py311-{i:012x}", 40 + i) for i in range(4)]
    assert sorted(prune(current)) == sorted(olds[ext.KEEP_RECENT :])
    assert names(root) == {d.name for d in olds[: ext.KEEP_RECENT]}


def test_a_build_in_use_stays(root, monkeypatch):
    """One locked by a process building or loading it, or holding torch's ``lock``, stays."""
    monkeypatch.setattr(ext, "KEEP_RECENT", 0)
    locked = build(root, "torch2.0.0-py39-aaaaaaaaaaaa", 100)
    torch_lock = build(root, "torch2.0.0-py39-bbbbbbbbbbbb", 100, files=("rnnkit_ext.so", "lock"))
    with open(locked / "rnnkit.flock") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert prune(root / ext.build_dir().name) == []
    assert names(root) == {locked.name, torch_lock.name}
    assert prune(root / ext.build_dir().name) == [locked]  # released: it goes


def test_nothing_else_is_touched(root, tmp_path, monkeypatch):
    """The root may be ``$TORCH_EXTENSIONS_DIR``, shared with other libraries: only folders named
    as this loader's builds that hold rnnkit's files go; no link, no file, nothing outside."""
    monkeypatch.setattr(ext, "KEEP_RECENT", 0)
    outside = build(tmp_path, "torch2.0.0-py39-dddddddddddd", 100)
    (root / "torch2.0.0-py39-eeeeeeeeeeee").symlink_to(outside)
    (root / "torch2.0.0-py39-ffffffffffff").write_text("a file")
    theirs = [
        build(root, "other_ext", 100),
        build(root, "torch2.0.0-py39-abcabcabcabc", 100, files=("x.so",)),
    ]
    scans = build(root, "scan-torch2.0.0-py39-aaaaaaaaaaaa", 100, files=("rnnkit.flock", "rnnkit_scan.so"))
    before = names(root)
    assert prune(root / ext.build_dir().name) == []
    assert names(root) == before and all(d.is_dir() for d in [*theirs, scans])
    assert names(outside) == {"rnnkit.flock", "rnnkit_ext.so", ext.USED}


def test_knobs(root, monkeypatch, caplog):
    monkeypatch.setattr(ext, "KEEP_RECENT", 0)
    old = build(root, "torch2.0.0-py39-aaaaaaaaaaaa", 100)
    current = root / ext.build_dir().name
    monkeypatch.setenv("RNNKIT_NO_EXT_PRUNE", "1")
    assert prune(current) == []
    monkeypatch.delenv("RNNKIT_NO_EXT_PRUNE")
    monkeypatch.setenv("RNNKIT_EXT_KEEP_DAYS", "120")
    assert prune(current) == []
    monkeypatch.setenv("RNNKIT_EXT_KEEP_DAYS", "soon")
    with caplog.at_level(logging.WARNING, logger="rnnkit.test"):
        assert prune(current) == []
    assert "RNNKIT_EXT_KEEP_DAYS must be a number of days >= 0, got 'soon'" in caplog.text
    monkeypatch.setenv("RNNKIT_EXT_KEEP_DAYS", "99")
    assert prune(current) == [old]


@pytest.mark.parametrize("which", ["ext", "scan"])
def test_a_load_marks_its_build_and_prunes_the_old_ones(which, root, monkeypatch):
    """After a load (torch's builder faked), its build is marked used now and the old builds of
    this loader are gone; the other loader's stay."""
    from torch.utils import cpp_extension

    scan = importlib.import_module("rnnkit.ops.scan")  # the module (rnnkit.ops.scan is shadowed)
    monkeypatch.setattr(ext, "KEEP_RECENT", 0)
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: "module")
    monkeypatch.setattr(scan, "_ext_state", {})
    lib = "rnnkit_ext.so" if which == "ext" else "rnnkit_scan.so"
    mine = build(root, f"{'scan-' if which == 'scan' else ''}torch2.0.0-py39-aaaaaaaaaaaa", 100, (lib,))
    other = build(root, f"{'scan-' if which == 'ext' else ''}torch2.0.0-py39-bbbbbbbbbbbb", 100)
    current = ext.build_dir() if which == "ext" else scan._build_dir()
    ext._build() if which == "ext" else scan.load_extension()
    assert names(root) == {current.name, other.name} and not mine.exists()
    assert time.time() - ext.last_used(current) < 60


def test_a_failing_prune_does_not_fail_the_load(root, monkeypatch, caplog):
    from torch.utils import cpp_extension

    def boom(*_):
        raise RuntimeError("boom")

    def denied(*_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ext, "KEEP_RECENT", 0)
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: None)
    old = build(root, "torch2.0.0-py39-aaaaaaaaaaaa", 100)
    monkeypatch.setattr(Path, "rename", denied)
    with caplog.at_level(logging.DEBUG, logger="rnnkit"):
        assert ext._build() is not None and old.exists()
    assert "could not prune the build torch2.0.0-py39-aaaaaaaaaaaa" in caplog.text
    monkeypatch.setattr(ext, "last_used", boom)
    with caplog.at_level(logging.DEBUG, logger="rnnkit"):
        assert ext._build() is not None and old.exists()
    assert "pruning the old builds next to" in caplog.text and "boom" in caplog.text


def test_a_builder_waiting_on_a_pruned_build_makes_it_anew(tmp_path):
    """A builder waiting for the lock of a build that a prune then removed got the lock of the
    removed file and built into a folder that no longer was; it now locks a new folder."""
    d = tmp_path / "torch2.0.0-py39-aaaaaaaaaaaa"
    d.mkdir()
    seen = []

    def builder():
        with ext.build_lock(d), open(d / "rnnkit.flock") as g:
            try:
                fcntl.flock(g, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                seen.append("the new folder's lock held")

    with open(d / "rnnkit.flock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        t = threading.Thread(target=builder)
        t.start()
        time.sleep(0.5)  # (the builder waits for the lock)
        d.rename(tmp_path / "trash")
    t.join(10)
    assert seen == ["the new folder's lock held"]


@pytest.mark.parametrize("when", ["after the mkdir", "within the mkdir"])
def test_a_build_pruned_as_a_builder_starts_is_made_anew(tmp_path, monkeypatch, when):
    """A prune that renamed the build away as a builder started made the load fail (the pure
    kernels ran): after the builder's ``mkdir``, its ``open`` of the lock file raised
    FileNotFoundError; within it (``os.mkdir`` found the folder, ``exist_ok``'s check then did not),
    the ``mkdir`` raised FileExistsError. The builder makes the folder anew and locks it."""
    d = tmp_path / "torch2.0.0-py39-aaaaaaaaaaaa"
    d.mkdir()
    os_mkdir, pruned = os.mkdir, []

    def mkdir(path, *args, **kwargs):
        if Path(path) != d or pruned:
            return os_mkdir(path, *args, **kwargs)
        pruned.append(d.rename(tmp_path / "trash"))  # (another process's prune, at the worst moment)
        if when == "within the mkdir":  # os.mkdir found the folder, exist_ok's is_dir() then did not
            raise FileExistsError(17, "File exists", str(path))

    monkeypatch.setattr(os, "mkdir", mkdir)
    with ext.build_lock(d), open(d / "rnnkit.flock") as g:
        with pytest.raises(BlockingIOError):  # the lock held is the new folder's
            fcntl.flock(g, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert pruned


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts the open files in /proc/self/fd")
@pytest.mark.parametrize("where", ["flock", "stat"])
def test_an_interrupt_or_error_while_locking_closes_the_lock_file(tmp_path, monkeypatch, where):
    """A KeyboardInterrupt in the blocking flock wait, or an error other than FileNotFoundError in
    the check that the locked file is still the folder's, left the lock file open (until the GC)."""
    d = tmp_path / "torch2.0.0-py39-aaaaaaaaaaaa"
    if where == "flock":

        def flock(f, op):
            raise KeyboardInterrupt

        monkeypatch.setattr(fcntl, "flock", flock)
        raised: type[BaseException] = KeyboardInterrupt
    else:

        def is_at(f, path):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(ext, "_is_at", is_at)
        raised = PermissionError
    before = _open_fds()
    with pytest.raises(raised), ext.build_lock(d):
        pytest.fail("the block ran")  # pragma: no cover
    assert _open_fds() == before


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts the open files in /proc/self/fd")
def test_a_folder_pruned_at_every_lock_is_an_os_error(tmp_path, monkeypatch):
    """A folder removed each time its lock was taken: after the last retry the builder went on
    holding the lock of a removed file (and built into a folder a prune was removing); now an
    OSError names it (the loaders then run the pure kernels), with no file left open."""
    d = tmp_path / "torch2.0.0-py39-aaaaaaaaaaaa"
    flock, tries = fcntl.flock, []

    def pruned_flock(f, op):
        flock(f, op)
        tries.append(d.rename(tmp_path / f"trash{len(tries)}"))  # (a prune, as the lock is taken)

    monkeypatch.setattr(fcntl, "flock", pruned_flock)
    before = _open_fds()
    with pytest.raises(OSError, match=f"build folder {d} was removed while waiting for its lock, 5 times"):
        with ext.build_lock(d):
            pytest.fail("the block ran")  # pragma: no cover
    assert len(tries) == ext._LOCK_TRIES and _open_fds() == before

"""The compiled extensions' cache directories (``rnnkit.kernels.ext``, ``rnnkit.ops.scan``)."""

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.kernels import ext

from .fused.test_fused_kernels import require_ext


def test_ext_build_dir_is_keyed_by_the_checkout(monkeypatch, tmp_path):
    """Two checkouts of the same sources (a clone and a worktree) got one build directory, and
    ninja's build file names the sources by path: each checkout's first load rebuilt the
    extension (~1.5 minutes) over the other's. Each checkout now has its own; the same
    checkout keeps its directory."""
    monkeypatch.setenv("RNNKIT_EXT_DIR", str(tmp_path / "cache"))
    here = ext.build_dir()
    assert ext.build_dir() == here
    copy = tmp_path / "other" / "csrc"
    shutil.copytree(ext._CSRC, copy)
    monkeypatch.setattr(ext, "_CSRC", copy)
    assert ext.build_dir() != here and ext.build_dir().parent == here.parent


def test_scan_build_dir_is_keyed_by_the_checkout(monkeypatch, tmp_path):
    """As the fused kernels' extension: the scan extension of another checkout builds apart."""
    scan = importlib.import_module("rnnkit.ops.scan")  # the module (rnnkit.ops.scan is shadowed)
    monkeypatch.setenv("RNNKIT_EXT_DIR", str(tmp_path / "cache"))
    here = scan._build_dir()
    copy = tmp_path / "other" / "scan.cpp"
    copy.parent.mkdir()
    shutil.copy(scan._SOURCE, copy)
    monkeypatch.setattr(scan, "_SOURCE", copy)
    assert scan._build_dir() != here and scan._build_dir().parent == here.parent


def test_a_stale_lock_file_does_not_hang_the_first_use(tmp_path):
    """torch's build lock is a file (``<build dir>/lock``) that a process killed mid-build
    (SIGTERM from torchrun when another rank fails, SIGKILL, the OOM killer) leaves behind:
    every later first use waited on it forever, silently, even with the library built. rnnkit
    now serializes its builds with an OS lock that dies with its holder, and under it removes a
    leftover ``lock``: the extension loads."""
    require_ext()
    cache = tmp_path / "cache"
    env = dict(os.environ, RNNKIT_EXT_DIR=str(cache), PYTHONPATH=os.getcwd())
    shutil.copytree(ext.build_dir(), cache / ext.build_dir().name)  # the built library: no rebuild
    (cache / ext.build_dir().name / "lock").touch()
    code = "from rnnkit.kernels import ext\nassert ext.ops() is not None\nprint('OK')\n"
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("the first use waited on the stale lock file")
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_build_lock_on_a_file_system_without_locks(tmp_path, monkeypatch):
    """Where ``flock`` fails (some NFS mounts: ENOLCK), the build goes on under torch's lock file
    alone, as before, and a ``lock`` there is left to torch (it may be a live builder's)."""
    fcntl = pytest.importorskip("fcntl")

    def no_locks(*_):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    (tmp_path / "lock").touch()
    with ext.build_lock(tmp_path):
        ran = True
    assert ran and (tmp_path / "lock").exists()
    # a build's own error is not shown as raised while handling ENOLCK (its traceback said so)
    with pytest.raises(RuntimeError) as e, ext.build_lock(tmp_path):
        raise RuntimeError("the build failed")
    assert e.value.__context__ is None


def test_a_build_warning_is_logged_not_raised(tmp_path, caplog):
    """Under ``-W error`` (this project's pytest setting) a warning of ``cpp_extension`` during a
    build that works raised, the build counted as failed and the pure kernels ran; ``building``
    logs it instead (also when the build then fails)."""
    import logging
    import warnings

    log = logging.getLogger("rnnkit.test")
    with caplog.at_level(logging.WARNING, logger="rnnkit.test"):
        with ext.building(tmp_path, log):
            warnings.warn("your compiler may be ABI-incompatible", UserWarning, stacklevel=1)
        with pytest.raises(RuntimeError, match="no compiler"), ext.building(tmp_path, log):
            warnings.warn("second", UserWarning, stacklevel=1)
            raise RuntimeError("no compiler")
    name = tmp_path.name
    assert [r.getMessage() for r in caplog.records] == [
        f"rnnkit: building {name}: your compiler may be ABI-incompatible",
        f"rnnkit: building {name}: second",
    ]


@pytest.mark.parametrize("which", ["ext", "scan"])
def test_both_builds_run_under_the_os_lock(which, monkeypatch, tmp_path):
    """``kernels/ext.py`` and ``ops/scan.py`` both call torch's builder under
    :func:`ext.build_lock`: the ``lock`` a killed builder left is gone when it runs, and the OS
    lock is held meanwhile (a second open file of it cannot take it). torch's builder is faked:
    no compilation."""
    from torch.utils import cpp_extension

    from rnnkit.ops import scan

    fcntl = pytest.importorskip("fcntl")
    monkeypatch.setenv("RNNKIT_EXT_DIR", str(tmp_path))
    monkeypatch.delenv("RNNKIT_NO_EXT", raising=False)
    d = ext.build_dir() if which == "ext" else scan._build_dir()
    d.mkdir(parents=True)
    (d / "lock").touch()
    seen = []

    def fake_load(**kw):
        assert kw["build_directory"] == str(d)
        with open(d / "rnnkit.flock") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append((d / "lock").exists())

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    if which == "ext":
        ext._build()
    else:
        monkeypatch.setattr(scan, "_ext_state", {})
        scan.load_extension()  # (logs a failure of fake_load instead of raising: `seen` stays empty)
    assert seen == [False]


@pytest.mark.parametrize("rnnkit_dir", [None, "rnnkit"])
def test_both_loaders_follow_one_root_rule(rnnkit_dir, monkeypatch, tmp_path):
    """The fused kernels' loader ignored ``$TORCH_EXTENSIONS_DIR``, which the scan kernel's
    honoured: one build went to the home directory the variable was set to avoid. Both now build
    under ``$RNNKIT_EXT_DIR``, else ``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/rnnkit/ext``."""
    scan = importlib.import_module("rnnkit.ops.scan")  # the module (rnnkit.ops.scan is shadowed)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch"))
    if rnnkit_dir is None:
        monkeypatch.delenv("RNNKIT_EXT_DIR", raising=False)
    else:
        monkeypatch.setenv("RNNKIT_EXT_DIR", str(tmp_path / rnnkit_dir))
    want = tmp_path / (rnnkit_dir or "torch")
    assert ext.build_dir().parent == want and scan._build_dir().parent == want
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.delenv("RNNKIT_EXT_DIR", raising=False)
    home = Path.home() / ".cache" / "rnnkit" / "ext"
    assert ext.build_dir().parent == home and scan._build_dir().parent == home


_READ_ONLY = """
import contextlib, errno, os, sys
from torch.utils import cpp_extension
from rnnkit.kernels import ext
from rnnkit.ops import scan as _
scan = sys.modules["rnnkit.ops.scan"]

def no_build(**_):
    raise AssertionError("ran the builder on a finished, read-only build")

cpp_extension.load = no_build
if os.geteuid() == 0:  # root writes into a read-only directory: the denial is simulated
    @contextlib.contextmanager
    def denied(d):
        raise PermissionError(errno.EACCES, "Permission denied", str(d / "rnnkit.flock"))
        yield

    ext.build_lock = denied
assert (ext.ops() if WHICH == "ext" else scan.load_extension()) is not None
print("OK")
"""


@pytest.mark.parametrize("which", ["ext", "scan"])
def test_a_read_only_cache_with_a_finished_build_loads_it(which, tmp_path):
    """A build directory that cannot be written (a shared, read-only install) but holds the
    finished build fell back to the pure kernels: the build's lock file could not be created.
    Loading needs no write: the library there is loaded as it is, the builder not run. (As
    root, which writes anywhere, the subprocess simulates the denied lock file.)"""
    scan = importlib.import_module("rnnkit.ops.scan")  # the module (rnnkit.ops.scan is shadowed)
    require_ext()
    assert scan.load_extension() is not None, "the scan kernel failed to build"
    built = ext.build_dir() if which == "ext" else scan._build_dir()
    cache = tmp_path / "cache"
    shutil.copytree(built, cache / built.name)
    env = dict(os.environ, RNNKIT_EXT_DIR=str(cache), PYTHONPATH=os.getcwd())
    subprocess.run(["chmod", "-R", "a-w", str(cache)], check=True)
    try:
        code = f"WHICH = {which!r}\n{_READ_ONLY}"
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(cache)], check=True)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    assert "unavailable" not in r.stderr, r.stderr


@pytest.mark.parametrize("which", ["ext", "scan"])
def test_a_failed_build_warns_in_a_few_lines(which, monkeypatch, tmp_path, caplog):
    """A failed build's error holds ninja's whole output, and the warning held all of it
    (thousands of lines). It now keeps the first line and the last 20 (the compiler's error),
    says how many it left out, and the whole output is logged at DEBUG level."""
    import logging

    from torch.utils import cpp_extension

    scan = importlib.import_module("rnnkit.ops.scan")  # the module (rnnkit.ops.scan is shadowed)
    monkeypatch.setenv("RNNKIT_EXT_DIR", str(tmp_path))
    monkeypatch.delenv("RNNKIT_NO_EXT", raising=False)
    output = [f"[{i}/5000] c++ -c x.cpp" for i in range(5000)] + ["x.cpp:1: error: boom"]

    def failing_load(**_):
        raise RuntimeError("Error building extension 'x': " + "\n".join(output))

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    monkeypatch.setattr(ext, "_state", {})
    monkeypatch.setattr(scan, "_ext_state", {})
    with caplog.at_level(logging.DEBUG):
        assert (ext.ops() if which == "ext" else scan.load_extension()) is None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning.splitlines()) == 22 and "x.cpp:1: error: boom" in warning
    assert "Error building extension 'x'" in warning and "4980 lines omitted" in warning
    assert any("[2500/5000]" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)

"""The compiled extensions' cache directories (``rnnkit.kernels.ext``, ``rnnkit.ops.scan``)."""

import importlib
import shutil

from rnnkit.kernels import ext


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

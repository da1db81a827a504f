"""Loader of the C++ extension (every ``csrc/*.cpp``): compiled at first use, cached, optional.

The extension is built with ``torch.utils.cpp_extension.load`` and ``ninja`` the first time a fused
kernel runs — never at import — into ``~/.cache/rnnkit/ext/torch<version>-py<XY>-<hash>`` (of the
sources, flags and folder; the root is :func:`ext_root`), so later processes only load the shared
library. It registers the ops ``torch.ops.rnnkit_ext.forward/backward`` (plain ``TORCH_LIBRARY``
ops, no pybind11: fewer headers, faster build). The build is silent on success; on any failure it
logs one short warning (:func:`failure`) and rnnkit uses the pure-PyTorch kernels, which compute the
same numbers. ``RNNKIT_NO_EXT=1`` forces the pure kernels. Processes building at once into one
directory (torchrun ranks, pytest-xdist workers) take turns (:func:`build_lock`); the build's Python
warnings are logged, not raised (:func:`building`). A build directory that cannot be written (a
shared, read-only install) but holds a finished build is loaded as it is (:func:`prebuilt`).
After a load, the other builds of the root unused for ``$RNNKIT_EXT_KEEP_DAYS`` days (30) are
removed, but the two last used (:func:`prune`; ``RNNKIT_NO_EXT_PRUNE=1`` keeps them all).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

_SRC = Path(__file__).parent / "csrc" / "fused.cpp"
_CSRC = Path(__file__).parent / "csrc"  # every *.cpp is one source; headers count for the hash
_LOG = logging.getLogger("rnnkit")
_lock = threading.Lock()
_state: dict[str, object] = {}  # "ops": the op namespace or None once tried
_TAIL = 20  # lines of a failed build's output that its warning keeps
# the names of this extension's build directories (:func:`build_dir`), of every torch and source
_BUILDS = r"torch[0-9][^/]*-py[0-9]+-[0-9a-f]{12}"
USED = "rnnkit.used"  # touched at each load of a build (under its lock): when it was last used
KEEP_DAYS = 30.0  # default of $RNNKIT_EXT_KEEP_DAYS: an old build unused this long is removed
KEEP_RECENT = 2  # ... but the two last used are kept whatever their age (two versions in turn)


def disabled() -> bool:
    """True when ``RNNKIT_NO_EXT`` is set to a non-empty value other than ``0``."""
    return os.environ.get("RNNKIT_NO_EXT", "") not in ("", "0")


def _flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags.

    ``-fopenmp`` wherever ATen itself runs on OpenMP: ``at::parallel_for`` is a header-inline
    ``#pragma omp parallel``, so without the flag every parallel loop of the extension runs on
    one thread. At run time the extension shares libtorch's ``libgomp.so.1`` (same soname), so
    ``torch.set_num_threads`` governs it too.
    """
    omp = sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info()
    return ["-O2"] + (["-fopenmp"] if omp else []), (["-fopenmp"] if omp else [])


def ext_root() -> Path:
    """The root of every rnnkit build directory (this extension's and the scan kernel's,
    :mod:`rnnkit.ops.scan`): ``$RNNKIT_EXT_DIR``, else ``$TORCH_EXTENSIONS_DIR``, else
    ``~/.cache/rnnkit/ext``. One rule for both loaders: the fused kernels used to ignore
    ``$TORCH_EXTENSIONS_DIR`` that the scan kernel honoured, and built into a home directory that
    the variable was set to avoid (a read-only or shared one)."""
    root = os.environ.get("RNNKIT_EXT_DIR") or os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(root) if root else Path.home() / ".cache" / "rnnkit" / "ext"


def build_dir() -> Path:
    """Cache directory of the build, keyed by torch version, flags, source hash and the
    sources' folder: ninja's build file names the sources by path, so two checkouts of the same
    code (a clone and a worktree) sharing one directory rebuilt it each time the other loaded."""
    sources = b"".join(f.read_bytes() for f in sorted(_CSRC.glob("*.[ch]*")))
    key = sources + repr(_flags()).encode() + str(_CSRC.resolve()).encode()
    digest = hashlib.sha256(key).hexdigest()[:12]
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}-{digest}"
    return ext_root() / tag


def _ensure_ninja_on_path() -> None:
    # cpp_extension runs `ninja` from PATH; the pip package installs it next to the
    # interpreter, which is not on PATH when the venv is not activated (`make test`).
    if shutil.which("ninja") is None:
        candidates = [os.path.dirname(sys.executable)]
        try:
            import ninja  # type: ignore[import-not-found]

            candidates.insert(0, ninja.BIN_DIR)
        except ImportError:
            pass
        for d in candidates:
            if os.path.exists(os.path.join(d, "ninja")):
                os.environ["PATH"] = d + os.pathsep + os.environ.get("PATH", "")
                break


_LOCK_TRIES = 5  # build_lock's tries at a folder that a prune removes as it is locked


@contextlib.contextmanager
def build_lock(d: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on the build directory ``d`` (``d/rnnkit.flock``) for the block.

    ``cpp_extension.load`` serializes builds with a file, ``d/lock``, created and removed by the
    builder: a builder killed in between (SIGTERM from torchrun when another rank fails, SIGKILL,
    the OOM killer) leaves it, and every later load of ``d`` waited for it forever, silently. An
    ``flock`` dies with its holder, and every rnnkit build holds it around ``load``, so whoever
    holds it knows that a ``lock`` there is stale and removes it. Without ``fcntl`` (Windows):
    torch's file alone. ``d`` is made if missing, and made anew if :func:`prune` removed it while
    we waited for its lock (we then held the lock of a removed file) or before we opened it; after
    :data:`_LOCK_TRIES` such removals an ``OSError`` (the loaders then run the pure kernels). The
    lock file is closed on every way out (an interrupt in the wait too), not left to the GC."""
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    # (the block runs outside the except clauses: its errors are not chained to ENOLCK's)
    if fcntl is None:
        d.mkdir(parents=True, exist_ok=True)
        yield
        return
    for attempt in range(_LOCK_TRIES):  # (a new directory is no prune's: the retry is for a rare race)
        try:
            d.mkdir(parents=True, exist_ok=True)
            f = open(d / "rnnkit.flock", "a")
        except (FileNotFoundError, FileExistsError):  # a prune renamed d away between the mkdir and
            if attempt == _LOCK_TRIES - 1:  # the open, or within the mkdir (exist_ok's check: no folder)
                raise
            continue
        try:  # the file closed on every way out but the lock held (a Ctrl-C in the wait, a failed stat)
            try:
                fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed, or its process dies
            except OSError:  # a file system without locks (some NFS mounts): torch's file alone
                locked = False
            else:
                locked = True
            held = not locked or _is_at(f, d / "rnnkit.flock")
        except BaseException:
            f.close()
            raise
        if held:
            break
        f.close()  # the lock of a removed file: none of d's
    else:  # (each try locked a file that a prune removed meanwhile: building there would race it)
        raise OSError(
            f"the build folder {d} was removed while waiting for its lock, {_LOCK_TRIES} times "
            "in a row (a prune of old builds in another process?); not building there"
        )
    with f:
        if locked:
            (d / "lock").unlink(missing_ok=True)
        yield


def _is_at(f, path: Path) -> bool:
    """Whether the open file ``f`` is (still) the file at ``path``."""
    try:
        st, at = os.fstat(f.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (at.st_dev, at.st_ino)


def touch_used(d: Path) -> None:
    """Mark the build ``d`` used now (:data:`USED`; under its lock, after its load): what
    :func:`prune` reads. A read-only cache keeps its old time."""
    with contextlib.suppress(OSError):
        (d / USED).touch()


def last_used(d: Path) -> float:
    """When the build ``d`` was last loaded (seconds since the epoch): its :data:`USED` marker's
    time, or its folder's for a build older than the marker (torch's builder creates and removes
    its ``lock`` there at each load)."""
    times = [d.stat().st_mtime]
    with contextlib.suppress(FileNotFoundError):
        times.append((d / USED).stat().st_mtime)
    return max(times)


@contextlib.contextmanager
def building(d: Path, log: logging.Logger) -> Iterator[None]:
    """Around a ``cpp_extension.load`` into ``d``: :func:`build_lock`, and the Python warnings the
    build raises logged rather than raised: under ``-W error`` (pytest's setting in this project)
    a warning of ``cpp_extension`` would fail a build that works, and the pure kernels would run."""
    with build_lock(d), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                log.warning("rnnkit: building %s: %s", d.name, w.message)


def prebuilt(d: Path, name: str, error: OSError) -> Path | None:
    """The library ``name`` that a finished build left in ``d``, when ``error`` (raised by the
    build under :func:`building`) says ``d`` cannot be written; else ``None``.

    Only loading needs no write, but the build does (its lock files, ninja's run): a read-only
    cache holding a complete build (a shared install) fell back to the pure kernels. The
    directory's name is the hash of the sources and flags, so a library there is theirs."""
    if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        return None
    from torch.utils.cpp_extension import LIB_EXT

    lib = d / f"{name}{LIB_EXT}"
    return lib if lib.is_file() else None


def _keep_days(log: logging.Logger) -> float | None:
    """``$RNNKIT_EXT_KEEP_DAYS`` (default :data:`KEEP_DAYS`), or ``None`` (prune nothing) under
    ``RNNKIT_NO_EXT_PRUNE=1`` or for a value that is not a number of days >= 0 (logged)."""
    if os.environ.get("RNNKIT_NO_EXT_PRUNE", "") not in ("", "0"):
        return None
    raw = os.environ.get("RNNKIT_EXT_KEEP_DAYS", "")
    try:
        days = float(raw) if raw else KEEP_DAYS
    except ValueError:
        days = float("nan")
    if not days >= 0:  # (NaN too)
        log.warning("rnnkit: RNNKIT_EXT_KEEP_DAYS must be a number of days >= 0, got %r; builds kept", raw)
        return None
    return days


def prune(current: Path, names: str, lib: str, log: logging.Logger) -> list[Path]:
    """Remove the old builds next to the build ``current`` just loaded; the removed ones.

    Old builds: the folders of ``current``'s root, other than ``current``, whose names fully match
    the regular expression ``names`` and that hold rnnkit's lock file or the library ``lib`` (the
    root may be ``$TORCH_EXTENSIONS_DIR``, shared with other libraries), unused (:func:`last_used`)
    for ``$RNNKIT_EXT_KEEP_DAYS`` days; the :data:`KEEP_RECENT` last used are kept whatever their
    age. Each is removed under its lock (:func:`build_lock`) taken without waiting: one being built
    or loaded elsewhere is skipped, and so is one used meanwhile or holding torch's ``lock``. It is
    first renamed out of the builds' names, then deleted: a half-deleted build is never loaded.
    Links, files and anything outside the root are not touched. Never raises (without ``fcntl``,
    where a build in use cannot be told, it prunes nothing): a failure is logged at DEBUG level."""
    try:
        import fcntl
    except ImportError:
        return []
    try:
        days = _keep_days(log)
        if days is None:
            return []
        from torch.utils.cpp_extension import LIB_EXT

        root, pattern, cutoff = current.parent, re.compile(names), time.time() - days * 86400
        old = []
        for d in root.iterdir():
            if d.name == current.name or not pattern.fullmatch(d.name) or d.is_symlink() or not d.is_dir():
                continue
            if (d / "rnnkit.flock").is_file() or (d / f"{lib}{LIB_EXT}").is_file():
                with contextlib.suppress(FileNotFoundError):  # (removed meanwhile)
                    old.append((last_used(d), d))
        old.sort(reverse=True)
        removed = [d for used, d in old[KEEP_RECENT:] if used < cutoff and _remove(d, cutoff, fcntl, log)]
        for trash in root.glob(".rnnkit-pruned-*"):  # an interrupted prune's
            if trash.is_dir() and not trash.is_symlink():
                shutil.rmtree(trash, ignore_errors=True)
        return removed
    except Exception as e:  # noqa: BLE001 - pruning is housekeeping: it never fails a load
        log.debug("rnnkit: pruning the old builds next to %s failed: %r", current, e)
        return []


def _remove(d: Path, cutoff: float, fcntl, log: logging.Logger) -> bool:
    """:func:`prune` of the one build ``d``: whether it was removed."""
    try:
        with open(d / "rnnkit.flock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.debug("rnnkit: build %s in use, not pruned", d.name)
                return False
            used = (d / USED).stat().st_mtime if (d / USED).exists() else 0.0  # (our open touched d)
            if not _is_at(f, d / "rnnkit.flock") or used >= cutoff or (d / "lock").exists():
                return False  # another prune's, used while we looked, or a builder without our lock
            trash = d.with_name(f".rnnkit-pruned-{d.name}-{os.getpid()}")
            d.rename(trash)  # under the lock: a builder waiting for it will make d anew
        shutil.rmtree(trash, ignore_errors=True)  # (what is left, the next prune removes)
        log.debug("rnnkit: pruned the old build %s", d.name)
        return True
    except OSError as e:  # (a file system without locks lands here too: nothing is removed)
        log.debug("rnnkit: could not prune the build %s: %r", d.name, e)
        return False


def failure(e: BaseException, log: logging.Logger) -> str:
    """What a warning says of the build failure ``e``: its message, or, when longer than
    ``_TAIL + 1`` lines, its first line and its last ``_TAIL`` (where the compiler's error is); the
    whole message goes to ``log`` at DEBUG level. A failed build's message is ninja's whole output,
    and the warning held thousands of lines."""
    text = str(e)
    lines = text.splitlines()
    if len(lines) <= _TAIL + 1:
        return text
    log.debug("rnnkit: the failed build's whole output: %s", text)
    omitted = f"... ({len(lines) - 1 - _TAIL} lines omitted; all at DEBUG level of logger {log.name!r})"
    return "\n".join([lines[0], omitted, *lines[-_TAIL:]])


def _build():
    from torch.utils import cpp_extension

    _ensure_ninja_on_path()
    d = build_dir()  # (made by build_lock: a mkdir here raced a prune of d)
    cflags, ldflags = _flags()
    try:
        with building(d, _LOG):
            cpp_extension.load(
                name="rnnkit_ext",
                sources=[str(f) for f in sorted(_CSRC.glob("*.cpp"))],
                build_directory=str(d),
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                is_python_module=False,
                verbose=False,
            )
            touch_used(d)
    except OSError as e:
        lib = prebuilt(d, "rnnkit_ext", e)
        if lib is None:
            raise
        torch.ops.load_library(str(lib))
    prune(d, _BUILDS, "rnnkit_ext", _LOG)
    return torch.ops.rnnkit_ext


def ops():
    """The extension's op namespace, building it on first call; ``None`` if unavailable."""
    if disabled():
        return None
    if "ops" not in _state:
        with _lock:
            if "ops" not in _state:
                try:
                    _state["ops"] = _build()
                except Exception as e:  # noqa: BLE001 - any build failure means: use the pure path
                    msg = failure(e, _LOG)
                    _LOG.warning("rnnkit: C++ extension unavailable, using pure-PyTorch kernels (%s)", msg)
                    _state["ops"] = None
    return _state["ops"]


def loaded_ops():
    """The op namespace if the extension is already built and loaded in this process, else
    ``None`` (never builds)."""
    return None if disabled() else _state.get("ops")


def available() -> bool:
    """Whether the compiled kernels are (or can be made) available; builds on first call."""
    return ops() is not None

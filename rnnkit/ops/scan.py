"""``linear_scan``: the diagonal linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t``, in parallel.

Every layer of :mod:`rnnkit.parallel` (minGRU, minLSTM, QRNN, LRU) reduces its time loop to
this one op, because their recurrences are linear in the state and elementwise. It is a
``torch.library`` custom op, ``torch.ops.rnnkit.linear_scan``, with an explicit backward that
is itself a reverse linear scan::

    g_t   = ∂L/∂h_t + conj(a_{t+1}) ⊙ g_{t+1}
    ∂b_t  = g_t,   ∂a_t = g_t ⊙ conj(h_{t-1}),   ∂h_0 = conj(a_0) ⊙ g_0

(``conj`` is the identity for real tensors; for complex ones it is torch's convention for
the gradient of a holomorphic function.) Four implementations, one set of numbers:

* ``"ext"`` — a small C++ kernel (:file:`csrc/scan.cpp`, compiled with ``ninja`` at first use
  into ``~/.cache/rnnkit/ext/scan-<torch>-<py>-<hash of source, flags, CPU>``, the root
  overridden by ``$RNNKIT_EXT_DIR``, else ``$TORCH_EXTENSIONS_DIR``, as the fused kernels'
  (:func:`rnnkit.kernels.ext.ext_root`)): the time loop in C++, the inner loop over features
  vectorized, features split over threads. CPU, real and complex.
* ``"loop"`` — the pure-PyTorch fallback: the same loop in Python, one ``mul`` + ``add_`` per
  step, bit-identical to ``"ext"`` for real dtypes. Chosen when the build fails, or forced
  with ``RNNKIT_NO_EXT=1``.
* ``"triton"`` — the CUDA kernel (:mod:`.scan_triton`): one launch, tiles of time steps
  scanned in registers, the carry passed from tile to tile. Real float32/float64 on CUDA
  when Triton is installed (it ships with CUDA builds of torch).
* ``"chunked"`` — a chunked parallel scan in PyTorch for other accelerators and complex
  tensors: Hillis–Steele within chunks of ``CHUNK`` steps, then a scan of the chunk carries
  (recursively), then one fix-up — ``O(log T)`` kernel launches and no Python loop over time.

Numerics: every path only multiplies and adds (no division by cumulative products, no
logs), so any sign of ``b`` is fine and ``|a_t| ≤ 1`` keeps ``|h_t| ≤ Σ|b|`` — no overflow or
NaN at ``T = 100,000``. ``RNNKIT_SCAN_IMPL=ext|loop|chunked|triton`` forces a path (tests use it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from .. import _checks, dispatch
from ..kernels.ext import building, disabled, ext_root, failure, prebuilt, prune, touch_used

log = logging.getLogger(__name__)
CHUNK = 64
_SOURCE = Path(__file__).with_name("csrc") / "scan.cpp"
IMPLS = ("ext", "loop", "chunked", "triton")
_ext_lock = threading.Lock()
_ext_state: dict[str, object] = {}


# -- the compiled kernel -------------------------------------------------------------------
def _cflags() -> list[str]:
    # -ffp-contract=off: no fused multiply-add, so the numbers equal the PyTorch fallback's;
    # -march=native is safe (the kernel is built on the machine that runs it: the build
    # directory is keyed by the CPU) and ~1.3x faster
    native = platform.machine() in ("x86_64", "AMD64") and sys.platform.startswith("linux")
    return ["-O3", "-ffp-contract=off", *(["-march=native"] if native else [])]


def _cpu_identity() -> str:
    """The CPU's instruction-set flags (Linux), which ``-march=native`` compiles for."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


_BUILDS = r"scan-torch[0-9][^/]*-py[0-9]+-[0-9a-f]{12}"  # the names of _build_dir's folders


def _build_dir() -> Path:
    """Cache directory of the build, keyed by torch, Python, the source, the flags and (with
    ``-march=native``) the CPU: a home directory shared by machines of different CPU
    generations must not hand one machine's build to another (illegal instructions), and a
    changed ``scan.cpp`` gets a build of its own, as :func:`rnnkit.kernels.ext.build_dir`; so
    does another checkout (ninja's build file names the source by path: two checkouts sharing
    a directory rebuilt it each time the other loaded)."""
    flags = _cflags()
    key = _SOURCE.read_bytes() + repr(flags).encode() + str(_SOURCE.resolve()).encode()
    if "-march=native" in flags:
        key += _cpu_identity().encode()
    digest = hashlib.sha256(key).hexdigest()[:12]
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return ext_root() / f"scan-torch{torch.__version__.replace('+', '_')}-{py}-{digest}"


def _import_library(lib: Path) -> ModuleType:
    """The Python module that the built library ``lib`` is (as ``cpp_extension.load`` imports it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(lib.stem, lib)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the built library {lib}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_extension() -> ModuleType | None:
    """The compiled kernel, built on first call (quietly; under :func:`~rnnkit.kernels.ext.build_lock`:
    concurrent builds take turns, a killed builder's lock file is cleared; a finished build in a
    read-only cache is loaded as it is: :func:`~rnnkit.kernels.ext.prebuilt`); ``None`` if the build
    fails (logged once) or ``RNNKIT_NO_EXT=1``."""
    if disabled():
        return None
    with _ext_lock:
        if "module" not in _ext_state:
            _ext_state["module"] = None
            try:
                from torch.utils.cpp_extension import load

                build = _build_dir()  # (made by build_lock: a mkdir here raced a prune of it)
                try:
                    with building(build, log):  # a killed builder's lock is no hang, a warning no failure
                        _ext_state["module"] = load(
                            name="rnnkit_scan",
                            sources=[str(_SOURCE)],
                            extra_cflags=_cflags(),
                            build_directory=str(build),
                            verbose=False,
                        )
                        touch_used(build)
                except OSError as e:  # a read-only cache: its finished build, if any, as it is
                    lib = prebuilt(build, "rnnkit_scan", e)
                    if lib is None:
                        raise
                    _ext_state["module"] = _import_library(lib)
                prune(build, _BUILDS, "rnnkit_scan", log)  # this kernel's old builds
            except Exception as e:  # no compiler, no ninja, ...: the fallback gives the same numbers
                msg = failure(e, log)
                log.warning("rnnkit: C++ scan kernel unavailable (%s); using the PyTorch fallback", msg)
    return _ext_state["module"]  # type: ignore[return-value]


def backend(x: Tensor) -> str:
    """The implementation :func:`linear_scan` uses for tensors like ``x``: ``"ext"``,
    ``"loop"``, ``"triton"`` or ``"chunked"`` (see the module docstring). This is the hook for
    :mod:`rnnkit.dispatch`."""
    forced = os.environ.get("RNNKIT_SCAN_IMPL", "")
    if forced:
        if forced not in IMPLS:
            raise ValueError(f"RNNKIT_SCAN_IMPL must be one of {IMPLS}, got {forced!r}")
        if forced == "triton" and not _triton_ok(x):
            raise ValueError("RNNKIT_SCAN_IMPL=triton needs real float32/float64 CUDA tensors and Triton")
        if forced != "ext" or _ext_ok(x):
            return forced
    if x.device.type != "cpu":
        return "triton" if _triton_ok(x) else "chunked"
    return "ext" if _ext_ok(x) else "loop"


def _ext_ok(x: Tensor) -> bool:
    # the compiled kernel: CPU, float32/64 and complex64/128 (half precision, complex32 too,
    # takes the loop: the kernel has no instance for it)
    half = x.dtype in (torch.float16, torch.bfloat16, torch.complex32)
    return x.device.type == "cpu" and not half and load_extension() is not None


def _triton_ok(x: Tensor) -> bool:
    if x.device.type != "cuda" or x.dtype not in (torch.float32, torch.float64):
        return False
    from . import scan_triton

    return scan_triton.available()


def _triton_fwd(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    from . import scan_triton

    return scan_triton.forward(a, b, h0, reverse)


# -- the pure-PyTorch paths (time-major contiguous tensors) ---------------------------------
def _loop_fwd(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    h = torch.empty_like(b)
    prev = h0
    for t in range(b.shape[0] - 1, -1, -1) if reverse else range(b.shape[0]):
        if prev is None:
            h[t].copy_(b[t])
        else:  # two roundings, exactly as the C++ kernel
            torch.mul(a[t], prev, out=h[t])
            h[t].add_(b[t])
        prev = h[t]
    return h


def _combine(a1: Tensor, b1: Tensor, a2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """``(a2, b2) ∘ (a1, b1)``: apply step 1, then step 2."""
    return a2 * a1, torch.addcmul(b2, a2, b1)


def _chunked_fwd(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    if reverse:
        return _chunked_fwd(a.flip(0), b.flip(0), h0, False).flip(0)
    T = b.shape[0]
    if T <= 1:
        return b.clone() if h0 is None else torch.addcmul(b, a, h0.unsqueeze(0))
    C = min(CHUNK, T)
    K = -(-T // C)
    pad = K * C - T
    if pad:  # identity steps (a = 1, b = 0) at the end
        a = torch.cat([a, a.new_ones((pad, *a.shape[1:]))])
        b = torch.cat([b, b.new_zeros((pad, *b.shape[1:]))])
    A, B = a.reshape(K, C, *a.shape[1:]), b.reshape(K, C, *b.shape[1:])
    k = 1
    while k < C:  # Hillis–Steele inclusive scan within every chunk at once
        na, nb = _combine(A[:, :-k], B[:, :-k], A[:, k:], B[:, k:])
        A, B = torch.cat([A[:, :k], na], 1), torch.cat([B[:, :k], nb], 1)
        k *= 2
    # state entering each chunk: a scan over the K chunk totals (recursive, O(log T) levels)
    ends = _chunked_fwd(A[:, -1], B[:, -1], h0, False)
    if h0 is None:
        carry = torch.cat([torch.zeros_like(ends[:1]), ends[:-1]])
    else:
        carry = torch.cat([h0.unsqueeze(0), ends[:-1]])
    h = torch.addcmul(B, A, carry.unsqueeze(1))
    return h.reshape(K * C, *b.shape[1:])[:T]


_FWD = {"loop": _loop_fwd, "chunked": _chunked_fwd, "triton": _triton_fwd}  # all but "ext"


def _shift(x: Tensor, first: Tensor | None, reverse: bool) -> Tensor:
    """``x`` one step later in scan order: out_t = x_{t-1} (x_{t+1} if reverse), ``first``
    (or zeros) where there is none."""
    f = torch.zeros_like(x[:1]) if first is None else first.unsqueeze(0)
    return torch.cat([x[1:], f]) if reverse else torch.cat([f, x[:-1]])


def _py_bwd(grad: Tensor, a: Tensor, h: Tensor, h0: Tensor | None, reverse: bool, impl: str):
    """Backward of the pure-PyTorch paths: a reverse scan, then elementwise products."""
    # conj() resolved: a lazy conjugate view reaches the loop's writes and cat unconjugated
    # when the op runs from a torch.compile / AOT graph (wrong gradients there, not in eager)
    ac = a.conj().resolve_conj() if a.is_complex() else a
    fwd = _FWD[impl]
    # g_t = grad_t + conj(a_next) g_next: a scan in the opposite order with a shifted by one
    a_next = _shift(ac, None, not reverse)
    g = fwd(a_next, grad, None, not reverse)
    hc = h.conj().resolve_conj() if h.is_complex() else h
    h0c = None if h0 is None else (h0.conj().resolve_conj() if h0.is_complex() else h0)
    h_prev = _shift(hc, h0c, reverse)
    da = g * h_prev
    first = -1 if reverse else 0
    dh0 = ac[first] * g[first]
    return da, g, dh0


def _forward(a: Tensor, b: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
    if b.shape[0] == 0:
        return torch.empty_like(b)
    impl = dispatch.select_scan(b)
    if impl == "ext":
        return load_extension().forward(a, b, h0, reverse)  # type: ignore[union-attr]
    return _FWD[impl](a, b, h0, reverse)


def _backward(grad: Tensor, a: Tensor, h: Tensor, h0: Tensor | None, reverse: bool):
    if a.shape[0] == 0:
        return torch.zeros_like(a), torch.zeros_like(a), a.new_zeros(a.shape[1:])
    impl = dispatch.select_scan(a)
    if impl == "ext":
        da, db, dh0 = load_extension().backward(grad, a, h, h0, reverse)  # type: ignore[union-attr]
        return da, db, dh0.view(a.shape[1:])
    return _py_bwd(grad, a, h, h0, reverse, impl)


# -- the custom ops --------------------------------------------------------------------------
def _front(x: Tensor, dim: int) -> Tensor:
    return x.movedim(dim, 0).contiguous()


@torch.library.custom_op("rnnkit::linear_scan", mutates_args=())
def _scan_op(a: Tensor, b: Tensor, h0: Tensor | None, dim: int, reverse: bool) -> Tensor:
    h0c = None if h0 is None else h0.contiguous()
    return _forward(_front(a, dim), _front(b, dim), h0c, reverse).movedim(0, dim)


@_scan_op.register_fake
def _(a, b, h0, dim, reverse):
    return b.new_empty(b.movedim(dim, 0).shape).movedim(0, dim)


@torch.library.custom_op("rnnkit::linear_scan_backward", mutates_args=())
def _scan_bwd_op(
    grad: Tensor, a: Tensor, h: Tensor, h0: Tensor | None, dim: int, reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    h0c = None if h0 is None else h0.contiguous()
    da, db, dh0 = _backward(_front(grad, dim), _front(a, dim), _front(h, dim), h0c, reverse)
    return da.movedim(0, dim), db.movedim(0, dim), dh0


@_scan_bwd_op.register_fake
def _(grad, a, h, h0, dim, reverse):
    shape = a.movedim(dim, 0).shape
    return a.new_empty(shape).movedim(0, dim), a.new_empty(shape).movedim(0, dim), a.new_empty(shape[1:])


def _setup_context(ctx, inputs, output) -> None:
    a, _, h0, dim, reverse = inputs
    ctx.save_for_backward(a, output, h0)
    ctx.dim, ctx.reverse = dim, reverse


def _differentiable_backward(grad: Tensor, a: Tensor, h: Tensor, h0: Tensor | None, dim: int, reverse: bool):
    """The backward formula in ops autograd records, the reverse scan being this op again: what
    a gradient taken with ``create_graph=True`` runs (``linear_scan_backward`` has no derivative),
    so the op differentiates any number of times."""
    grad, a, h = grad.movedim(dim, 0), a.movedim(dim, 0), h.movedim(dim, 0)
    ac = a.conj() if a.is_complex() else a
    g = torch.ops.rnnkit.linear_scan(_shift(ac, None, not reverse), grad, None, 0, not reverse)
    hc = h.conj() if h.is_complex() else h
    h_prev = _shift(hc, None if h0 is None else (h0.conj() if h0.is_complex() else h0), reverse)
    first = -1 if reverse else 0
    return (g * h_prev).movedim(0, dim), g.movedim(0, dim), ac[first] * g[first]


def _backward_formula(ctx, grad: Tensor):
    a, h, h0 = ctx.saved_tensors
    if torch.is_grad_enabled() and a.shape[ctx.dim] > 0:  # create_graph=True
        da, db, dh0 = _differentiable_backward(grad, a, h, h0, ctx.dim, ctx.reverse)
    else:
        da, db, dh0 = torch.ops.rnnkit.linear_scan_backward(grad, a, h, h0, ctx.dim, ctx.reverse)
    return da, db, (dh0 if h0 is not None else None), None, None


_scan_op.register_autograd(_backward_formula, setup_context=_setup_context)


# -- the public function ---------------------------------------------------------------------
def linear_scan(
    a: Tensor, b: Tensor, h0: Tensor | None = None, *, dim: int = 0, reverse: bool = False
) -> Tensor:
    """``h_t = a_t ⊙ h_{t-1} + b_t`` along ``dim`` (``h_{-1} = h0``, zeros when omitted).

    Args:
        a, b: tensors of one shape, dtype (real or complex) and device; ``dim`` is time.
        h0: initial state, the shape of ``a`` without ``dim``.
        reverse: run from the last step to the first (``h_t = a_t ⊙ h_{t+1} + b_t``,
            ``h_T = h0``), as the backward direction of a bidirectional layer does.
    Returns:
        ``h``, shaped like ``b``. Differentiable in ``a``, ``b`` and ``h0`` (any number of
        times: under ``create_graph=True`` the backward is this op again, in recorded ops).
        Inside ``torch.func`` transforms and forward-mode AD it runs the chunked scan's plain
        ops, which they see through (the custom op's autograd they cannot).
    """
    for name, t in (("a", a), ("b", b)):
        _checks.check_tensor(t, name)
    if a.shape != b.shape:
        _checks.fail(f"a and b must have one shape, got a {tuple(a.shape)} and b {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        _checks.fail(
            f"a and b must share dtype and device, got a {a.dtype}/{a.device}, b {b.dtype}/{b.device}"
        )
    if not (b.is_floating_point() or b.is_complex()):
        _checks.fail(f"linear_scan needs floating-point or complex tensors, got {b.dtype}")
    # the op's schema would take reverse=None as False and dim=True as 1, silently
    if not isinstance(reverse, bool):
        _checks.fail(f"reverse must be a bool, got {reverse!r}")
    if not _checks.is_int(dim):
        _checks.fail(f"dim must be an int, got {dim!r}")
    if b.dim() == 0:
        _checks.fail("linear_scan needs a and b at least 1-D (a time dimension), got 0-D tensors")
    if not -b.dim() <= dim < b.dim():
        _checks.fail(f"dim must lie in [{-b.dim()}, {b.dim() - 1}] for a {b.dim()}-D input, got {dim}")
    dim = int(dim) % b.dim()
    if h0 is not None:
        _checks.check_tensor(h0, "h0")
        want = b.shape[:dim] + b.shape[dim + 1 :]
        if h0.shape != want:
            _checks.fail(
                f"h0 must have shape {tuple(want)} (b's shape without dim {dim}), got {tuple(h0.shape)}"
            )
        if h0.dtype != b.dtype or h0.device != b.device:
            _checks.fail(f"h0 must be {b.dtype} on {b.device}, got {h0.dtype} on {h0.device}")
    if dispatch._plain_ops_needed():
        # torch.func transforms and forward-mode AD cannot see through the custom op's autograd
        # (jacrev and jvp raised, vmap looped over the samples): the chunked scan's plain ops
        return _chunked_fwd(a.movedim(dim, 0), b.movedim(dim, 0), h0, reverse).movedim(0, dim)
    return torch.ops.rnnkit.linear_scan(a, b, h0, dim, reverse)

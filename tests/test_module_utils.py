"""What a PyTorch user does to a recurrent module beyond calling it — torch.nn.utils'
parametrizations and pruning, replaced parameters, ``reset_parameters`` — against torch.nn
doing the same to its own layer."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, prune

import rnnkit
from rnnkit.kernels.stream import Stream

FAMILIES = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]


def _old_weight_norm(m: nn.Module, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, still in use
        nn.utils.weight_norm(m, name)


CHANGES = {  # name -> f(module, attribute): what the user does to one weight
    "parametrize-weight_norm": lambda m, a: parametrizations.weight_norm(m, a),
    "parametrize-orthogonal": lambda m, a: parametrizations.orthogonal(m, a),
    "prune": lambda m, a: prune.l1_unstructured(m, a, amount=0.5),
    "old-weight_norm": _old_weight_norm,
    "plain-tensor": lambda m, a: setattr(m, a, m._parameters.pop(a).detach() * 0.5),
    "raw-parameter": lambda m, a: (  # torchnlp's WeightDrop: <name>_raw, dropped into <name> per call
        m.register_parameter(a + "_raw", nn.Parameter(m._parameters.pop(a).detach())),
        setattr(m, a, getattr(m, a + "_raw").detach() * 0.5),
    ),
}


def _pair(family: str):
    torch.manual_seed(0)
    theirs, ours = getattr(nn, family)(3, 4), getattr(rnnkit, family)(3, 4)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("family", FAMILIES)
def test_reset_parameters_after_a_weight_change_as_torch_nn(family, change):
    # torch.nn re-draws every parameter in parameters() order: a parametrized weight's originals,
    # a pruned weight's _orig; a plain tensor (not a parameter) it leaves alone
    theirs, ours = _pair(family)
    suffix = "" if family.endswith("Cell") else "_l0"
    for m in (theirs, ours):
        CHANGES[change](m, "weight_hh" + suffix)
        CHANGES[change](m, "weight_ih" + suffix) if change == "prune" else None
    x = torch.randn(5, 2, 3)[0 if family.endswith("Cell") else slice(None)]
    for m in (theirs, ours):
        torch.manual_seed(1)
        m.reset_parameters()
    want, got = dict(theirs.named_parameters()), dict(ours.named_parameters())
    assert list(got) == list(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    out_t, out_o = theirs(x), ours(x)
    out_t, out_o = (out_t[0], out_o[0]) if isinstance(out_t, tuple) else (out_t, out_o)
    torch.testing.assert_close(out_o, out_t, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_weight_deleted_until_each_call_as_torchnlp_weight_drop_leaves_it(family):
    # torchnlp's WeightDrop deletes the weight, registers <name>_raw and sets the weight in its own
    # forward only: .to(...) in between (flatten_parameters), _flat_weights and reset_parameters
    # raised "'LSTM' object has no attribute 'weight_hh_l0'" where torch.nn's work
    theirs, ours = _pair(family)
    name = "weight_hh" + ("" if family.endswith("Cell") else "_l0")
    for m in (theirs, ours):
        m.register_parameter(name + "_raw", nn.Parameter(m._parameters.pop(name).detach()))
        m.double()  # (as model.to(device) does)
        torch.manual_seed(1)
        m.reset_parameters()
    if not family.endswith("Cell"):
        assert [w is None for w in ours._flat_weights] == [w is None for w in theirs._flat_weights]
    for (n, want), got in zip(theirs.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=n)
    x = torch.randn(5, 2, 3)[0 if family.endswith("Cell") else slice(None)]
    for m in (theirs, ours):
        setattr(m, name, getattr(m, name + "_raw") * 0.5)  # what the wrapper's forward does
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", ["auto", "torch", "loop", "fused"])
@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
def test_a_tensor_set_over_a_registered_weight_is_read_as_torch_nn_reads_it(family, impl):
    # object.__setattr__(m, name, t) puts t in the instance dict over the registered parameter:
    # attribute lookup (torch.nn, rnnkit's torch path) reads t; the loop and fused paths read
    # _parameters and ignored t, silently
    torch.manual_seed(0)
    theirs, ours = getattr(nn, family)(3, 4, 2), getattr(rnnkit, family)(3, 4, 2, impl=impl)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 2, 3)
    for m in (theirs, ours):
        object.__setattr__(m, "weight_hh_l1", m.weight_hh_l1.detach() * 0.5)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)


def test_reset_parameters_draws_a_tied_weight_once_as_torch_nn():
    theirs, ours = (lib.LSTM(3, 3, bidirectional=True) for lib in (nn, rnnkit))
    for m in (theirs, ours):
        m.weight_hh_l0_reverse = m.weight_hh_l0
        torch.manual_seed(1)
        m.reset_parameters()
    for (name, want), got in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize(
    "name, shape",
    [
        ("weight_hh_l0", (8, 4)),
        ("weight_hh_l0", (16, 3)),
        ("weight_ih_l0", (16, 2)),
        ("weight_ih_l0", (8, 3)),
    ],
)
def test_replaced_weight_of_another_shape_is_refused_on_torchs_cpu_lstm(name, shape, packed, dtype):
    # torch's CPU LSTM kernel (oneDNN) reads its weights by the layer's sizes, unchecked: a smaller
    # replacement was read out of bounds, silently (float64 fails in a matmul, the fused path checks)
    m = rnnkit.LSTM(3, 4, impl="torch", dtype=dtype)
    setattr(m, name, nn.Parameter(torch.randn(shape, dtype=dtype)))
    x = torch.randn(5, 2, 3, dtype=dtype)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 3])
    expected = re.escape(str(tuple(getattr(rnnkit.LSTM(3, 4), name).shape)))
    with pytest.raises(rnnkit.RecurrentInputError, match=rf"{name}.*{expected}.*{re.escape(str(shape))}"):
        m(x)


@pytest.mark.parametrize("impl", ["loop", "fused"])
@pytest.mark.parametrize(
    "family, options, name",
    [
        ("GRU", {"variant": "mut1"}, "weight_hh_l0"),
        ("GRU", {"variant": "mut1"}, "bias_hh_l1"),
        ("GRU", {"variant": "mut2"}, "weight_ih_l0"),
        ("GRU", {"variant": "mut3"}, "weight_ih_l1"),
        ("GRU", {"reset_after": False}, "weight_hh_l1"),
        ("LSTM", {"peephole": True}, "weight_peephole_l0"),
        ("LSTM", {"full_gate_recurrence": True}, "weight_gg_l1"),
    ],
)
def test_replaced_weight_with_extra_rows_is_refused_on_every_path(family, options, name, impl):
    # cells that read a weight by row blocks (the GRU variants, peepholes, FGR) ignored the extra
    # rows of a replacement one row too tall: no error, numbers from a weight that is not the layer's
    m = getattr(rnnkit, family)(3, 4, 2, impl=impl, **options)
    want = tuple(getattr(m, name).shape)
    got = (want[0] + 1, *want[1:])
    setattr(m, name, nn.Parameter(torch.randn(got)))
    x = torch.randn(5, 2, 3)
    expected = rf"{name} must have shape {re.escape(str(want))}, got {re.escape(str(got))}"
    for mode in (m.train, m.eval):
        mode()
        with pytest.raises(rnnkit.RecurrentInputError, match=expected):
            m(x)
    if impl == "loop":  # stepping it (its layer_params) as well
        with pytest.raises(rnnkit.RecurrentInputError, match=expected):
            Stream(m).step(x[0])


@pytest.mark.parametrize("family", ["GRU", "RNN"])
def test_replaced_weight_of_another_shape_is_named_on_torchs_gru_and_rnn(family):
    m = getattr(rnnkit, family)(3, 4, impl="torch")
    m.weight_hh_l0 = nn.Parameter(torch.randn(m.weight_hh_l0.shape[0] + 1, 4))
    with pytest.raises(rnnkit.RecurrentInputError, match=r"weight_hh_l0 must have shape"):
        m(torch.randn(5, 2, 3))


@pytest.mark.parametrize("impl", ["auto", "torch", "fused", "loop"])
@pytest.mark.parametrize(
    "family, options, name",
    [("LSTM", {}, "bias_hh_l0"), ("GRU", {}, "weight_hh_l1"), ("RNN", {}, "bias_ih_l1_reverse"),
     ("LSTM", {"peephole": True}, "weight_peephole_l0"), ("GRU", {"norm": "layer"}, "weight_ln_hh_l0")],
)  # fmt: skip
def test_replaced_weight_of_another_dtype_is_refused_as_torch_nn(family, options, name, impl):
    # a float32 weight in a float64 layer ran silently on the loop and the fused path (its values
    # converted), where torch.nn's LSTM/GRU/RNN fail (in a matmul's words: this names the weight)
    if options and impl == "torch":
        pytest.skip("impl='torch' needs a torch.nn configuration")
    m = getattr(rnnkit, family)(3, 4, 2, bidirectional=True, impl=impl, **options)
    setattr(m, name, nn.Parameter(getattr(m, name).detach().float()))
    x = torch.randn(5, 2, 3)
    with pytest.raises(
        rnnkit.RecurrentInputError, match=rf"{name} has dtype torch.float32 but the parameters are"
    ):
        m(x)
    if not options:  # torch.nn fails too
        ref = getattr(nn, family)(3, 4, 2, bidirectional=True)
        setattr(ref, name, nn.Parameter(getattr(ref, name).detach().float()))
        with pytest.raises(RuntimeError):
            ref(x)


@pytest.mark.parametrize("impl", ["auto", "torch", "fused", "loop"])
@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
def test_replaced_weight_is_refused_for_a_batch_of_no_sequences(family, impl):
    # a dense batch of zero sequences returned torch.nn's empty results before any weight was read,
    # so a weight of another shape or dtype passed silently there, where torch.nn fails (in a
    # matmul's words) and a batch of sequences is refused; the same error now, whatever the batch
    x = torch.randn(5, 0, 3)
    for name, make in (
        ("weight_hh_l1_reverse", lambda w: torch.randn(w.shape[0], w.shape[1] + 1)),
        ("bias_ih_l0", lambda w: w.detach().float()),
    ):
        m = getattr(rnnkit, family)(3, 4, 2, bidirectional=True, impl=impl)
        setattr(m, name, nn.Parameter(make(getattr(m, name))))
        ref = getattr(nn, family)(3, 4, 2, bidirectional=True)
        setattr(ref, name, nn.Parameter(make(getattr(ref, name))))
        with pytest.raises(RuntimeError):
            ref(x)
        with pytest.raises(rnnkit.RecurrentInputError, match=rf"{name} (must have shape|has dtype)"):
            m(x)


@pytest.mark.parametrize(
    "family, options, name",
    [("LSTMCell", {}, "bias_hh"), ("GRUCell", {}, "weight_hh"), ("LSTMCell", {"norm": "layer"}, "bias_hh"),
     ("LSTMCell", {"peephole": True}, "weight_peephole")],
)  # fmt: skip
def test_cell_replaced_weight_of_another_dtype_is_refused(family, options, name):
    # the cells with options ran it silently, converted; torch.nn's cells fail in a matmul's words
    m = getattr(rnnkit, family)(3, 4, **options)
    setattr(m, name, nn.Parameter(getattr(m, name).detach().float()))
    with pytest.raises(
        rnnkit.RecurrentInputError, match=rf"{name} has dtype torch.float32 but the parameters are"
    ):
        m(torch.randn(2, 3))


def test_cell_step_reads_its_spec_shapes_once(monkeypatch):
    # the per-step shape check built the cell's specs at every step (~2 µs of a ~22 µs step); they
    # are fixed at construction, kept after the first step as the layers keep theirs
    m = rnnkit.LSTMCell(3, 4)
    m(torch.randn(2, 3))
    calls = []
    specs = m.cell.param_specs
    monkeypatch.setattr(m.cell, "param_specs", lambda: calls.append(1) or specs())
    m(torch.randn(2, 3))
    assert not calls
    m.weight_hh = nn.Parameter(torch.randn(17, 4))  # still checked, against the kept shapes
    with pytest.raises(rnnkit.RecurrentInputError, match=r"weight_hh must have shape \(16, 4\)"):
        m(torch.randn(2, 3))


@pytest.mark.parametrize(
    "family, options, name",
    [("GRUCell", {"variant": "mut1"}, "weight_hh"), ("GRUCell", {"variant": "mut1"}, "weight_ih"),
     ("LSTMCell", {"peephole": True}, "weight_peephole")],
)  # fmt: skip
def test_cell_replaced_weight_with_extra_rows_is_refused(family, options, name):
    m = getattr(rnnkit, family)(3, 4, **options)
    want = tuple(getattr(m, name).shape)
    got = (want[0] + 1, *want[1:])
    setattr(m, name, nn.Parameter(torch.randn(got)))
    expected = rf"{name} must have shape {re.escape(str(want))}, got {re.escape(str(got))}"
    with pytest.raises(rnnkit.RecurrentInputError, match=expected):
        m(torch.randn(2, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", ["auto", "fused"])
@pytest.mark.parametrize("family, packed", [("LSTM", True), ("GRU", False), ("GRU", True), ("RNN", False)])
def test_batched_backward_as_torch_nn(family, packed, impl, dtype):
    # torch.autograd.grad(..., is_grads_batched=True), which jacobian/hessian(vectorize=True) call, runs
    # backward under vmap: the fused kernels (impl='auto' on CPU float32 GRU/RNN and packed LSTMs)
    # failed there ('Batching rule not implemented for rnnkit_ext::backward'); torch.nn's work
    torch.manual_seed(0)
    theirs = getattr(nn, family)(3, 4, dtype=dtype)
    ours = getattr(rnnkit, family)(3, 4, dtype=dtype, impl=impl)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 2, 3, dtype=dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}

    def output(m: nn.Module) -> torch.Tensor:  # (T, B, H), or the packed (8, H)
        if packed:
            return m(torch.nn.utils.rnn.pack_padded_sequence(x, [5, 3]))[0].data
        return m(x)[0]

    def final_h(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = m(x)[1]
        return h[0] if isinstance(h, tuple) else h

    go = torch.randn(3, *output(theirs).shape, dtype=dtype)
    for m in (theirs, ours):
        m.grads = torch.autograd.grad(output(m), list(m.parameters()), go, is_grads_batched=True)
    for w, g in zip(theirs.grads, ours.grads):
        torch.testing.assert_close(g, w, **tol)
    want, got = (
        torch.autograd.functional.jacobian(lambda x, m=m: final_h(m, x), x, vectorize=True)
        for m in (theirs, ours)
    )
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize(
    "family, kw",
    [("LSTM", {"norm": "layer"}), ("LSTM", {"coupled_gates": True}), ("GRU", {"variant": "mut1"})],
)
def test_batched_backward_through_option_kernels_names_the_way_out(family, kw):
    """The compiled kernels' ops have no batching rule: the error says impl='loop'. (Without the
    extension the pure-PyTorch kernels of some options batch, and there is nothing to refuse.)"""
    from tests.fused.test_fused_kernels import require_ext

    require_ext()
    m = getattr(rnnkit, family)(3, 4, **kw)
    x = torch.randn(5, 2, 3)
    with pytest.raises(RuntimeError, match="no batching rule.*impl='loop'"):
        torch.autograd.functional.jacobian(lambda x: m(x)[0], x, vectorize=True)
    m.impl = "loop"
    assert torch.autograd.functional.jacobian(lambda x: m(x)[0], x, vectorize=True).shape == (
        5,
        2,
        4,
        5,
        2,
        3,
    )


class _Counted(nn.Module):
    """An identity parametrization counting its evaluations."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return w


@pytest.mark.parametrize("impl", ["auto", "fused", "loop"])
@pytest.mark.parametrize("lengths", [False, True])
def test_a_parametrized_weight_is_computed_once_per_call(impl, lengths):
    """The layer's dtype/device reference (``_ref``) read ``weight_ih_l0`` itself: a parametrized
    one was computed once more per check (twice more with ``lengths=``) — an orthogonal map's
    matrix exponential each time, and in training one more power-iteration step of a
    spectral norm per call. It reads the tensor that holds it now."""
    from torch.nn.utils import parametrize

    m = rnnkit.LSTM(3, 4, impl=impl)
    counted = _Counted()
    parametrize.register_parametrization(m, "weight_ih_l0", counted)
    counted.calls = 0  # (registering evaluates it once)
    x = torch.randn(5, 2, 3)
    m(x, lengths=torch.tensor([5, 3])) if lengths else m(x)
    assert counted.calls == 1


@pytest.mark.parametrize("family", ["LSTMCell", "GRUCell", "RNNCell"])
def test_a_parametrized_weight_of_a_cell_is_computed_once_per_step(family):
    """The cells read ``weight_ih`` for their dtype/device checks (and ``sample_masks``) besides
    their step: a parametrized one was computed twice per step, where torch.nn's cells compute it
    once (an extra spectral-norm power step per call in training: other numbers than torch.nn's)."""
    from torch.nn.utils import parametrize

    m = getattr(rnnkit, family)(3, 4, **({"weight_drop": 0.5} if family == "GRUCell" else {}))
    counted = _Counted()
    parametrize.register_parametrization(m, "weight_ih", counted)
    counted.calls = 0
    x = torch.randn(2, 3)
    masks = m.sample_masks(2) if family == "GRUCell" else None
    assert counted.calls == 0
    h = m(x, masks=masks) if masks is not None else m(x)
    m(x, h, masks=masks) if masks is not None else m(x, h)
    assert counted.calls == 2


def test_a_cells_own_reset_parameters_is_kept():
    """A cell of the generic protocol may override ``Cell.reset_parameters`` (as the LSTM's did for
    its forget bias): the layers' and StepCell's reset, drawing each parameter where it is held,
    skipped it, silently: the cell's initialization was lost."""
    from rnnkit.cells import GRUCellMath
    from rnnkit.layers import RecurrentStack
    from rnnkit.modules import StepCell

    class OrthogonalGRU(GRUCellMath):
        def reset_parameters(self, params):
            super().reset_parameters(params)
            nn.init.orthogonal_(params["weight_hh"].data[: self.hidden_size])  # the reset gate's block

    torch.manual_seed(0)
    stack = RecurrentStack(lambda n: OrthogonalGRU(n, 4), 3, 4, num_layers=2)
    for m in (stack, StepCell(OrthogonalGRU(3, 4))):
        for name, w in m.named_parameters():
            if name.startswith("weight_hh"):
                q = w[:4]
                torch.testing.assert_close(q @ q.T, torch.eye(4), msg=name)


@pytest.mark.parametrize("change", ["parametrize-weight_norm", "old-weight_norm"])
@pytest.mark.parametrize("family", ["LSTM", "LSTMCell"])
def test_the_forget_bias_reaches_a_weight_normed_bias(family, change):
    """The forget-gate bias was added to ``getattr(module, "bias_ih")``: for a bias held by weight
    norm's magnitude and direction a computed tensor, so it was lost. It is now set through the
    weight norm; the draws are torch.nn's (those of ``forget_bias=0``)."""
    attr = "bias_ih" if family.endswith("Cell") else "bias_ih_l0"
    x = torch.randn(5, 2, 3)[0 if family.endswith("Cell") else slice(None)]
    got = {}
    for fb in (0.0, 1.0):
        m = getattr(rnnkit, family)(3, 4, forget_bias=fb)
        CHANGES[change](m, attr)
        torch.manual_seed(1)
        m.reset_parameters()
        m(x)  # the old weight_norm computes the bias before each forward
        got[fb] = getattr(m, attr).detach()
    want = got[0.0] + torch.tensor([0.0, 1.0, 0.0, 0.0]).repeat_interleave(4)  # gates i, f, g, o
    torch.testing.assert_close(got[1.0], want, rtol=0, atol=1e-12)


def test_a_module_pickled_with_an_earlier_releases_shape_cache_still_runs():
    """The fourteenth session's release kept a list of torch's weight shapes in a module's
    ``__dict__["_torch_weight_shapes"]``, which ``torch.save(model)`` pickles: the cache of the
    same check by name must not read it."""
    import pickle

    m = rnnkit.LSTM(3, 4)
    m.__dict__["_torch_weight_shapes"] = [(16, 3), (16, 4), (16,), (16,)]
    m2 = pickle.loads(pickle.dumps(m))
    x = torch.randn(2, 1, 3)
    torch.testing.assert_close(m2(x)[0], m(x)[0])
    m2.weight_hh_l0 = nn.Parameter(torch.randn(17, 4))
    with pytest.raises(ValueError, match=r"weight_hh_l0 must have shape \(16, 4\), got \(17, 4\)"):
        m2(x)


def test_integer_input_is_not_told_to_convert_the_module_to_an_integer_dtype():
    """Token ids fed to a layer: the error said "or the module with .to(torch.int64)", no advice
    (an integer module cannot run); it names the float conversion alone. A float input of
    another dtype keeps both conversions."""
    m = rnnkit.LSTM(3, 4)
    with pytest.raises(rnnkit.RecurrentInputError) as e:
        m(torch.zeros(5, 2, 3, dtype=torch.int64))
    assert str(e.value).endswith("convert it with .to(torch.float64)"), str(e.value)
    with pytest.raises(rnnkit.RecurrentInputError, match=r"or the module with .to\(torch.float32\)"):
        m(torch.zeros(5, 2, 3, dtype=torch.float32))
    from rnnkit.kernels.stream import Stream

    with pytest.raises(ValueError) as e:
        Stream(m).step(torch.zeros(2, 3, dtype=torch.int64))
    assert "module" not in str(e.value), str(e.value)

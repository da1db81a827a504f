"""ONNX export (``torch.onnx.export``, both exporters) and ``torch.jit.trace``, run back with
onnxruntime.

Under export ``impl="auto"`` takes torch's kernels for standard configurations (they become
ONNX's LSTM/GRU/RNN operators: any sequence length and batch with the TorchScript exporter's
``dynamic_axes``) and the reference loop for every other option (plain ops, unrolled over the
traced length), so the exported model computes what the layer computes in evaluation. The
oracles: torch.nn's outputs (standard configurations) and rnnkit's own eager outputs.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch

import rnnkit

pytest.importorskip("onnxscript")  # the default (dynamo) exporter needs it
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# the exporters' own chatter: the TorchScript exporter's deprecation notice, tracer notes on
# Python values that become constants (the unrolled loop's length), onnxscript's notes
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning",
                                        "ignore::UserWarning", "ignore::FutureWarning")  # fmt: skip

STANDARD = [
    ("LSTM", {}),
    ("GRU", {}),
    ("RNN", {"nonlinearity": "relu"}),
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("GRU", {"num_layers": 2, "batch_first": True}),
]
OPTIONS = [
    ("LSTM", {"proj_size": 2}),
    ("LSTM", {"norm": "layer"}),
    ("LSTM", {"norm": "batch", "max_len": 4}),
    ("LSTM", {"peephole": True, "num_layers": 2, "bidirectional": True}),
    ("LSTM", {"zoneout": (0.2, 0.1), "recurrent_dropout": 0.2, "weight_drop": 0.3}),
    ("LSTM", {"coupled_gates": True, "forget_bias": 1.0}),
    ("GRU", {"variant": "mut1"}),
    ("GRU", {"reset_after": False}),
    ("GRU", {"norm": "layer", "bidirectional": True}),
    ("RNN", {"norm": "layer"}),
]


def _randn(*shape):
    return torch.randn(*shape, dtype=torch.float32)


def _layer(name, kw):
    torch.manual_seed(0)
    m = getattr(rnnkit, name)(3, 4, dtype=torch.float32, **kw)
    for b in m.buffers():  # batch norm: running statistics that are not the defaults
        b.uniform_(0.5, 1.5)
    return m.eval()


def _export(m, x, dynamo, dims=None):
    """The ONNX model's bytes; the TorchScript exporter with length and batch dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(m, (x,), dynamo=True, verbose=False).model_proto.SerializeToString()
        f = io.BytesIO()
        dims = dims or ({0: "B", 1: "T"} if m.batch_first else {0: "T", 1: "B"})
        torch.onnx.export(m, (x,), f, dynamo=False, input_names=["x"], dynamic_axes={"x": dims})
        return f.getvalue()


def _run(model: bytes, x):
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(a) for a in sess.run(None, {sess.get_inputs()[0].name: x.numpy()})]


def _eager(m, x):
    with torch.no_grad():
        out, h = m(x)
    return [out, *(h if isinstance(h, tuple) else (h,))]


def _close(got, want):
    assert len(got) == len(want)
    for u, v in zip(got, want, strict=True):
        torch.testing.assert_close(u, v, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize(("name", "kw"), STANDARD)
def test_standard_layers_export_like_torch(name, kw, dynamo):
    """The exported model's outputs and final states are torch.nn's; from the TorchScript
    exporter also for another length and batch (ONNX's recurrent operators)."""
    m = _layer(name, kw)
    ref = getattr(torch.nn, name)(3, 4, dtype=torch.float32, **kw).eval()
    ref.load_state_dict(m.state_dict())
    x = _randn(2, 5, 3) if kw.get("batch_first") else _randn(5, 2, 3)
    model = _export(m, x, dynamo)
    _close(_run(model, x), _eager(ref, x))
    if not dynamo:
        other = _randn(3, 9, 3) if kw.get("batch_first") else _randn(9, 3, 3)
        _close(_run(model, other), _eager(ref, other))


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize(("name", "kw"), OPTIONS)
def test_options_export_the_reference_loop(name, kw, dynamo):
    """Options ONNX has no operator for export as the unrolled loop: the model computes the
    layer's evaluation outputs and states at the traced length (TorchScript exporter: any
    batch)."""
    m = _layer(name, kw)
    x = _randn(5, 2, 3)
    model = _export(m, x, dynamo)
    _close(_run(model, x), _eager(m, x))
    if not dynamo:
        other = _randn(5, 3, 3)
        _close(_run(model, other), _eager(m, other))


def _every_option():
    from .fused.test_fused_property import CELL_OPTIONS  # every cell option of the fused path

    names = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
    return [(names[f], {**o, **layout}) for f, opts in CELL_OPTIONS.items() for o in opts
            for layout in ({}, {"num_layers": 2, "bidirectional": True})]  # fmt: skip


@pytest.mark.parametrize(("name", "kw"), _every_option())
def test_every_cell_option_exports(name, kw):
    """The whole option matrix (TorchScript exporter, the faster one): evaluation outputs and
    states of the layer, at the traced length."""
    m = _layer(name, kw)
    x = _randn(5, 2, 3)
    _close(_run(_export(m, x, False), x), _eager(m, x))


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize(("name", "kw"), [("GRU", {}), ("LSTM", {"norm": "layer"})])
def test_forced_fused_exports_as_auto(name, kw, dynamo):
    """impl="fused" exported the fused ops, which ONNX cannot translate (both exporters failed):
    it exports as impl="auto" does."""
    m = _layer(name, {"impl": "fused", **kw})
    x = _randn(5, 2, 3)
    _close(_run(_export(m, x, dynamo), x), _eager(m, x))


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_jit_trace_records_torch_ops(name):
    """A traced standard layer holds torch's own RNN op (portable TorchScript that loads without
    rnnkit's extension, though CPU float32 GRU/RNN run rnnkit's fused kernels eagerly)."""
    m = _layer(name, {})
    x = _randn(5, 2, 3)
    traced = torch.jit.trace(m, (x,))
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert {"LSTM": "aten::lstm", "GRU": "aten::gru", "RNN": "aten::rnn_tanh"}[name] in kinds
    assert not any(k.startswith("rnnkit") for k in kinds), kinds
    _close(list(traced(x)[:1]), _eager(m, x)[:1])


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize(("name", "kw"), [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}),
                                          ("LSTMCell", {"norm": "layer", "peephole": True})])  # fmt: skip
def test_cells_export(name, kw, dynamo):
    """Single-step cells export too; standard ones give torch.nn's cell's numbers."""
    torch.manual_seed(0)
    m = getattr(rnnkit, name)(3, 4, dtype=torch.float32, **kw).eval()
    x = _randn(2, 3)
    model = _export(m, x, dynamo, dims={0: "B"})
    with torch.no_grad():
        want = m(x)
        if not kw:
            ref = getattr(torch.nn, name)(3, 4, dtype=torch.float32)
            ref.load_state_dict(m.state_dict())
            torch.testing.assert_close(want, ref(x))
    _close(_run(model, x), list(want) if isinstance(want, tuple) else [want])

"""rnnkit.cuda_graphed where no GPU is needed: eager fallback, checkpoints, arguments.

The graphs themselves are tested on a GPU in tests/test_cuda.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN])
def test_cpu_calls_run_the_layer_itself(cls):
    torch.manual_seed(0)
    layer = cls(3, 4, num_layers=2)
    g = rnnkit.cuda_graphed(layer)
    x = torch.randn(5, 2, 3)
    out, state = g(x)
    ref_out, ref_state = layer(x)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for a, b in zip(
        state if isinstance(state, tuple) else (state,),
        ref_state if isinstance(ref_state, tuple) else (ref_state,),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    packed = pack_padded_sequence(x, torch.tensor([5, 3]))
    torch.testing.assert_close(g(packed)[0].data, layer(packed)[0].data, rtol=0, atol=0)
    assert not g._graphs  # nothing captured off the GPU


def test_checkpoints_have_the_layers_own_keys():
    """A wrapped layer saves and loads the same keys as the bare layer, also nested."""
    torch.manual_seed(0)
    bare = nn.Sequential(rnnkit.LSTM(3, 4, peephole=True))
    wrapped = nn.Sequential(rnnkit.cuda_graphed(rnnkit.LSTM(3, 4, peephole=True)))
    assert list(wrapped.state_dict()) == list(bare.state_dict())
    wrapped.load_state_dict(bare.state_dict())  # strict: no missing or unexpected keys
    for a, b in zip(wrapped.parameters(), bare.parameters(), strict=True):
        assert torch.equal(a, b)
    bare.load_state_dict(wrapped.state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        wrapped.load_state_dict({})


class _Holder(nn.Module):
    """A recurrent module whose own keys begin with ``layer.``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = rnnkit.GRU(3, 4)

    def forward(self, x, hx=None):
        return self.layer(x, hx)


@pytest.mark.parametrize(
    "make", [_Holder, lambda: rnnkit.cuda_graphed(rnnkit.GRU(3, 4))], ids=["holder", "twice"]
)
def test_checkpoints_of_a_layer_whose_keys_begin_with_layer(make):
    """Loading added ``layer.`` only to keys without it, so a checkpoint of a wrapped module
    whose own keys begin with ``layer.`` (a submodule of that name) was taken
    for the wrapper's raw form: missing and unexpected keys. Now the layer's own keys get it."""
    torch.manual_seed(0)
    bare, wrapped = make(), rnnkit.cuda_graphed(make())
    assert list(wrapped.state_dict()) == list(bare.state_dict())
    wrapped.load_state_dict(bare.state_dict())  # strict
    for a, b in zip(wrapped.parameters(), bare.parameters(), strict=True):
        assert torch.equal(a, b)
    bare.load_state_dict(wrapped.state_dict())
    raw = {"layer." + k: v for k, v in bare.state_dict().items()}  # the wrapper's raw form loads too
    rnnkit.cuda_graphed(make()).load_state_dict(raw)


def test_an_input_that_is_no_tensor_gets_the_layers_error():
    """A list input failed in the wrapper with "'list' object has no attribute 'is_cuda'"."""
    with pytest.raises(ValueError, match="input must be a torch.Tensor, got list"):
        rnnkit.cuda_graphed(rnnkit.LSTM(3, 4))([[0.0, 1.0, 2.0]])


@pytest.mark.parametrize(
    "kw",
    [
        {"max_graphs": 0},
        {"warmup": 0},
        {"warmup": 1.5},
        {"max_graphs": 2.5},
        {"max_graphs": True},
        {"warmup": "3"},
    ],
)
def test_bad_arguments(kw):
    """Non-ints were kept (warmup=1.5 failed at the first capture in range()'s words, a string
    in a comparison's); now all are refused at construction, naming the values."""
    with pytest.raises(ValueError, match="max_graphs and warmup must be ints >= 1, got"):
        rnnkit.cuda_graphed(rnnkit.LSTM(3, 4), **kw)


@pytest.mark.parametrize("layer", [None, 3])
def test_layer_must_be_a_module(layer):
    """A non-module was kept and failed only at the first call ("'NoneType' object is not
    callable"); now it is refused at construction, naming its type."""
    with pytest.raises(TypeError, match=f"layer must be a recurrent nn.Module .*got {type(layer).__name__}$"):
        rnnkit.cuda_graphed(layer)


def test_the_cli_wraps_every_recurrent_layer_in_place():
    """``--cuda-graphs``: every recurrent layer of a task model is wrapped (nested ones too),
    parameters and checkpoint keys unchanged; ``lengths=`` (padded batches) runs the layer."""
    from rnnkit.cli.common import graph_recurrent_layers
    from rnnkit.tasks._common import SequenceNet

    torch.manual_seed(0)
    net = SequenceNet({"cell": "conv-lstm", "hidden": 8, "layers": 1}, 3, vocab_size=10, many_to_one=True)
    keys, params = list(net.state_dict()), list(net.parameters())
    x, lengths = torch.randint(0, 10, (2, 5)), torch.tensor([5, 3])
    want = net(x, None, lengths=lengths)[0]
    assert graph_recurrent_layers(net) == 1 and graph_recurrent_layers(net) == 0  # not twice
    assert sum(isinstance(m, rnnkit.CUDAGraphed) for m in net.modules()) == 1
    assert list(net.state_dict()) == keys and list(net.parameters()) == params
    torch.testing.assert_close(net(x, None, lengths=lengths)[0], want, rtol=0, atol=0)


def test_cli_refuses_cuda_graphs_off_cuda(tmp_path, capsys):
    from rnnkit.cli import main

    rc = main(["train", "memory", "--cuda-graphs", "--max-steps", "1", "--out", str(tmp_path / "m")])
    assert rc == 2 and "--cuda-graphs needs a CUDA --device" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()  # refused before anything is written

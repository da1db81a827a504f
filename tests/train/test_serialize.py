"""Pickle-free serialization of nested state (rnnkit.train.serialize): namedtuples round-trip."""

from __future__ import annotations

import json
import sys
from collections import namedtuple
from typing import NamedTuple

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from rnnkit.data import bptt_batches
from rnnkit.train import Trainer
from rnnkit.train.serialize import flatten, load_tensors, save_tensors, unflatten

from .models import TinyLM, tokens


class LSTMState(NamedTuple):
    h: torch.Tensor
    c: torch.Tensor


def _roundtrip(obj):
    structure, tensors = flatten(obj, "state")
    return unflatten(json.loads(json.dumps(structure, allow_nan=False)), tensors)


def test_namedtuples_come_back_as_their_class():
    """A namedtuple was stored as a plain tuple: a resumed model reading ``state.h`` failed."""
    packed = pack_padded_sequence(torch.randn(3, 2, 4), torch.tensor([1, 3]), enforce_sorted=False)
    obj = {
        "hc": LSTMState(torch.ones(2), torch.zeros(2)),
        "layers": [LSTMState(torch.ones(1), None)],
        "p": packed,
    }
    back = _roundtrip(obj)
    assert type(back["hc"]) is LSTMState and type(back["layers"][0]) is LSTMState
    assert torch.equal(back["hc"].h, torch.ones(2)) and back["layers"][0].c is None
    assert isinstance(back["p"], PackedSequence)
    for got, want in zip(back["p"], packed, strict=True):
        assert torch.equal(got, want)
    assert _roundtrip((1, (2.0, None))) == (1, (2.0, None))  # plain tuples stay plain


def test_unknown_namedtuple_class_is_rebuilt_without_importing():
    """The recorded class is looked up only in modules already imported, never imported; when
    it cannot be found (a class defined in a function, a module not loaded, other fields) a
    collections.namedtuple of the same name and fields comes back."""
    local = namedtuple("Local", "h c")
    structure, tensors = flatten(local(torch.ones(1), 2))
    back = unflatten(structure, tensors)
    assert type(back).__name__ == "Local" and back._fields == ("h", "c") and back.c == 2
    structure["__namedtuple__"][0] = "a_module_nobody_imported"
    assert unflatten(structure, tensors)._fields == ("h", "c")
    assert "a_module_nobody_imported" not in sys.modules
    structure, tensors = flatten(LSTMState(1, 2))
    structure["__namedtuple__"][2] = ["a", "b"]  # the class here has other fields
    back = unflatten(structure, tensors)
    assert type(back) is not LSTMState and (back.a, back.b) == (1, 2)
    structure["__namedtuple__"][2] = ["not an identifier", "b"]
    with pytest.raises(ValueError, match="malformed serialized namedtuple"):
        unflatten(structure, tensors)


class _NamedStateLM(TinyLM):
    def forward(self, x, state=None):
        y, (h, c) = self.rnn(self.emb(x), None if state is None else (state.h, state.c))
        return self.out(y), LSTMState(h, c)


def _fit(out_dir, max_steps, resume):
    torch.manual_seed(0)
    model = _NamedStateLM()
    files = {"out_dir": str(out_dir), "resume": resume, "checkpoint_every": 3}
    tr = Trainer(model, torch.optim.SGD(model.parameters(), 0.5), max_steps=max_steps, plot=False, **files)
    tr.fit(bptt_batches(tokens(400), 4, 10))
    return tr


def test_resume_mid_epoch_with_a_namedtuple_state(tmp_path):
    """A mid-epoch resume hands the model the carried state as the namedtuple it returned."""
    straight = _fit(tmp_path / "a", 6, False)
    _fit(tmp_path / "b", 3, False)
    resumed = _fit(tmp_path / "b", 6, True)
    assert isinstance(resumed.state, LSTMState)
    assert resumed.losses == straight.losses and len(straight.losses) == 6
    torch.testing.assert_close(resumed.state, straight.state, rtol=0, atol=0)


def test_loaded_tensors_compute_as_the_saved_ones(tmp_path):
    """A tensor loaded from safetensors lay where the file put it (8-byte aligned, after the
    tensors before it), and a matrix-vector product over it (BLAS) rounded otherwise than over the
    saved one: a resumed run's losses then depended on the checkpoint's other tensors (a saved
    ``Trainer.losses`` tensor shifted the recurrent state and broke resume's bit-exactness). They
    are now copies in memory of their own, aligned as any tensor the run allocates."""
    torch.manual_seed(0)
    w, v = torch.randn(16, 16), torch.randn(16)
    for shift in range(8):  # the tensor before w moves it by `shift` elements in the file
        save_tensors({"a": torch.zeros(shift), "w": w}, tmp_path / "t.safetensors")
        loaded = load_tensors(tmp_path / "t.safetensors")["w"]
        assert torch.equal(loaded @ v, w @ v), shift

import math

import numpy as np
import pytest
import torch

from rnnkit.study import music


def keys(frame):
    return [int(k) + music.LOW for k in np.flatnonzero(frame)]


def test_notes_to_roll_hand_made():
    # C major chord for two quarters, then G3 for one quarter and an eighth-note A3 off the grid.
    notes = [(0, 2, 60), (0, 2, 64), (0, 2, 67), (2, 1, 55), (3.5, 0.5, 57)]
    roll = music.notes_to_roll(notes, quantum=1.0)
    assert roll.shape == (4, 88) and roll.dtype == np.uint8
    assert keys(roll[0]) == keys(roll[1]) == [60, 64, 67]
    assert keys(roll[2]) == [55]  # the chord ended exactly on frame 2: not sounding there
    assert keys(roll[3]) == []  # sampled at frame starts: the off-beat eighth is not seen
    fine = music.notes_to_roll(notes, quantum=0.5)
    assert fine.shape == (8, 88) and keys(fine[7]) == [57] and keys(fine[3]) == [60, 64, 67]
    assert music.notes_to_roll(notes, 1.0, length=6).shape == (6, 88)
    with pytest.raises(ValueError, match="MIDI pitch"):
        music.notes_to_roll([(0, 1, 20)])
    with pytest.raises(ValueError, match="quantum"):
        music.notes_to_roll(notes, quantum=0)


def test_score_to_roll_known_chord():
    m21 = pytest.importorskip("music21")
    s = m21.stream.Score()
    p = m21.stream.Part()
    p.append(m21.chord.Chord(["C4", "E4", "G4"], quarterLength=2))
    a = m21.note.Note("A3", quarterLength=1)
    a.tie = m21.tie.Tie("start")
    b = m21.note.Note("A3", quarterLength=1)
    b.tie = m21.tie.Tie("stop")
    p.append([a, b, m21.note.Rest(quarterLength=1)])
    s.insert(0, p)
    roll = music.score_to_roll(s, quantum=1.0)
    assert roll.shape == (5, 88)
    assert [keys(f) for f in roll] == [[60, 64, 67], [60, 64, 67], [57], [57], []]


def test_split_is_fixed_disjoint_and_complete():
    names = [f"bach/bwv{i}" for i in range(50)]
    a = music.split_names(names)
    assert a == music.split_names(list(reversed(names)))  # input order does not matter
    assert [len(a[k]) for k in music.SPLITS] == [30, 10, 10]
    assert sorted(a["train"] + a["valid"] + a["test"]) == sorted(names)


def test_save_load_roundtrip(tiny_rolls):
    path, rolls = tiny_rolls
    back = music.load_rolls(path)
    for split in music.SPLITS:
        assert len(back[split]) == len(rolls[split])
        for r, q in zip(rolls[split], back[split]):
            np.testing.assert_array_equal(r, q)


def test_batch_rolls_shift_and_mask():
    r1 = np.eye(3, 88, dtype=np.uint8)
    r2 = np.ones((1, 88), dtype=np.uint8)
    x, y, m = music.batch_rolls([r1, r2])
    assert x.shape == y.shape == (3, 2, 88)
    assert m.tolist() == [[1, 1], [1, 0], [1, 0]]
    assert (x[0] == 0).all()  # the first frame is predicted from silence
    torch.testing.assert_close(x[1:, 0], y[:-1, 0])
    torch.testing.assert_close(y[:, 0], torch.from_numpy(r1).to(y.dtype))


def test_frame_nll_and_evaluate_match_the_formula():
    rolls = [np.eye(3, 88, dtype=np.uint8), np.ones((2, 88), dtype=np.uint8)]

    class Constant(torch.nn.Module):  # every key on with probability 0.25
        def forward(self, x):
            return torch.full_like(x, math.log(0.25 / 0.75))

    on = sum(int(r.sum()) for r in rolls)
    frames = sum(len(r) for r in rolls)
    expect = -(on * math.log(0.25) + (frames * 88 - on) * math.log(0.75)) / frames
    assert music.evaluate_nll(Constant(), rolls, batch_size=1) == pytest.approx(expect, rel=1e-6)
    assert music.evaluate_nll(Constant(), rolls) == pytest.approx(expect, rel=1e-6)


def test_evaluate_nll_restores_the_modes_when_the_model_raises(failing_model):
    """``model.train(was)`` came after the loop, not in a ``finally``: a forward that raised left the
    model in eval mode. Each module's own mode is back, on an error too."""
    with pytest.raises(RuntimeError, match="forward failed"):
        music.evaluate_nll(failing_model, [np.eye(3, 88, dtype=np.uint8)])
    assert failing_model.training and not failing_model.frozen.training

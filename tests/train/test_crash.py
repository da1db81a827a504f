"""Crash consistency of a run directory: what a crash (kill, full disk) leaves behind must not
break the resumed run's files or the checkpoints' readers."""

import json

import pytest
import torch

from .models import TinyLM
from .test_checkpoint import epoch_run as _run  # 10 batches / epoch, a checkpoint at each epoch's end


def test_a_metrics_row_cut_by_a_crash_is_dropped_on_resume_not_glued_to_the_next(tmp_path):
    _run(tmp_path / "ref", 2)
    _run(tmp_path / "run", 1)
    for name, keep in (("metrics.jsonl", 12), ("metrics.csv", 5)):  # '{"split": "v', 'val,1'
        f = tmp_path / "run" / name
        body, last = f.read_text().rstrip("\n").rsplit("\n", 1)
        f.write_text(body + "\n" + last[:keep])  # the last row (val, step 10) cut mid-write
    _run(tmp_path / "run", 2)  # resumes from the step-10 checkpoint
    for name in ("metrics.jsonl", "metrics.csv"):
        lines = [(d / name).read_text().count("\n") for d in (tmp_path / "run", tmp_path / "ref")]
        assert lines[0] == lines[1], name
    rows = lambda d: [(r["split"], r["step"], r["loss"])  # noqa: E731
                      for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]  # fmt: skip
    assert rows(tmp_path / "run") == rows(tmp_path / "ref")
    csv = lambda d: [ln.split(",")[:4] for ln in (d / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert csv(tmp_path / "run") == csv(tmp_path / "ref")


def _adam_checkpoint(path):
    """A TinyLM with its Adam state after one step, saved at ``path`` as step 1; the optimizer
    file's path."""
    from rnnkit.train import save_checkpoint

    model = TinyLM()
    opt = torch.optim.Adam(model.parameters())
    sum(p.sum() for p in model.parameters()).backward()
    opt.step()
    save_checkpoint(path, model, opt, step=1)
    return path / "step-000000001" / "optimizer.safetensors"


def _refused_and_unchanged(path, match: str, optimizer: bool = True) -> None:
    """Loading the checkpoint at ``path`` into a fresh TinyLM (and Adam) raises a ValueError
    matching ``match`` and leaves the fresh weights as they were."""
    from rnnkit.train import load_checkpoint

    fresh = TinyLM()
    before = [p.clone() for p in fresh.parameters()]
    with pytest.raises(ValueError, match=match):
        load_checkpoint(path, fresh, torch.optim.Adam(fresh.parameters()) if optimizer else None)
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters(), strict=True))


def test_a_damaged_checkpoint_file_is_named_and_changes_nothing(tmp_path):
    f = _adam_checkpoint(tmp_path)
    f.write_bytes(f.read_bytes()[:-100])  # truncated
    _refused_and_unchanged(tmp_path, "optimizer.safetensors")


def test_a_missing_state_safetensors_is_named_and_changes_nothing(tmp_path):
    """state.json names tensors of state.safetensors: without the file it was a bare KeyError."""
    from rnnkit.train import save_checkpoint

    save_checkpoint(tmp_path, TinyLM(), step=1, state={"h": torch.ones(2, 3)})
    (tmp_path / "step-000000001" / "state.safetensors").unlink()
    match = r"step-000000001 is incomplete or damaged: .*'state\.h'"
    _refused_and_unchanged(tmp_path, match, optimizer=False)


def test_an_optimizer_file_without_a_tensor_it_needs_changes_nothing(tmp_path):
    """The optimizer's tensors were looked up after the model had loaded: a KeyError, weights changed."""
    from rnnkit.train.serialize import load_tensors, save_tensors

    f = _adam_checkpoint(tmp_path)
    tensors = load_tensors(f)
    del tensors[sorted(tensors)[0]]
    save_tensors(tensors, f)
    _refused_and_unchanged(tmp_path, "is incomplete or damaged: serialized state refers to tensor")


def test_a_crash_while_rotating_never_leaves_a_checkpoint_without_its_files(tmp_path, monkeypatch):
    import shutil

    from rnnkit.train import checkpoint as ckpt_mod
    from rnnkit.train import list_checkpoints, load_checkpoint, save_checkpoint

    model = TinyLM()
    save_checkpoint(tmp_path, model, step=1, keep_last=1)

    def killed_midway(path, *a, **k):  # rmtree got as far as one file
        next(p for p in sorted(tmp_path.rglob("model.safetensors")) if p.is_relative_to(path)).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, step=2, keep_last=1)  # rotates step 1 out
    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", shutil.rmtree)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000002"]
    for p in list_checkpoints(tmp_path):
        load_checkpoint(p, TinyLM())


def test_a_cut_row_the_checkpoint_holds_is_written_again_on_resume(tmp_path):
    """A validation at a checkpoint's own step, written before it (val_every = checkpoint_every):
    a crash that cut its row left the resumed file without it (the checkpoint's history held it,
    so the resumed run did not validate again)."""
    from rnnkit.data import bptt_batches
    from rnnkit.train import Trainer

    from .models import tokens

    def run(out, steps):
        torch.manual_seed(0)
        model = TinyLM()
        tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), max_steps=steps, val_every=4,
                     checkpoint_every=4, log_every=2, out_dir=str(out), resume=True, progress=False,
                     plot=False)  # fmt: skip
        tr.fit(bptt_batches(tokens(200), 2, 10), bptt_batches(tokens(50), 1, 10))

    run(tmp_path / "ref", 6)
    run(tmp_path / "run", 4)
    for name, keep in (("metrics.jsonl", 12), ("metrics.csv", 5)):
        f = tmp_path / "run" / name
        body, last = f.read_text().rstrip("\n").rsplit("\n", 1)
        assert last.startswith(('{"split": "val", "step": 4', "val,4,"))
        f.write_text(body + "\n" + last[:keep])  # the val row of step 4 cut mid-write
    run(tmp_path / "run", 6)

    def rows(d, name):
        return (d / name).read_text().splitlines()

    for name in ("metrics.jsonl", "metrics.csv"):  # the same rows (their timings apart)
        run_rows, ref_rows = rows(tmp_path / "run", name), rows(tmp_path / "ref", name)
        assert [r.split(",")[:4] for r in run_rows] == [r.split(",")[:4] for r in ref_rows], name


def test_a_resumed_metrics_csv_keeps_its_crlf_rows(tmp_path):
    """metrics.csv's rows end in CRLF (the csv module's lineterminator). A resume that dropped a
    row rewrote the kept ones read in universal-newline mode, with LF, and then appended the new
    rows with CRLF: one file, two line endings."""
    _run(tmp_path / "run", 1)
    f = tmp_path / "run" / "metrics.csv"
    f.write_bytes(f.read_bytes() + b"train,11,1,2.5")  # a row after the checkpoint, cut by a crash
    _run(tmp_path / "run", 2)
    data = f.read_bytes()
    assert data.count(b"\r\n") == data.count(b"\n") > 3, data


def test_a_checkpoint_of_another_shape_is_refused_and_loads_nothing(tmp_path):
    """torch's load_state_dict copies every tensor that fits before it raises for the others: a
    refused checkpoint (another width, another cell, a missing name) left the model half loaded."""
    from rnnkit.train import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path, TinyLM(hidden=8), step=1)
    for fresh, match in (
        (TinyLM(hidden=9), r"size mismatch for emb.weight: copying a param with shape torch.Size\(\[11, 8"),
        (TinyLM(cell="gru"), r"size mismatch for rnn.weight_ih_l0"),  # emb and out fit
        (_with_extra_layer(), r"Missing key\(s\) in state_dict: \"extra.weight\", \"extra.bias\""),
    ):
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        with pytest.raises(RuntimeError, match=match):
            load_checkpoint(tmp_path, fresh)
        assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items()), type(fresh)


def _with_extra_layer() -> TinyLM:
    model = TinyLM()
    model.extra = torch.nn.Linear(2, 2)  # the checkpoint's names all fit, two are missing
    return model

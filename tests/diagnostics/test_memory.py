"""Memory-horizon benchmark: variant parsing, scan logic, and that training really learns."""

from __future__ import annotations

import pytest
import torch

from rnnkit.diagnostics.memory import Budget, TaskModel, Variant, memory_horizon, parse_variant, train_task

TINY = dict(hidden_size=4, steps=3, batch_size=4, eval_every=3, eval_size=8, lags=(2, 3, 4), n_copy=2)


def test_parse_variant():
    assert parse_variant("lstm") == Variant("lstm", "lstm", {})
    v = parse_variant("deep=gru:num_layers=2,bias=false,name=x")
    assert v == Variant("deep", "gru", {"num_layers": 2, "bias": False, "name": "x"})
    assert parse_variant("RNN_RELU").build(2, 3).nonlinearity == "relu"
    # Python literals too, as `rnnkit train --opt` reads them (True was the string 'True')
    v = parse_variant("lstm:norm=layer,peephole=True,zoneout=0.1,forget_bias=1")
    assert v.options == {"norm": "layer", "peephole": True, "zoneout": 0.1, "forget_bias": 1}
    assert v.build(2, 3).cells[0].peephole is True
    assert parse_variant("gru:num_layers=2").label == "gru:num_layers=2"
    with pytest.raises(ValueError, match="family must be one of"):
        parse_variant("transformer")
    with pytest.raises(ValueError, match="key=value"):
        parse_variant("lstm:oops")


@pytest.mark.parametrize("threshold,horizon,runs", [(0.0, 4, 3), (1.01, 0, 1)])
def test_scan_stops_at_first_failure(threshold, horizon, runs):
    r = memory_horizon(["rnn", "gru"], budget=Budget(threshold=threshold, **TINY))
    assert r.horizon == {
        "rnn": {"copy": horizon, "plus_one": horizon},
        "gru": {"copy": horizon, "plus_one": horizon},
    }
    assert len(r.rows) == 2 * 2 * runs
    assert all(row["solved"] == (threshold == 0.0) for row in r.rows)
    assert "variant" in r.table() and r.to_dict()["budget"]["threshold"] == threshold


def test_benchmark_is_deterministic_and_validates():
    b = Budget(**TINY)
    assert memory_horizon(["lstm"], ["copy"], b).rows == memory_horizon(["lstm"], ["copy"], b).rows
    with pytest.raises(ValueError, match="task must be one of"):
        memory_horizon(["lstm"], ["sort"], b)
    with pytest.raises(ValueError, match="lags must be increasing"):
        memory_horizon(["lstm"], budget=Budget(lags=(4, 2)))
    with pytest.raises(ValueError, match="'lstm' twice"):  # one entry of horizon replaced the other
        memory_horizon(["lstm", "gru", "lstm"], budget=b)


def test_training_learns_plus_one():
    """A GRU learns +1 detection at lag 5 within the budget (chance is 1/2)."""
    torch.manual_seed(0)
    budget = Budget(hidden_size=8, steps=150, eval_every=25, threshold=0.95)
    model = TaskModel(parse_variant("gru").build(1, 8), 2)
    acc, steps = train_task(model, "plus_one", 5, budget)
    assert acc >= 0.95 and steps <= 150


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_lstm_projection_read_out_width():
    """An LSTM with ``proj_size`` outputs ``proj_size`` (per direction) features, not ``hidden_size``."""
    r = memory_horizon(["lstm:proj_size=2,bidirectional=True"], ["plus_one"], Budget(**TINY))
    assert len(r.rows) >= 1


def test_accuracy_is_measured_in_evaluation_mode():
    """Held-out accuracy without dropout masks: deterministic, and the training mode is kept."""
    from rnnkit.diagnostics.memory import accuracy, task_batch

    torch.manual_seed(0)
    b = Budget(**TINY)
    model = TaskModel(parse_variant("gru:num_layers=2,dropout=0.5").build(1, 16), 2)
    torch.nn.init.normal_(model.head.weight, std=10.0)  # predictions that depend on every unit
    torch.nn.init.zeros_(model.head.bias)
    x, y = task_batch("plus_one", 256, 6, b, seed=1)
    with torch.no_grad():
        ref = float((model.eval()(x)[:, -1].argmax(-1) == y).float().mean())
    model.train()
    assert [accuracy("plus_one", model, x, y, b) for _ in range(3)] == [ref] * 3
    assert model.training


def test_unknown_option_is_a_value_error():
    """``rnnkit diagnose --variants lstm:foo=1`` is a usage error (one line), not a TypeError traceback."""
    with pytest.raises(ValueError, match="variant 'lstm:foo=1'.*foo"):
        parse_variant("lstm:foo=1").build(1, 4)
    with pytest.raises(ValueError, match="mingru does not accept"):
        parse_variant("mingru:foo=1").build(1, 4)


def test_benchmark_leaves_the_callers_random_stream_alone():
    """Each run seeds torch's global generator with ``budget.seed``: it was left there, resetting a
    library caller's random stream. It is restored (and the results stay deterministic)."""
    torch.manual_seed(1234)
    want = torch.rand(3)
    torch.manual_seed(1234)
    memory_horizon(["gru"], ["plus_one"], Budget(**TINY))
    torch.testing.assert_close(torch.rand(3), want, rtol=0, atol=0)


def test_benchmark_seeds_no_cuda_generator(monkeypatch):
    """torch.manual_seed also reseeds every CUDA generator (lazily, before CUDA is up), which the
    fork of the CPU generator does not restore: a caller training on a GPU had its CUDA stream
    reset by the benchmark. The runs are on the CPU and seed its generator only."""
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    memory_horizon(["gru"], ["plus_one"], Budget(**TINY))
    assert seeded == []


def test_accuracy_restores_each_modules_own_mode():
    """``accuracy`` restored the mode with ``model.train(was)``, which also switched a submodule
    the user keeps in eval mode (a frozen dropout or batch norm) back to training; now each
    module's own mode comes back, also when the model raises."""
    from torch import nn

    from rnnkit.diagnostics.memory import accuracy

    class Model(nn.Module):
        def __init__(self, fail: bool = False):
            super().__init__()
            self.frozen, self.fail = nn.Dropout(0.5).eval(), fail

        def forward(self, x):
            assert not self.training and not self.frozen.training
            if self.fail:
                raise RuntimeError("boom")
            return torch.zeros(x.shape[0], x.shape[1], 2)

    for fail in (False, True):
        m = Model(fail).train()
        m.frozen.eval()
        try:
            accuracy("plus_one", m, torch.zeros(3, 4, 1), torch.zeros(3, dtype=torch.long), Budget())
        except RuntimeError:
            assert fail
        assert m.training and not m.frozen.training


def test_accuracy_is_the_exact_fraction_of_correct_predictions():
    """The memory benchmark's held-out accuracy is correct / total as integers: a float32 mean
    gave 2 of 5 as 0.4000000059604645."""
    from rnnkit.diagnostics.memory import Budget, accuracy

    class Model(torch.nn.Module):
        def forward(self, x):  # the last step's logits pick class 1 for every row
            return torch.tensor([0.0, 1.0]).expand(x.shape[0], x.shape[1], 2)

    y = torch.tensor([1, 0, 1, 0, 0])
    assert accuracy("plus_one", Model(), torch.zeros(5, 3, 1), y, Budget()) == 2 / 5


def test_accuracy_of_no_example_is_nan():
    """An empty held-out set: NaN (as the tasks' accuracy), not a ZeroDivisionError."""
    import math

    from rnnkit.diagnostics.memory import Budget, accuracy

    class Model(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], x.shape[1], 2)

    none = torch.zeros(0, dtype=torch.long)
    assert math.isnan(accuracy("plus_one", Model(), torch.zeros(0, 3, 1), none, Budget()))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_plus_one_scores_the_summary_of_a_bidirectional_layer(bidirectional):
    """+1 scored the logits at the last step, where a bidirectional layer's backward half had read
    that step only; it is now scored at the summary (forward half at the last step, backward at 0)."""
    from rnnkit.diagnostics.memory import task_batch, task_logits

    torch.manual_seed(0)
    budget = Budget()
    model = TaskModel(Variant("v", "lstm", {"bidirectional": bidirectional}).build(1, 4), 2)
    x, _ = task_batch("plus_one", 3, 6, budget, seed=0)
    out = model.rnn(x)[0]
    want = torch.cat([out[:, -1, :4], out[:, 0, 4:]], -1) if bidirectional else out[:, -1]
    torch.testing.assert_close(task_logits("plus_one", model, x, budget), model.head(want))


@pytest.mark.parametrize(
    "field, value", [("eval_every", 0), ("steps", 0), ("batch_size", 2.5), ("n_copy", True)]
)
def test_budget_counts_are_checked(field, value):
    """eval_every=0 failed on "integer modulo by zero" in the first run, steps=0 trained nothing and
    reported a horizon of 0, silently; each is named at construction now."""
    with pytest.raises(ValueError, match=rf"Budget: {field} must be an int >= 1, got {value!r}$"):
        Budget(**{field: value})


def test_memory_horizon_names_variants_and_tasks_of_another_type():
    """memory_horizon("lstm") read the letters as variants ("variant 'l': family must be one of"),
    tasks="copy" as tasks 'c', 'o', ... and a variant of another type failed on "'int' object has no
    attribute 'label'"."""
    match = r"variants must be a sequence \(e.g. \['lstm'\]\), got the str 'lstm'$"
    with pytest.raises(TypeError, match=match):
        memory_horizon("lstm")
    with pytest.raises(TypeError, match=r"tasks must be a sequence \(e.g. \['copy'\]\), got the str 'copy'"):
        memory_horizon(["lstm"], "copy")
    with pytest.raises(TypeError, match=r"variants must be Variant objects \(a label and a build.*got int"):
        memory_horizon(["lstm", 3])


def test_parse_variant_names_a_spec_that_is_no_str():
    """parse_variant(None) failed on "'NoneType' object has no attribute 'split'"."""
    with pytest.raises(TypeError, match=r"variant spec must be a str \(.*\), got NoneType$"):
        parse_variant(None)


def test_copy_scores_the_recall_steps():
    """The copy task's scored logits are the last n_copy steps, where copy_memory's targets hold
    the symbols: a window shifted one step back (the delimiter and n_copy - 1 recall steps)
    survived every test."""
    from rnnkit.datasets.synthetic import copy_memory
    from rnnkit.diagnostics.memory import task_logits

    budget = Budget(**TINY)
    x = torch.randn(2, 9, 6)
    assert torch.equal(task_logits("copy", lambda inp: inp, x, budget), x[:, -budget.n_copy :])
    _, y = copy_memory(2, 5, n_copy=budget.n_copy)
    assert (y[:, -budget.n_copy :] >= 2).all() and (y[:, : -budget.n_copy] == 0).all()


def test_training_evaluates_at_its_last_step_and_stops_at_the_threshold(monkeypatch):
    """Evaluations every eval_every steps and at the last one (steps=5, eval_every=2: 2, 4, 5),
    stopping at the first accuracy >= threshold (equal is enough). An evaluation only at
    multiples of eval_every, and a strict > threshold, survived every test."""
    from rnnkit.diagnostics import memory

    monkeypatch.setattr(memory, "accuracy", lambda *a: 0.5)
    kw = {**TINY, "steps": 5, "eval_every": 2}
    model = TaskModel(parse_variant("gru").build(1, 4), 2)
    for threshold, want in ((0.6, (0.5, 5, [2, 4, 5])), (0.5, (0.5, 2, [2]))):
        seen = []
        best, steps = train_task(
            model, "plus_one", 3, Budget(threshold=threshold, **kw), lambda s, a, seen=seen: seen.append(s)
        )
        assert (best, steps, seen) == want
    assert memory_horizon(["gru"], ["plus_one"], Budget(threshold=0.5, **kw)).horizon["gru"]["plus_one"] == 4

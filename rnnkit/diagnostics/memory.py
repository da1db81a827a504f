"""Memory-horizon benchmark: the longest lag at which a cell still learns a memory task.

For every cell variant and task, the lags of :class:`Budget` are tried in increasing
order; at each lag a fresh model (one recurrent layer + a linear read-out) is trained
with Adam for at most ``budget.steps`` batches of fresh data and counts as *solving* the
lag when its accuracy on a held-out set reaches ``budget.threshold``. The scan stops at
the first lag that is not solved (longer lags are harder); the *horizon* is the last
solved lag (0 if none). Everything is seeded: the same budget gives the same table.

Tasks (:mod:`rnnkit.datasets.synthetic`): ``"copy"`` — copy-memory, per-symbol recall
accuracy over the ``n_copy`` recall steps (chance ``1 / n_symbols``); ``"plus_one"`` —
"+1 detection" with balanced labels over sequences of length ``lag`` (chance 1/2).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import is_int
from ..arch import parse_value
from ..datasets import synthetic
from ..modules import GRU, LSTM, RNN
from ..parallel import LRU, QRNN, MinGRU, MinLSTM
from ..tasks._common import summary
from ..train.evaluate import kept_modes

TASKS = ("copy", "plus_one")
FAMILIES = {"rnn": RNN, "rnn_relu": RNN, "lstm": LSTM, "gru": GRU,
            "mingru": MinGRU, "minlstm": MinLSTM, "qrnn": QRNN, "lru": LRU}  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """A recurrent layer to benchmark: ``family`` in ``rnn``, ``rnn_relu``, ``lstm``, ``gru``
    or a time-parallel layer (``mingru``, ``minlstm``, ``qrnn``, ``lru``), plus extra keyword
    ``options`` (the zoo's cell options, layer options, e.g. ``qrnn:window=1``)."""

    label: str
    family: str
    options: dict = field(default_factory=dict)

    def build(self, input_size: int, hidden_size: int) -> nn.Module:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {self.family!r}")
        opts = dict(self.options)
        if self.family == "rnn_relu":
            opts["nonlinearity"] = "relu"
        try:
            return FAMILIES[self.family](input_size, hidden_size, batch_first=True, **opts)
        except TypeError as e:  # an unknown option: a user error, as `rnnkit train --opt` reports it
            msg = f"variant {self.label!r}: {self.family} does not accept {sorted(opts)}: {e}"
            raise ValueError(msg) from e


def _literal(raw: str):
    """``rnnkit train --opt``'s reading (:func:`rnnkit.arch.parse_value`), then JSON's
    ``true`` / ``null`` (which this option syntax documented first)."""
    value = parse_value(raw)
    if value is not raw:
        return value
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_variant(spec: str) -> Variant:
    """``"lstm"``, ``"gru:key=value,key=value"`` or ``"label=family:key=value,..."``; values
    are read as Python literals or JSON when they parse (``True`` or ``true``, ``0.5``,
    ``"x"``: as ``rnnkit train --opt`` reads them), else as strings."""
    if not isinstance(spec, str):  # (else "'NoneType' object has no attribute 'split'")
        raise TypeError(f"a variant spec must be a str ('lstm', 'gru:key=value'), got {type(spec).__name__}")
    label, _, rest = spec.partition("=") if "=" in spec.split(":")[0] else ("", "", spec)
    family, _, opts_s = rest.partition(":")
    family = family.strip().lower()
    if family not in FAMILIES:
        raise ValueError(f"variant {spec!r}: family must be one of {sorted(FAMILIES)}, got {family!r}")
    opts = {}
    for item in filter(None, (s.strip() for s in opts_s.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"variant {spec!r}: options must be key=value, got {item!r}")
        opts[key.strip()] = _literal(value)
    return Variant(label or (family if not opts else f"{family}:{opts_s}"), family, opts)


def lags_ok(lags: Sequence[int]) -> bool:
    """Whether ``lags`` are what :func:`memory_horizon` tries: at least one, positive, increasing."""
    return bool(lags) and list(lags) == sorted(set(lags)) and lags[0] >= 1


def check_labels(variants: Sequence[Variant]) -> None:
    """A ``ValueError`` when two variants share a label: results are keyed by label, so the
    second would silently replace the first."""
    seen: set[str] = set()
    for v in variants:
        if v.label in seen:
            raise ValueError(
                f"variants need distinct labels, got {v.label!r} twice; name them with "
                f"label=family:key=value, e.g. a={v.label} b={v.label}"
            )
        seen.add(v.label)


@dataclass
class Budget:
    """The fixed training budget of one (variant, task, lag) run."""

    hidden_size: int = 32
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-2
    eval_every: int = 50
    eval_size: int = 256
    threshold: float = 0.9
    lags: tuple[int, ...] = (5, 10, 20, 40, 80)
    n_symbols: int = 4
    n_copy: int = 3
    clip_norm: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        # (eval_every=0 failed on "integer modulo by zero", steps=0 trained nothing and reported a
        # horizon of 0, a float size failed in range() or torch.empty)
        for name in ("hidden_size", "steps", "batch_size", "eval_every", "eval_size", "n_symbols", "n_copy"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise ValueError(f"Budget: {name} must be an int >= 1, got {v!r}")


class TaskModel(nn.Module):
    """Recurrent layer + linear read-out: logits ``(B, T, C)`` for every step."""

    def __init__(self, rnn: nn.Module, n_out: int) -> None:
        super().__init__()
        self.rnn = rnn
        width = getattr(rnn, "proj_size", 0) or rnn.hidden_size  # an LSTM projection outputs proj_size
        self.head = nn.Linear(width * (2 if rnn.bidirectional else 1), n_out)

    def forward(self, x: Tensor, many_to_one: bool = False) -> Tensor:
        """``x`` (B, T, I) -> logits (B, T, C); ``many_to_one``: (B, C) of :func:`summary` (a
        bidirectional layer's backward half at step 0, which has read the whole sequence)."""
        out = self.rnn(x)[0]
        return self.head(summary(out, None, bool(self.rnn.bidirectional)) if many_to_one else out)


def task_batch(task: str, n: int, lag: int, budget: Budget, seed: int) -> tuple[Tensor, Tensor]:
    """Model-ready ``(inputs (n, T, I), targets)`` of ``task`` (inputs in the default
    dtype); copy targets are the ``(n, n_copy)`` symbols, +1 targets the ``(n,)`` labels."""
    if task == "copy":
        x, y = synthetic.copy_memory(n, lag, n_symbols=budget.n_symbols, n_copy=budget.n_copy, seed=seed)
        return F.one_hot(x, budget.n_symbols + 2).to(torch.get_default_dtype()), y[:, -budget.n_copy :]
    if task == "plus_one":
        return synthetic.plus_one(n, lag, seed=seed)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def task_io(task: str, budget: Budget) -> tuple[int, int]:
    """(input size, number of classes) of a task."""
    return (budget.n_symbols + 2, budget.n_symbols + 2) if task == "copy" else (1, 2)


def task_logits(task: str, model: nn.Module, x: Tensor, budget: Budget) -> Tensor:
    """The logits of ``model`` on ``x`` that are scored: the recall steps (copy) or the last
    step (+1), a :class:`TaskModel`'s summary there: at the last step a bidirectional layer's
    backward half had read only that step. Another model returns logits (B, T, C)."""
    if task == "copy":
        return model(x)[:, -budget.n_copy :]
    return model(x, many_to_one=True) if isinstance(model, TaskModel) else model(x)[:, -1]


def accuracy(task: str, model: nn.Module, x: Tensor, y: Tensor, budget: Budget) -> float:
    """Held-out accuracy, in evaluation mode (no dropout or zoneout masks); the mode is restored."""
    with kept_modes(model), torch.no_grad():  # each module's own mode back
        pred = task_logits(task, model.eval(), x, budget).argmax(-1)
    # integer counts (a float32 mean rounded 2/5); no held-out example: NaN, as the tasks' accuracy
    return int((pred == y).sum()) / pred.numel() if pred.numel() else float("nan")


def train_task(model: nn.Module, task: str, lag: int, budget: Budget,
               on_eval: Callable[[int, float], None] | None = None) -> tuple[float, int]:  # fmt: skip
    """Train ``model`` (a :class:`TaskModel`) on ``task`` at ``lag``; stops early once the
    held-out accuracy reaches the threshold. Returns ``(best accuracy, steps used)``."""
    opt = torch.optim.Adam(model.parameters(), lr=budget.lr)
    x_ev, y_ev = task_batch(task, budget.eval_size, lag, budget, seed=budget.seed + 10**6)
    best, step = 0.0, 0
    for step in range(1, budget.steps + 1):
        x, y = task_batch(task, budget.batch_size, lag, budget, seed=budget.seed * 7919 + step)
        logits = task_logits(task, model, x, budget)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), budget.clip_norm)
        opt.step()
        if step % budget.eval_every == 0 or step == budget.steps:
            acc = accuracy(task, model, x_ev, y_ev, budget)
            best = max(best, acc)
            if on_eval is not None:
                on_eval(step, acc)
            if best >= budget.threshold:
                break
    return best, step


@dataclass
class HorizonResult:
    """``rows``: one dict per run (variant, task, lag, accuracy, solved, steps);
    ``horizon[variant][task]``: the longest solved lag before the first failure."""

    rows: list[dict]
    horizon: dict[str, dict[str, int]]
    budget: Budget

    def table(self) -> str:
        """A plain-text table: variant × task horizons, then every run."""
        tasks = sorted({r["task"] for r in self.rows}, key=TASKS.index)
        w = max([len(v) for v in self.horizon] + [7])
        lines = [f"{'variant':<{w}}  " + "  ".join(f"{t:>9}" for t in tasks)]
        for v, per in self.horizon.items():
            lines.append(f"{v:<{w}}  " + "  ".join(f"{per.get(t, 0):>9}" for t in tasks))
        lines.append("")
        lines.append(f"{'variant':<{w}}  {'task':>9}  {'lag':>4}  {'acc':>5}  {'steps':>5}  solved")
        for r in self.rows:
            lines.append(
                f"{r['variant']:<{w}}  {r['task']:>9}  {r['lag']:>4}  {r['accuracy']:>5.3f}  "
                f"{r['steps']:>5}  {'yes' if r['solved'] else 'no'}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "horizon": self.horizon, "budget": asdict(self.budget)}


def memory_horizon(
    variants: Sequence[Variant | str] = ("rnn", "lstm", "gru"),
    tasks: Sequence[str] = TASKS,
    budget: Budget | None = None,
    log: Callable[[str], None] | None = None,
) -> HorizonResult:
    """Run the benchmark (see the module docstring). ``variants`` are :class:`Variant`
    objects or :func:`parse_variant` specs. Every run is seeded with ``budget.seed``; torch's
    global random state is restored afterwards."""
    budget = budget or Budget()
    # a str is a sequence of letters: memory_horizon("lstm") said "variant 'l': family must be one of"
    for name, seq, example in (("variants", variants, "['lstm']"), ("tasks", tasks, "['copy']")):
        if isinstance(seq, str):
            raise TypeError(f"{name} must be a sequence (e.g. {example}), got the str {seq!r}")
    for v in variants:  # a Variant's shape (label, build): the memory study passes its own
        if not isinstance(v, str) and not (hasattr(v, "label") and callable(getattr(v, "build", None))):
            raise TypeError(  # (else "'int' object has no attribute 'label'")
                f"variants must be Variant objects (a label and a build(input_size, hidden_size)) or "
                f"specs ('lstm'), got {type(v).__name__}"
            )
    vs = [parse_variant(v) if isinstance(v, str) else v for v in variants]
    check_labels(vs)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {t!r}")
    if not lags_ok(budget.lags):
        raise ValueError(f"lags must be increasing positive ints, got {budget.lags}")
    with torch.random.fork_rng(devices=[]):  # each run reseeds: the caller's stream is restored after
        return _scan(vs, tasks, budget, log)


def _scan(
    vs: list[Variant], tasks: Sequence[str], budget: Budget, log: Callable[[str], None] | None
) -> HorizonResult:
    rows, horizon = [], {}
    for v in vs:
        horizon[v.label] = {}
        for task in tasks:
            horizon[v.label][task] = 0
            for lag in budget.lags:
                torch.default_generator.manual_seed(budget.seed)  # the CPU's: not CUDA's (not restored)
                n_in, n_out = task_io(task, budget)
                model = TaskModel(v.build(n_in, budget.hidden_size), n_out)
                acc, steps = train_task(model, task, lag, budget)
                solved = acc >= budget.threshold
                rows.append(
                    dict(variant=v.label, task=task, lag=lag, accuracy=acc, solved=solved, steps=steps)
                )
                if log is not None:
                    log(f"{v.label:>10} {task:>9} lag {lag:>4}: acc {acc:.3f} in {steps} steps")
                if not solved:
                    break
                horizon[v.label][task] = lag
    return HorizonResult(rows, horizon, budget)

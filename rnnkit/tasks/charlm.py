"""Character-level language model: embedding -> recurrent stack -> linear.

Shapes: B = batch, T = time, V = vocabulary size, E = embedding size, H = hidden size,
L = number of recurrent layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from rnnkit._checks import is_int, is_real
from rnnkit.baselines import encoder_output_size, reads_ahead, step_kwargs
from rnnkit.datasets.shakespeare import CharVocab
from rnnkit.state import detach_state
from rnnkit.tasks._common import kept_modes

__all__ = [
    "RECIPE", "RECIPE_LONG", "LONG_BUDGET_MINUTES", "LONG_BUDGET_MINUTES_BF16", "BF16_BELOW_MINUTES",
    "BASELINE", "CharLM", "CharLMRecipe", "SCHEDULES", "detach_state", "lr_at", "recipe_for", "sample",
]  # fmt: skip

State = Any  # a Tensor (L, B, H), a tuple of them (LSTM: (h, c)), or None
RNNFactory = Callable[..., nn.Module]


class CharLM(nn.Module):
    """Embedding (V -> E) -> recurrent stack (L layers of H units) -> dropout -> linear (H -> V).

    Args:
        vocab_size: V.
        hidden_size: H.
        num_layers: L.
        embedding_dim: E.
        dropout: dropout on the top recurrent layer's output and, when L > 1,
            between recurrent layers (passed as ``dropout=`` to the factory).
        rnn_factory: builds the recurrent stack as
            ``rnn_factory(E, H, num_layers=L, batch_first=True, dropout=p)``; it must
            return a module called as ``out (B, T, H), state = rnn(x (B, T, E), state)``
            like :class:`torch.nn.LSTM` (default), ``nn.GRU``, ``rnnkit.LSTM``, ...
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 384,
        num_layers: int = 2,
        embedding_dim: int = 64,
        dropout: float = 0.0,
        rnn_factory: RNNFactory = nn.LSTM,
    ) -> None:
        super().__init__()
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = rnn_factory(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        if reads_ahead(self.rnn):  # also a bidirectional stack behind a conv front end
            raise ValueError(
                "a character language model needs a unidirectional recurrent stack (each position "
                "predicts the next character, which a backward direction would already have read), "
                "got bidirectional=True"
            )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(encoder_output_size(self.rnn), vocab_size)  # proj_size wide when set

    def forward(self, x: torch.Tensor, state: State = None, step: int = 0) -> tuple[torch.Tensor, State]:
        """``x`` LongTensor (B, T) -> (logits (B, T, V), new state).

        ``state`` is what the recurrent stack returns (for LSTM ``(h, c)``, each
        (L, B, H)); ``None`` starts from zeros. ``step``: the time index of ``x``'s first
        character in its sequence (batch norm's per-step statistics read it).
        """
        out, state = self.rnn(self.embed(x), state, **step_kwargs(self.rnn, step))
        return self.head(self.drop(out)), state


@torch.no_grad()
def sample(
    model: CharLM,
    vocab: CharVocab,
    prime: str,
    length: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    seq_len: int | None = None,
) -> Iterator[str]:
    """Stream ``length`` (an int >= 0) sampled characters, one at a time, continuing ``prime``.

    The prime (non-empty) is fed in one call (in windows of ``seq_len``, below); then each
    sampled character is fed back with the carried recurrent state. ``temperature`` 0 means greedy (argmax).
    The model is put in eval mode (each module's own mode restored afterwards).

    A stack with per-time-step statistics (``norm="batch"``) normalizes character ``p`` of
    the text (prime, then sample) with those of step ``p``, as one call over the text would;
    with ``seq_len`` (the TBPTT window it was trained on) with those of ``p % seq_len``, the
    prime fed in windows of ``seq_len``: what training and ``evaluate_lm`` (windows of
    ``seq_len``, state carried) saw at that position.
    """
    if not prime:
        raise ValueError("prime must be a non-empty string (e.g. '\\n')")
    if not is_int(length) or length < 0:  # -1 sampled nothing and True one character, silently
        raise ValueError(f"length must be an int >= 0 (the characters to sample), got {length!r}")
    if seq_len is not None and (not is_int(seq_len) or seq_len < 1):  # numpy's ints too
        raise ValueError(f"seq_len must be a positive int or None, got {seq_len!r}")
    # written so that nan is rejected too; inf divided the logits to 0: uniform samples, silently
    if not is_real(temperature) or not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    with kept_modes(model):  # each module's own mode back after (a generator: not @keeps_mode)
        model.eval()
        device = next(model.parameters()).device
        x = vocab.encode(prime).to(device).unsqueeze(0)  # (1, T)
        windowed = seq_len is not None and bool(step_kwargs(model, 1))  # only where the windows matter
        window = seq_len if windowed else x.shape[1]
        state = None
        for i in range(0, x.shape[1], window):
            logits, state = model(x[:, i : i + window], state)
        last = logits[0, -1]  # (V,)
        for p in range(x.shape[1], x.shape[1] + length):  # p: the position of the character fed
            if temperature == 0:
                idx = int(last.argmax())
            else:
                # shift the logits so the largest is 0 before dividing: a tiny temperature then
                # sends the others to -inf (probability 0) instead of every logit to +-inf (nan);
                # in float64, where any positive Python float stays > 0 (in float32 1e-300 is 0)
                z = last.double()
                probs = torch.softmax((z - z.max()) / temperature, dim=-1)
                idx = int(torch.multinomial(probs.cpu(), 1, generator=generator))
            yield vocab.chars[idx]
            t = p % window if windowed else p
            logits, state = model(torch.tensor([[idx]], device=device), state, **step_kwargs(model, t))
            last = logits[0, -1]


#: The learning-rate schedules of :func:`lr_at`.
SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class CharLMRecipe:
    """A training recipe for :class:`CharLM` trained for a wall-clock budget.

    The learning rate follows :func:`lr_at` on the fraction of the *time budget*
    elapsed (not of steps): linear warmup over ``warmup`` of the budget, then
    cosine decay to ``lr * final_lr_ratio`` at the end of ``max_minutes``.
    Gradients are clipped to a global norm of ``clip`` (0 = off). Batches are B parallel
    contiguous streams of the training text cut into windows of ``seq_len``
    characters with the recurrent state carried across windows (TBPTT); the
    optimizer is Adam(lr, betas, weight_decay). The defaults are :data:`RECIPE`. Every field
    is checked when the recipe is made (a ``ValueError`` naming it).
    """

    hidden_size: int = 384
    num_layers: int = 2
    embedding_dim: int = 64
    dropout: float = 0.0
    batch_size: int = 32
    seq_len: int = 100
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    clip: float = 1.0
    warmup: float = 0.02
    final_lr_ratio: float = 0.05
    schedule: str = "cosine"  # "cosine", "linear" or "constant"

    def __post_init__(self) -> None:
        # checked here, not where used: lr_at reads `schedule` only after the warmup, mid-run
        for name in ("hidden_size", "num_layers", "embedding_dim", "batch_size", "seq_len"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:  # numpy's ints too
                raise ValueError(f"CharLMRecipe: {name} must be a positive int, got {v!r}")
            object.__setattr__(self, name, int(v))  # a plain int: to_dict() stays JSON-able
        for name in ("lr", "dropout", "weight_decay", "clip", "warmup", "final_lr_ratio"):
            v = getattr(self, name)
            # a bool, a string or a 0-d array is no number here; an int past float's range neither
            if not is_real(v) or (isinstance(v, int) and abs(v) > 2**1023):
                raise ValueError(f"CharLMRecipe: {name} must be a number, got {v!r}")
            object.__setattr__(self, name, float(v))  # numpy's too, as a float: to_dict() stays JSON-able
        if not 0 < self.lr < math.inf:
            raise ValueError(f"CharLMRecipe: lr must be a positive number, got {self.lr!r}")
        checks = {  # name: (holds, what it must be); written so that nan fails each
            "dropout": (0 <= self.dropout < 1, "in [0, 1)"),
            "weight_decay": (0 <= self.weight_decay < math.inf, "a number >= 0"),
            "clip": (0 <= self.clip < math.inf, "a number >= 0 (0 = off)"),
            "warmup": (0 <= self.warmup < 1, "a fraction of the budget in [0, 1)"),
            "final_lr_ratio": (0 <= self.final_lr_ratio <= 1, "in [0, 1]"),
        }
        for name, (ok, must) in checks.items():
            if not ok:
                raise ValueError(f"CharLMRecipe: {name} must be {must}, got {getattr(self, name)!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"CharLMRecipe: betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.schedule not in SCHEDULES:
            names = ", ".join(map(repr, SCHEDULES))
            raise ValueError(f"CharLMRecipe: schedule must be one of {names}, got {self.schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the fields."""
        return asdict(self)


def lr_at(recipe: CharLMRecipe, progress: float) -> float:
    """Learning rate at ``progress`` in [0, 1] = elapsed training time / time budget."""
    p = min(max(progress, 0.0), 1.0)
    if recipe.schedule == "constant":
        return recipe.lr
    if recipe.warmup > 0 and p < recipe.warmup:
        return recipe.lr * max(p / recipe.warmup, 0.01)
    q = (p - recipe.warmup) / max(1.0 - recipe.warmup, 1e-9)
    floor = recipe.lr * recipe.final_lr_ratio
    if recipe.schedule == "linear":
        return floor + (recipe.lr - floor) * (1.0 - q)
    if recipe.schedule == "cosine":
        return floor + (recipe.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * q))
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


#: The reference configuration rnnkit's recipe is compared against (constant lr Adam).
BASELINE = CharLMRecipe(
    hidden_size=512, num_layers=2, embedding_dim=84, batch_size=32, seq_len=100,
    lr=2e-3, clip=0.0, warmup=0.0, final_lr_ratio=1.0, schedule="constant",
)  # fmt: skip

#: rnnkit's tuned defaults for a 3-30 minute budget on 2 CPU cores (docs/charlm.md).
#: Measured (torch.nn.LSTM, 2 threads, AMD EPYC Zen 5, quiet): 2x384 trains at 24.5k
#: tok/s vs 16.1k for the 2x512 baseline; batch 32..128 barely changes tok/s on CPU, so
#: the small batch (more updates) wins. At the token count of 3 quiet minutes (4.4M)
#: this recipe reaches 1.468 nats/char on the 200k validation chars, vs 1.72 for the
#: quoted baseline and 1.495 for our reproduction of it (Adam 2e-3, 2.9M tokens);
#: 2x256 (8M tokens) gets 1.455 at 3 min but 2x384 keeps capacity for 9-30 min budgets.
RECIPE = CharLMRecipe(
    hidden_size=384, num_layers=2, embedding_dim=64, batch_size=32, seq_len=100,
    lr=3e-3, clip=1.0, warmup=0.02, final_lr_ratio=0.05, schedule="cosine",
)  # fmt: skip

#: The recipe for budgets of :data:`LONG_BUDGET_MINUTES` and more. 2x384 saturates after ~9
#: minutes (training loss below validation: 1.336 nats/char at 9 min, 1.339 at 30); 2x512
#: with dropout 0.2 between the layers and before the softmax (17.5k tok/s) keeps learning:
#: 1.289 at 30 min (benchmarks/RESULTS.md, "The main job").
RECIPE_LONG = replace(RECIPE, hidden_size=512, dropout=0.2)

#: Budgets from which :func:`recipe_for` picks :data:`RECIPE_LONG`: measured in float32, 2x512
#: loses at 9 minutes (1.345 against 2x384's 1.336) and wins at 14 (1.322), crossing near 11.
LONG_BUDGET_MINUTES = 12.0
#: The same under bfloat16 autocast, whose steps take ~0.62x the time: 2x512 already wins at 9
#: minutes (1.309 against 1.317); at 3 minutes 2x384 is far ahead (1.370; 2x512 1.40 at 2.9).
LONG_BUDGET_MINUTES_BF16 = 9.0
#: ``rnnkit train charlm --amp auto`` trains in bfloat16 below this budget, in float32 from it on:
#: bf16 wins at 3 and 9 minutes (1.370 / 1.309 against 1.427 / 1.336) but loses at 30 (1.296 with
#: dropout 0.2 or 0.3 against 1.289: its loss per step falls behind late in training). The
#: crossing between 9 and 30 minutes was not measured; 20 is its middle.
BF16_BELOW_MINUTES = 20.0


def recipe_for(max_minutes: float | None, bf16: bool = False) -> CharLMRecipe:
    """The recipe for a wall-clock budget: :data:`RECIPE_LONG` from :data:`LONG_BUDGET_MINUTES`
    on (:data:`LONG_BUDGET_MINUTES_BF16` when training under bfloat16 autocast), else
    :data:`RECIPE` (also without a budget)."""
    long_from = LONG_BUDGET_MINUTES_BF16 if bf16 else LONG_BUDGET_MINUTES
    return RECIPE_LONG if max_minutes is not None and max_minutes >= long_from else RECIPE

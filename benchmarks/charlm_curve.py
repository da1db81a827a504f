"""Validation loss vs wall-clock (or tokens) of the char-LM recipe, and of the baseline.

Examples::

    python benchmarks/charlm_curve.py --minutes 9 --marks 1,3,9          # rnnkit RECIPE
    python benchmarks/charlm_curve.py --baseline --minutes 9 --marks 3,9  # reference
    python benchmarks/charlm_curve.py --tokens 2e6 --token-marks 5e5,1e6,2e6 --hidden 384
    python benchmarks/charlm_curve.py --throughput 30 --hidden 384 --batch 64

The training clock counts only training steps: evaluation time at the marks is
excluded (the clock is paused).  At each mark the model is evaluated on the full
200k-character validation split (``--eval-chars`` to use a prefix), cut into
``--eval-streams`` parallel contiguous streams with carried state.  The learning-rate
schedule runs on the fraction of the time budget (``--minutes``) or, with ``--tokens``,
of the token budget.  Self-contained: its own TBPTT batching loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rnnkit.datasets import CharVocab, char_lm_split, load_shakespeare, load_text_file  # noqa: E402
from rnnkit.tasks.charlm import (  # noqa: E402
    BASELINE,
    RECIPE,
    CharLM,
    CharLMRecipe,
    detach_state,
    lr_at,
)

OVERRIDES = {  # CLI flag -> recipe field
    "hidden": "hidden_size", "layers": "num_layers", "emb": "embedding_dim",
    "dropout": "dropout", "batch": "batch_size", "seq": "seq_len", "lr": "lr",
    "clip": "clip", "warmup": "warmup", "final_lr_ratio": "final_lr_ratio",
    "schedule": "schedule", "weight_decay": "weight_decay", "beta2": "betas",
}  # fmt: skip


def stream_batches(ids: torch.Tensor, batch: int, seq: int, offset: int = 0):
    """Yield (x (B, T), y (B, T)) windows of B contiguous streams of ``ids`` forever.

    Each pass over the data starts the streams at a new offset (so window
    boundaries move); the caller resets the state when ``new_epoch`` is True.
    """
    epoch = 0
    while True:
        start = (offset + epoch * 37) % seq
        n = (len(ids) - 1 - start) // batch
        data = ids[start : start + n * batch + 1]
        xs = data[:-1][: n * batch].view(batch, n)
        ys = data[1:][: n * batch].view(batch, n)
        for i, t in enumerate(range(0, n - seq + 1, seq)):
            yield epoch, i == 0, xs[:, t : t + seq], ys[:, t : t + seq]
        epoch += 1


@torch.no_grad()
def evaluate(model: CharLM, ids: torch.Tensor, streams: int = 100, chunk: int = 250) -> float:
    """Mean nats/char over ``ids`` (N,), predicting ids[1:] from ids[:-1]."""
    model.eval()
    n = (len(ids) - 1) // streams
    x = ids[: n * streams].view(streams, n)
    y = ids[1 : n * streams + 1].view(streams, n)
    total, state = 0.0, None
    for t in range(0, n, chunk):
        logits, state = model(x[:, t : t + chunk], state)
        total += F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), y[:, t : t + chunk].reshape(-1), reduction="sum"
        ).item()
    model.train()
    return total / (n * streams)


def build_recipe(args: argparse.Namespace) -> CharLMRecipe:
    recipe = BASELINE if args.baseline else RECIPE
    changes = {}
    for flag, field in OVERRIDES.items():
        v = getattr(args, flag)
        if v is not None:
            changes[field] = (0.9, v) if field == "betas" else v
    return dataclasses.replace(recipe, **changes)


def parse_marks(s: str | None) -> list[float]:
    return sorted(float(m) for m in s.split(",")) if s else []


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="training wall-clock budget")
    p.add_argument("--marks", default=None, help="minute marks to evaluate at, e.g. 1,3,9")
    p.add_argument("--tokens", type=float, default=None, help="token budget instead of minutes")
    p.add_argument("--token-marks", default=None, help="token marks, e.g. 5e5,1e6")
    p.add_argument("--baseline", action="store_true", help="start from the baseline config")
    p.add_argument("--throughput", type=int, default=0, help="only time N steps, print tok/s")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="a UTF-8 text file instead of Shakespeare")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--eval-chars", type=int, default=200_000)
    p.add_argument("--eval-streams", type=int, default=100)
    p.add_argument("--json", default=None, help="append a JSON line with the results here")
    p.add_argument("--tag", default="")
    for flag, field in OVERRIDES.items():
        ftype = type(getattr(RECIPE, field)) if field != "betas" else float
        p.add_argument("--" + flag.replace("_", "-"), type=ftype, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    recipe = build_recipe(args)

    try:
        text = load_text_file(args.data) if args.data else load_shakespeare(args.cache_dir)
    except (OSError, ValueError, RuntimeError) as exc:
        sys.exit(f"error: {exc}")
    vocab = CharVocab.from_text(text)
    train_text, valid_text = char_lm_split(text)
    train_ids, valid_ids = vocab.encode(train_text), vocab.encode(valid_text[: args.eval_chars])
    model = CharLM(len(vocab), recipe.hidden_size, recipe.num_layers, recipe.embedding_dim, recipe.dropout)
    opt = torch.optim.Adam(
        model.parameters(), lr=lr_at(recipe, 0.0), betas=recipe.betas,
        weight_decay=recipe.weight_decay,
    )  # fmt: skip
    nparams = sum(q.numel() for q in model.parameters())
    print(f"# {args.tag} {json.dumps(recipe.to_dict())} params={nparams}", flush=True)

    budget_s = args.minutes * 60
    by_tokens = args.tokens is not None
    minute_marks = [m * 60 for m in parse_marks(args.marks)]
    marks = parse_marks(args.token_marks) if by_tokens else minute_marks
    end = args.tokens if by_tokens else budget_s
    if not marks or marks[-1] < end:
        marks.append(end)
    results, state, tokens, train_s, step = [], None, 0, 0.0, 0
    tok_per_step = recipe.batch_size * recipe.seq_len
    batches = stream_batches(train_ids, recipe.batch_size, recipe.seq_len)
    loss_ema, t_thr = None, None
    while True:
        progress = tokens / args.tokens if by_tokens else train_s / budget_s
        if marks and (tokens if by_tokens else train_s) >= marks[0] - 1e-9:
            mark = marks.pop(0)
            # the mark in the unit it was given in: tokens, or minutes (the clock counts seconds)
            mark_label = f"{mark:g} tokens" if by_tokens else f"{mark / 60:g} min"
            t0 = time.perf_counter()
            val = evaluate(model, valid_ids, args.eval_streams)
            r = {"minutes": train_s / 60, "tokens": tokens, "val": val,
                 "tok_s": tokens / max(train_s, 1e-9), "train_ema": loss_ema,
                 "eval_s": time.perf_counter() - t0, "mark": mark if by_tokens else mark / 60,
                 "load1": os.getloadavg()[0]}  # fmt: skip
            results.append(r)
            print(
                f"mark={mark_label}: min={r['minutes']:.2f} tokens={tokens} val={val:.4f} "
                f"train~{loss_ema or math.nan:.3f} tok/s={r['tok_s']:.0f} eval={r['eval_s']:.1f}s "
                f"load1={r['load1']:.1f}",
                flush=True,
            )
            if not marks:
                break
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(recipe, progress)
        epoch, new_epoch, x, y = next(batches)
        if new_epoch:
            state = None
        logits, state = model(x, state)
        state = detach_state(state)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        opt.step()
        train_s += time.perf_counter() - t0
        tokens += tok_per_step
        step += 1
        li = loss.item()
        loss_ema = li if loss_ema is None else 0.98 * loss_ema + 0.02 * li
        if args.throughput:
            if step == 3:  # warm-up steps excluded
                t_thr, tok_thr = train_s, tokens
            if step == 3 + args.throughput:
                tps = (tokens - tok_thr) / (train_s - t_thr)
                ms = 1000 * (train_s - t_thr) / args.throughput
                print(f"throughput tok/s={tps:.0f} step_ms={ms:.1f}")
                results.append({"tok_s": tps})
                break
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"tag": args.tag, "recipe": recipe.to_dict(), "params": nparams,
                                "results": results}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

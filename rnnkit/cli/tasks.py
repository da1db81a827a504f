"""``rnnkit train classify|tag|seq2seq|memory`` (and ``forecast``: :mod:`rnnkit.cli.forecast`):
one thin function per task.

Each builds its data and model from :mod:`rnnkit.tasks`, trains with
:class:`rnnkit.train.Trainer` into ``--out`` and prints/writes the task's metrics. Under
torchrun each rank trains on its share of every global batch (``**ranks()``) and validates on
the whole validation set (the ranks' identical sums average to the one-process value).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from rnnkit.arch import Given, add_arch_arguments, describe_arch
from rnnkit.cli import CLIError
from rnnkit.cli.common import (
    add_run_arguments,
    data_record,
    echo,
    make_trainer,
    positive_int,
    prepare_out,
    ranks,
    refuse_unread,
    require,
)
from rnnkit.cli.finish import describe_values, finish
from rnnkit.cli.rundir import data_fingerprints
from rnnkit.cli.runflags import checked_arch_config
from rnnkit.cli.sampling import add_sampling_arguments, sampler_of
from rnnkit.tasks._common import batches

__all__ = ["add_train_parsers"]


def add_train_parsers(tsub: argparse._SubParsersAction) -> None:
    from rnnkit.cli import forecast  # (it imports this module's helpers)

    forecast.add_forecast_parser(tsub)

    p = tsub.add_parser(
        "classify",
        help="many-to-one classification (digits, anyplus1, text CSV)",
        description="Sequence classification from the output at the last valid step.",
    )
    p.add_argument(
        "--data",
        default="digits",
        metavar="digits|anyplus1|FILE.csv",
        help="digits (scikit-learn, rows as steps), anyplus1, or a CSV of text,label rows",
    )
    a = p.add_argument
    a("--tokens", choices=("word", "char"), default="word", action=Given, help="CSV tokens (default word)")
    a("--length", type=positive_int, default=32, action=Given, help="anyplus1 sequence length (default 32)")
    a("--n", type=positive_int, default=4000, action=Given, help="anyplus1 sequences (default 4000)")
    _embedding_dim(p, 32)
    add_arch_arguments(p, hidden=64, layers=1)
    add_run_arguments(p, task="classify", lr=3e-3, batch_size=32, epochs=10)
    p.set_defaults(func=train_classify)

    p = tsub.add_parser(
        "tag",
        help="part-of-speech tagging from CoNLL-U (bidirectional LSTM)",
        description="Many-to-many tagging with a bidirectional encoder.",
    )
    p.add_argument("--data", required=True, metavar="FILE.conllu", help="training sentences (CoNLL-U)")
    p.add_argument(
        "--valid", default=None, metavar="FILE.conllu", help="validation file (default: 10%% split)"
    )
    p.add_argument(
        "--tag-column", choices=("upos", "xpos"), default="upos",
        help="CoNLL-U column of the tags: universal (upos) or language-specific (xpos) (default upos)",
    )  # fmt: skip
    _embedding_dim(p, 64)
    add_arch_arguments(p, hidden=64, layers=1)
    add_run_arguments(p, task="tag", lr=3e-3, batch_size=32, epochs=10)
    p.set_defaults(func=train_tag)

    p = tsub.add_parser(
        "seq2seq",
        help="encoder-decoder: English number words <-> digits",
        description="Encoder-decoder with teacher forcing / scheduled sampling, greedy decoding.",
    )
    p.add_argument(
        "--direction", choices=("words2digits", "digits2words"), default="words2digits",
        help="words2digits: 'three hundred twelve' -> 312; digits2words: the reverse (default words2digits)",
    )  # fmt: skip
    p.add_argument(
        "--max-number", type=positive_int, default=10_000, help="numbers in [0, N) (default 10000)"
    )
    p.add_argument("--n-train", type=positive_int, default=5000, help="training pairs (default 5000)")
    p.add_argument("--n-valid", type=positive_int, default=500, help="validation pairs (default 500)")
    _embedding_dim(p, 32)
    add_sampling_arguments(p, "teacher")
    add_arch_arguments(p, hidden=128, layers=1)
    add_run_arguments(p, task="seq2seq", lr=3e-3, batch_size=64, epochs=20)
    p.set_defaults(func=train_seq2seq)

    from rnnkit.tasks.memory import TASKS

    p = tsub.add_parser(
        "memory",
        help="synthetic memory benchmarks: adding, copy, plus1, arith",
        description="Long-range memory benchmarks generated on the fly (deterministic in --seed).",
    )
    p.add_argument("--task", choices=TASKS, default="adding", help="which benchmark (default adding)")
    p.add_argument(
        "--length",
        type=positive_int,
        default=50,
        action=Given,
        help="sequence length (copy: the lag; not arith's, see --digits; default 50)",
    )
    a = p.add_argument
    a(
        "--digits",
        type=positive_int,
        default=3,
        action=Given,
        help="arith: digits per operand, at most 18 (default 3)",
    )
    a("--n-symbols", type=positive_int, default=8, action=Given, help="copy: alphabet size (default 8)")
    a("--n-copy", type=positive_int, default=10, action=Given, help="copy: symbols to remember (default 10)")
    p.add_argument("--n-train", type=positive_int, default=10_000, help="training sequences (default 10000)")
    p.add_argument("--n-valid", type=positive_int, default=1000, help="validation sequences (default 1000)")
    add_arch_arguments(p, hidden=128, layers=1)
    add_run_arguments(p, task="memory", lr=1e-3, batch_size=64, epochs=10)
    p.set_defaults(func=train_memory)


def _embedding_dim(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--embedding-dim", type=positive_int, action=Given, default=default,
                   help=f"token embedding size (default {default})")  # fmt: skip


def _describe(model: torch.nn.Module, encoder: torch.nn.Module) -> None:
    echo(f"model {describe_arch(encoder)}; total {sum(p.numel() for p in model.parameters()):,} parameters")


def _optimizer(args: argparse.Namespace, model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=args.lr)


# ---------------------------------------------------------------------------- classify
def train_classify(args: argparse.Namespace) -> int:
    from rnnkit.tasks import classify as C

    if args.data not in ("digits", "anyplus1") and not args.data.lower().endswith(".csv"):
        # a bad flag value, not a bad file: a usage error, as the others (the library's ValueError was 1)
        raise CLIError(
            f"--data must be digits, anyplus1 or a FILE.csv of text,label rows, got {args.data!r}", code=2
        )
    # each source's own flags (digits: none; anyplus1: --length --n; a CSV: --tokens --embedding-dim)
    csv = args.data not in ("digits", "anyplus1")
    unread = ("length", "n") if csv else ("tokens", "embedding_dim")
    unread += ("length", "n") if args.data == "digits" else ()
    refuse_unread(args, unread, f"--data {'FILE.csv' if csv else args.data}")
    if args.data == "digits":
        require("sklearn", "--data digits")
    if args.data == "anyplus1" and args.n < 2:  # a bad flag value: a usage error, as the others
        raise CLIError(
            f"--n: anyplus1 needs at least 2 sequences (to train and to validate), got {args.n}", code=2
        )
    cd = C.load_classification(args.data, tokens=args.tokens, length=args.length, n=args.n, seed=args.seed)
    run = prepare_out(
        args,
        {
            "task": "classify",
            # anyplus1 is generated: its flags are what --resume checks
            "data": {"name": cd.name, "length": args.length, "n": args.n}
            if cd.name == "anyplus1"
            else cd.name
            if cd.name == "digits"
            else data_record(args.data),
            # a CSV's size and SHA-256 (digits: scikit-learn's, anyplus1: generated; neither recorded)
            "fingerprints": data_fingerprints(data=args.data if csv else None),
            "classes": cd.classes,
            "vocab": cd.vocab,
            "tokens": args.tokens if cd.vocab else None,
            "model": {
                "arch": checked_arch_config(args),
                **cd.model_kwargs,
                **({"embedding_dim": args.embedding_dim} if cd.vocab else {}),
            },
        },
    )
    mk = {k: v for k, v in run["model"].items() if k != "arch"}
    model = C.classifier(run["model"]["arch"], len(cd.classes), mk)
    echo(
        f"data {cd.name}: {len(cd.train)} train / {len(cd.valid)} valid sequences, {len(cd.classes)} classes"
    )
    _describe(model, model.encoder)
    train = C.loader(cd, "train", args.batch_size, shuffle=True, seed=args.seed, **ranks())
    valid = C.loader(cd, "valid", 256, shuffle=False)
    trainer = make_trainer(
        args, model, _optimizer(args, model), step_fn=C.step_fn, carry_state=False, perplexity=True
    )
    result = trainer.fit(train, valid)
    finish(args, trainer, result, C.evaluate(model, valid), valid)
    return 0


# ---------------------------------------------------------------------------- tag
def train_tag(args: argparse.Namespace) -> int:
    from rnnkit.tasks import tag as T

    td = T.load_tagging(args.data, valid=args.valid, seed=args.seed, column=args.tag_column)
    run = prepare_out(
        args,
        {
            "task": "tag",
            "data": data_record(args.data),
            # the --valid file; null: a split of --data (what --resume checks too)
            "valid_data": data_record(args.valid) if args.valid else None,
            "fingerprints": data_fingerprints(data=args.data, valid_data=args.valid),  # their bytes, too
            "tags": td.tags,
            "words": len(td.words),
            "vocab": td.words,  # `rnnkit predict` encodes new sentences with it
            "model": {
                "arch": checked_arch_config(args, bidirectional=True),  # the tagger's: centred kernels
                "embedding_dim": args.embedding_dim,
            },
        },
    )
    model = T.tagger(run["model"]["arch"], len(td.words), len(td.tags), run["model"]["embedding_dim"])
    echo(f"data {args.data}: {len(td.train)} train / {len(td.valid)} valid sentences, {len(td.tags)} tags")
    _describe(model, model.encoder)
    train = T.loader(td.train, args.batch_size, shuffle=True, seed=args.seed, **ranks())
    valid = T.loader(td.valid, 256, shuffle=False)
    trainer = make_trainer(
        args, model, _optimizer(args, model), step_fn=T.step_fn, carry_state=False, perplexity=True
    )
    result = trainer.fit(train, valid)
    finish(args, trainer, result, T.evaluate(model, valid), valid)
    return 0


# ---------------------------------------------------------------------------- seq2seq
def train_seq2seq(args: argparse.Namespace) -> int:
    from rnnkit.tasks import seq2seq as S
    from rnnkit.train import ScheduledSampler, lm_loss

    sampler, free = sampler_of(args), ScheduledSampler(0.0)
    # the pairs' numbers are distinct (disjoint train/validation): flags that cannot be drawn
    # together are a usage error (the library's error named its arguments, not the flags)
    if args.n_train + args.n_valid > args.max_number:
        raise CLIError(
            f"--n-train {args.n_train} + --n-valid {args.n_valid} pairs need as many distinct numbers: "
            f"--max-number {args.n_train + args.n_valid} or more, got {args.max_number}", code=2
        )  # fmt: skip
    if args.max_number > 10**9:
        raise CLIError(f"--max-number must be at most 10**9, got {args.max_number}", code=2)
    data = S.Seq2SeqData.generate(
        args.n_train, args.n_valid, max_number=args.max_number, direction=args.direction, seed=args.seed
    )
    run = prepare_out(
        args,
        {
            "task": "seq2seq",
            "direction": args.direction,
            # what --resume checks: the generated pairs' flags
            "data": {
                "direction": args.direction,
                "max_number": args.max_number,
                "n_train": args.n_train,
                "n_valid": args.n_valid,
            },
            "model": {
                "arch": checked_arch_config(args),
                "embedding_dim": args.embedding_dim,
                "src_vocab": data.src_vocab,
                "tgt_vocab": data.tgt_vocab,
            },
        },
    )
    m = run["model"]
    model = S.Seq2Seq(m["arch"], len(m["src_vocab"]), len(m["tgt_vocab"]), m["embedding_dim"])
    echo(
        f"data {args.direction}: {len(data.train)} train / {len(data.valid)} valid pairs, numbers in "
        f"[0, {args.max_number})"
    )
    _describe(model, model.encoder)
    train = batches(
        data.train, args.batch_size, shuffle=True, seed=args.seed, collate_fn=S.collate, **ranks()
    )
    valid = DataLoader(data.valid, batch_size=256, collate_fn=S.collate)
    trainer = None

    def step_fn(mod, batch, state):  # validation decodes free-running (its own predictions)
        src, tgt, lengths = batch
        smp, step = (sampler, trainer.step) if mod.training else (free, 0)
        return lm_loss(mod(src, lengths, tgt, smp, step), tgt), None

    trainer = make_trainer(
        args, model, _optimizer(args, model), step_fn=step_fn, carry_state=False, perplexity=True
    )
    result = trainer.fit(train, valid)
    acc = S.exact_match(model, data.valid, device=trainer.device)
    finish(args, trainer, result, {"valid_exact_match": acc}, valid)
    return 0


# ---------------------------------------------------------------------------- memory
def train_memory(args: argparse.Namespace) -> int:
    from rnnkit.tasks import memory as M

    own = {"arith": ("digits",), "copy": ("length", "n_symbols", "n_copy")}.get(args.task, ("length",))
    unread = tuple(f for f in ("length", "digits", "n_symbols", "n_copy") if f not in own)
    refuse_unread(args, unread, f"--task {args.task}")
    if args.task == "arith" and args.digits > M.ARITH_MAX_DIGITS:  # a bad flag value: a usage error
        raise CLIError(
            f"--digits must be at most {M.ARITH_MAX_DIGITS} (int64 operands), got {args.digits}", code=2
        )
    task = M.make_task(
        args.task,
        length=args.length,
        n_train=args.n_train,
        n_valid=args.n_valid,
        seed=args.seed,
        n_symbols=args.n_symbols,
        n_copy=args.n_copy,
        digits=args.digits,
    )
    run = prepare_out(
        args,
        {
            "task": "memory",
            "benchmark": task.name,
            "params": task.params,
            # what --resume checks: the generated task's flags
            "data": {"task": task.name, **task.params, "n_train": args.n_train, "n_valid": args.n_valid},
            "model": {"arch": checked_arch_config(args)},
        },
    )
    model = M.memory_model(task.name, run["model"]["arch"], task.params)
    echo(
        f"data {task.name} ({describe_values(task.params)}): {args.n_train} train / {args.n_valid} "
        f"valid sequences; baseline {describe_values(task.baseline)}"
    )
    _describe(model, model.encoder)
    train = batches(TensorDataset(*task.train), args.batch_size, shuffle=True, seed=args.seed, **ranks())
    valid = DataLoader(TensorDataset(*task.valid), batch_size=256)
    trainer = make_trainer(
        args, model, _optimizer(args, model), loss_fn=M.loss_fn(task.name), carry_state=False
    )
    result = trainer.fit(train, valid)
    metrics: dict[str, Any] = M.evaluate(task, model)
    metrics.update({f"baseline_{k}": v for k, v in task.baseline.items()})
    finish(args, trainer, result, metrics, valid)
    return 0

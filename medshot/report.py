"""Statistics, tables and plots of a ``medshot evaluate`` run, made from its cases.csv rows alone.

Files (all written together, atomically):

- ``summary.csv``: per metric x item (``all`` pools every label or landmark of every pair) x method:
  n, mean, sd, median, 95 % bootstrap CI of the mean, the spread over template choices, and the
  paired Wilcoxon signed-rank p-value against the best baseline with its number of pairs. It holds
  only numbers that follow from the data, so reruns and resumed runs reproduce it byte for byte.
- ``by_template.csv``: the mean of each metric per method and template.
- ``timing.csv``: seconds and peak memory per case, by method (these vary from run to run).
- ``methods.csv``: each method that ran, and each requested one that was skipped with the reason.
- ``table.png``, ``box_<metric>.png``, ``templates_<metric>.png``, ``overlays.png`` and a
  self-contained ``report.html`` with all of them embedded.
"""

from __future__ import annotations

import base64
import html
import io as _io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import OutputSet, write_csv

# metric -> (label in tables, higher is better, row kind it is read from)
METRICS: dict[str, tuple[str, bool, str]] = {
    "dice": ("Dice", True, "label"),
    "hd95_px": ("HD95 (px)", False, "label"),
    "hd95_mm": ("HD95 (mm)", False, "label"),
    "ned": ("NED", False, "landmark"),
    "distance_px": ("distance (px)", False, "landmark"),
    "distance_mm": ("distance (mm)", False, "landmark"),
}
SUMMARY_HEADER = ("metric", "item", "item_name", "method", "n", "n_inf", "mean", "sd", "median", "ci95_low",
                  "ci95_high", "n_templates", "template_sd", "vs_baseline", "n_pairs", "wilcoxon_p")
N_BOOTSTRAP = 2000


@dataclass
class ReportContext:
    """What the report needs besides cases.csv: run order, skipped methods, where the images are."""

    title: str
    methods: list[str]
    baselines: list[str]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (name, backbone|segmenter, reason)
    images: dict[str, Path] = field(default_factory=dict)  # case name -> image file
    masks: dict[str, Path] = field(default_factory=dict)  # case name -> ground-truth label map
    label_names: dict[int, str] = field(default_factory=dict)
    predictions_dir: Path | None = None
    window: tuple[float, float] | None = None
    memory_probe: str = "rss"
    failures: list[tuple[str, str, str, str]] = field(default_factory=list)  # template, target, method, error
    settings: dict[str, str] = field(default_factory=dict)


def prediction_path(predictions_dir: Path, method: str, template: str, target: str) -> Path:
    """Where a case's predicted label map is kept (``predictions/<method>/<template>__<target>.png``)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in method)
    return Path(predictions_dir) / slug / f"{template}__{target}.png"


# ------------------------------------------------------------------------------------------------
# Statistics (plain functions on arrays)
# ------------------------------------------------------------------------------------------------


def bootstrap_ci(values: np.ndarray, level: float = 0.95, n_boot: int = N_BOOTSTRAP,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (fixed seed: reproducible)."""
    x = np.asarray(values, float)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_wilcoxon(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Two-sided Wilcoxon signed-rank p-value of paired samples and the number of pairs.

    Exact distribution for up to 50 pairs without zero or tied differences, else the normal
    approximation with tie correction (zero differences dropped, as ``zero_method="wilcox"``).
    NaN with fewer than two pairs; 1.0 when every difference is zero.
    """
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n < 2:
        return float("nan"), n
    d = a - b
    if np.all(d == 0):
        return 1.0, n
    magnitudes = np.abs(d)
    exact = n <= 50 and np.all(d != 0) and len(np.unique(magnitudes)) == n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(a, b, method="exact" if exact else "approx").pvalue), n


def describe(values: np.ndarray) -> dict[str, float]:
    """n, n_inf, mean, sd (ddof 1), median and bootstrap CI; inf values count in n and median only."""
    x = np.asarray(values, float)
    finite = x[np.isfinite(x)]
    lo, hi = bootstrap_ci(finite)
    return {
        "n": len(x), "n_inf": int(np.sum(np.isinf(x))),
        "mean": float(finite.mean()) if len(finite) else float("nan"),
        "sd": float(finite.std(ddof=1)) if len(finite) > 1 else float("nan"),
        "median": float(np.median(x)) if len(x) else float("nan"),
        "ci95_low": lo, "ci95_high": hi,
    }


def observations(rows: Sequence[dict]) -> dict[str, dict[str, dict[tuple[str, str, str], float]]]:
    """``{metric: {method: {(template, target, item): value}}}`` from cases.csv rows.

    Label rows count only where the truth holds the label (``in_truth`` = 1).
    """
    out: dict[str, dict[str, dict[tuple[str, str, str], float]]] = {}
    for r in rows:
        if r["kind"] == "label" and r["in_truth"] != "1":
            continue
        for metric, (_, _, kind) in METRICS.items():
            if r["kind"] == kind and r.get(metric, "") != "":
                out.setdefault(metric, {}).setdefault(r["method"], {})[(r["template"], r["target"], r["item"])] = \
                    float(r[metric])
    return out


def _item_order(item: str) -> tuple:
    return (0, int(item), "") if item.lstrip("-").isdigit() else (1, 0, item)


def best_baseline(obs: dict[str, dict[tuple, float]], metric: str, baselines: Sequence[str]) -> str | None:
    """The baseline with the best mean of ``metric`` over all its (finite) values; ties go to the first listed."""
    higher = METRICS[metric][1]
    best, best_value = None, None
    for name in baselines:
        vals = np.array([v for v in obs.get(name, {}).values() if np.isfinite(v)])
        if len(vals) == 0:
            continue
        m = float(vals.mean())
        if best_value is None or (m > best_value if higher else m < best_value):
            best, best_value = name, m
    return best


def summarize(rows: Sequence[dict], methods: Sequence[str], baselines: Sequence[str]) -> list[dict]:
    """summary.csv rows: per metric, item (``all`` first) and method (in ``methods`` order)."""
    obs = observations(rows)
    names = {r["item"]: r["item_name"] for r in rows}
    out = []
    for metric in METRICS:
        if metric not in obs:
            continue
        per_method = obs[metric]
        ref = best_baseline(per_method, metric, baselines)
        items = sorted({k[2] for m in per_method.values() for k in m}, key=_item_order)
        for item in ["all", *items]:
            for method in methods:
                values = {k: v for k, v in per_method.get(method, {}).items() if item == "all" or k[2] == item}
                if not values:
                    continue
                keys = sorted(values)
                row = {"metric": metric, "item": item, "item_name": "all" if item == "all" else names.get(item, item),
                       "method": method, **describe(np.array([values[k] for k in keys]))}
                by_t = _template_means(values)
                row["n_templates"] = len(by_t)
                row["template_sd"] = float(np.std(list(by_t.values()), ddof=1)) if len(by_t) > 1 else float("nan")
                row["vs_baseline"] = ref or ""
                row["wilcoxon_p"], row["n_pairs"] = float("nan"), ""
                if ref is not None and method != ref:
                    other = per_method[ref]
                    pairs = [k for k in keys if k in other and np.isfinite(values[k]) and np.isfinite(other[k])]
                    p, n = paired_wilcoxon(np.array([values[k] for k in pairs]), np.array([other[k] for k in pairs]))
                    row["wilcoxon_p"], row["n_pairs"] = p, n
                out.append(row)
    return out


def _template_means(values: dict[tuple[str, str, str], float]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for (template, _, _), v in values.items():
        if np.isfinite(v):
            groups.setdefault(template, []).append(v)
    return {t: float(np.mean(v)) for t, v in sorted(groups.items())}


def by_template(rows: Sequence[dict], methods: Sequence[str]) -> list[list]:
    """by_template.csv rows: metric, method, template, n, mean (over all items and targets)."""
    obs = observations(rows)
    out = []
    for metric in METRICS:
        for method in methods:
            values = obs.get(metric, {}).get(method)
            if not values:
                continue
            counts: dict[str, int] = {}
            for t, _, _ in values:
                counts[t] = counts.get(t, 0) + 1
            out.extend([metric, method, t, counts[t], m] for t, m in _template_means(values).items())
    return out


def timing(rows: Sequence[dict], methods: Sequence[str]) -> list[list]:
    """timing.csv rows: method, cases, mean/median/total seconds per case, median/max peak memory (MB)."""
    per_case: dict[str, dict[tuple[str, str], tuple[float, float]]] = {}
    for r in rows:
        per_case.setdefault(r["method"], {})[(r["template"], r["target"])] = (float(r["seconds"]),
                                                                             float(r["peak_mem_mb"]))
    out = []
    for method in methods:
        cases = per_case.get(method)
        if not cases:
            continue
        s = np.array([v[0] for v in cases.values()])
        mem = np.array([v[1] for v in cases.values()])
        out.append([method, len(s), float(s.mean()), float(np.median(s)), float(s.sum()), float(np.median(mem)),
                    float(mem.max())])
    return out


# ------------------------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------------------------


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _fmt(v, digits: int = 3) -> str:
    if v == "" or v is None:
        return ""
    v = float(v)
    if np.isnan(v):
        return ""
    if np.isinf(v):
        return "inf"
    decimals = 0 if v == 0 else int(np.clip(digits - 1 - np.floor(np.log10(abs(v))), 0, 6))
    return f"{v:.{decimals}f}"  # ``digits`` significant digits, fixed notation


def table_rows(summary: Sequence[dict]) -> list[list[str]]:
    """Per-task table: one line per metric x method of item ``all``."""
    lines = []
    for r in summary:
        if r["item"] != "all":
            continue
        p = "" if r["n_pairs"] == "" else f"{_fmt(r['wilcoxon_p'])} (n={r['n_pairs']})"
        if r["method"] == r["vs_baseline"]:
            p = "reference"
        lines.append([METRICS[r["metric"]][0], r["method"], f"{_fmt(r['mean'])} ± {_fmt(r['sd'])}", _fmt(r["median"]),
                      f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]", _fmt(r["template_sd"]), p])
    return lines


TABLE_HEADER = ["metric", "method", "mean ± sd", "median", "95 % CI", "sd over templates",
                "Wilcoxon p vs best baseline"]


def plot_table(summary: Sequence[dict], title: str) -> bytes:
    plt = _pyplot()
    lines = table_rows(summary)
    widths = np.array([max(len(str(c)) for c in col) for col in zip(TABLE_HEADER, *lines)], float) + 2
    fig, ax = plt.subplots(figsize=(0.075 * widths.sum(), 0.6 + 0.25 * (len(lines) + 1)))
    ax.axis("off")
    t = ax.table(cellText=lines or [[""] * len(TABLE_HEADER)], colLabels=TABLE_HEADER, loc="upper center",
                 cellLoc="left", colWidths=list(widths / widths.sum()), bbox=[0, 0, 1, 1])
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    ax.set_title(title, fontsize=10)
    return _figure_png(fig)


def plot_box(values: dict[str, np.ndarray], metric: str) -> bytes:
    plt = _pyplot()
    names = list(values)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.6), layout="constrained")
    data = [v[np.isfinite(v)] for v in values.values()]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(METRICS[metric][0])
    ax.set_title(f"{METRICS[metric][0]} per method (every label/landmark of every pair)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _figure_png(fig)


def plot_templates(means: dict[str, dict[str, float]], metric: str) -> bytes:
    """Mean per template choice (one dot each, joined per template) for each method."""
    plt = _pyplot()
    names = list(means)
    templates = sorted({t for m in means.values() for t in m})
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.6), layout="constrained")
    for i, t in enumerate(templates):
        xs = [j for j, m in enumerate(names) if t in means[m]]
        ys = [means[names[j]][t] for j in xs]
        ax.plot(xs, ys, "o-", alpha=0.7, lw=0.8, ms=5, label=t if i < 12 else None)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylabel(f"mean {METRICS[metric][0]}")
    ax.set_title(f"{METRICS[metric][0]}: spread over template choices", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="template", fontsize=7, title_fontsize=7, loc="best")
    return _figure_png(fig)


def pick_cases(per_pair: dict[tuple[str, str], float], higher: bool) -> list[tuple[str, tuple[str, str], float]]:
    """Best, median and worst (template, target) by value; ties broken by name (deterministic)."""
    order = sorted(per_pair, key=lambda k: ((-per_pair[k] if higher else per_pair[k]), k))
    if not order:
        return []
    picks = [("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])]
    return [(what, key, per_pair[key]) for what, key in picks]


def plot_overlays(rows: Sequence[dict], ctx: ReportContext, metric: str, methods: Sequence[str]) -> bytes | None:
    """Grid: one line per method, its best / median / worst pair by ``metric`` (mean over items)."""
    from .io import load_image, load_label_map, normalize_intensity
    from .viz import overlay

    obs = observations(rows).get(metric, {})
    higher = METRICS[metric][1]
    lines = []
    for method in methods:
        groups: dict[tuple[str, str], list[float]] = {}
        for (t, g, _), v in obs.get(method, {}).items():
            groups.setdefault((t, g), []).append(v)
        per_pair = {k: float(np.mean(v)) for k, v in groups.items()}
        picks = pick_cases(per_pair, higher)
        if picks:
            lines.append((method, picks))
    if not lines:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(lines), 3, figsize=(10, 3.3 * len(lines)), squeeze=False, layout="constrained")
    for ax_row, (method, picks) in zip(axes, lines):
        for ax, (what, (template, target), value) in zip(ax_row, picks):
            image = load_image(ctx.images[target])
            label_map = None
            if ctx.predictions_dir is not None:
                p = prediction_path(ctx.predictions_dir, method, template, target)
                if p.exists():
                    from PIL import Image

                    with Image.open(p) as im:
                        label_map = np.asarray(im)
            pred, truth = _landmarks_of(rows, method, template, target)
            pic = overlay(normalize_intensity(image.array, ctx.window), label_map, pred, truth, max_side=320)
            Hi, Wi = image.shape
            ax.imshow(pic, extent=(-0.5, Wi - 0.5, Hi - 0.5, -0.5))
            if target in ctx.masks:
                truth_map = load_label_map(ctx.masks[target], image.shape)
                for label in np.unique(truth_map[truth_map > 0]):
                    ax.contour(truth_map == label, levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_title(f"{method} — {what}\n{template} → {target}: {METRICS[metric][0]} {_fmt(value)}", fontsize=8)
            ax.axis("off")
        for ax in ax_row[len(picks):]:
            ax.axis("off")
    fig.suptitle("best / median / worst pair per method (template → target); green: ground truth", fontsize=10)
    return _figure_png(fig)


def _landmarks_of(rows, method, template, target) -> tuple[np.ndarray | None, np.ndarray | None]:
    mine = [r for r in rows if r["kind"] == "landmark" and r["method"] == method and r["template"] == template
            and r["target"] == target]
    if not mine:
        return None, None
    pred = np.array([[float(r["pred_x"]), float(r["pred_y"])] for r in mine])
    truth = np.array([[float(r["true_x"]), float(r["true_y"])] for r in mine])
    return pred, truth


# ------------------------------------------------------------------------------------------------
# Writing it all
# ------------------------------------------------------------------------------------------------


def write_report(out_dir: str | Path, rows: Sequence[dict], ctx: ReportContext) -> list[Path]:
    """Write summary.csv, by_template.csv, timing.csv, methods.csv, the PNGs and report.html together."""
    out_dir = Path(out_dir)
    summary = summarize(rows, ctx.methods, ctx.baselines)
    obs = observations(rows)
    pictures: dict[str, bytes] = {"table.png": plot_table(summary, ctx.title)}
    for metric in ("dice", "ned"):
        if metric not in obs:
            continue
        ran = [m for m in ctx.methods if m in obs[metric]]
        pictures[f"box_{metric}.png"] = plot_box({m: np.array(list(obs[metric][m].values())) for m in ran}, metric)
        means = {m: _template_means(obs[metric][m]) for m in ran}
        pictures[f"templates_{metric}.png"] = plot_templates(means, metric)
    primary = "dice" if "dice" in obs else ("ned" if "ned" in obs else None)
    if primary is not None:
        shown = [m for m in ctx.methods if m not in ctx.baselines][:5]
        ref = best_baseline(obs[primary], primary, ctx.baselines)
        shown += [ref] if ref else []
        grid = plot_overlays(rows, ctx, primary, shown)
        if grid is not None:
            pictures["overlays.png"] = grid
    times = timing(rows, ctx.methods)
    with OutputSet(out_dir) as out:
        write_csv(out.path_for("summary.csv"), SUMMARY_HEADER, ([r[k] for k in SUMMARY_HEADER] for r in summary))
        write_csv(out.path_for("by_template.csv"), ["metric", "method", "template", "n", "mean"],
                  by_template(rows, ctx.methods))
        write_csv(out.path_for("timing.csv"), ["method", "cases", "seconds_mean", "seconds_median", "seconds_total",
                                               "peak_mem_mb_median", "peak_mem_mb_max"], times)
        write_csv(out.path_for("methods.csv"), ["method", "status", "reason"],
                  [[m, "run", ""] for m in ctx.methods] + [[f"{what} {name}", "skipped", why]
                                                             for name, what, why in ctx.skipped])
        for name, data in pictures.items():
            out.path_for(name).write_bytes(data)
        out.path_for("report.html").write_text(_html(summary, times, pictures, ctx))
        return [out_dir / name for name in ("summary.csv", "by_template.csv", "timing.csv", "methods.csv",
                                            *pictures, "report.html")]


def _html_table(header: Sequence[str], lines: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in line) + "</tr>" for line in lines)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(summary, times, pictures: dict[str, bytes], ctx: ReportContext) -> str:
    esc = html.escape
    parts = [f"<h1>{esc(ctx.title)}</h1>",
             _html_table(["setting", "value"], list(ctx.settings.items())),
             "<h2>Methods</h2>",
             _html_table(["method", "status", "reason"],
                         [[m, "run", "baseline" if m in ctx.baselines else ""] for m in ctx.methods]
                         + [[f"{what} {name}", "skipped", why] for name, what, why in ctx.skipped])]
    if ctx.failures:
        parts += ["<h2>Failed cases (not in cases.csv; a rerun retries them)</h2>",
                  _html_table(["template", "target", "method", "error"], ctx.failures)]
    parts += ["<h2>Summary (all labels / landmarks pooled)</h2>", _html_table(TABLE_HEADER, table_rows(summary)),
              "<p>CI: 95 % percentile bootstrap of the mean (2000 resamples, seed 0). p: two-sided paired Wilcoxon "
              "signed-rank test against the baseline with the best mean, over the (template, target, item) triples "
              "both have (n = pairs). Label rows count only where the ground truth holds the label. HD95 means and "
              "CIs leave out infinite values (a label predicted empty); n_inf in summary.csv counts them.</p>"]
    for name in pictures:
        if name != "table.png":
            data = base64.b64encode(pictures[name]).decode()
            parts.append(f'<h3>{esc(name)}</h3><img alt="{esc(name)}" src="data:image/png;base64,{data}">')
    per_item = [r for r in summary if r["item"] != "all"]
    if per_item:
        lines = [[METRICS[r["metric"]][0], r["item_name"], r["method"], r["n"], f"{_fmt(r['mean'])} ± {_fmt(r['sd'])}",
                  _fmt(r["median"]), f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]",
                  "" if r["n_pairs"] == "" else f"{_fmt(r['wilcoxon_p'])} (n={r['n_pairs']})"] for r in per_item]
        parts += ["<details><summary>Per label / landmark</summary>",
                  _html_table(["metric", "item", "method", "n", "mean ± sd", "median", "95 % CI", "p vs best baseline"],
                              lines), "</details>"]
    parts += ["<h2>Time and memory per case</h2>",
              _html_table(["method", "cases", "s mean", "s median", "s total", "peak MB median", "peak MB max"],
                          [[t[0], t[1], *(_fmt(v) for v in t[2:])] for t in times]),
              f"<p>Seconds: wall time of one target (template features are computed once per template and method, "
              f"not counted). Peak memory: {esc(_MEMORY_TEXT.get(ctx.memory_probe, ctx.memory_probe))}.</p>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;font-size:14px}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(ctx.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


_MEMORY_TEXT = {
    "rss": "peak resident set size during the case minus the resident size before it (Linux /proc, peak reset "
           "per case)",
    "tracemalloc": "peak of Python-traced allocations during the case (numpy included, native libraries not)",
}

"""The report's pictures: the table, box plots, the spread over templates, best/median/worst overlays.

Every function returns PNG bytes (matplotlib, Agg backend).
"""

from __future__ import annotations

import io as _io
from collections.abc import Sequence

import numpy as np

from .context import ReportContext
from .stats import METRICS, metric_label, observations

TABLE_HEADER = ["metric", "method", "n (failed)", "mean ± sd", "median", "95 % CI", "sd over templates",
                "Wilcoxon p vs best baseline"]


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


def fmt(v, digits: int = 3) -> str:
    """A number with ``digits`` significant digits in fixed notation; "" for empty or NaN, "inf" for infinity."""
    if v == "" or v is None:
        return ""
    v = float(v)
    if np.isnan(v):
        return ""
    if np.isinf(v):
        return "inf"
    decimals = 0 if v == 0 else int(np.clip(digits - 1 - np.floor(np.log10(abs(v))), 0, 6))
    return f"{v:.{decimals}f}"


def table_rows(summary: Sequence[dict], element: str = "px") -> list[list[str]]:
    """Per-task table: one line per metric x method of item ``all``."""
    lines = []
    for r in summary:
        if r["item"] != "all":
            continue
        p = "" if r["n_pairs"] == "" else f"{fmt(r['wilcoxon_p'])} (n={r['n_pairs']})"
        if r["method"] == r["vs_baseline"]:
            p = "reference"
        # n shown beside the mean, failures in it: a method with fewer values cannot pass for the same sample
        lines.append([metric_label(r["metric"], element), r["method"], f"{r['n']} ({r.get('n_failed', 0)})",
                      f"{fmt(r['mean'])} ± {fmt(r['sd'])}",
                      fmt(r["median"]), f"[{fmt(r['ci95_low'])}, {fmt(r['ci95_high'])}]", fmt(r["template_sd"]), p])
    return lines


def plot_table(summary: Sequence[dict], title: str, element: str = "px") -> bytes:
    """The per-task table (:func:`table_rows`) as a picture."""
    plt = _pyplot()
    lines = table_rows(summary, element)
    widths = np.array([max(len(str(c)) for c in col) for col in zip(TABLE_HEADER, *lines)], float) + 2
    fig, ax = plt.subplots(figsize=(0.075 * widths.sum(), 0.6 + 0.25 * (len(lines) + 1)))
    ax.axis("off")
    t = ax.table(cellText=lines or [[""] * len(TABLE_HEADER)], colLabels=TABLE_HEADER, loc="upper center",
                 cellLoc="left", colWidths=list(widths / widths.sum()), bbox=[0, 0, 1, 1])
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    ax.set_title(title, fontsize=10)
    return _figure_png(fig)


def plot_box(values: dict[str, np.ndarray], metric: str, element: str = "px") -> bytes:
    """Box plot of ``{method: values}`` (finite values only)."""
    plt = _pyplot()
    names = list(values)
    label = metric_label(metric, element)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.6), layout="constrained")
    data = [v[np.isfinite(v)] for v in values.values()]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(f"{label} per method (every label/landmark of every pair)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _figure_png(fig)


def plot_templates(means: dict[str, dict[str, float]], metric: str, element: str = "px") -> bytes:
    """Mean per template choice (one dot each, joined per template) for each method."""
    plt = _pyplot()
    names = list(means)
    label = metric_label(metric, element)
    templates = sorted({t for m in means.values() for t in m})
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.6), layout="constrained")
    for i, t in enumerate(templates):
        xs = [j for j, m in enumerate(names) if t in means[m]]
        ys = [means[names[j]][t] for j in xs]
        ax.plot(xs, ys, "o-", alpha=0.7, lw=0.8, ms=5, label=t if i < 12 else None)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylabel(f"mean {label}")
    ax.set_title(f"{label}: spread over template choices", fontsize=9)
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
    from ...viz import overlay

    if ctx.view is None:
        return None
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
            view = ctx.view(method, template, target)
            pred, truth = _landmarks_of(rows, method, template, target)
            pic = overlay(view.image, view.label_map, pred, truth, max_side=320)
            Hi, Wi = view.image.shape
            ax.imshow(pic, extent=(-0.5, Wi - 0.5, Hi - 0.5, -0.5))
            if view.truth is not None:
                for label in np.unique(view.truth[view.truth > 0]):
                    ax.contour(view.truth == label, levels=[0.5], colors="lime", linewidths=0.8)
            score = f"{metric_label(metric, ctx.element)} {fmt(value)}"
            where = f"{template} → {target}" + (f"\n{view.note}, {score}" if view.note else f": {score}")
            ax.set_title(f"{method} — {what}\n{where}", fontsize=8)
            ax.axis("off")
        for ax in ax_row[len(picks):]:
            ax.axis("off")
    fig.suptitle("best / median / worst pair per method (template → target); green: ground truth", fontsize=10)
    return _figure_png(fig)


def _landmarks_of(rows, method, template, target) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Predicted and true ``(row, col)`` points of a 2D case (volumes' points are not drawn on a slice)."""
    mine = [r for r in rows if r["kind"] == "landmark" and r["method"] == method and r["template"] == template
            and r["target"] == target and r.get("pred_x", "") != ""]  # a failed case predicted nothing
    if not mine:
        return None, None
    # cases.csv keeps the files' x = column, y = row
    pred = np.array([[float(r["pred_y"]), float(r["pred_x"])] for r in mine])
    truth = np.array([[float(r["true_y"]), float(r["true_x"])] for r in mine])
    return pred, truth

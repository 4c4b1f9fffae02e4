"""The report's pictures: the table, box plots, the spread over templates, best/median/worst overlays.

Every ``plot_*`` function returns PNG bytes (matplotlib, Agg backend).
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
    ax.set_xticks(range(1, len(names) + 1), [_fit(n, 1.15 * 72, 8) for n in names], fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(f"{label} per method (every label/landmark of every pair)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _figure_png(fig)


def plot_templates(values: dict[str, dict[tuple[str, str, str], float]], metric: str, element: str = "px") -> bytes:
    """:func:`templates_figure` as PNG bytes."""
    return _figure_png(templates_figure(values, metric, element))


def templates_figure(values: dict[str, dict[tuple[str, str, str], float]], metric: str, element: str = "px"):
    """How much the choice of template matters, per method, as a categorical strip plot.

    Parameters
    ----------
    values : dict
        ``{method: {(template, target, item): value}}`` (:func:`.stats.observations` of one metric).
    metric : str
    element : str
        Unit word of array distances (``"px"`` or ``"voxels"``).

    Returns
    -------
    matplotlib.figure.Figure
        With several templates: one dot per template (its mean, coloured by template) and the
        mean ± sd over templates per method. With one template there is no spread over templates to
        show, so the dots are that template's targets (mean over items per target) instead. Methods
        are categories, so nothing is drawn from one method to the next.
    """
    plt = _pyplot()
    names = list(values)
    label = metric_label(metric, element)
    templates = sorted({t for v in values.values() for (t, _, _) in v})
    one = len(templates) == 1
    # 1.5 in per method column (its name is fitted to 1.2 in), the y label and a legend of 1.6 in
    fig, ax = plt.subplots(figsize=(3.2 + 1.5 * len(names), 3.8), layout="constrained")
    room = 1.5 * len(names) * 72  # the axes' width, in points, for its title
    colours = plt.get_cmap("tab10")
    for j, method in enumerate(names):
        groups = _means_by(values[method], 1 if one else 0)
        keys = list(groups)
        ys = np.array([groups[k] for k in keys])
        if ys.size == 0:
            continue
        # spread the dots sideways so equal values stay visible, deterministically
        xs = j + (np.linspace(-0.18, 0.18, ys.size) if ys.size > 1 else np.zeros(1))
        if one:
            ax.scatter(xs, ys, s=22, color="tab:blue", alpha=0.7, zorder=2,
                       label="one target" if j == 0 else None)
        else:
            for x, y, k in zip(xs, ys, keys):
                i = templates.index(k)
                ax.scatter([x], [y], s=26, color=colours(i % 10), zorder=2,
                           label=_fit(k, 1.4 * 72, 7) if i < 12 else None)  # listed once
        ax.errorbar([j + 0.3], [ys.mean()], yerr=[ys.std(ddof=1) if ys.size > 1 else 0.0], fmt="_", ms=14,
                    color="black", capsize=4, zorder=3, label="mean ± sd" if j == 0 else None)
    ax.set_xticks(range(len(names)), [_fit(n, 1.2 * 72, 8) for n in names], fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    if one:
        ax.set_ylabel(f"{label} (mean per target)")
        ax.set_title(_fit(f"{label} per method; one template ({templates[0]}): one dot per target", room, 9),
                     fontsize=9)
    else:
        ax.set_ylabel(f"mean {label} per template")
        ax.set_title(_fit(f"{label}: spread over {len(templates)} template choices (one dot per template)", room, 9),
                     fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    ax.legend(seen.values(), seen.keys(), title=None if one else "template", fontsize=7, title_fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _means_by(values: dict[tuple[str, str, str], float], position: int) -> dict[str, float]:
    """Mean of the finite values grouped by the key's ``position`` (0: template, 1: target), sorted by name."""
    groups: dict[str, list[float]] = {}
    for key, v in values.items():
        if np.isfinite(v):
            groups.setdefault(key[position], []).append(v)
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}


def pick_cases(per_pair: dict[tuple[str, str], float], higher: bool) -> list[tuple[str, tuple[str, str], float]]:
    """Best, median and worst (template, target) by value; ties broken by name (deterministic)."""
    order = sorted(per_pair, key=lambda k: ((-per_pair[k] if higher else per_pair[k]), k))
    if not order:
        return []
    picks = [("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])]
    return [(what, key, per_pair[key]) for what, key in picks]


def plot_overlays(rows: Sequence[dict], ctx: ReportContext, metric: str, methods: Sequence[str]) -> bytes | None:
    """Grid: one line per method, its best / median / worst pair by ``metric`` (mean over items); PNG or None."""
    fig = overlay_figure(rows, ctx, metric, methods)
    return None if fig is None else _figure_png(fig)


OVERLAY_COLUMN_IN = 3.4  # width of one overlay panel (inches); titles are wrapped to fit it
TITLE_PT = 8


def overlay_figure(rows: Sequence[dict], ctx: ReportContext, metric: str, methods: Sequence[str]):
    """The overlay grid as a matplotlib figure (the caller saves or closes it), or None without pictures.

    Each method is a sub-figure headed by its name, so the panels' titles only say which pair and
    how it scored; every title is wrapped to its panel's width as the font measures it, so long
    method, template or target names never run into the next panel.
    """
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
    fig = plt.figure(figsize=(3 * OVERLAY_COLUMN_IN, 3.6 * len(lines) + 0.5), layout="constrained")
    fig.suptitle(_fit("best / median / worst pair per method (template → target). Filled: prediction; "
                      "green outline: ground truth; landmarks: red + predicted, green o true",
                      3 * OVERLAY_COLUMN_IN * 72 * 0.95, 10), fontsize=10)
    # panel width less the constrained layout's padding, in points
    room = (OVERLAY_COLUMN_IN - 0.25) * 72
    for sub, (method, picks) in zip(np.atleast_1d(fig.subfigures(len(lines), 1)), lines):
        sub.suptitle(_fit(method, 3 * room, 9), fontsize=9, fontweight="bold")
        ax_row = sub.subplots(1, 3)
        for ax, (what, (template, target), value) in zip(ax_row, picks):
            view = ctx.view(method, template, target)
            pred, truth = _landmarks_of(rows, method, template, target)
            pic = overlay(view.image, view.label_map, pred, truth, max_side=320)
            Hi, Wi = view.image.shape
            ax.imshow(pic, extent=(-0.5, Wi - 0.5, Hi - 0.5, -0.5))
            if view.truth is not None:
                for label in np.unique(view.truth[view.truth > 0]):
                    ax.contour(view.truth == label, levels=[0.5], colors="lime", linewidths=0.8)
            head = f"{what}: {metric_label(metric, ctx.element)} {fmt(value)}"
            pair = _fit(f"{template} → {target}", room, TITLE_PT)
            if "\n" in pair:  # long names: template and target each on lines of their own
                pair = _fit(f"{template} →", room, TITLE_PT) + "\n" + _fit(target, room, TITLE_PT)
            title = [_fit(head, room, TITLE_PT), pair] + ([_fit(view.note, room, TITLE_PT)] if view.note else [])
            ax.set_title("\n".join(title), fontsize=TITLE_PT)
            ax.axis("off")
        for ax in ax_row[len(picks):]:
            ax.axis("off")
    return fig


def _fit(text: str, width_pt: float, size: float) -> str:
    """``text`` wrapped into lines no wider than ``width_pt`` points at font size ``size`` (as rendered).

    Lines break after a space, ``/``, ``:``, ``_``, ``-`` or an arrow, so method and case names
    break between their parts; a part wider than a line on its own is cut between characters.
    """
    import re

    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    font = FontProperties(size=size)

    def fits(line: str) -> bool:
        return TextPath((0, 0), line.strip(), prop=font).get_extents().width <= width_pt

    lines = [""]
    for token in re.split(r"(?<=[\s/:_\-→])", text):
        if fits(lines[-1] + token):
            lines[-1] += token
            continue
        lines.append("")
        for char in token:  # usually fits at once; else cut the part between characters
            if lines[-1] and not fits(lines[-1] + char):
                lines.append("")
            lines[-1] += char
    return "\n".join(line.strip() for line in lines if line.strip())


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

"""The evaluate report's pictures are readable: titles never overlap, methods are categories."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.text import Text

from medshot.evaluation.report.context import ReportContext
from medshot.evaluation.report.plots import overlay_figure, templates_figure
from medshot.evaluation.runner import View

# names as long as real ones get: a registered backbone/segmenter pair and evaldata case names
METHODS = ["medshot:dinov2_vitb14_reg/sam_vit_b_refined", "medshot:classical/randomwalker", "bspline"]
TEMPLATE = "openkbp_pt_201_axial_slice_064_parotids"
TARGETS = [f"openkbp_pt_2{i:02d}_axial_slice_0{60 + i}_parotids" for i in range(4)]


def _rows(templates=(TEMPLATE,)) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"kind": "label", "in_truth": "1", "method": m, "template": t, "target": g, "item": item,
             "dice": f"{rng.uniform(0.3, 0.9):.3f}"}
            for m in METHODS for t in templates for g in TARGETS if g != t for item in ("1", "2")]


def _boxes(fig) -> list:
    """(text, extent) of every text the figure draws: titles, headings, tick and axis labels, legends."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = []
    for ax in fig.axes:
        texts.append(ax.title)
        if ax.axison:  # an axis turned off keeps tick labels it never draws; so do ticks outside the limits
            for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
                texts += [label for where, label in zip(axis.get_ticklocs(), axis.get_ticklabels())
                          if min(lo, hi) <= where <= max(lo, hi)]
                texts.append(axis.label)
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    # the figure's and the sub-figures' headings (suptitles)
    texts += [t for t in fig.findobj(Text) if t.axes is None and
              (t.get_text().replace("\n", "") in METHODS or t.get_text().startswith("best /"))]
    unique = {id(t): t for t in texts if t.get_text() and t.get_visible()}.values()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in unique]


@pytest.mark.parametrize("note", ["", "axial slice k = 37 of 128 (the most ground truth), spacing 3.9 mm"])
def test_overlay_grid_titles_never_overlap(note):
    image = np.random.default_rng(1).random((60, 40))  # a tall picture leaves the least room for titles
    truth = np.zeros((60, 40), np.uint8)
    truth[10:30, 10:30] = 1
    ctx = ReportContext(title="t", methods=METHODS, baselines=["bspline"],
                        view=lambda m, t, g: View(image, truth, truth, note))
    fig = overlay_figure(_rows(), ctx, "dice", METHODS)
    boxes = _boxes(fig)
    titles = [(s, b) for s, b in boxes if TEMPLATE[:7] in s or s in METHODS or "best /" in s]
    # 3 panels per method, each naming its pair, one heading per method, one for the figure
    assert len(titles) == 3 * len(METHODS) + len(METHODS) + 1
    for (s1, b1), (s2, b2) in itertools.combinations(boxes, 2):
        assert not b1.overlaps(b2), f"{s1!r} overlaps {s2!r}"
    width = fig.bbox.width
    for s, b in boxes:
        assert b.x0 >= 0 and b.x1 <= width, f"{s!r} leaves the figure"
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("templates", [(TEMPLATE,), (TEMPLATE, *TARGETS[:2])])
def test_templates_plot_draws_no_line_across_methods(templates):
    from medshot.evaluation.report.stats import observations

    obs = observations(_rows(templates))["dice"]
    fig = templates_figure(obs, "dice")
    ax = fig.axes[0]
    for line in ax.lines:  # error bar caps and mean marks: each within one method's column
        xs = np.asarray(line.get_xdata(), float)
        assert np.ptp(xs) < 0.5, "a line joins methods"
    dots = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    per_method = len(TARGETS) if len(templates) == 1 else len(templates)
    assert len(dots) == len(METHODS) * per_method  # one dot per target (one template) or per template
    assert [t.get_text().replace("\n", "") for t in ax.get_xticklabels()] == METHODS
    title = ax.get_title()
    assert ("one dot per target" in title) == (len(templates) == 1)
    for (s1, b1), (s2, b2) in itertools.combinations(_boxes(fig), 2):
        assert not b1.overlaps(b2), f"{s1!r} overlaps {s2!r}"
    matplotlib.pyplot.close(fig)

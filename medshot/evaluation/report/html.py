"""Writing a run's report: summary.csv, by_template.csv, timing.csv, methods.csv, the PNGs and report.html.

Files (all written together, atomically):

- ``summary.csv``: per metric x item (``all`` pools every label or landmark of every pair) x method:
  n, mean, sd, median, 95 % bootstrap CI of the mean, the spread over template choices, and the
  paired Wilcoxon signed-rank p-value against the best baseline with its number of pairs.
- ``by_template.csv``: the mean of each metric per method and template.
- ``timing.csv``: seconds and peak memory per case, by method (these vary from run to run).
- ``methods.csv``: each method that ran with its number of (template, target) cases and how many of
  them failed, and each requested one that was skipped with the reason.
- ``table.png``, ``box_<metric>.png``, ``templates_<metric>.png``, ``overlays.png`` and a
  self-contained ``report.html`` with all of them embedded.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...data.write import OutputSet, write_csv
from .calibration import calibration_table, plot_reliability
from .context import ReportContext
from .plots import TABLE_HEADER, fmt, plot_box, plot_overlays, plot_table, plot_templates, table_rows
from .stats import (
    SUMMARY_HEADER,
    best_baseline,
    by_template,
    case_counts,
    metric_label,
    observations,
    summarize,
    timing,
)

CALIBRATION_HEADER = ["method", "kind", "n", "wrong", "auc", "ece"]


def write_report(out_dir: str | Path, rows: Sequence[dict], ctx: ReportContext) -> list[Path]:
    """Write summary.csv, by_template.csv, timing.csv, methods.csv, the PNGs and report.html together."""
    out_dir = Path(out_dir)
    summary = summarize(rows, ctx.methods, ctx.baselines)
    obs = observations(rows)
    pictures: dict[str, bytes] = {"table.png": plot_table(summary, ctx.title, ctx.element)}
    for metric in ("dice", "ned"):
        if metric not in obs:
            continue
        ran = [m for m in ctx.methods if m in obs[metric]]
        pictures[f"box_{metric}.png"] = plot_box({m: np.array(list(obs[metric][m].values())) for m in ran}, metric,
                                                  ctx.element)
        pictures[f"templates_{metric}.png"] = plot_templates({m: obs[metric][m] for m in ran}, metric, ctx.element)
    primary = "dice" if "dice" in obs else ("ned" if "ned" in obs else None)
    if primary is not None:
        shown = [m for m in ctx.methods if m not in ctx.baselines][:5]
        ref = best_baseline(obs[primary], primary, ctx.baselines)
        shown += [ref] if ref else []
        grid = plot_overlays(rows, ctx, primary, shown)
        if grid is not None:
            pictures["overlays.png"] = grid
    scored_methods = [m for m in ctx.methods if m not in ctx.baselines]
    calibration = calibration_table(rows, scored_methods)
    diagram = plot_reliability(rows, scored_methods)
    if diagram is not None:
        pictures["reliability.png"] = diagram
    times = timing(rows, ctx.methods)
    counts = case_counts(rows, ctx.methods)
    with OutputSet(out_dir) as out:
        write_csv(out.path_for("summary.csv"), SUMMARY_HEADER, ([r[k] for k in SUMMARY_HEADER] for r in summary))
        write_csv(out.path_for("by_template.csv"), ["metric", "method", "template", "n", "mean"],
                  by_template(rows, ctx.methods))
        write_csv(out.path_for("timing.csv"), ["method", "cases", "seconds_mean", "seconds_median", "seconds_total",
                                               "peak_mem_mb_median", "peak_mem_mb_max"], times)
        write_csv(out.path_for("calibration.csv"), CALIBRATION_HEADER, calibration)
        write_csv(out.path_for("methods.csv"), ["method", "status", "cases", "failed", "reason"],
                  [[m, "run", *counts[m], ""] for m in ctx.methods] + [[f"{what} {name}", "skipped", "", "", why]
                                                                       for name, what, why in ctx.skipped])
        for name, data in pictures.items():
            out.path_for(name).write_bytes(data)
        out.path_for("report.html").write_text(_html(summary, times, pictures, ctx, counts, calibration))
        return [out_dir / name for name in ("summary.csv", "by_template.csv", "timing.csv", "calibration.csv",
                                            "methods.csv",
                                            *pictures, "report.html")]


def _html_table(header: Sequence[str], lines: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in line) + "</tr>" for line in lines)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(summary, times, pictures: dict[str, bytes], ctx: ReportContext,
          counts: dict[str, tuple[int, int]], calibration: Sequence[Sequence] = ()) -> str:
    esc = html.escape
    parts = [f"<h1>{esc(ctx.title)}</h1>",
             _html_table(["setting", "value"], list(ctx.settings.items())),
             "<h2>Methods</h2>",
             _html_table(["method", "status", "cases", "failed", "reason"],
                         [[m, "run", *counts.get(m, ("", "")), "baseline" if m in ctx.baselines else ""]
                          for m in ctx.methods]
                         + [[f"{what} {name}", "skipped", "", "", why] for name, what, why in ctx.skipped])]
    if ctx.failures:
        parts += ["<h2>Failed cases (scored as failures: Dice 0, NED 1; a rerun retries them)</h2>",
                  _html_table(["template", "target", "method", "error"], ctx.failures)]
    parts += ["<h2>Summary (all labels / landmarks pooled)</h2>",
              _html_table(TABLE_HEADER, table_rows(summary, ctx.element)),
              "<p>CI: 95 % percentile bootstrap of the mean (2000 resamples, seed 0). p: two-sided paired Wilcoxon "
              "signed-rank test against the baseline with the best mean, over the (template, target, item) triples "
              "both have (n = pairs). Label rows count only where the ground truth holds the label. HD95 means and "
              "CIs leave out infinite values (a label predicted empty); n_inf in summary.csv counts them.</p>"]
    if calibration:
        parts += ["<h2>Are the scores right?</h2>",
                  _html_table(CALIBRATION_HEADER, [[*c[:4], fmt(c[4]), fmt(c[5])] for c in calibration]),
                  "<p>AUC: how well the score separates wrong results (label Dice &lt; 0.5; landmark NED &gt; 0.02) "
                  "from right ones (1 = perfectly, 0.5 = chance). ECE: expected calibration error, the mean gap "
                  "between the score and the share of results that are right, over 10 score bins (0 = a score of "
                  "0.8 is right 80 % of the time). reliability.png draws the bins (numbers: results per bin).</p>"]
    for name in pictures:
        if name != "table.png":
            data = base64.b64encode(pictures[name]).decode()
            parts.append(f'<h3>{esc(name)}</h3><img alt="{esc(name)}" src="data:image/png;base64,{data}">')
    per_item = [r for r in summary if r["item"] != "all"]
    if per_item:
        lines = [[metric_label(r["metric"], ctx.element), r["item_name"], r["method"], r["n"],
                  f"{fmt(r['mean'])} ± {fmt(r['sd'])}", fmt(r["median"]),
                  f"[{fmt(r['ci95_low'])}, {fmt(r['ci95_high'])}]",
                  "" if r["n_pairs"] == "" else f"{fmt(r['wilcoxon_p'])} (n={r['n_pairs']})"] for r in per_item]
        parts += ["<details><summary>Per label / landmark</summary>",
                  _html_table(["metric", "item", "method", "n", "mean ± sd", "median", "95 % CI", "p vs best baseline"],
                              lines), "</details>"]
    parts += ["<h2>Time and memory per case</h2>",
              _html_table(["method", "cases", "s mean", "s median", "s total", "peak MB median", "peak MB max"],
                          [[t[0], t[1], *(fmt(v) for v in t[2:])] for t in times]),
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

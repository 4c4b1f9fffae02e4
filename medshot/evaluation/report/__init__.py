"""Statistics, tables, plots and the HTML report of a ``medshot evaluate`` run, from its cases.csv rows alone.

- :mod:`.stats`: summary statistics, bootstrap CI, paired Wilcoxon test (plain functions on rows).
- :mod:`.plots`: the PNG figures.
- :mod:`.html`: :func:`write_report` (every report file, atomically) and the self-contained page.
- :mod:`.context`: :class:`ReportContext` and where predicted label maps are kept.
"""

from .context import ReportContext, prediction_path
from .html import write_report
from .stats import METRICS, SUMMARY_HEADER, bootstrap_ci, describe, paired_wilcoxon, summarize

__all__ = ["METRICS", "SUMMARY_HEADER", "ReportContext", "bootstrap_ci", "describe", "paired_wilcoxon",
           "prediction_path", "summarize", "write_report"]

"""Statistics of a ``medshot evaluate`` run, made from its cases.csv rows alone (plain functions).

``summary.csv`` holds only numbers that follow from the data (fixed bootstrap seed), so reruns and
resumed runs reproduce it byte for byte; ``timing.csv`` varies from run to run.

A failed case's rows (``status = failed``) carry failure scores and count like any other
(``n_failed`` says how many of ``n`` they are); only the timings leave them out.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

# metric -> (label in tables, higher is better, row kind it is read from)
METRICS: dict[str, tuple[str, bool, str]] = {
    "dice": ("Dice", True, "label"),
    "hd95_px": ("HD95 (px)", False, "label"),
    "hd95_mm": ("HD95 (mm)", False, "label"),
    "ned": ("NED", False, "landmark"),
    "distance_px": ("distance (px)", False, "landmark"),
    "distance_mm": ("distance (mm)", False, "landmark"),
}
SUMMARY_HEADER = ("metric", "item", "item_name", "method", "n", "n_failed", "n_inf", "mean", "sd", "median", "ci95_low",
                  "ci95_high", "n_templates", "template_sd", "vs_baseline", "n_pairs", "wilcoxon_p")
N_BOOTSTRAP = 2000


def metric_label(metric: str, element: str = "px") -> str:
    """A metric's name in tables; ``element`` names the array unit (``"voxels"`` for volumes)."""
    return METRICS[metric][0].replace("(px)", f"({element})")


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


def failed_pairs(rows: Sequence[dict]) -> set[tuple[str, str, str]]:
    """(method, template, target) of every case that failed."""
    return {(r["method"], r["template"], r["target"]) for r in rows if r.get("status") == "failed"}


def case_counts(rows: Sequence[dict], methods: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Per method: the (template, target) pairs it has rows for, and how many of them failed."""
    pairs: dict[str, set] = {}
    for r in rows:
        pairs.setdefault(r["method"], set()).add((r["template"], r["target"]))
    failed = failed_pairs(rows)
    return {m: (len(pairs.get(m, ())), sum(1 for t, g in pairs.get(m, ()) if (m, t, g) in failed)) for m in methods}


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
    failed = failed_pairs(rows)
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
                row["n_failed"] = sum(1 for k in keys if (method, k[0], k[1]) in failed)
                by_t = template_means(values)
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


def template_means(values: dict[tuple[str, str, str], float]) -> dict[str, float]:
    """Mean of the finite values per template, from ``{(template, target, item): value}``, templates sorted."""
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
            out.extend([metric, method, t, counts[t], m] for t, m in template_means(values).items())
    return out


def timing(rows: Sequence[dict], methods: Sequence[str]) -> list[list]:
    """timing.csv rows: method, cases, mean/median/total seconds per case, median/max peak memory (MB)."""
    per_case: dict[str, dict[tuple[str, str], tuple[float, float]]] = {}
    for r in rows:
        if r.get("status") == "failed":  # the time until it failed is not the method's time per case
            continue
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

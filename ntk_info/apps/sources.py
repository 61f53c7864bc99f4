"""Which data source (or group, e.g. subclass) is more informative? (SI paper §6, Fig. 2a and 9.)

Per-source summaries of per-sample scores: count, mean, median and quantiles, so distributions of
F-SI can be compared across sources (e.g. MNIST vs SVHN samples in one training set).
"""
from __future__ import annotations

import numpy as np

__all__ = ["group_summary", "QUANTILES"]

QUANTILES = (0.1, 0.25, 0.75, 0.9)


def group_summary(scores, groups, *, score_name: str = "fsi") -> list[dict]:
    """One row per distinct value of ``groups`` (n,): count, mean, median and ``QUANTILES`` of ``scores`` (n,).

    Rows are sorted by decreasing mean (most informative source first); a last row ``(all)`` covers
    every sample.
    """
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    if scores.ndim != 1 or groups.shape != scores.shape:
        raise ValueError(f"groups: expected one group per score ({scores.shape}), got shape {groups.shape}")
    if scores.size == 0:
        raise ValueError("scores: expected at least one sample, got none")

    def row(name, values):
        out = {"group": str(name), "score": score_name, "count": int(values.size), "mean": float(values.mean()),
               "median": float(np.median(values))}
        out.update({f"q{int(round(100 * q)):02d}": float(np.quantile(values, q)) for q in QUANTILES})
        return out

    rows = [row(g, scores[groups == g]) for g in np.unique(groups)]
    rows.sort(key=lambda r: -r["mean"])
    return rows + [row("(all)", scores)]

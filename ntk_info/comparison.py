"""compare(): every leave-one-out estimate against brute-force retraining of the real network.

For one model and data set: train the network (``ntk_info.training``), retrain it without each sample
of a random subset (``ntk_info.brute``), and measure how well each cheap estimate ranks and scales
the three LOO quantities, as in SI paper Table 1 (Pearson over removed samples):

    weights      ||w - w_{-i}||²
    predictions  ||f_w(X_val) - f_{w_{-i}}(X_val)||²   (summed over validation inputs and outputs)
    self         ||f_w(x_i) - f_{w_{-i}}(x_i)||²        (the removed sample's own prediction)

Methods (``methods``; each row also gets its wall time, brute force gets its own row):

    linearization     exact LOO of the linearized network at w0 (SI paper §5–6): projected per-layer
                      Jacobian features (``projected_features``) + ``leave_one_out`` with the
                      discrete-GD filter for the same (lr, steps, weight_decay) as the training
    influence_exact   GNH influence at the trained weights, solved exactly (``influence``, PBRF eq. 6)
    influence_lissa   the same with LiSSA (the SI paper's influence-function baseline)
    mpe               MPE paper eq. 15: only the self-prediction change V_i e_i (no weight/val estimate)
    segments:S[:sp]   exact LOO through the real training run linearized at S checkpoints (spacing sp,
                      "uniform" default or "early"; ``ntk_info.segments``), same projection and filter;
                      e.g. "segments:8"; S = 1 is the linearization row

Influence functions use damping 0.01 when weight_decay = 0 (SI paper App. A.3, Table 2).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np
from scipy import stats

from ntk_info.brute import BruteForceResult, brute_force_loo

__all__ = ["METHODS", "CompareRow", "CompareTable", "compare", "correlations"]

METHODS = ("linearization", "influence_exact", "influence_lissa", "mpe")
MEASURES = ("weights", "predictions", "self")


@dataclasses.dataclass(frozen=True)
class CompareRow:
    """One method: Pearson/Spearman against brute force per measure (None where the method gives none)."""

    method: str
    pearson: dict
    spearman: dict
    seconds: float
    estimates: dict


@dataclasses.dataclass(frozen=True)
class CompareTable:
    """Rows of :class:`CompareRow`, the brute-force ground truth and its wall time, and the settings."""

    rows: list
    brute: BruteForceResult
    brute_seconds: float
    settings: dict

    def row(self, method: str) -> CompareRow:
        """The row of ``method``."""
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(f"method {method!r} not in this table; rows: {[r.method for r in self.rows]}")

    def to_markdown(self, measures=("weights", "predictions"), spearman: bool = True) -> str:
        """A markdown table: one line per method, Pearson (and Spearman) per measure, wall time."""
        head = ["method"]
        for m in measures:
            head += [f"{m} Pearson"] + ([f"{m} Spearman"] if spearman else [])
        head.append("time [s]")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        fmt = lambda v: "—" if v is None else f"{v:.3f}"
        for r in self.rows:
            cells = [r.method]
            for m in measures:
                cells += [fmt(r.pearson.get(m))] + ([fmt(r.spearman.get(m))] if spearman else [])
            cells.append(f"{r.seconds:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        cells = [f"brute force ({self.brute.indices.size} removals)"] + ["1"] * (len(head) - 2)
        lines.append("| " + " | ".join(cells + [f"{self.brute_seconds:.1f}"]) + " |")
        return "\n".join(lines)


def correlations(estimate, truth) -> tuple[float | None, float | None]:
    """(Pearson, Spearman) of two 1-D arrays; None when either is missing or constant."""
    if estimate is None or truth is None:
        return None, None
    estimate, truth = np.asarray(estimate, float), np.asarray(truth, float)
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate: expected shape {truth.shape} like the brute-force values, got {estimate.shape}")
    if np.ptp(estimate) == 0 or np.ptp(truth) == 0:
        return None, None
    return float(stats.pearsonr(estimate, truth)[0]), float(stats.spearmanr(estimate, truth)[0])


def _sq_rows(a):
    """Per-row squared norm of an (s,) or (s, k) array."""
    a = np.asarray(a)
    return a ** 2 if a.ndim == 1 else np.sum(a.reshape(a.shape[0], -1) ** 2, axis=1)


def _linearization(apply_fn, params0, trained, X, Y, X_val, Y_val, subset, *, lr, steps, weight_decay, opts):
    from ntk_info.scorer import score

    res = score(apply_fn, params0, X, np.asarray(Y, dtype=np.float64), X_val, lr=lr, steps=steps,
                weight_decay=weight_decay, discrete=True, coords_per_layer=opts["coords_per_layer"], seed=opts["seed"],
                method=opts["method"], kernel=opts["kernel"], trust_samples=0, progress=False)
    return {"weights": np.asarray(res.weight_change_sq)[subset],
            "predictions": np.asarray(res.prediction_change_sq)[subset],
            "self": _sq_rows(np.asarray(res.self_prediction_change)[subset])}


def _influence(method):
    def run(apply_fn, params0, trained, X, Y, X_val, Y_val, subset, *, lr, steps, weight_decay, opts):
        from ntk_info.influence import influence

        kw = {}
        if method == "lissa":
            kw = dict(lissa_depth=opts["lissa_depth"], lissa_scale=opts["lissa_scale"],
                      lissa_batch_size=opts["lissa_batch_size"], seed=opts["seed"])
        res = influence(apply_fn, trained, X, Y, weight_decay=weight_decay, damping=opts["damping"], X_val=X_val,
                        Y_val=Y_val, subset=subset, method=method, **kw)
        return {"weights": np.asarray(res.weight_change_sq), "predictions": np.asarray(res.prediction_change_sq),
                "self": _sq_rows(res.self_prediction_change)}

    return run


def _mpe(apply_fn, params0, trained, X, Y, X_val, Y_val, subset, *, lr, steps, weight_decay, opts):
    from ntk_info.mpe import mpe_scores

    res = mpe_scores(apply_fn, trained, X, Y, weight_decay=weight_decay, damping=opts["damping"])
    return {"weights": None, "predictions": None, "self": _sq_rows(np.asarray(res.deviation)[subset])}


def _segments(segments, spacing):
    def run(apply_fn, params0, trained, X, Y, X_val, Y_val, subset, *, lr, steps, weight_decay, opts):
        from ntk_info.scorer import score

        res = score(apply_fn, params0, X, np.asarray(Y, dtype=np.float64), X_val, lr=lr, steps=steps,
                    weight_decay=weight_decay, discrete=True, coords_per_layer=opts["coords_per_layer"],
                    seed=opts["seed"], method=opts["method"], kernel=opts["kernel"], linearize="segments",
                    segments=segments, spacing=spacing, trust_samples=0, progress=False)
        return {"weights": np.asarray(res.weight_change_sq)[subset],
                "predictions": np.asarray(res.prediction_change_sq)[subset],
                "self": _sq_rows(np.asarray(res.self_prediction_change)[subset]), "info": res.settings}

    return run


def _runner(method):
    """The runner of ``method``: a fixed one, or "segments:S" / "segments:S:spacing"."""
    if method in _RUNNERS:
        return _RUNNERS[method]
    parts = method.split(":")
    if parts[0] == "segments" and len(parts) in (2, 3) and parts[1].isdigit() and int(parts[1]) >= 1:
        return _segments(int(parts[1]), parts[2] if len(parts) == 3 else "uniform")
    raise ValueError(f"methods: unknown {method!r}; valid: {list(_RUNNERS)} or 'segments:S[:uniform|early]'")


_RUNNERS = {"linearization": _linearization, "influence_exact": _influence("exact"),
            "influence_lissa": _influence("lissa"), "mpe": _mpe}


def compare(apply_fn: Callable, params0: Any, X, Y, X_val, Y_val, *, lr: float, steps: int,
            weight_decay: float = 0.0, subset_size: int = 50, subset=None, methods=METHODS,
            coords_per_layer: int = 2000, damping: float | None = None, lissa_depth: int = 1000,
            lissa_scale: float | None = None, lissa_batch_size: int | None = None, chunk_size: int = 1, seed: int = 0,
            kernel: str = "full", method: str = "countsketch", progress: bool = True) -> CompareTable:
    """All LOO estimates for one model and data set, against brute-force retraining on a subset.

    Training: ``steps`` full-batch GD steps of size ``lr`` on Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||²
    from w0 = ``params0`` (λ = ``weight_decay``). Brute force: the same training without each of
    ``subset`` (default: ``subset_size`` samples drawn with ``seed``), cold start. Each method in
    ``methods`` (see :data:`METHODS` and the module docstring) is timed end to end (features, solves),
    excluding the shared training run. ``damping`` (default 0.01 if λ = 0 else 0, SI paper Table 2)
    is added to λ for influence functions and MPE; ``lissa_scale`` None is LiSSA's automatic scale;
    ``lissa_batch_size`` None uses the full GNH in every LiSSA recursion, b a minibatch estimate.
    ``chunk_size`` removals are vmapped per brute-force call (1 is fastest on CPU). ``linearization``
    is ``ntk_info.score`` with ``kernel`` ("full", "trace" or "auto") and projection ``method``, so
    the row validates the estimator the scores use (the CLI passes the kernel it reports).
    """
    runners = {m: _runner(m) for m in methods}
    n = np.shape(X)[0]
    if subset is None:
        if not (isinstance(subset_size, (int, np.integer)) and 2 <= subset_size <= n):
            raise ValueError(f"subset_size: expected an integer in [2, n={n}], got {subset_size!r}")
        subset = np.sort(np.random.default_rng(seed).choice(n, size=subset_size, replace=False))
    subset = np.asarray(subset)
    if damping is None:
        damping = 0.01 if weight_decay == 0 else 0.0

    t0 = time.perf_counter()
    brute = brute_force_loo(apply_fn, params0, X, Y, lr=lr, steps=steps, weight_decay=weight_decay, subset=subset,
                            X_val=X_val, chunk_size=chunk_size, seed=seed, progress=progress)
    brute_seconds = time.perf_counter() - t0
    truth = {"weights": brute.weight_change_sq, "predictions": brute.prediction_change_sq,
             "self": _sq_rows(brute.self_prediction_change)}
    opts = dict(coords_per_layer=coords_per_layer, seed=seed, damping=damping, lissa_depth=lissa_depth,
                lissa_scale=lissa_scale, lissa_batch_size=lissa_batch_size, kernel=kernel, method=method)
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        est = jax.block_until_ready(runners[method](apply_fn, params0, brute.params, X, Y, X_val, Y_val, subset,
                                                     lr=lr, steps=steps, weight_decay=weight_decay, opts=opts))
        seconds = time.perf_counter() - t0
        pairs = {m: correlations(est[m], truth[m]) for m in MEASURES}
        rows.append(CompareRow(method, {m: p[0] for m, p in pairs.items()}, {m: p[1] for m, p in pairs.items()},
                               seconds, est))
    settings = dict(lr=lr, steps=steps, weight_decay=weight_decay, damping=damping, subset_size=int(subset.size),
                    coords_per_layer=coords_per_layer, lissa_depth=lissa_depth, lissa_scale=lissa_scale,
                    lissa_batch_size=lissa_batch_size, seed=seed, n=n, kernel=kernel, projection=opts["method"])
    return CompareTable(rows, brute, brute_seconds, settings)

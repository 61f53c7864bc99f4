"""Evidence that scores computed on the linearized network hold for the real network, and a verdict.

The leave-one-out scores are exact for the linearized network f_lin(x) = f0(x) + J0(x)(w - w0)
(SI paper §4–5); whether that is the network the user trains is an empirical question (SI paper
§6, Table 1: MLP from scratch ≈ 1.0, CNN pretrained ≈ 0.9, CNN from scratch ≈ 0; DESIGN.md "When
to trust the linearization"). :func:`trust` measures it at the price of one real training run plus
``samples`` retrainings:

- linearization gap ||f_lin(X_v) - f_T(X_v)|| / ||f_T(X_v) - f0(X_v)|| after training the real
  network exactly as the scores assume (sum loss, lr, steps, weight decay toward w0, full-batch GD),
  with train / validation accuracy of both networks for classification targets;
- kernel drift ||K_T - K_0||_F / ||K_0||_F of the projected NTK at w0 and at the trained weights with
  the SAME projection, λ_max(K_T)/λ_max(K_0), and the GD stability margin η(λ_max(K_T) + λ)/2
  (GD on the local quadratic diverges above 1; near 1 is the edge of stability, where the kernel
  keeps changing and the linearization fails: Cohen et al. 2021, the small CNN from scratch);
- a spot check: the real network retrained without ``samples`` training samples picked at evenly
  spaced ranks of the score (``ntk_info.brute.brute_force_loo``, vectorized over removals), Pearson
  and Spearman of predicted against actual ||Δf(X_v)||² and ||Δw||², with percentile-bootstrap
  95 % intervals over the picked samples.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .brute import brute_force_loo
from .dynamics import predict

__all__ = ["trust", "THRESHOLDS", "VERDICTS", "verdict", "kernel_drift", "largest_eigenvalue", "quantile_picks",
           "correlation_with_interval"]

VERDICTS = ("trusted", "caution", "not trusted")

# Calibrated on experiments/trust_calibration.py (the Table-1 cases on digits 4 vs 9, see ``verdict``).
THRESHOLDS = {
    "trusted_pearson": 0.9,       # spot-check Pearson of the ranking score (F-SI, else SI) at least this
    "trusted_pearson_other": 0.7,  # ... and of the other measure (||Δw||² when the ranking is F-SI)
    "trusted_gap": 0.3,           # linearization gap at most this
    "trusted_margin": 0.75,       # stability margin η(λ_max(K_T) + λ)/2 at most this (CLI default lr: 0.5 at w0)
    "trusted_drift": 0.5,         # kernel drift at most this
    "failed_pearson": 0.5,        # spot-check Pearson of the ranking score below this: not trusted
    "failed_gap": 0.6,            # linearization gap above this: not trusted
    "failed_drift": 3.0,          # kernel drift above this: not trusted (CNN scratch 8.8, pretrained 1.1)
    "edge_margin": 0.9,           # stability margin at least this: edge of stability, not trusted
}

_BOOTSTRAP_RESAMPLES = 2000
_DRIFT_MAX_ROWS = 1024  # kernel drift on at most this many kernel rows (a random subset of samples)
_DENSE_EIGEN_MAX = 2000  # λ_max from a dense Gram up to this size, Lanczos (scipy eigsh) above


def largest_eigenvalue(phi) -> float:
    """λ_max of the sample-major kernel K = ΦΦᵀ for features Φ (n, k, p) or (N, p): σ_max(Φ)².

    Dense eigvalsh of the smaller Gram (ΦΦᵀ or ΦᵀΦ) up to 2000 rows, else Lanczos (scipy eigsh)
    on v -> Φᵀ(Φv) or Φ(Φᵀv); float64 either way.
    """
    A = np.asarray(phi, np.float64)
    A = A.reshape(-1, A.shape[-1])
    rows, cols = A.shape
    if min(rows, cols) <= _DENSE_EIGEN_MAX:
        gram = A @ A.T if rows <= cols else A.T @ A
        return float(np.linalg.eigvalsh(gram)[-1])
    from scipy.sparse.linalg import LinearOperator, eigsh

    if rows <= cols:
        op = LinearOperator((rows, rows), matvec=lambda v: A @ (A.T @ v), dtype=np.float64)
    else:
        op = LinearOperator((cols, cols), matvec=lambda v: A.T @ (A @ v), dtype=np.float64)
    return float(eigsh(op, k=1, which="LA", return_eigenvectors=False, tol=1e-8)[0])


def kernel_drift(phi_init, phi_trained, *, max_rows: int = _DRIFT_MAX_ROWS, seed: int = 0) -> dict:
    """||K_T - K_0||_F / ||K_0||_F for K = ΦΦᵀ (sample-major, all outputs) from features (n, k, p).

    Both feature sets must come from the same projection (``Projection`` with the params replaced), so
    the difference is the kernel's and not the sketch's. When n·k > ``max_rows`` the norms are taken
    on the kernel block of a random subset of ⌊max_rows/k⌋ samples (``seed``). Returns the drift and
    the number of kernel rows it used.
    """
    a, b = np.asarray(phi_init, np.float64), np.asarray(phi_trained, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"phi_trained: expected the shape of phi_init {a.shape} (same inputs, same projection), "
                         f"got {b.shape}")
    if a.ndim == 2:
        a, b = a[:, None, :], b[:, None, :]
    n, k = a.shape[:2]
    keep = max(1, min(n, max_rows // k))
    if keep < n:
        subset = np.sort(np.random.default_rng(seed).choice(n, keep, replace=False))
        a, b = a[subset], b[subset]
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    k0 = a @ a.T
    return {"drift": float(np.linalg.norm(b @ b.T - k0) / np.linalg.norm(k0)), "rows": int(a.shape[0])}


def quantile_picks(values, m: int) -> np.ndarray:
    """Indices of ``m`` samples at evenly spaced ranks of ``values`` (lowest and highest included), sorted."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.unique(np.round(np.linspace(0, values.size - 1, m)).astype(int))
    return np.sort(order[ranks])


def _pearson_rows(a, b):
    """Pearson correlation of each row pair of a, b (r, m); NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


def correlation_with_interval(predicted, actual, *, seed: int = 0, resamples: int = _BOOTSTRAP_RESAMPLES) -> dict:
    """Pearson and Spearman of ``predicted`` against ``actual`` with percentile-bootstrap 95 % intervals.

    Resamples the m pairs with replacement ``resamples`` times (``seed``); resamples in which either
    side is constant are dropped. Values are None where undefined (fewer than 3 distinct pairs).
    """
    from scipy.stats import rankdata

    predicted, actual = np.asarray(predicted, np.float64), np.asarray(actual, np.float64)
    idx = np.random.default_rng(seed).integers(0, predicted.size, size=(resamples, predicted.size))
    out = {}
    for name, transform in (("pearson", lambda x: x), ("spearman", lambda x: rankdata(x, axis=-1))):
        point = _pearson_rows(transform(predicted)[None], transform(actual)[None])[0]
        boot = _pearson_rows(transform(predicted[idx]), transform(actual[idx]))
        boot = boot[np.isfinite(boot)]
        ok = np.isfinite(point) and boot.size >= resamples // 2
        out[name] = float(point) if np.isfinite(point) else None
        out[f"{name}_interval"] = [float(v) for v in np.percentile(boot, [2.5, 97.5])] if ok else None
    return out


def verdict(figures: dict) -> tuple[str, list, list]:
    """("trusted" | "caution" | "not trusted", reasons, advice) from the figures :func:`trust` measures.

    Rules (``THRESHOLDS``), calibrated on the SI paper's Table-1 cases (experiments/trust_calibration.py,
    digits 4 vs 9; MLP 180 samples, 12 retrainings; CNNs 32 samples, 8 retrainings):
      not trusted  spot-check Pearson of the ranking score < 0.5, or linearization gap > 0.6, or kernel
                   drift > 3, or a stability margin η(λ_max(K_T) + λ)/2 ≥ 0.9 (the edge of stability).
                   Small CNN from scratch at η = 0.25/λ_max(K_0): margin 0.12 -> 1.04, λ_max × 8.3,
                   drift 8.8, F-SI Pearson 0.51 [-0.62, 0.93], SI Pearson -0.01; its gap (0.21) alone
                   would not have caught it.
      trusted      ranking-score Pearson ≥ 0.9, the other measure's ≥ 0.7, gap ≤ 0.3, margin ≤ 0.75
                   and kernel drift ≤ 0.5. Wide MLP from scratch: F-SI Pearson 1.000 [0.99, 1.00],
                   SI 0.999, gap 0.026, drift 0.041, margin 0.01.
      caution      anything in between. Pretrained CNN (other digits, fresh head): F-SI Pearson 0.78
                   [0.66, 1.00], SI 0.94, gap 0.11, drift 1.1, λ_max × 2.1, margin 0.26.
    A missing figure (None: undefined correlation, zero change) counts as failing its "trusted"
    condition but never as a "not trusted" one on its own.
    """
    T = THRESHOLDS
    spot = figures.get("spot_check") or {}
    main_name = spot.get("ranked_by_measure", "predictions")
    other_name = "weights" if main_name == "predictions" else None
    main_r = (spot.get(main_name) or {}).get("pearson")
    other_r = (spot.get(other_name) or {}).get("pearson") if other_name else None
    gap, margin, drift = figures.get("linearization_gap"), figures.get("stability_margin"), figures.get("kernel_drift")
    reasons, advice = [], []
    failed = bool(figures.get("diverged"))
    if failed:
        reasons.append(f"the real network diverged (non-finite weights) at this lr: lr·(λ_max(w0) + λ)/2 = "
                       f"{_fmt(figures.get('stability_margin_init'))}")
    if main_r is not None and main_r < T["failed_pearson"]:
        failed = True
        reasons.append(f"spot check: {spot.get('ranked_by', 'score')} predicted vs retrained Pearson {main_r:.2f} "
                       f"< {T['failed_pearson']}")
    if gap is not None and gap > T["failed_gap"]:
        failed = True
        reasons.append(f"linearization gap {gap:.2f} > {T['failed_gap']}: the trained network is far from its "
                       "linearization")
    if drift is not None and drift > T["failed_drift"]:
        failed = True
        reasons.append(f"kernel drift {drift:.2f} > {T['failed_drift']}: the NTK changed during training")
    if margin is not None and margin >= T["edge_margin"]:
        failed = True
        reasons.append(f"edge of stability: lr·(λ_max(trained) + λ)/2 = {margin:.2f} ≥ {T['edge_margin']} "
                       "(the kernel sharpened until GD barely stays stable)")
    checks = [_bound(f"spot-check Pearson ({main_name})", main_r, T["trusted_pearson"], at_least=True),
              _bound("linearization gap", gap, T["trusted_gap"]),
              _bound("stability margin", margin, T["trusted_margin"]),
              _bound("kernel drift", drift, T["trusted_drift"])]
    if other_name:
        checks.insert(1, _bound("spot-check Pearson (weights)", other_r, T["trusted_pearson_other"], at_least=True))
    if failed:
        result = "not trusted"
    elif all(ok for ok, _ in checks):
        result = "trusted"
        reasons.extend(text for _, text in checks)
    else:
        result = "caution"
        reasons.extend(text for ok, text in checks if not ok)
    if figures.get("diverged") or (margin is not None and margin > T["trusted_margin"]):
        advice.append(f"lower the learning rate: lr·(λ_max(trained) + λ)/2 = {_fmt(margin)}; keep it below "
                      f"{T['trusted_margin']}, i.e. lr ≤ {_fmt(figures.get('lr_for_margin'))}")
    if (drift is not None and drift > T["trusted_drift"]) or (gap is not None and gap > T["trusted_gap"]) or failed:
        advice.append("start from pretrained weights (pretrain on related data, fresh head): the kernel then moves "
                      "little during fine-tuning")
        advice.append("use a wider network (the linearization becomes exact as the width grows)")
        advice.append("add weight decay toward w0 (weight_decay > 0) to keep the weights near the linearization point")
    if result != "trusted" and spot.get("samples"):
        advice.append("before acting on a ranking, retrain without its top samples (ntk_info.brute.brute_force_loo); "
                      "more spot-check samples narrow the interval")
    if result == "trusted":
        advice.append("nothing to change; a larger spot check (more samples) narrows the interval")
    return result, reasons, advice


def _bound(name, value, bound, at_least=False):
    """(passes, "name value ≤ bound") for a "trusted" condition; a missing value (None) fails."""
    ok = value is not None and (value >= bound if at_least else value <= bound)
    sign = ("≥" if ok else "<") if at_least else ("≤" if ok else ">")
    return ok, f"{name} {_fmt(value)} {sign if value is not None else 'vs'} {bound}"


def _fmt(value):
    return "n/a" if value is None else f"{value:.3g}"


def _finite(value):
    """float, or None when not finite (JSON has no NaN / inf)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _class_labels(Y, k):
    """Integer labels of classification targets (one-hot rows, or ±1 for one output), else None (regression)."""
    if k > 1 and np.isin(Y, (0.0, 1.0)).all() and (Y.sum(axis=1) == 1).all():
        return Y.argmax(axis=1)
    if k == 1 and np.isin(Y, (-1.0, 1.0)).all():
        return (Y[:, 0] > 0).astype(int)
    return None


def _predicted_labels(outputs):
    outputs = np.asarray(outputs).reshape(outputs.shape[0], -1)
    return outputs.argmax(axis=1) if outputs.shape[1] > 1 else (outputs[:, 0] > 0).astype(int)


def _float_targets(Y, n, k, name):
    """Targets as float (n, k): as given, or one-hot rows for integer class labels (n,) when k > 1."""
    Y = np.asarray(Y)
    if Y.shape[:1] != (n,):
        raise ValueError(f"{name}: expected {n} targets (one per input), got shape {Y.shape}")
    if np.issubdtype(Y.dtype, np.integer) and Y.ndim == 1 and k > 1:
        if Y.min() < 0 or Y.max() >= k:
            raise ValueError(f"{name}: class labels must lie in [0, {k}), got [{Y.min()}, {Y.max()}]")
        return np.eye(k)[Y]
    if Y.size != n * k:
        raise ValueError(f"{name}: expected {n}×{k} targets (the model's outputs), got shape {Y.shape}")
    return Y.reshape(n, k).astype(np.float64)


def _linearized_changes(phi, residuals, phi_val, settings):
    """f_lin - f0 on X and X_val for the kernel the scores used ("full": sample-major (n·k)² kernel,
    "trace": output-averaged n × n kernel shared by the k outputs), via ``ntk_info.dynamics.predict``."""
    phi = np.asarray(phi, np.float64)
    phi_val = None if phi_val is None else np.asarray(phi_val, np.float64)
    n, k = phi.shape[:2]
    if settings["kernel"] == "trace":  # K_ij = (1/k) Σ_a ⟨Φ_ia, Φ_ja⟩
        kernel = np.einsum("iap,jap->ij", phi, phi) / k
        cross = None if phi_val is None else np.einsum("iap,jap->ij", phi_val, phi) / k
    else:
        kernel = np.einsum("iap,jbp->ijab", phi, phi)
        cross = None if phi_val is None else np.einsum("iap,jbp->ijab", phi_val, phi)
    return predict(kernel, residuals, lr=settings["lr"], steps=settings["steps"],
                   weight_decay=settings["weight_decay"], discrete=settings["discrete"], cross_kernel=cross)


def _check_request(result, X, X_val, lr, steps, weight_decay, loss, samples):
    settings = getattr(result, "settings", None)
    if not isinstance(settings, dict) or getattr(result, "projection", None) is None:
        raise ValueError("result: expected the ScoreResult returned by ntk_info.score for these data")
    if loss != "sum":
        raise ValueError(f"loss: only 'sum' is supported (ntk_info.training.train minimizes the sum loss "
                         f"Σ_i ½||f(x_i) - y_i||²), got {loss!r}; for a mean loss with lr η and weight decay λ "
                         "pass lr = η/n and weight_decay = n·λ, its exact sum-loss equivalent")
    if settings.get("loss", "sum") != loss:
        raise ValueError(f"loss: the scores were computed with loss={settings.get('loss')!r}, got {loss!r}")
    for name, value in (("lr", lr), ("steps", steps), ("weight_decay", weight_decay)):
        if not np.isclose(float(value), float(settings[name]), rtol=1e-12, atol=0.0):
            raise ValueError(f"{name}: the scores were computed with {name}={settings[name]!r}, got {value!r}; "
                             "trust must replay the training the scores assume")
    if not math.isfinite(float(steps)) or float(steps) != round(float(steps)) or steps < 1:
        raise ValueError(f"steps: real training needs a finite integer number of GD steps >= 1, got {steps!r}; "
                         "score with finite steps, or skip the trust check (trust_samples=0)")
    n = np.shape(X)[0]
    if n != settings["n"]:
        raise ValueError(f"X: the scores were computed for {settings['n']} samples, got {n}")
    if X_val is not None and (result.prediction_change_sq is None or np.shape(X_val)[0] != settings["n_val"]):
        raise ValueError(f"X_val: pass the validation inputs the scores used ({settings['n_val']} inputs), "
                         f"got {None if X_val is None else np.shape(X_val)[0]}")
    if not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or not 3 <= samples <= n:
        raise ValueError(f"samples: expected an integer in [3, n={n}] (retrainings for the spot check), got "
                         f"{samples!r}")


def _trained_figures(apply_fn, projection, trained, init, init_val, X, X_val, Yf, Yf_val, lin_train, lin_val, *,
                     lmax0, lr, weight_decay, batch, seed, progress):
    """Gap, accuracy, kernel drift and trained-kernel λ_max once the real network w_T is trained."""
    n, k = Yf.shape
    final = dataclasses.replace(projection, params=trained).features(X, batch_size=batch, progress=progress)
    drift = kernel_drift(init.phi, final.phi, seed=seed)
    lmax_t = largest_eigenvalue(final.phi)
    f0, f_t = np.asarray(init.outputs, np.float64), np.asarray(final.outputs, np.float64)
    f_lin = f0 + np.asarray(lin_train).reshape(n, k)
    gap_train = np.linalg.norm(f_lin - f_t) / np.linalg.norm(f_t - f0)
    gap = gap_train
    if X_val is not None:
        f0_val = np.asarray(init_val.outputs, np.float64)
        f_t_val = np.asarray(apply_fn(trained, jnp.asarray(X_val)), np.float64).reshape(f0_val.shape)
        f_lin_val = f0_val + np.asarray(lin_val).reshape(f0_val.shape)
        gap = np.linalg.norm(f_lin_val - f_t_val) / np.linalg.norm(f_t_val - f0_val)
    accuracy = None
    labels = _class_labels(Yf, k)
    if labels is not None:
        accuracy = {"real": {"train": float(np.mean(_predicted_labels(f_t) == labels)), "val": None},
                    "linearized": {"train": float(np.mean(_predicted_labels(f_lin) == labels)), "val": None}}
        labels_val = None if Yf_val is None else _class_labels(Yf_val, k)
        if labels_val is not None:
            accuracy["real"]["val"] = float(np.mean(_predicted_labels(f_t_val) == labels_val))
            accuracy["linearized"]["val"] = float(np.mean(_predicted_labels(f_lin_val) == labels_val))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"linearization_gap": _finite(gap), "linearization_gap_train": _finite(gap_train), "accuracy": accuracy,
                "kernel_drift": _finite(drift["drift"]), "kernel_drift_rows": drift["rows"],
                "lambda_max_trained": lmax_t, "lambda_max_ratio": _finite(np.float64(lmax_t) / lmax0),
                "stability_margin": lr * (lmax_t + weight_decay) / 2,
                "lr_for_margin": _finite(np.float64(2 * THRESHOLDS["trusted_margin"]) / (lmax_t + weight_decay))}


def trust(apply_fn: Callable, params, X, Y, X_val, Y_val=None, *, result, lr, steps, weight_decay=0.0, samples=12,
          seed=0, loss="sum", progress=False) -> dict:
    """Measured evidence that ``result`` (``ntk_info.score`` on these data) holds for the real network.

    Trains the real network w_T = A(X, Y) exactly as the scores assume (``ntk_info.training``: sum
    loss Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||², ``steps`` full-batch GD steps of ``lr``) and
    retrains it without ``samples`` samples at evenly spaced ranks of the score (F-SI, or SI without
    X_val), all in one ``brute_force_loo`` call. Returns a JSON-serializable dict:

    verdict, reasons, advice      see :func:`verdict` (thresholds ``THRESHOLDS``)
    linearization_gap             ||f_lin - f_T|| / ||f_T - f0|| on X_val (on X without X_val:
                                  ``gap_inputs`` says which); linearization_gap_train on X
    accuracy                      {"real"|"linearized": {"train", "val"}} for classification targets
                                  (one-hot rows, ±1, integer labels with targets="onehot"), else None
    kernel_drift, kernel_drift_rows   ||K_T - K_0||_F/||K_0||_F, same projection (``kernel_drift``)
    lambda_max_init, lambda_max_trained, lambda_max_ratio   λ_max of the projected (n·k)² kernel
    stability_margin, stability_margin_init   η(λ_max + λ)/2 at w_T and w0; edge_of_stability: ≥ 0.9
    lr_for_margin                 the lr at which the trained margin would be 0.75 (``trusted_margin``)
    spot_check                    indices, ranked_by, and per measure ("predictions": ||Δf(X_v)||²,
                                  "weights": ||Δw||²) predicted, actual, Pearson and Spearman with
                                  bootstrap 95 % intervals (``correlation_with_interval``)
    seconds                       features, linearized, train_and_retrain, kernel_drift, total

    ``Y``/``Y_val``: float targets (n, k), or integer class labels (n,) for k > 1 outputs (one-hot rows).
    ``loss``: "sum" only (the training loop's loss); the lr/steps/weight_decay must equal the scores'.
    """
    t_start = time.perf_counter()
    _check_request(result, X, X_val, lr, steps, weight_decay, loss, samples)
    settings = result.settings
    n, k = settings["n"], settings["k"]
    Yf = _float_targets(Y, n, k, "Y")
    if Y_val is not None and X_val is None:
        raise ValueError("Y_val: given without X_val; pass the validation inputs too")
    Yf_val = None if Y_val is None else _float_targets(Y_val, np.shape(X_val)[0], k, "Y_val")
    batch = settings.get("feature_batch_size")
    projection = result.projection

    init = projection.features(X, batch_size=batch, progress=progress)
    init_val = None if X_val is None else projection.features(X_val, batch_size=batch, progress=progress)
    t_features = time.perf_counter()
    lin_train, lin_val = _linearized_changes(init.phi, Yf - np.asarray(init.outputs, np.float64),
                                             None if init_val is None else init_val.phi, settings)
    t_linearized = time.perf_counter()

    ranked_by = "fsi" if result.fsi is not None else "si"
    picks = quantile_picks(result.fsi if result.fsi is not None else result.si, samples)
    brute = brute_force_loo(apply_fn, params, X, Yf, lr=float(lr), steps=int(round(float(steps))),
                            weight_decay=float(weight_decay), subset=picks, X_val=X_val,
                            chunk_size=min(int(samples), 16), progress=progress)
    trained = brute.params
    t_train = time.perf_counter()

    wd = float(weight_decay)
    lmax0 = largest_eigenvalue(init.phi)
    figures = dict.fromkeys(("linearization_gap", "linearization_gap_train", "accuracy", "kernel_drift",
                             "kernel_drift_rows", "lambda_max_trained", "lambda_max_ratio", "stability_margin"))
    figures.update({"gap_inputs": "validation" if X_val is not None else "training", "lambda_max_init": lmax0,
                    "stability_margin_init": float(lr) * (lmax0 + wd) / 2,
                    "lr_for_margin": _finite(np.float64(2 * THRESHOLDS["trusted_margin"]) / (lmax0 + wd)),
                    "diverged": not all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(trained)),
                    "spot_check": {"samples": int(picks.size), "indices": picks.tolist(), "ranked_by": ranked_by,
                                   "ranked_by_measure": "predictions" if ranked_by == "fsi" else "weights"}})
    if not figures["diverged"]:
        figures.update(_trained_figures(apply_fn, projection, trained, init, init_val, X, X_val, Yf, Yf_val,
                                        lin_train, lin_val, lmax0=lmax0, lr=float(lr), weight_decay=wd, batch=batch,
                                        seed=seed, progress=progress))
        measures = [("weights", result.weight_change_sq, brute.weight_change_sq)]
        if X_val is not None:
            measures.insert(0, ("predictions", result.prediction_change_sq, brute.prediction_change_sq))
        for name, predicted, actual in measures:
            predicted, actual = np.asarray(predicted, np.float64)[picks], np.asarray(actual, np.float64)
            figures["spot_check"][name] = {"predicted": predicted.tolist(), "actual": actual.tolist(),
                                           **correlation_with_interval(predicted, actual, seed=seed)}
    t_drift = time.perf_counter()
    figures["edge_of_stability"] = figures["diverged"] or figures["stability_margin"] >= THRESHOLDS["edge_margin"]
    label, reasons, advice = verdict(figures)
    t_end = time.perf_counter()
    return {
        "verdict": label, "reasons": reasons, "advice": advice, **figures,
        "settings": {"lr": float(lr), "steps": int(round(float(steps))), "weight_decay": wd, "loss": loss,
                     "kernel": settings["kernel"], "discrete": bool(settings["discrete"]), "samples": int(samples),
                     "seed": int(seed)},
        "thresholds": dict(THRESHOLDS),
        "seconds": {"features": t_features - t_start, "linearized": t_linearized - t_features,
                    "train_and_retrain": t_train - t_linearized, "trained_features_and_drift": t_drift - t_train,
                    "total": t_end - t_start},
    }

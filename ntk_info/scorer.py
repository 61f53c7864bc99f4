"""One call from a model and data to per-sample SI / F-SI scores (SI paper, Harutyunyan et al. 2021).

Pipeline: projected per-layer Jacobian features Φ of the training and validation inputs (one shared
projection, ``ntk_info.features``) → residuals r = Y - f0(X) → exact leave-one-out of the
linearized network trained with the sum loss Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||² (or the mean
loss, data term / n) for ``steps`` steps of learning rate ``lr`` (``ntk_info.leave_one_out``, float64)
→ scores (``ntk_info.scores``).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import time
from typing import Any, Callable

import numpy as np

from . import scores as _scores
from .features import _check_apply, _check_inputs, projected_features
from .loo import DTYPES, LOSSES, leave_one_out

__all__ = ["score", "score_features", "ScoreResult", "KERNELS", "TRACE_ROWS_THRESHOLD", "kernel_for",
           "trace_features", "loo_residuals"]

KERNELS = ("auto", "full", "trace", "streamed")
TRACE_ROWS_THRESHOLD = 4000  # kernel="auto" uses the output-averaged kernel when n·k exceeds this
STREAM_SAMPLES_THRESHOLD = 10_000  # ... and streams the full kernel's features when n exceeds this


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Per-sample scores of n training samples (k outputs each) and the settings that produced them.

    ``si`` (n,): ½||w - w_{-i}||²/σ² (SI paper eq. 5, isotropic); ``si_langevin`` (n,):
    (b/(ησ²)) Δwᵀ H Δw (eq. 15); ``fsi`` (n,): ||f(X_v) - f_{-i}(X_v)||²/(2σ²m) (eq. 16–17), None
    without X_val; ``loo_residuals`` (n, k): y_i - f_{-i}(x_i), exact on the linearized model;
    ``self_prediction_change`` (n, k): f(x_i) - f_{-i}(x_i); ``fitted_residuals`` (n, k): y_i - f_t(x_i);
    ``loo_loss`` (n,): ½||y_i - f_{-i}(x_i)||². ``kernel_diagonal_stats``: min/median/mean/max of
    the projected kernel diagonal tr K_ii = ||Φ_i||² (a cheap scale check; the projection error itself
    needs the exact NTK, see ``ntk_info.kernel_relative_error``). ``settings``: every setting and timings.
    ``trust``: the evidence of ``ntk_info.trust`` (verdict, gap, drift, spot check), None when skipped.
    """

    si: np.ndarray
    si_langevin: np.ndarray
    fsi: np.ndarray | None
    weight_change_sq: np.ndarray
    prediction_change_sq: np.ndarray | None
    train_prediction_change_sq: np.ndarray
    loo_residuals: np.ndarray
    self_prediction_change: np.ndarray
    fitted_residuals: np.ndarray
    loo_loss: np.ndarray
    outputs: np.ndarray
    kernel_diagonal_stats: dict
    settings: dict
    projection: Any = dataclasses.field(default=None, repr=False, compare=False)
    trust: dict | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """Per-sample arrays by name ((n,) or (n, k)); fsi / prediction_change_sq only when X_val was given."""
        names = ["si", "si_langevin", "fsi", "weight_change_sq", "prediction_change_sq",
                 "train_prediction_change_sq", "loo_loss", "loo_residuals", "self_prediction_change",
                 "fitted_residuals", "outputs"]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def _columns(self) -> dict:
        """One 1-D column per scalar: (n, k) arrays become name_0 ... name_{k-1}."""
        columns = {}
        for name, value in self.to_dict().items():
            if value.ndim == 1:
                columns[name] = value
            else:
                columns.update({f"{name}_{a}": value[:, a] for a in range(value.shape[1])})
        return columns

    def to_dataframe(self):
        """A pandas DataFrame, one row per training sample (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("ScoreResult.to_dataframe needs pandas, which is not installed; install it with "
                              "`pip install pandas`, or use to_dict() / to_csv()") from err
        return pd.DataFrame(self._columns())

    def to_csv(self, path) -> None:
        """Write one row per training sample (columns as in ``to_dataframe``) to ``path``; no pandas needed."""
        columns = self._columns()
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sample", *columns])
            for i, row in enumerate(zip(*columns.values())):
                writer.writerow([i, *(repr(float(v)) for v in row)])


def _targets(Y, n, k, targets):
    """Y as float (n, k): float targets of the output shape, or integer labels with targets='onehot'."""
    Y = np.asarray(Y)
    if Y.shape[:1] != (n,):
        raise ValueError(f"Y: expected {n} targets (one per row of X), got shape {Y.shape}; X and Y must have the "
                         "same length")
    if targets == "onehot":
        if Y.ndim != 1 or not np.issubdtype(Y.dtype, np.integer):
            raise ValueError(f"Y: targets='onehot' expects integer class labels of shape (n,), got dtype {Y.dtype} "
                             f"and shape {Y.shape}")
        if Y.min() < 0 or Y.max() >= k:
            raise ValueError(f"Y: class labels must lie in [0, {k}) for a model with k = {k} outputs, got "
                             f"[{Y.min()}, {Y.max()}]")
        return np.eye(k)[Y]
    if targets is not None:
        raise ValueError(f"targets: expected None (float targets) or 'onehot', got {targets!r}")
    if not np.issubdtype(Y.dtype, np.floating):
        raise ValueError(f"Y: expected float targets of shape (n, {k}) (the model's output shape), got dtype "
                         f"{Y.dtype}; for integer class labels pass targets='onehot' (one-hot rows of length k), "
                         "or convert them yourself (e.g. ±1 for one output)")
    if Y.ndim == 1 and k == 1:
        Y = Y[:, None]
    if Y.shape != (n, k):
        raise ValueError(f"Y: expected shape ({n}, {k}) to match the model's outputs (n, k), got {Y.shape}")
    if not np.isfinite(Y).all():
        raise ValueError("Y: contains NaN or inf")
    return Y


def _check_scalar(value, name, *, allow_inf=False, minimum=0.0, strict=False):
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected a number (score takes one setting; use leave_one_out for grids), "
                         f"got {value!r}") from err
    bad = math.isnan(value) or (math.isinf(value) and not allow_inf) or value < minimum or \
        (strict and value == minimum)
    if bad:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{name}: expected a finite number {bound}{' or inf' if allow_inf else ''}, got {value!r}")
    return value


def score(apply_fn: Callable, params, X, Y, X_val=None, *, lr, steps, weight_decay=0.0, discrete=False,
          coords_per_layer=2000, seed=0, method="countsketch", batch_size=None, mode="auto", kernel="auto",
          sigma=1.0, sgd_batch_size=None, targets=None, progress=True, loss="sum",
          dtype="float64", linearize="init", Y_val=None, train_options=None, segments=None,
          spacing="uniform", trust_samples=None) -> ScoreResult:
    """SI and F-SI of every training sample of (X, Y) for the network ``apply_fn`` at ``params`` = w0.

    Linearized network f(x) = f0(x) + Φ(x)(w - w0) on projected Jacobian features Φ
    (``projected_features`` with ``coords_per_layer``, ``seed``, ``method``; X and X_val share one
    projection), trained on Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||² (λ = ``weight_decay``) for
    ``steps`` steps of learning rate ``lr`` (gradient flow; ``discrete=True``: exact full-batch GD;
    steps=inf: converged); ``loss="mean"`` scales the data term by 1/n (1/(n-1) for the model without
    a sample; ``leave_one_out``). Exact leave-one-out (``leave_one_out``, ``mode`` "auto"/"dual"/"primal"),
    then si = ½||Δw||²/σ² (SI paper eq. 5), si_langevin = (b/(ησ²)) Δwᵀ(ΦᵀΦ + λI)Δw (eq. 15, b =
    ``sgd_batch_size``, default n), fsi = ||f(X_v) - f_{-i}(X_v)||²/(2σ²m) (eq. 16–17, needs X_val).

    Precision: the leave-one-out runs in float64 whatever ``jax_enable_x64`` says (``dtype="float32"``
    is an explicit opt-in, see ``leave_one_out``); features are computed in the dtype of ``params``.
    A RuntimeWarning is raised when lr is at or above the GD stability limit 2/(λmax + λ).

    Targets: ``Y`` float of the model's output shape (n, k) (or (n,) when k = 1); integer class
    labels (n,) only with ``targets="onehot"`` (row i = e_{y_i} ∈ R^k).

    ``kernel`` for k > 1 outputs:
        "full"   Φ (n, k, p) as is: the full (n·k) × (n·k) NTK, rank-k removal per sample.
        "trace"  output-averaged kernel K_ij = (1/k) Σ_a ⟨Φ_ia, Φ_ja⟩ (neural-tangents
                 trace_axes=(-1,)), shared by k independent outputs: features (n, k·p)/√k.
        "streamed" the full kernel in the primal basis with features streamed in batches, never stored
                 (``ntk_info.streaming``; memory O(p² + batch·k·p), for large n; sum loss, float64,
                 linearize "init" or "trained").
        "auto"   "streamed" when n > 10,000 (STREAM_SAMPLES_THRESHOLD), else "trace" when n·k > 4000
                 (TRACE_ROWS_THRESHOLD) and k > 1, else "full".

    ``linearize``: "init" (default) linearizes at ``params``; "trained" first trains the network from
    ``params`` with Adam and early stopping on (X_val, ``Y_val``) (``ntk_info.linearize.train_adam``,
    ``train_options``) and linearizes at those weights, so that (lr, steps, weight_decay) describe
    fine-tuning from w* on Y - f(X; w*) (e.g. steps=inf with weight_decay > 0: the ridge limit).
    Other points (fresh head, pretrained body, λ by LOO): ``ntk_info.linearize``.
    ``linearize="segments"`` trains the real network
    (full-batch GD, needs ``discrete=True`` and finite ``steps``), linearizes at ``segments`` = S
    checkpoints (``spacing`` "uniform", "early" or explicit steps) with the same projection, and
    carries the exact LOO perturbation through them (``ntk_info.segments``); S = 1 is "init".
    Settings then also hold the checkpoints' kernel drift and stability margins.
    ``trust_samples`` = m > 0 (None: 8 where it applies — linearize "init" or "segments", finite
    integer ``steps``, the sum loss — and skipped otherwise, with the reason in
    ``settings["trust_skipped"]``): ``result.trust`` = ``ntk_info.trust`` (train the real network, retrain
    it without min(m, n) samples spread over the score's quantiles, verdict); 0 skips it. ``Y_val``: validation targets, for the validation accuracy in ``result.trust``.
    """
    t_start = time.perf_counter()
    X = _check_inputs(X, "X")
    n = X.shape[0]
    k = _check_apply(apply_fn, params, X)
    Y = _targets(Y, n, k, targets)
    if X_val is not None:
        X_val = _check_inputs(X_val, "X_val")
        if X_val.shape[1:] != X.shape[1:]:
            raise ValueError(f"X_val: expected inputs of shape (m, {', '.join(map(str, X.shape[1:]))}) like X "
                             f"{tuple(X.shape)}, got {tuple(X_val.shape)}")
    lr = _check_scalar(lr, "lr", strict=True)
    steps = _check_scalar(steps, "steps", allow_inf=True, strict=True)
    weight_decay = _check_scalar(weight_decay, "weight_decay")
    sigma = _check_scalar(sigma, "sigma", strict=True)
    sgd_batch_size = n if sgd_batch_size is None else int(_check_scalar(sgd_batch_size, "sgd_batch_size", strict=True))
    kernel_for(n, k, kernel)
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
    trust_skipped = _trust_not_applicable(linearize, steps, loss)
    if trust_samples is None:
        trust_samples = 0 if trust_skipped else 8
    elif trust_samples and trust_skipped:
        raise ValueError(f"trust_samples: the trust check retrains the real network as the scores assume, which "
                         f"does not apply here ({trust_skipped}); pass trust_samples=0")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES} (float64 is the default; float32 an explicit opt-in), "
                         f"got {dtype!r}")
    linearize_settings = {"linearize": linearize}
    if linearize == "trained":
        from .linearize import linearization_point

        if X_val is None or Y_val is None:
            raise ValueError("linearize='trained': pass X_val and Y_val (the validation split for early stopping)")
        point = linearization_point("trained", params, X, Y, X_val, _targets(Y_val, len(X_val), k, targets),
                                    apply_fn=apply_fn, train_options=train_options)
        params, linearize_settings = point.params, point.settings
    elif linearize not in ("init", "segments"):
        raise ValueError(f"linearize: expected 'init', 'trained' or 'segments' (more points in ntk_info.linearize), "
                         f"got {linearize!r}")
    if linearize == "segments" and loss != "sum":
        raise ValueError(f"linearize='segments' supports loss='sum' only, got loss={loss!r}")
    if linearize == "segments" and (not discrete or math.isinf(steps) or steps != round(steps) or segments is None):
        raise ValueError(f"linearize='segments' trains the real network by full-batch GD: expected discrete=True, "
                         f"a finite integer steps and segments=S ≥ 1, got discrete={discrete}, steps={steps}, "
                         f"segments={segments!r}")

    if kernel_for(n, k, kernel) == "streamed":
        if linearize == "segments" or loss != "sum" or dtype != "float64":
            raise ValueError(f"kernel='streamed' supports the sum loss in float64 with linearize 'init' or 'trained', "
                             f"got loss={loss!r}, dtype={dtype!r}, linearize={linearize!r}; pass kernel='full' or "
                             "'trace' (n·k·p features in memory) for these")
        return _score_streamed(apply_fn, params, X, Y, X_val, Y_val, lr=lr, steps=steps, weight_decay=weight_decay,
                               discrete=discrete, coords_per_layer=coords_per_layer, seed=seed, method=method,
                               batch_size=batch_size, kernel=kernel, sigma=sigma, sgd_batch_size=sgd_batch_size,
                               progress=progress, settings={**linearize_settings, "targets": targets or "float"},
                               trust_samples=trust_samples, trust_skipped=trust_skipped, t_start=t_start)
    feats = projected_features(apply_fn, params, X, coords_per_layer=coords_per_layer, seed=seed,
                               batch_size=batch_size, method=method, progress=progress)
    t_features = time.perf_counter()
    feats_val = loo = None
    segment_settings = {}
    if linearize == "segments":  # read out at the last checkpoint (ntk_info.segments)
        from .segments import segmented_network_loo

        loo, segment_settings = segmented_network_loo(
            apply_fn, params, X, Y, projection=feats.projection, lr=lr, steps=int(steps), weight_decay=weight_decay,
            segments=segments, spacing=spacing, X_val=X_val, kernel=kernel_for(n, k, kernel), batch_size=batch_size,
            first_features=feats, progress=progress)
    elif X_val is not None:
        feats_val = feats.projection.features(X_val, batch_size=batch_size, progress=progress)
    t_val = time.perf_counter()
    result = score_features(feats.phi, feats.outputs, Y, None if feats_val is None else feats_val.phi, lr=lr,
                            steps=steps, weight_decay=weight_decay, discrete=discrete, mode=mode, kernel=kernel,
                            sigma=sigma, sgd_batch_size=sgd_batch_size, progress=progress, loss=loss, dtype=dtype,
                            loo=loo)
    settings = {
        **feats.projection.settings(), "feature_batch_size": feats.batch_size, **result.settings,
        **linearize_settings, "targets": targets or "float", "seconds_features": t_features - t_start,
        "seconds_val_features": t_val - t_features, "seconds_total": time.perf_counter() - t_start,
        "linearize": linearize, **segment_settings,
    }
    return _with_trust(dataclasses.replace(result, settings=settings, projection=feats.projection), apply_fn, params,
                       X, Y, X_val, Y_val, lr=lr, steps=steps, weight_decay=weight_decay, seed=seed, progress=progress,
                       trust_samples=trust_samples, trust_skipped=trust_skipped)


def _score_streamed(apply_fn, params, X, Y, X_val, Y_val, *, lr, steps, weight_decay, discrete, coords_per_layer,
                    seed, method, batch_size, kernel, sigma, sgd_batch_size, progress, settings, trust_samples,
                    trust_skipped, t_start):
    """``score`` with kernel "streamed": ``ntk_info.streaming.streamed_leave_one_out`` (features in batches)."""
    from .streaming import streamed_leave_one_out

    projection = projected_features(apply_fn, params, X[:1], coords_per_layer=coords_per_layer, seed=seed,
                                    method=method, progress=False).projection
    batch_size = batch_size or 512
    loo = streamed_leave_one_out(projection, X, Y, X_val, lr=lr, steps=steps, weight_decay=weight_decay,
                                 discrete=discrete, batch_size=batch_size, progress=progress)
    result = score_features(None, loo.outputs, Y, lr=lr, steps=steps, weight_decay=weight_decay, discrete=discrete,
                            kernel=kernel, sigma=sigma, sgd_batch_size=sgd_batch_size, loo=loo,
                            kernel_diagonal=loo.kernel_diagonal)
    settings = {**projection.settings(), "feature_batch_size": batch_size, **result.settings, **settings,
                "seconds_streamed": loo.seconds, "seconds_total": time.perf_counter() - t_start}
    return _with_trust(dataclasses.replace(result, settings=settings, projection=projection), apply_fn, params, X, Y,
                       X_val, Y_val, lr=lr, steps=steps, weight_decay=weight_decay, seed=seed, progress=progress,
                       trust_samples=trust_samples, trust_skipped=trust_skipped)


def _with_trust(result, apply_fn, params, X, Y, X_val, Y_val, *, lr, steps, weight_decay, seed, progress,
                trust_samples, trust_skipped):
    """``result`` with ``ntk_info.trust`` on ``trust_samples`` retrainings, or the reason it was skipped."""
    settings = result.settings
    if trust_skipped:
        settings["trust_skipped"] = trust_skipped
    if not trust_samples:
        return result
    from .evidence import trust

    evidence = trust(apply_fn, params, X, Y, X_val, Y_val, result=result, lr=lr, steps=steps,
                     weight_decay=weight_decay, samples=min(int(trust_samples), X.shape[0]), seed=seed,
                     progress=progress)
    settings["seconds_trust"] = evidence["seconds"]["total"]
    return dataclasses.replace(result, trust=evidence)


def _trust_not_applicable(linearize, steps, loss) -> str | None:
    """Why ``ntk_info.trust`` cannot check these scores (it replays sum-loss GD from w0), or None."""
    if linearize not in ("init", "segments"):
        return f"linearize={linearize!r} scores a model linearized away from w0"
    if math.isinf(steps) or steps != round(steps):
        return f"steps={steps} is not a finite number of GD steps"
    if loss != "sum":
        return f"loss={loss!r} (the check trains with the sum loss)"
    return None


def kernel_for(n: int, k: int, kernel: str = "auto") -> str:
    """The kernel ``score`` uses for n samples with k outputs: ``kernel``, or for "auto" "trace" when
    k > 1 and n·k > TRACE_ROWS_THRESHOLD, else "full" (see ``score``).

    Measured (``experiments/trace_kernel_check.py``: digits, 10 classes, n = 300, MLP 256, lr = 1/λ_max,
    1000 GD steps, 40 samples retrained without): trace vs full F-SI Pearson 0.942 (SI 0.951); against
    retraining the network, F-SI Pearson 0.933 (trace) vs 0.922 (full), SI 0.880 vs 0.884, at a quarter
    of the full kernel's time. The trace kernel rescales F-SI (median trace/full 0.72), so compare
    scores only under one kernel; ``settings["kernel"]`` records which was used. Beyond 10,000 samples
    "auto" streams the full kernel (an n × n kernel would take 0.8 GB and an O(n³) eigendecomposition).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    if kernel != "auto":
        return kernel
    if n > STREAM_SAMPLES_THRESHOLD:
        return "streamed"
    return "trace" if k > 1 and n * k > TRACE_ROWS_THRESHOLD else "full"


def trace_features(phi) -> np.ndarray:
    """Features of the output-averaged kernel: Φ (n, k, p) -> Φ̃ (n, k·p)/√k, ⟨Φ̃_i, Φ̃_j⟩ = (1/k) Σ_a ⟨Φ_ia, Φ_ja⟩."""
    phi = np.asarray(phi)
    return phi.reshape(phi.shape[0], -1) / math.sqrt(phi.shape[1])


def loo_residuals(loo, n: int, k: int) -> np.ndarray:
    """y_i - f_{-i}(x_i) = (y_i - f(x_i)) + (f(x_i) - f_{-i}(x_i)), (n, k), from a ``leave_one_out`` result."""
    return (np.asarray(loo.fitted_residuals).reshape(n, k)
            + np.asarray(loo.self_prediction_change).reshape(n, k))


def score_features(phi, outputs, Y, phi_val=None, *, lr, steps, weight_decay=0.0, discrete=False, mode="auto",
                   kernel="auto", sigma=1.0, sgd_batch_size=None, progress=True, loss="sum",
                   dtype="float64", loo=None, kernel_diagonal=None) -> ScoreResult:
    """``score`` from features: Φ (n, k, p), f0(X) = ``outputs`` (n, k), float targets ``Y`` (n, k), Φ_val (m, k, p).

    The exact LOO and scores of ``score`` (same equations and settings) for features computed once,
    e.g. rescoring kept subsets ``phi[kept]`` in iterative removal. ``kernel``, ``loss``, ``dtype``: see
    ``score``. ``loo``: a LOO result already computed for these samples (``ntk_info.segments``) instead
    of ``leave_one_out`` on Φ; its ``prediction_change_sq`` then gives fsi. ``phi=None`` with ``loo``
    and ``kernel_diagonal`` (n,) = ||Φ_i||²: features that were streamed, never stored.
    """
    t_start = time.perf_counter()
    outputs = np.asarray(outputs)
    if phi is None:
        if loo is None or kernel_diagonal is None:
            raise ValueError("phi: None needs loo= and kernel_diagonal= (a streamed LOO result)")
        phi = np.zeros((*outputs.shape, 0))  # shapes only: the diagonal comes with the result
    phi = np.asarray(phi)
    if phi.ndim != 3 or outputs.shape != phi.shape[:2]:
        raise ValueError(f"phi, outputs: expected shapes (n, k, p) and (n, k), got {phi.shape} and {outputs.shape}")
    n, k = outputs.shape
    Y = np.asarray(Y, dtype=np.float64).reshape(n, -1) if np.ndim(Y) == 1 else np.asarray(Y, dtype=np.float64)
    if Y.shape != (n, k):
        raise ValueError(f"Y: expected float targets of shape ({n}, {k}) like outputs, got {Y.shape}")
    sgd_batch_size = n if sgd_batch_size is None else sgd_batch_size
    kernel_used = "streamed" if kernel_diagonal is not None else kernel_for(n, k, kernel)
    residuals = Y - outputs
    if kernel_used == "streamed" and loo is None:
        raise ValueError("kernel: 'streamed' scores come from ntk_info.score (features never stored); pass "
                         "kernel='full' or 'trace' for features in memory")
    if kernel_used == "trace":
        phi_used, phi_val_used = trace_features(phi), None if phi_val is None else trace_features(phi_val)
    else:
        phi_used, phi_val_used = phi, phi_val
    if loo is None:
        loo = leave_one_out(features=phi_used, residuals=residuals, lr=lr, steps=steps, weight_decay=weight_decay,
                            discrete=discrete, cross_features=phi_val_used, mode=mode, progress=progress,
                            loss=loss, dtype=dtype)
    t_loo = time.perf_counter()

    self_change = np.asarray(loo.self_prediction_change).reshape(n, k)
    fitted = np.asarray(loo.fitted_residuals).reshape(n, k)
    residuals_loo = loo_residuals(loo, n, k)
    diag = np.einsum("iap,iap->i", phi, phi) if kernel_diagonal is None else np.asarray(kernel_diagonal)
    settings = {
        "lr": lr, "steps": steps, "weight_decay": weight_decay, "discrete": bool(discrete), "loss": loss,
        "dtype": loo.dtype, "sigma": sigma, "sgd_batch_size": sgd_batch_size,
        "kernel": kernel_used, "kernel_requested": kernel, "mode_requested": mode, "mode": loo.mode,
        "basis": loo.basis, "rank": int(loo.rank), "n": n, "k": k, "n_val": int(loo.n_val),
        "seconds_loo": t_loo - t_start,
    }
    return ScoreResult(
        si=np.asarray(_scores.si_isotropic(loo, sigma)),
        si_langevin=np.asarray(_scores.si_langevin(loo, lr=lr, batch_size=sgd_batch_size,
                                                   weight_decay=weight_decay, sigma=sigma)),
        fsi=None if loo.prediction_change_sq is None else np.asarray(_scores.fsi(loo, sigma)),
        weight_change_sq=np.asarray(loo.weight_change_sq),
        prediction_change_sq=None if loo.prediction_change_sq is None else np.asarray(loo.prediction_change_sq),
        train_prediction_change_sq=np.asarray(loo.train_prediction_change_sq),
        loo_residuals=residuals_loo, self_prediction_change=self_change, fitted_residuals=fitted,
        loo_loss=0.5 * np.sum(residuals_loo ** 2, axis=1), outputs=outputs,
        kernel_diagonal_stats={"min": float(diag.min()), "median": float(np.median(diag)),
                               "mean": float(diag.mean()), "max": float(diag.max())},
        settings=settings,
    )

"""Sample-information scores from leave-one-out results (SI paper, Harutyunyan et al. 2021).

All take a ``LOOResult`` (``ntk_info.leave_one_out``) whose per-sample fields may carry leading grid
axes (len(steps), len(weight_decay)); scores keep them. Sum-loss convention throughout:
H = JᵀJ + λI is the Hessian of Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||². A result with
``loss="mean"`` (data term / n) is the same GD iteration as the sum loss with learning rate η/n and
weight decay nλ (``ntk_info.dynamics``): the scores that use η and λ convert them so (lr and
weight_decay arguments are then read in the mean-loss convention too).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["si_isotropic", "si_langevin", "si_lyapunov", "fsi", "loo_loss", "LOOLoss"]


def _positive(value, name):
    if not np.all(np.asarray(value, dtype=float) > 0):
        raise ValueError(f"{name}: expected a positive number, got {value!r}.")
    return value


def _sum_loss_settings(result, lr, weight_decay):
    """(η, λ) of the sum-loss iteration equal to the result's training: (η/n, nλ) for a mean loss."""
    eta = _positive(result.lr if lr is None else lr, "lr")
    lam = np.asarray(result.weight_decay if weight_decay is None else weight_decay, dtype=float)
    if getattr(result, "loss", "sum") == "mean":
        n = np.shape(result.weight_change_sq)[-1]
        return eta / n, lam * n
    return eta, lam


def _per_lambda(result, weight_decay):
    """λ broadcast against per-sample fields (..., Gλ, n): a λ grid becomes a column."""
    lam = np.asarray(result.weight_decay if weight_decay is None else weight_decay, dtype=float)
    if np.any(lam < 0):
        raise ValueError(f"weight_decay: expected λ ≥ 0, got {weight_decay!r}.")
    return lam[:, None] if lam.ndim == 1 else lam


def si_isotropic(result, sigma=1.0):
    """SI with isotropic smoothing Σ = σ²I: ½||w - w_{-i}||²/σ² per sample (SI paper eq. 5)."""
    _positive(sigma, "sigma")
    return 0.5 * np.asarray(result.weight_change_sq) / sigma ** 2


def si_langevin(result, *, batch_size, lr=None, weight_decay=None, sigma=1.0):
    """SI of the SGD/Langevin steady state: (b/(ησ²)) Δwᵀ H Δw, H = JᵀJ + λI (SI paper eq. 15).

    Δwᵀ H Δw = ||J Δw||² + λ||Δw||² = train_prediction_change_sq + λ·weight_change_sq. b =
    ``batch_size``, η = ``lr`` (default: the result's), λ = ``weight_decay`` (default: the result's);
    for a mean-loss result (η/n, nλ), the equal sum-loss iteration.
    """
    _positive(batch_size, "batch_size")
    _positive(sigma, "sigma")
    eta, lam_sum = _sum_loss_settings(result, lr, weight_decay)
    lam = _per_lambda(result, lam_sum)
    quad = np.asarray(result.train_prediction_change_sq) + lam * np.asarray(result.weight_change_sq)
    return batch_size / (eta * sigma ** 2) * quad


def fsi(result, sigma=1.0):
    """Functional SI: ||f(X_v) - f_{-i}(X_v)||² / (2σ² m) over m validation inputs (SI paper eq. 16–17).

    Squared norm as in eq. 8 and 17 (eq. 16 in the paper drops the square, a typo).
    """
    _positive(sigma, "sigma")
    if result.prediction_change_sq is None or result.n_val == 0:
        raise ValueError("result: expected a LOOResult with prediction_change_sq, got None; pass cross_kernel= or "
                         "cross_features= (validation inputs) to leave_one_out.")
    return np.asarray(result.prediction_change_sq) / (2.0 * sigma ** 2 * result.n_val)


class LOOLoss(NamedTuple):
    """per_sample (..., n): ½||y_i - f_{-i}(x_i)||²; total (...): their sum."""

    per_sample: np.ndarray
    total: np.ndarray


def loo_loss(result) -> LOOLoss:
    """Exact leave-one-out loss ½||y_i - f_{-i}(x_i)||² per sample, and its total.

    y_i - f_{-i}(x_i) = (y_i - f(x_i)) + (f(x_i) - f_{-i}(x_i)).

    Uses ``fitted_residuals`` (Y - f_t(X)) and ``self_prediction_change``; with grids this is an exact
    LOO cross-validation curve over (steps, weight_decay).
    """
    loo_residual = np.asarray(result.fitted_residuals) + np.asarray(result.self_prediction_change)
    if loo_residual.ndim == np.asarray(result.weight_change_sq).ndim + 1:  # (..., n, k)
        per_sample = 0.5 * np.sum(loo_residual ** 2, axis=-1)
    else:
        per_sample = 0.5 * loo_residual ** 2
    return LOOLoss(per_sample, per_sample.sum(axis=-1))


def si_lyapunov(result, *, batch_size, lr=None, gradient_covariance=None, rcond=None):
    """SI with SGD's steady-state covariance: ½ dᵀ Σ⁺ d, H Σ + Σ H = (η/b) Λ (SI paper eq. 13–14, App. C).

    Λ is the covariance (1/n)Σ_i (g_i - ḡ)(g_i - ḡ)ᵀ of the per-sample loss gradients at the trained
    weights, g_i = J_iᵀ(f_t(x_i) - y_i) + (λ/n)(w_t - w0) (the last term is common to all samples and
    cancels). Everything lives on the span of the data: in U-coordinates (``return_coords=True``)
    H = diag(h), h = s + λ, g_i = -Z_i e_i + (λ/n) φ(s)∘c with e_i the fitted residual, and the
    Lyapunov equation is solved entrywise, Σ_ab = (η/b) Λ_ab / (h_a + h_b). Σ is inverted with a
    pseudo-inverse on that span (eigenvalues ≤ rcond·max dropped; rcond default 1e-10): directions
    without gradient noise carry no information. Independent outputs (block_size 1, q outputs) use
    the q·r-dimensional weight vector, ordered (r, q) row-major. ``gradient_covariance`` overrides Λ
    (U-coordinates, (r·q, r·q)); Λ = σ²I reproduces ``si_langevin``. A mean-loss result uses the equal
    sum-loss iteration (η/n, nλ).
    """
    if result.weight_change_coords is None:
        raise ValueError("result: expected a LOOResult with U-coordinates, got none; call leave_one_out(..., "
                         "return_coords=True).")
    _positive(batch_size, "batch_size")
    eta, lams = _sum_loss_settings(result, lr, None)
    s = np.asarray(result.spectrum)
    T = np.asarray(result.train_coords)
    r_dim, N = T.shape
    kb = result.block_size
    n = N // kb
    d_all = np.asarray(result.weight_change_coords)
    fitted_all = np.asarray(result.fitted_residuals)
    trained_all = np.asarray(result.trained_coords)
    grid = np.shape(result.weight_change_sq)[:-1]  # (len(steps),)?, (len(weight_decay),)?
    out = np.empty(grid + (n,))
    for index in np.ndindex(*grid):
        lam = float(lams[index[-1]]) if lams.ndim else float(lams)
        d = d_all[index].reshape(n, r_dim, -1)
        q = d.shape[-1]
        fitted = fitted_all[index].reshape(n, kb, q)
        trained = trained_all[index].reshape(r_dim, q)
        if gradient_covariance is None:
            Z = T.reshape(r_dim, n, kb).transpose(1, 0, 2)  # (n, r, kb)
            grads = -np.einsum("nrk,nkq->nrq", Z, fitted) + (lam / n) * trained
            centered = (grads - grads.mean(axis=0)).reshape(n, r_dim * q)
            cov = centered.T @ centered / n
        else:
            cov = np.asarray(gradient_covariance, dtype=float)
            if cov.shape != (r_dim * q, r_dim * q):
                raise ValueError(f"gradient_covariance: expected shape ({r_dim * q}, {r_dim * q}) in U-coordinates, "
                                 f"got {cov.shape}.")
        h = np.repeat(s + lam, q)
        sigma = (eta / batch_size) * cov / (h[:, None] + h[None, :])
        ev, vec = np.linalg.eigh((sigma + sigma.T) / 2)
        cutoff = (1e-10 if rcond is None else rcond) * max(ev.max(), 0.0)
        inv = np.where(ev > cutoff, 1.0 / np.where(ev > cutoff, ev, 1.0), 0.0)
        proj = d.reshape(n, r_dim * q) @ vec
        out[index] = 0.5 * np.sum(inv * proj ** 2, axis=1)
    return out


# ----------------------------------------------------------------------------- detection scores from LOO predictions

__all__ += ["loo_margin", "suggested_label", "loo_temperature", "loo_probabilities", "loo_prob_given", "loo_log_prob_given",
            "class_thresholds", "confident_joint_flags"]


def _loo_inputs(loo_outputs, labels):
    out = np.asarray(loo_outputs, dtype=np.float64)
    labels = np.asarray(labels)
    if out.ndim != 2 or out.shape[1] < 2:
        raise ValueError(f"loo_outputs: expected LOO predictions f_{{-i}}(x_i) of shape (n, k) with k >= 2 classes, "
                         f"got shape {out.shape}; from a ScoreResult use Y - result.loo_residuals")
    if labels.shape != (out.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected {out.shape[0]} integer class labels, got shape {labels.shape} and dtype "
                         f"{labels.dtype}")
    if labels.min() < 0 or labels.max() >= out.shape[1]:
        raise ValueError(f"labels: expected values in [0, {out.shape[1]}), got [{labels.min()}, {labels.max()}]")
    if not np.isfinite(out).all():
        raise ValueError("loo_outputs: contains NaN or inf")
    return out, labels


def loo_margin(loo_outputs, labels) -> np.ndarray:
    """m_i = f_{-i}(x_i)[y_i] - max_{c≠y_i} f_{-i}(x_i)[c]: the left-out model's margin for the given label.

    ``loo_outputs`` (n, k) = Y - loo_residuals (``ScoreResult``); negative: the model trained without
    sample i prefers another class. As a mislabel detector use -m_i (higher = more suspicious).
    """
    out, labels = _loo_inputs(loo_outputs, labels)
    rows = np.arange(out.shape[0])
    other = out.copy()
    other[rows, labels] = -np.inf
    return out[rows, labels] - other.max(axis=1)


def suggested_label(loo_outputs) -> np.ndarray:
    """argmax_c f_{-i}(x_i)[c]: the class the model trained without sample i predicts (a suggested relabel)."""
    out = np.asarray(loo_outputs, dtype=np.float64)
    if out.ndim != 2:
        raise ValueError(f"loo_outputs: expected shape (n, k), got {out.shape}")
    return np.argmax(out, axis=1)


def loo_temperature(loo_outputs, labels) -> float:
    """T minimizing the LOO negative log-likelihood -Σ_i log softmax(f_{-i}(x_i)/T)[y_i] (1-D, on log T).

    Outputs of a squared-loss model are not logits; this one scale makes softmax(f/T) a calibrated
    probability under the (noisy) given labels, as temperature scaling does (Guo et al. 2017), but on
    left-out predictions, so it needs no held-out set.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    out, labels = _loo_inputs(loo_outputs, labels)
    rows = np.arange(out.shape[0])
    scale = max(float(np.std(out)), 1e-12)

    def nll(log_t):
        return -np.mean(log_softmax(out / (scale * np.exp(log_t)), axis=1)[rows, labels])

    lower, upper = -12.0, 6.0
    best = minimize_scalar(nll, bounds=(lower, upper), method="bounded", options={"xatol": 1e-6})
    if min(best.x - lower, upper - best.x) < 1e-3 or best.fun < 1e-9:
        # No interior optimum (e.g. a memorized training set: every left-out prediction right, the NLL
        # falls to 0 as T -> 0): softmax(f/T) saturates to 0/1 ties that no longer rank the samples.
        import warnings

        warnings.warn(f"loo_temperature: the LOO likelihood has no interior optimum (search bound) at T = "
                      f"{scale * np.exp(best.x):.3g}; LOO probabilities saturate, so rank by loo_margin or the "
                      "LOO log-probability (loo_log_prob_given) instead", RuntimeWarning, stacklevel=2)
    return float(scale * np.exp(best.x))


def loo_probabilities(loo_outputs, labels=None, temperature=None) -> np.ndarray:
    """softmax(f_{-i}(x_i)/T) per sample, (n, k); T = ``temperature`` or ``loo_temperature(loo_outputs, labels)``."""
    from scipy.special import softmax

    out = np.asarray(loo_outputs, dtype=np.float64)
    if temperature is None:
        if labels is None:
            raise ValueError("labels: needed to fit the temperature; pass labels= or temperature=")
        temperature = loo_temperature(out, labels)
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a finite T > 0, got {temperature!r}")
    return softmax(out / temperature, axis=1)


def loo_log_prob_given(loo_outputs, labels, temperature) -> np.ndarray:
    """log P_{-i}(y_i | x_i) = log softmax(f_{-i}(x_i)/T)[y_i], computed without saturating (ranks samples
    even where the probability itself rounds to 0 or 1)."""
    from scipy.special import log_softmax

    out, labels = _loo_inputs(loo_outputs, labels)
    return log_softmax(out / temperature, axis=1)[np.arange(out.shape[0]), labels]


def loo_prob_given(probabilities, labels) -> np.ndarray:
    """p_i = P_{-i}(y_i | x_i): the left-out probability of the given label (low = suspicious)."""
    probs, labels = _loo_inputs(probabilities, labels)
    return probs[np.arange(probs.shape[0]), labels]


def class_thresholds(probabilities, labels) -> np.ndarray:
    """Confident-learning thresholds t_c = mean of P(c | x_i) over the samples labeled c (Northcutt et al.
    2021, eq. 2), (k,). A class without samples gets t_c = 1."""
    probs, labels = _loo_inputs(probabilities, labels)
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    sums = np.bincount(labels, weights=probs[np.arange(probs.shape[0]), labels], minlength=k)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)


def confident_joint_flags(probabilities, labels) -> np.ndarray:
    """Confident-learning flag per sample: some class c ≠ y_i has P(c | x_i) ≥ t_c, and the most
    probable such class is not y_i (off-diagonal of the confident joint; Northcutt et al. 2021, §3.1)."""
    probs, labels = _loo_inputs(probabilities, labels)
    above = probs >= class_thresholds(probs, labels)[None, :]
    masked = np.where(above, probs, -np.inf)
    best = np.argmax(masked, axis=1)
    return above.any(axis=1) & (best != labels)

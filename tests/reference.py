"""Brute-force float64 references: retrain from scratch without each sample (numpy only).

Importable from tests as ``from reference import ...`` (tests/ is on sys.path under pytest's
rootdir-relative imports). Nothing here calls ntk_info, so a bug there cannot hide in the reference.
Conventions: sum loss Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||², residuals r = Y - f0(X), weights
are w - w0, t GD steps of size η (discrete) or gradient-flow time η t.
"""
from __future__ import annotations

import numpy as np


def filter_numpy(u, lr, steps, discrete):
    """g(u) in float64 numpy: (1 - e^{-ηtu})/u, (1 - (1 - ηu)^t)/u, or 1/u at t = ∞ (u = 0: ηt)."""
    u = np.asarray(u, dtype=float)
    out = np.empty_like(u)
    small = np.abs(u) < 1e-300
    uu = np.where(small, 1.0, u)
    if np.isinf(steps):
        out = 1.0 / uu
    elif discrete:
        x = lr * uu
        below = np.where(x < 1, x, 0.0)  # log1p form where 0 < ηu < 1 (no cancellation near u = 0)
        out = np.where(x < 1, -np.expm1(steps * np.log1p(-below)), 1.0 - np.power(1.0 - x, steps)) / uu
    else:
        out = -np.expm1(-lr * steps * uu) / uu
    return np.where(small, lr * steps, out)


def run_gd(phi, R, lr, steps, lam):
    """w - w0 after literally running ``steps`` full-batch GD steps on the sum loss from w0 (float64)."""
    w = np.zeros((phi.shape[1],) + R.shape[1:])
    for _ in range(int(steps)):
        w = w - lr * (phi.T @ (phi @ w - R) + lam * w)
    return w


def trained_weights(phi, R, lr, steps, lam, discrete):
    """w_t - w0 = g(ΦᵀΦ + λI) Φᵀ r by eigh of the primal Gram; t = ∞: least squares / ridge solve."""
    H = phi.T @ phi
    rhs = phi.T @ R
    if np.isinf(steps):
        if lam > 0:
            return np.linalg.solve(H + lam * np.eye(H.shape[0]), rhs)
        return np.linalg.lstsq(phi, R, rcond=None)[0]  # min-norm least squares = gradient-flow limit
    s, U = np.linalg.eigh((H + H.T) / 2)
    s = np.clip(s, 0.0, None)
    g = filter_numpy(s + lam, lr, steps, discrete)
    return U @ (g.reshape((-1,) + (1,) * (R.ndim - 1)) * (U.T @ rhs))


def loo_features(features, residuals, *, lr, steps, lam=0.0, discrete=False, cross_features=None, gd=False):
    """Brute-force LOO with explicit weights: drop sample i's rows and retrain.

    features (n, p) [residuals (n,) or (n, k), outputs share Φ] or (n, k, p) [residuals (n, k)].
    Returns dict weight, train, self (n, k_out) or (n,), val (or None), fitted, loo_residual
    (y_i - f_{-i}(x_i), (n, k_out)) and w. gd=True runs real GD steps.
    """
    features = np.asarray(features, dtype=float)
    residuals = np.asarray(residuals, dtype=float)
    n = features.shape[0]
    full = features.ndim == 3
    kb = features.shape[1] if full else 1
    phi = features.reshape(n * kb, -1)
    R = residuals.reshape(n * kb, 1) if full else residuals
    phiv = None if cross_features is None else np.asarray(cross_features, dtype=float).reshape(-1, phi.shape[1])
    fit = run_gd if gd else (lambda a, b, c, d, e: trained_weights(a, b, c, d, e, discrete))
    w = fit(phi, R, lr, steps, lam)
    out = {k: [] for k in ("weight", "train", "self", "val", "loo_residual")}
    for i in range(n):
        keep = np.ones(n * kb, bool)
        keep[i * kb:(i + 1) * kb] = False
        wi = fit(phi[keep], R[keep], lr, steps, lam)
        dw = w - wi
        out["loo_residual"].append((R[~keep] - phi[~keep] @ wi).reshape(-1))
        out["weight"].append(np.sum(dw ** 2))
        out["train"].append(np.sum((phi @ dw) ** 2))
        out["self"].append((phi[i * kb:(i + 1) * kb] @ dw).reshape(-1))
        out["val"].append(None if phiv is None else np.sum((phiv @ dw) ** 2))
    res = {k: np.array(v) for k, v in out.items() if k != "val"}
    res["val"] = None if phiv is None else np.array(out["val"])
    res["fitted"] = (R - phi @ w).reshape(n, -1)
    if residuals.ndim == 1:
        res["self"] = res["self"].reshape(n)
        res["fitted"] = res["fitted"].reshape(n)
    res["w"] = w
    return res


def flat_kernel(kernel):
    """(n, n) as is; (n, n, k, k) -> sample-major (n·k, n·k)."""
    kernel = np.asarray(kernel, dtype=float)
    if kernel.ndim == 2:
        return kernel
    a, b, k, _ = kernel.shape
    return kernel.transpose(0, 2, 1, 3).reshape(a * k, b * k)


def _dual_coefficients(K, R, lr, steps, lam, discrete):
    """a = g(K + λI) r by eigh (t = ∞: solve)."""
    M = K + lam * np.eye(K.shape[0])
    if np.isinf(steps):
        return np.linalg.solve(M, R)
    s, V = np.linalg.eigh((M + M.T) / 2)
    return V @ (filter_numpy(s, lr, steps, discrete)[:, None] * (V.T @ R))


def loo_kernel(kernel, residuals, *, lr, steps, lam=0.0, discrete=False, cross_kernel=None):
    """Brute-force LOO in kernel space: δ_i = a - pad(a_{-i}), a_{-i} from the reduced kernel.

    ||Δw||² = δᵀKδ, self change (Kδ)[B_i], train ||Kδ||², val ||K_v δ||² (DESIGN.md).
    """
    kernel = np.asarray(kernel, dtype=float)
    residuals = np.asarray(residuals, dtype=float)
    n = kernel.shape[0]
    kb = kernel.shape[2] if kernel.ndim == 4 else 1
    K = flat_kernel(kernel)
    N = n * kb
    R = residuals.reshape(N, -1)
    Kv = None if cross_kernel is None else flat_kernel(cross_kernel)
    a = _dual_coefficients(K, R, lr, steps, lam, discrete)
    out = {k: [] for k in ("weight", "train", "self", "val")}
    for i in range(n):
        keep = np.ones(N, bool)
        keep[i * kb:(i + 1) * kb] = False
        delta = a.copy()
        delta[keep] -= _dual_coefficients(K[np.ix_(keep, keep)], R[keep], lr, steps, lam, discrete)
        Kd = K @ delta
        out["weight"].append(np.sum(delta * Kd))
        out["train"].append(np.sum(Kd ** 2))
        out["self"].append(Kd[i * kb:(i + 1) * kb].reshape(-1))
        out["val"].append(None if Kv is None else np.sum((Kv @ delta) ** 2))
    res = {k: np.array(v) for k, v in out.items() if k != "val"}
    res["val"] = None if Kv is None else np.array(out["val"])
    res["fitted"] = (R - K @ a).reshape(n, -1)
    if residuals.ndim == 1:
        res["self"] = res["self"].reshape(n)
        res["fitted"] = res["fitted"].reshape(n)
    return res


def kernel_with_spectrum(rng, s, n_rows):
    """K = Q diag(s) Qᵀ with a random orthogonal Q (n_rows × n_rows); s padded with zeros."""
    Q, _ = np.linalg.qr(rng.normal(size=(n_rows, n_rows)))
    spec = np.zeros(n_rows)
    spec[: len(s)] = s
    return (Q * spec) @ Q.T, Q, spec

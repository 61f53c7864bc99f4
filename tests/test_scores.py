"""Scores (SI, F-SI, LOO loss, Lyapunov SI) against explicit weights retrained without each sample."""
import math

import numpy as np
import pytest
import scipy.linalg
from reference import trained_weights

from ntk_info.loo import leave_one_out
from ntk_info.scores import fsi, loo_loss, si_isotropic, si_langevin, si_lyapunov

INF = math.inf
STEPS = np.array([0.5, 3.0, INF])
LAMS = np.array([1e-4, 1e-3, 0.1, 10.0, 1e3])


def _problem(layout, seed=0, n=8, p=5, m=4):
    rng = np.random.default_rng(seed)
    if layout == "k1":
        return rng.normal(size=(n, p)), rng.normal(size=n), rng.normal(size=(m, p))
    if layout == "full3":
        return rng.normal(size=(n, 3, p)), rng.normal(size=(n, 3)), rng.normal(size=(m, 3, p))
    return rng.normal(size=(n, p)), rng.normal(size=(n, 3)), rng.normal(size=(m, p))


def _explicit(F, R, Fv, lr, steps, lam):
    """Weights w and w_{-i} (rows flattened sample-major; shared outputs as columns)."""
    n = F.shape[0]
    kb = F.shape[1] if F.ndim == 3 else 1
    phi = F.reshape(n * kb, -1)
    Rm = R.reshape(n * kb, -1) if F.ndim == 3 or R.ndim == 1 else R
    w = trained_weights(phi, Rm, lr, steps, lam, False)
    rows = [np.arange(i * kb, (i + 1) * kb) for i in range(n)]
    w_minus = [trained_weights(np.delete(phi, b, 0), np.delete(Rm, b, 0), lr, steps, lam, False) for b in rows]
    return phi, Rm, Fv.reshape(-1, phi.shape[1]), w, w_minus, rows


@pytest.mark.parametrize("layout", ["k1", "full3", "shared3"])
def test_scores_match_explicit_weights(layout):
    F, R, Fv = _problem(layout)
    lr, b, sigma = 0.05, 4, 0.7
    res = leave_one_out(features=F, residuals=R, lr=lr, steps=STEPS, weight_decay=LAMS, cross_features=Fv,
                        return_coords=True, progress=False)
    iso, lang, f_si = si_isotropic(res, sigma), si_langevin(res, batch_size=b, sigma=sigma), fsi(res, sigma)
    loss = loo_loss(res)
    assert iso.shape == lang.shape == f_si.shape == loss.per_sample.shape == (3, 5, 8)
    for a, t in enumerate(STEPS):
        for c, lam in enumerate(LAMS):
            phi, Rm, phiv, w, w_minus, rows = _explicit(F, R, Fv, lr, t, lam)
            H = phi.T @ phi + lam * np.eye(phi.shape[1])
            dws = [w - wi for wi in w_minus]
            want_iso = [0.5 * np.sum(dw ** 2) / sigma ** 2 for dw in dws]
            want_lang = [b / (lr * sigma ** 2) * np.sum(dw * (H @ dw)) for dw in dws]
            want_fsi = [np.sum((phiv @ dw) ** 2) / (2 * sigma ** 2 * len(Fv)) for dw in dws]
            want_loss = [0.5 * np.sum((Rm[B] - phi[B] @ wi) ** 2) for B, wi in zip(rows, w_minus)]
            for got, want in ((iso, want_iso), (lang, want_lang), (f_si, want_fsi), (loss.per_sample, want_loss)):
                np.testing.assert_allclose(got[a, c], want, rtol=0, atol=1e-8 * np.max(np.abs(want)))
            np.testing.assert_allclose(loss.total[a, c], np.sum(want_loss), rtol=1e-8)


def _lyapunov_reference(F, R, lr, steps, lam, b):
    """½ Δwᵀ Σ⁻¹ Δw with H Σ + Σ H = (η/b) Λ solved by Bartels–Stewart in weight space (Λ full rank here)."""
    phi, Rm, _, w, w_minus, rows = _explicit(F, R, F[:1], lr, steps, lam)
    n = len(rows)
    grads = np.stack([phi[B].T @ (phi[B] @ w - Rm[B]) + (lam / n) * w for B in rows]).reshape(n, -1)
    centered = grads - grads.mean(axis=0)
    cov = centered.T @ centered / n
    H = phi.T @ phi + lam * np.eye(phi.shape[1])
    sigma = scipy.linalg.solve_continuous_lyapunov(H, (lr / b) * cov)
    assert np.linalg.cond(sigma) < 1e8  # Λ has full rank: Σ⁺ = Σ⁻¹, no cutoff involved
    return np.array([0.5 * (w - wi).ravel() @ np.linalg.solve(sigma, (w - wi).ravel()) for wi in w_minus])


@pytest.mark.parametrize("layout", ["k1", "full3"])
def test_si_lyapunov_matches_bartels_stewart(layout):
    F, R, Fv = _problem(layout, seed=1)
    lr, b = 0.05, 2
    res = leave_one_out(features=F, residuals=R, lr=lr, steps=STEPS, weight_decay=LAMS, cross_features=Fv,
                        return_coords=True, progress=False)
    got = si_lyapunov(res, batch_size=b)
    for a, t in enumerate(STEPS):
        for c, lam in enumerate(LAMS[:3]):
            want = _lyapunov_reference(F, R, lr, t, lam, b)
            np.testing.assert_allclose(got[a, c], want, rtol=1e-7)


def test_si_lyapunov_with_isotropic_noise_is_langevin():
    """Λ = σ²I commutes with H: Σ = (η σ²/2b) H⁻¹ and eq. 13 becomes eq. 15 (SI paper)."""
    F, R, Fv = _problem("shared3", seed=2)
    res = leave_one_out(features=F, residuals=R, lr=0.05, steps=STEPS, weight_decay=LAMS, cross_features=Fv,
                        return_coords=True, progress=False)
    sigma, b = 0.3, 8
    dim = res.rank * 3
    got = si_lyapunov(res, batch_size=b, gradient_covariance=sigma ** 2 * np.eye(dim))
    want = si_langevin(res, batch_size=b, sigma=sigma)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_score_errors():
    F, R, _ = _problem("k1")
    res = leave_one_out(features=F, residuals=R, lr=0.05, steps=3.0, progress=False)
    with pytest.raises(ValueError, match="pass cross_kernel= or cross_features="):
        fsi(res)
    with pytest.raises(ValueError, match="return_coords=True"):
        si_lyapunov(res, batch_size=2)
    with pytest.raises(ValueError, match="sigma: expected a positive number"):
        si_isotropic(res, sigma=0.0)
    with pytest.raises(ValueError, match="batch_size: expected a positive number"):
        si_langevin(res, batch_size=0)
    coords = leave_one_out(features=F, residuals=R, lr=0.05, steps=3.0, return_coords=True, progress=False)
    with pytest.raises(ValueError, match=r"gradient_covariance: expected shape \(5, 5\)"):
        si_lyapunov(coords, batch_size=2, gradient_covariance=np.eye(3))

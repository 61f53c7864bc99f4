"""Partial-fraction (rational) form of a spectral filter, verified to near machine precision.

A filter h(μ) = φ(μ + λ) of the training dynamics (``ntk_info.dynamics``) on the spectral interval
μ ∈ [0, μ_max] is replaced by

    h(μ) ≈ c0 + Σ_j a_j / (μ - p_j)                                        (AAA, verified below)

so that h(A) y = c0 y + Σ_j a_j (A - p_j)⁻¹ y needs only resolvents. For a rank-k downdate
A = diag(s) - Z Zᵀ each resolvent is a k × k Woodbury solve, O(r k²) instead of the O(r²) of an
eigen-downdate (``ntk_info.loo``). The fit is the AAA algorithm (Nakatsukasa, Sète & Trefethen,
SIAM J. Sci. Comput. 2018) on a grid of μ / μ_max that is dense near both ends of the interval
(where the filters of long training vary fastest), followed by a least-squares refit of c0 and a_j
for the AAA poles, after dropping spurious poles within 1e-6·μ_max of [0, μ_max] (Froissart
doublets). The partial-fraction form is then checked on a 4x denser grid: the fit is used only if
every pole lies at least 4 local grid spacings off the interval (so no error bump fits between
check points), its largest error there is ≤ ``tol`` times max|h|, and the rounding amplification
Σ_j |a_j / (μ - p_j)| stays below 1e4·max|h|; otherwise
``fit_filter`` returns None and the caller falls back to the exact eigen-downdate.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["PartialFractions", "aaa", "fit_filter"]


class PartialFractions(NamedTuple):
    """h(μ) ≈ constant + Σ_j residues_j / (μ - poles_j) (complex poles and residues)."""

    constant: complex
    poles: np.ndarray
    residues: np.ndarray

    def __call__(self, mu):
        mu = np.asarray(mu, dtype=float)
        return self.constant + np.sum(self.residues / (mu[..., None] - self.poles), axis=-1)


def _grid(size: int, resolution: float) -> np.ndarray:
    """Points of [0, 1]: uniform, plus geometric clusters at both ends, from 1e-3·resolution to 1/2."""
    ends = np.geomspace(min(max(1e-3 * resolution, 1e-12), 1e-3), 0.5, size)
    return np.unique(np.concatenate([[0.0, 1.0], np.linspace(0.0, 1.0, size), ends, 1.0 - ends]))


def aaa(z, f, *, tol: float = 1e-13, max_degree: int = 80):
    """AAA rational approximation of samples f at points z: support points, values, barycentric weights.

    r(x) = Σ_k w_k f_k / (x - z_k) / Σ_k w_k / (x - z_k); stops when max|f - r| ≤ tol·max|f| on z.
    """
    z = np.asarray(z, dtype=complex)
    f = np.asarray(f, dtype=complex)
    scale = np.max(np.abs(f))
    mask = np.ones(z.size, bool)
    r = np.full(f.shape, np.mean(f))
    support = []
    cauchy = np.empty((z.size, 0), complex)
    w = np.empty(0, complex)
    for _ in range(max_degree):
        j = int(np.argmax(np.where(mask, np.abs(f - r), -1.0)))
        support.append(j)
        mask[j] = False
        with np.errstate(divide="ignore", invalid="ignore"):  # rows of support points are masked out
            cauchy = np.column_stack([cauchy, 1.0 / (z - z[j])])
            loewner = (f[:, None] - f[support][None, :]) * cauchy
        _, _, vh = np.linalg.svd(loewner[mask], full_matrices=False)
        w = vh[-1].conj()
        num, den = cauchy[mask] @ (w * f[support]), cauchy[mask] @ w
        r = f.copy()
        r[mask] = num / den
        if np.max(np.abs(f - r)) <= tol * scale:
            break
    return z[support], f[support], w


def _poles(zs, w):
    """Poles of the barycentric form: finite eigenvalues of the arrowhead pencil (E, B)."""
    import scipy.linalg

    m = zs.size
    E = np.zeros((m + 1, m + 1), complex)
    E[0, 1:], E[1:, 0], E[1:, 1:] = w, 1.0, np.diag(zs)
    B = np.eye(m + 1, dtype=complex)
    B[0, 0] = 0.0
    vals = scipy.linalg.eigvals(E, B)
    return vals[np.isfinite(vals)]


def fit_filter(h, mu_max: float, *, resolution: float = 1e-6, tol: float = 1e-12,
               size: int = 1500) -> PartialFractions | None:
    """Verified partial fractions of the real function ``h`` (vectorized) on [0, mu_max], or None.

    ``resolution``: the smallest relative scale on which h varies (1/(η t μ_max) for the filters).
    """
    if not mu_max > 0:
        return None
    x = _grid(size, resolution)
    hx = np.asarray(h(x * mu_max), dtype=float)
    scale = float(np.max(np.abs(hx)))
    if not np.all(np.isfinite(hx)):
        return None
    if scale == 0.0:
        return PartialFractions(0.0, np.empty(0, complex), np.empty(0, complex))
    zs, _, w = aaa(x, hx / scale, tol=tol / 4)
    poles = _poles(zs, w)
    # Spurious poles on the interval (Froissart doublets: a pole next to a zero) are dropped; the
    # constant and residues are refitted by least squares for the remaining poles (the form we use).
    on_interval = (np.abs(poles.imag) < 1e-6) & (poles.real > -1e-6) & (poles.real < 1 + 1e-6)
    poles = poles[~on_interval]
    design = np.column_stack([np.ones(x.size), 1.0 / (x[:, None] - poles[None, :])])
    coef = np.linalg.lstsq(design, hx / scale, rcond=None)[0]
    constant, residues = coef[0], coef[1:]
    check = _grid(4 * size, resolution)
    # A pole must sit ≥ 4 local check spacings off the interval, so the check cannot miss a bump.
    nearest = np.clip(np.searchsorted(check, np.clip(poles.real, 0.0, 1.0)), 1, check.size - 1)
    spacing = check[nearest] - check[nearest - 1]
    distance = np.abs(poles - np.clip(poles.real, 0.0, 1.0))
    if np.any(distance < 4 * spacing):
        return None
    terms = residues / (check[:, None] - poles)
    err = np.max(np.abs(constant + terms.sum(axis=1) - np.asarray(h(check * mu_max), dtype=float) / scale))
    amplification = np.max(np.abs(terms).sum(axis=1)) + abs(constant)
    if not (err <= tol and amplification <= 1e4):
        return None
    return PartialFractions(constant * scale, poles * mu_max, residues * scale * mu_max)

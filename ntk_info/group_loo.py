"""Exact leave-one-group-out of the linearized model: retrain without every sample of a group (source,
vendor, class), and train on only that group — in float64, for a whole (t, λ) grid at once.

Model and conventions as ``ntk_info.loo`` (DESIGN.md): sum loss Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||²,
r = Y - f0(X), a = g(K + λI) r, f_t(x) - f0(x) = K(x, X) a, w_t - w0 = Jᵀ a. Removing group G (its rows
B, complement C) means a_{-G} = g(K_CC + λI) r_C. Two exact ways, chosen per group by a flop count:

``refactor``  one reduced eigendecomposition per group, of the complement: K_CC (dual) or
              Φ_CᵀΦ_C = ΦᵀΦ - Φ_BᵀΦ_B (primal, features with p < |C|). O(min(|C|, p)³) per group,
              independent of the group's size: the right choice for a few large groups (sources).
``woodbury``  from one factorization of the full data, in its U-coordinates (K = V S Vᵀ, J = V S^½ Uᵀ),
              removing B is the rank-|B| downdate diag(s) - Z Zᵀ, Z = (J_B U)ᵀ. At finite t the filter
              is replaced by verified partial fractions φ(μ + λ) ≈ c0 + Σ_j a_j/(μ - p_j)
              (``ntk_info.rational``) and every resolvent is a |B| × |B| Woodbury solve:
                  d_G = Uᵀ(w - w_{-G}) = c0 Z r_B + Σ_j a_j F_j⁻¹ Z N_j⁻¹ (r_B - Zᵀ F_j⁻¹ c),
                  F_j = diag(s) - p_j,  N_j = I - Zᵀ F_j⁻¹ Z,  c = Uᵀ Jᵀ r;
              at t = ∞ (λ > 0) block Schur / push-through,
                  d_G = H⁻¹Z (I - Zᵀ H⁻¹ Z)⁻¹ (r_B - Zᵀ H⁻¹ c),
              H = diag(s + λ). O(P·r·|B|²) per group and grid point (P ≈ 10-25 poles, r = rank): the
              right choice for many small groups (classes of a large set, single samples, where it is
              ``leave_one_out``'s formula with the block B). Not used where no fit verifies or at t = ∞
              with λ = 0 (removing B may drop the rank: a pseudo-inverse, which ``refactor`` handles).
``auto``      per group, the cheaper of 9·min(|C|, p)³ (eigh) and 4·P·(r + |B|)·|B|² per grid point.

"Only G": the model trained on the group's rows alone, g(K_BB + λI) r_B — one reduced factorization of
the group's block, O(min(|B|, p)³).

From the coordinates: ||w - w_{-G}||², predictions of both models at the cross inputs (validation and
test: pass them together), and the held-out residuals y_i - f_{-G}(x_i) on the group's own samples
(the exact quantity the MPE paper's leave-one-class-out estimate, eq. 20, approximates; compare with
``ntk_info.mpe.loco_estimate``). Eigenvalues ≤ max(rows, p)·eps·s_max are dropped (they carry no weight
change, exactly as in ``leave_one_out``); t = ∞ with λ = 0 is the pseudo-inverse, the limit of gradient
flow from w0 (min-norm least squares). Features with p ≥ N are turned into the kernels K = ΦΦᵀ and
K_v = Φ_vΦᵀ once (||w - w_{-G}||² = δᵀKδ, δ = a - pad(a_C)). Everything is computed with numpy in float64.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from ntk_info import rational
from ntk_info.dynamics import filter_values
from ntk_info.loo import check_kernel_or_features

__all__ = ["GroupLOOResult", "leave_group_out", "METHODS"]

METHODS = ("auto", "refactor", "woodbury")
_EPS = float(np.finfo(np.float64).eps)


@dataclasses.dataclass(frozen=True)
class GroupLOOResult:
    """Per group g (``groups[g]``, ``sizes[g]`` samples) of the linearized model, all exact.

    weight_change_sq (..., G): ||w - w_{-G}||².  cross_fit (..., m[, k]): f(X_v) - f0(X_v) of the full
    model; cross_fit_without / cross_fit_only (..., G, m[, k]): the same for the model trained without
    the group / on only the group (None without cross inputs).  held_out_residuals (..., n[, k]):
    y_i - f_{-G(i)}(x_i), each sample predicted by the model trained without its own group.
    fitted_residuals (..., n[, k]): y_i - f(x_i).  Leading axes (len(steps), len(weight_decay)) for the
    arguments given as arrays, as ``leave_one_out``; the trailing output axis is absent for 1-D residuals.
    method (G,): "refactor" or "woodbury" per group (see the module docstring).
    """

    groups: np.ndarray
    sizes: np.ndarray
    weight_change_sq: Any
    cross_fit: Any
    cross_fit_without: Any
    cross_fit_only: Any
    held_out_residuals: Any
    fitted_residuals: Any
    method: tuple
    lr: float
    steps: Any
    weight_decay: Any
    discrete: bool


# ----------------------------------------------------------------------------- inputs


def _float(x, name):
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got {int(np.sum(~np.isfinite(arr)))} NaN/inf entries.")
    return arr


@dataclasses.dataclass
class _Data:
    """Row-flattened problem: N = n·kb rows with q right-hand sides each; K or Φ, and the cross rows."""

    n: int
    kb: int
    q: int
    R: np.ndarray
    K: np.ndarray | None = None
    phi: np.ndarray | None = None
    Kv: np.ndarray | None = None
    phiv: np.ndarray | None = None

    @property
    def rows(self):
        return self.n * self.kb

    @property
    def n_cross(self):
        src = self.Kv if self.Kv is not None else self.phiv
        return None if src is None else src.shape[0]


def _flat(kernel):
    if kernel.ndim == 2:
        return kernel
    a, b, k, _ = kernel.shape
    return kernel.transpose(0, 2, 1, 3).reshape(a * k, b * k)


def _prepare(kernel, features, residuals, cross_kernel, cross_features):
    check_kernel_or_features(kernel, features, cross_kernel, cross_features)
    R = _float(residuals, "residuals")
    if kernel is not None:
        K = _float(kernel, "kernel")
        if K.ndim not in (2, 4) or K.shape[0] != K.shape[1] or K.shape[2:3] != K.shape[3:]:
            raise ValueError(f"kernel: expected shape (n, n) or (n, n, k, k), got {K.shape}.")
        n, kb, name, given = K.shape[0], (K.shape[2] if K.ndim == 4 else 1), "kernel", K.shape
    else:
        F = _float(features, "features")
        if F.ndim not in (2, 3):
            raise ValueError(f"features: expected shape (n, p) or (n, k, p), got {F.shape}.")
        n, kb, name, given = F.shape[0], (F.shape[1] if F.ndim == 3 else 1), "features", F.shape
    if R.shape[:1] != (n,) or R.ndim > 2 or (kb > 1 and R.shape != (n, kb)):
        want = f"({n}, {kb})" if kb > 1 else f"({n},) or ({n}, k)"
        raise ValueError(f"residuals: expected shape {want} to match {name} {given}, got {R.shape}.")
    q = 1 if kb > 1 or R.ndim == 1 else R.shape[1]
    data = _Data(n, kb, q, R.reshape(n * kb, q))
    if kernel is not None:
        data.K = _flat(K)
        if cross_kernel is not None:
            Kv = _float(cross_kernel, "cross_kernel")
            expect = (n, kb, kb) if kb > 1 or K.ndim == 4 else (n,)
            if Kv.shape[1:] != expect:
                raise ValueError(f"cross_kernel: expected shape (m, {', '.join(map(str, expect))}) to match kernel "
                                 f"{K.shape}, got {Kv.shape}.")
            data.Kv = _flat(Kv)
    else:
        data.phi = F.reshape(n * kb, -1)
        if cross_features is not None:
            Fv = _float(cross_features, "cross_features")
            if Fv.ndim != F.ndim or Fv.shape[1:] != F.shape[1:]:
                raise ValueError(f"cross_features: expected shape (m, {', '.join(map(str, F.shape[1:]))}) to match "
                                 f"features {F.shape}, got {Fv.shape}.")
            data.phiv = Fv.reshape(-1, F.shape[-1])
        if data.phi.shape[1] >= data.rows:  # wide features: form the kernels once, work in the dual
            data.K = data.phi @ data.phi.T
            data.Kv = None if data.phiv is None else data.phiv @ data.phi.T
            data.phi = data.phiv = None
    return data


def _group_rows(groups, n, kb):
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups: expected one label per sample, shape ({n},), got {groups.shape}.")
    labels, inverse = np.unique(groups, return_inverse=True)
    sample_ids = [np.flatnonzero(inverse == g) for g in range(labels.size)]
    rows = [(ids[:, None] * kb + np.arange(kb)).reshape(-1) for ids in sample_ids]
    return labels, np.array([ids.size for ids in sample_ids]), rows


# ----------------------------------------------------------------------------- filters


@functools.lru_cache(maxsize=None)
def _jitted_filter(discrete):
    import jax

    return jax.jit(lambda u, lr, t: filter_values(u, lr=lr, steps=t, discrete=discrete))


def _phi(u, lr, t, lam, discrete):
    """φ(u) = g(u + λ) in float64 (``ntk_info.dynamics.filter_values``), whatever jax's x64 flag says.

    u is padded to a power-of-two length, so that one compilation serves every group's spectrum.
    """
    import jax

    u = np.asarray(u, np.float64).reshape(-1) + lam
    size = max(64, 1 << (u.size - 1).bit_length())
    with jax.enable_x64(True):
        out = _jitted_filter(bool(discrete))(np.pad(u, (0, size - u.size)), np.float64(lr), np.float64(t))
        return np.asarray(out, np.float64)[:u.size]


def _fractions(s_max, lr, grid, discrete):
    """Verified partial fractions of φ(μ + λ) on [0, s_max] for every grid point (t = ∞, λ > 0: the
    single pole -λ), or None when some grid point has none (then only ``refactor`` is exact)."""
    fits = []
    for t, lam in grid:
        if np.isinf(t):
            if lam <= 0:
                return None
            fits.append(rational.PartialFractions(0.0, np.array([-lam], complex), np.array([1.0 + 0j])))
            continue
        fit = rational.fit_filter(lambda mu, t=t, lam=lam: _phi(mu, lr, t, lam, discrete), s_max,
                                  resolution=1.0 / (lr * t * s_max) if t > 0 else 1.0)
        if fit is None:
            return None
        fits.append(fit)
    return fits


# ----------------------------------------------------------------------------- refactor: reduced fits


def _eig(A, extra_dim):
    """Kept eigenpairs (> max(dim, extra_dim)·eps·s_max) of a symmetric PSD matrix."""
    s, V = np.linalg.eigh((A + A.T) / 2)
    if s.size == 0 or s[-1] <= 0:
        return s[:0], V[:, :0]
    keep = s > max(A.shape[0], extra_dim) * _EPS * s[-1]
    return s[keep], V[:, keep]


def _train(data, rows, grid, lr, discrete):
    """The model trained on ``rows`` for every grid point: weights w - w0 (G, p, q) when features are
    explicit, dual coefficients a (G, |rows|, q) with a kernel. Primal eigh when p < |rows|."""
    R = data.R[rows]
    if data.phi is not None:
        P = data.phi[rows]
        out = np.zeros((len(grid), P.shape[1], data.q))
        if rows.size == 0:
            return out
        primal = P.shape[1] < rows.size
        s, U = _eig(P.T @ P, rows.size) if primal else _eig(P @ P.T, P.shape[1])
        proj = U.T @ (P.T @ R) if primal else U.T @ R
        for j, (t, lam) in enumerate(grid):
            coef = U @ (_phi(s, lr, t, lam, discrete)[:, None] * proj)
            out[j] = coef if primal else P.T @ coef
        return out
    out = np.zeros((len(grid), rows.size, data.q))
    if rows.size == 0:
        return out
    s, V = _eig(data.K[np.ix_(rows, rows)], 0)
    proj = V.T @ R
    for j, (t, lam) in enumerate(grid):
        out[j] = V @ (_phi(s, lr, t, lam, discrete)[:, None] * proj)
    return out


def _predict(data, coef, rows, targets):
    """f - f0 at ``targets`` (training row indices, or None for the cross rows) of the model ``coef``
    trained on ``rows`` (from ``_train``), (G, len(targets), q)."""
    if data.phi is not None:
        return np.einsum("mp,gpq->gmq", data.phiv if targets is None else data.phi[targets], coef)
    if targets is None:
        return np.einsum("mr,grq->gmq", data.Kv[:, rows], coef)
    return np.einsum("mr,grq->gmq", data.K[np.ix_(targets, rows)], coef)


def _weight_change_sq(data, full, coef, keep):
    """||w - w_{-G}||² per grid point: explicit weights, or δᵀKδ with δ = a - pad(a_C) (kernel)."""
    if data.phi is not None:
        return np.sum((full - coef) ** 2, axis=(1, 2))
    delta = full.copy()
    delta[:, keep] -= coef
    return np.einsum("gaq,ab,gbq->g", delta, data.K, delta)


# ----------------------------------------------------------------------------- woodbury: one factorization


class _UCoords:
    """U-coordinates of the full data: kept spectrum s (r,), T = (J U)ᵀ (r, N), B_v = J_v U, c = T r."""

    def __init__(self, data):
        if data.phi is not None and data.phi.shape[1] < data.rows:
            s, U = _eig(data.phi.T @ data.phi, data.rows)
            self.T = U.T @ data.phi.T
            self.Bv = None if data.phiv is None else data.phiv @ U
        else:
            K = data.K if data.K is not None else data.phi @ data.phi.T
            s, V = _eig(K, 0)
            self.T = np.sqrt(s)[:, None] * V.T
            Kv = data.Kv if data.phi is None else (None if data.phiv is None else data.phiv @ data.phi.T)
            self.Bv = None if Kv is None else Kv @ V / np.sqrt(s)
        self.s = s
        self.c = self.T @ data.R


def _woodbury_group(uc, R_B, rows, fits):
    """d_G (G, r, q) for every grid point from the partial fractions (module docstring)."""
    Z = uc.T[:, rows]
    out = []
    for fit in fits:
        Finv = 1.0 / (uc.s[None, :] - fit.poles[:, None])  # (P, r)
        ZF = Finv[:, :, None] * Z[None]  # F⁻¹ Z, (P, r, b)
        Nmat = np.eye(rows.size)[None] - np.einsum("la,plb->pab", Z, ZF)
        rhs = R_B[None] - np.einsum("pla,lq->paq", ZF, uc.c)
        beta = np.linalg.solve(Nmat, rhs)
        d = np.einsum("p,pla,paq->lq", fit.residues, ZF, beta).real + np.real(fit.constant) * (Z @ R_B)
        out.append(d)
    return np.stack(out)


def _woodbury_cost(r, b, n_poles):
    """Flops of the Woodbury path for a group of b rows (rank r), summed over grid points' poles."""
    return 4.0 * n_poles * (r + b) * b * b


def _refactor_cost(rows_left, p):
    """Flops of one eigendecomposition of the complement (dual) or of its p × p Gram (primal)."""
    return 9.0 * min(rows_left, p) ** 3


# ----------------------------------------------------------------------------- public entry


def leave_group_out(kernel=None, *, features=None, residuals, groups, lr, steps, weight_decay=0.0,
                    discrete=False, cross_kernel=None, cross_features=None, method="auto") -> GroupLOOResult:
    """For every distinct value of ``groups`` (n,): the linearized model retrained without all of its
    samples, and trained on only them — exactly (module docstring), for a (t, λ) grid.

    Inputs as ``ntk_info.leave_one_out``: ``kernel`` K (n, n) or (n, n, k, k), or ``features`` Φ
    (n, p) or (n, k, p) with K = ΦΦᵀ; ``residuals`` r = Y - f0(X) (n,) or (n, k) (an (n, n) kernel with
    (n, k) residuals: k independent outputs sharing it); training for ``steps`` GD steps
    (``discrete=True``) or gradient-flow time η t of learning rate η = ``lr`` with weight decay λ
    toward w0 (``steps=inf``: converged); ``steps`` and ``weight_decay`` may be 1-D grids.
    ``cross_kernel`` K(X_v, X) (m, n[, k, k]) or ``cross_features`` Φ_v (m[, k], p): the inputs at which
    predictions are returned (stack validation and test inputs in one call).
    ``method``: "auto", "refactor" or "woodbury" (module docstring; "woodbury" raises where it is not
    exact: t = ∞ with λ = 0, or no verified partial-fraction form).

    >>> import numpy as np
    >>> res = leave_group_out(kernel=np.eye(3), residuals=np.ones(3), groups=[0, 0, 1], lr=1.0,
    ...                       steps=float("inf"), weight_decay=1.0)
    >>> np.round(res.held_out_residuals, 6).tolist()  # identity kernel: nothing is learned from the others
    [1.0, 1.0, 1.0]
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}.")
    if np.ndim(lr) != 0 or not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected one finite learning rate > 0, got {lr!r}.")
    steps_grid = np.atleast_1d(np.asarray(steps, dtype=float))
    lams = np.atleast_1d(np.asarray(weight_decay, dtype=float))
    if steps_grid.ndim != 1 or np.any(np.isnan(steps_grid)) or np.any(steps_grid < 0):
        raise ValueError(f"steps: expected a number >= 0 (or inf) or a 1-D grid of them, got {steps!r}.")
    if lams.ndim != 1 or not np.all(np.isfinite(lams)) or np.any(lams < 0):
        raise ValueError(f"weight_decay: expected a finite number >= 0 or a 1-D grid of them, got {weight_decay!r}.")
    if discrete and not np.all(np.isinf(steps_grid) | (steps_grid == np.round(steps_grid))):
        raise ValueError(f"steps: discrete GD needs whole step counts, got {steps!r}.")
    data = _prepare(kernel, features, residuals, cross_kernel, cross_features)
    labels, sizes, group_rows = _group_rows(groups, data.n, data.kb)
    grid = [(float(t), float(lam)) for t in steps_grid for lam in lams]
    lr = float(lr)
    n_grid, N, has_cross = len(grid), data.rows, data.n_cross is not None
    p = data.phi.shape[1] if data.phi is not None else N

    full = _train(data, np.arange(N), grid, lr, discrete)
    fitted = data.R[None] - _predict(data, full, np.arange(N), np.arange(N))
    cross_fit = _predict(data, full, np.arange(N), None) if has_cross else None

    # Per group, the cheaper exact method (flop counts, module docstring; ~20 poles per finite-t point).
    # Woodbury then needs one factorization of the full data and verified fractions for every grid point.
    poles_est = sum(1 if np.isinf(t) else 20 for t, _ in grid)
    r_est = min(N, p)
    if method == "refactor":
        chosen = ["refactor"] * len(group_rows)
    elif method == "woodbury":
        chosen = ["woodbury"] * len(group_rows)
    else:
        chosen = ["woodbury" if _woodbury_cost(r_est, rows.size, poles_est) < _refactor_cost(N - rows.size, p)
                  else "refactor" for rows in group_rows]
    fits, uc = None, None
    if "woodbury" in chosen:
        uc = _UCoords(data)
        fits = _fractions(float(uc.s[-1]), lr, grid, discrete) if uc.s.size else None
        if fits is None and method == "woodbury":
            raise ValueError("method: 'woodbury' is exact only with a verified partial-fraction form of every grid "
                             "point's filter (not at t = ∞ with weight_decay = 0, nor for η·t·λmax beyond ~1e5); "
                             "use method='auto' or 'refactor'.")
        if fits is None:
            chosen = ["refactor"] * len(group_rows)

    trained = {}  # row set -> coefficients: with two groups, one's complement is the other's block

    def fit_on(rows):
        key = rows.tobytes()
        if key not in trained:
            trained[key] = _train(data, rows, grid, lr, discrete)
        return trained[key]

    G = len(group_rows)
    weight = np.zeros((n_grid, G))
    held_out = np.zeros_like(fitted)
    without = np.zeros((n_grid, G, data.n_cross, data.q)) if has_cross else None
    only = np.zeros_like(without) if has_cross else None
    for g, rows in enumerate(group_rows):
        keep = np.setdiff1d(np.arange(N), rows)
        if chosen[g] == "refactor":
            coef = fit_on(keep)
            weight[:, g] = _weight_change_sq(data, full, coef, keep)
            held_out[:, rows] = data.R[rows][None] - _predict(data, coef, keep, rows)
            if has_cross:
                without[:, g] = _predict(data, coef, keep, None)
        else:
            d = _woodbury_group(uc, data.R[rows], rows, fits)  # (n_grid, r, q)
            weight[:, g] = np.sum(d * d, axis=(1, 2))
            held_out[:, rows] = fitted[:, rows] + np.einsum("la,glq->gaq", uc.T[:, rows], d)
            if has_cross:
                without[:, g] = cross_fit - np.einsum("ml,glq->gmq", uc.Bv, d)
        if has_cross:
            only[:, g] = _predict(data, fit_on(rows), rows, None)

    shape = (len(steps_grid), len(lams))
    squeeze = tuple(ax for ax, arg in ((0, steps), (1, weight_decay)) if np.ndim(arg) == 0)
    one_d = np.ndim(residuals) == 1

    def per_sample(x, count):  # (n_grid, ..., count·kb, q) -> (Gt, Gλ, ..., count[, kb·q])
        x = x.reshape(shape + x.shape[1:-2] + (count, data.kb * data.q))
        x = x[..., 0] if one_d else x
        return np.squeeze(x, axis=squeeze) if squeeze else x

    def per_grid(x):
        x = x.reshape(shape + x.shape[1:])
        return np.squeeze(x, axis=squeeze) if squeeze else x

    m = None if not has_cross else data.n_cross // data.kb
    return GroupLOOResult(
        groups=labels, sizes=sizes,
        weight_change_sq=per_grid(weight),
        cross_fit=per_sample(cross_fit, m) if has_cross else None,
        cross_fit_without=per_sample(without, m) if has_cross else None,
        cross_fit_only=per_sample(only, m) if has_cross else None,
        held_out_residuals=per_sample(held_out, data.n),
        fitted_residuals=per_sample(fitted, data.n),
        method=tuple(chosen), lr=lr, steps=steps, weight_decay=weight_decay, discrete=bool(discrete),
    )

"""Exact leave-one-out (LOO) of a linear(ized) model trained by gradient flow / GD: all n removals.

Everything reduces to U-coordinates. Let J (N × p, N = n·k rows, sample-major) with K = J Jᵀ.
  dual   (kernel K):      eigh K = V diag(s) Vᵀ, keep s > tol, J = V S^½ Uᵀ,
                          c = S^½ Vᵀ r,  Z_i = S^½ V[B_i, :]ᵀ,  B_v = K_v V S^-½;
  primal (features Φ=J):  eigh ΦᵀΦ = U diag(s) Uᵀ, keep s > tol,
                          c = Uᵀ Φᵀ r,   Z_i = Uᵀ Φ[B_i]ᵀ,     B_v = Φ_v U,
with B_i the k rows of sample i and tol = max(N, p_used)·eps·s_max (p_used = N in dual mode). With
φ(u) = g(u + λ) (g from ``ntk_info.dynamics``), Uᵀ(w - w0) = φ(s)∘c and, removing sample i (the
rank-k downdate diag(s) - Z_i Z_iᵀ = Q_i diag(μ_i) Q_iᵀ of the Gram, ``ntk_info.secular``):

    d_i = Uᵀ(w - w_{-i}) = φ(s)∘c - Q_i φ(μ_i) Q_iᵀ (c - Z_i r_i)            (DESIGN.md, "finite t")
    ||w - w_{-i}||² = ||d_i||²,   ||f(X) - f_{-i}(X)||² = Σ_l s_l d_il²,
    f(x_i) - f_{-i}(x_i) = Z_iᵀ d_i,   ||f(X_v) - f_{-i}(X_v)||² = ||B_v d_i||².

The roots μ_i do not depend on (η, t, λ): grids of steps and weight decays reuse one downdate per
sample. Faster and the default for finite t (``solver="rational"``): φ(μ + λ) on the spectral
interval [0, s_max] is replaced by verified partial fractions c0 + Σ_j a_j / (μ - p_j) (AAA,
``ntk_info.rational``, max error ≤ 1e-12·max|φ|), so that φ(diag(s) - Z_i Z_iᵀ) needs only
resolvents, each a k × k Woodbury solve: d_i = c0 Z_i r_i + Σ_j a_j F_j⁻¹ Z_i N_ij⁻¹ (r_i - Z_iᵀ F_j⁻¹ c)
with F_j = diag(s) - p_j, N_ij = I - Z_iᵀ F_j⁻¹ Z_i: O(P r k²) per sample instead of O(k r²), all
samples batched as tensor contractions. Filters without a verified fit (t = ∞ with λ = 0 in a mixed
grid, η t s_max beyond ~1e5) use the downdate. t = ∞ uses block Schur complements ("schur", O(N k²)
per sample, below). With an
(n, n) kernel (or (n, p) features) and (n, k) residuals the k outputs are independent and share the
kernel: Z_i is (r, 1), c and d_i are (r, k), and squared norms sum over outputs.

Sources: SI paper (Harutyunyan et al. 2021) eq. 10–11, 16–17, App. E; Gu & Eisenstat (1995) for the
downdate. Precision: the engine computes in float64 whatever JAX's global x64 flag says (inside
``jax.enable_x64(True)``; inputs are cast, outputs are numpy float64). In float64 the outputs agree
with brute-force retraining to ~1e-13 relative to the largest entry on well-conditioned problems
(≤ 1e-10 with spectra spanning 6 decades; tests require 1e-8, and per entry 1e-6·|ref| + 1e-10·max
for η t λmax up to 1e5). ``dtype="float32"`` is an explicit opt-in (half the memory, faster on
accelerators) with a measured error (experiments/precision_float32.py, max|err| / max|ref| of
weight_change_sq, kernels with spectra log-spaced over 5 decades, lr = 1/λmax): 3.6e-2 for n = 300
and t = 3000 GD steps, 1.3e-1 for n = 300 and flow with η t λmax = 1e4, 1.75e-1 for n = 1000 and
t = 3000 (flow and GD; 216 of 1000 directions dropped); float64 agrees with brute force to 4e-13.
Its rank cut-off N·eps32·λmax drops every direction below ~1e-4·λmax that still trains, and the difference
φ(s)∘c - Q φ(μ) Qᵀ(...) cancels, so the error grows with the spectrum's span and with η t λmax.

Mean loss (``loss="mean"``, L = (1/n) Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||²): the full model is
the sum-loss model with (η/n, nλ), the model without sample i has n - 1 samples, (η/(n-1), (n-1)λ).
With φ_m(u) = g(u + mλ; η/m) both are exact: d_i = [φ_n(s) - φ_{n-1}(s)]∘c + d_i^{(n-1)}, the second
term being the sum-loss formula above with φ_{n-1} throughout.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from tqdm.auto import tqdm

# jax ≥ 0.6 has jax.enable_x64; 0.4.35 (the neural-tangents extra's JAX) has it under experimental
try:
    from jax import enable_x64 as _enable_x64
except ImportError:
    from jax.experimental import enable_x64 as _enable_x64

from ntk_info import rational, secular
from ntk_info.dynamics import _check_settings, _warn_unstable, filter_values

__all__ = ["LOOResult", "leave_one_out", "DTYPES", "LOSSES", "SamplePlan", "per_sample_plan", "sample_changes",
           "check_kernel_or_features"]

DTYPES = ("float64", "float32")  # engine precision; float64 is the default whatever jax_enable_x64 says
LOSSES = ("sum", "mean")

_SINGULAR = ("steps=inf with weight_decay=0 needs a full-rank kernel (rank {r} < N = {N}): use weight_decay > 0 "
             "or finite steps")


@dataclasses.dataclass(frozen=True)
class LOOResult:
    """Leave-one-out changes for every training sample i (full model minus model trained without i).

    weight_change_sq (n,): ||w - w_{-i}||².  train_prediction_change_sq (n,): ||f(X) - f_{-i}(X)||²
    over all training rows and outputs.  self_prediction_change (n, k) [(n,) for 1-D residuals]:
    f(x_i) - f_{-i}(x_i).  prediction_change_sq (n,) or None: ||f(X_v) - f_{-i}(X_v)||² summed over
    the n_val validation inputs and outputs.  fitted_residuals (n, k) [or (n,)]: Y - f_t(X) of the full
    model.  With grids, every per-sample field gains leading axes (len(steps), len(weight_decay)) for
    the arguments given as arrays.  mode: "dual", "primal" or "schur" (t = ∞, block Schur formulas in
    the basis ``basis``); rank: r, number of kept eigenvalues (> tolerance); block_size: rows per
    sample in the downdate (k for multi-output kernels/features, 1 for independent outputs).
    With return_coords: weight_change_coords (n, r[, q]) = d_i, train_coords (r, N) = (J U)ᵀ,
    spectrum (r,) = s, trained_coords (r[, q]) = φ(s)∘c = Uᵀ(w - w0) (grid axes first).
    solver: how finite t was solved, "rational" or "downdate" ("schur" at t = ∞). loss: "sum" or "mean"
    (``lr`` and ``weight_decay`` are the user's values in that convention). dtype: the engine's
    precision. roots_converged (n,) bool or None: with the downdate solver, whether every secular
    root of sample i met its stopping test (a RuntimeWarning names the samples that did not).
    All arrays are numpy (float64 unless dtype="float32").
    """

    weight_change_sq: Any
    prediction_change_sq: Any
    self_prediction_change: Any
    train_prediction_change_sq: Any
    fitted_residuals: Any
    n_val: int
    mode: str
    basis: str
    rank: int
    tolerance: float
    block_size: int
    lr: float
    steps: Any
    weight_decay: Any
    discrete: bool
    weight_change_coords: Any = None
    train_coords: Any = None
    spectrum: Any = None
    trained_coords: Any = None
    solver: str = "downdate"
    loss: str = "sum"
    dtype: str = "float64"
    roots_converged: Any = None


# ----------------------------------------------------------------------------------------------
# Validation (concrete values, before jit)


def _as_float(x, name, dtype):
    """numpy array of the engine dtype; NaN/inf raise naming the input (cheap sum check first)."""
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {arr.dtype}.")
    arr = arr.astype(dtype)
    if not np.isfinite(np.sum(arr)) and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entries; remove or repair them.")
    return arr


def check_kernel_or_features(kernel, features, cross_kernel, cross_features) -> None:
    """Exactly one of kernel= / features=, and the cross term of the same kind (ValueError naming the argument)."""
    if (kernel is None) == (features is None):
        raise ValueError("kernel/features: expected exactly one of kernel= (n, n) or (n, n, k, k) and features= "
                         f"(n, p) or (n, k, p), got {'both' if kernel is not None else 'neither'}.")
    if kernel is not None and cross_features is not None:
        raise ValueError("cross_features: given with kernel=; pass cross_kernel= (m, n[, k, k]) instead.")
    if features is not None and cross_kernel is not None:
        raise ValueError("cross_kernel: given with features=; pass cross_features= (m[, k], p) instead.")


def _shapes(kernel, features, residuals, cross_kernel, cross_features):
    """Check shapes; return (n, kb, q, N) with kb rows per sample and q right-hand sides per row."""
    check_kernel_or_features(kernel, features, cross_kernel, cross_features)
    if kernel is not None:
        name, full = "kernel", kernel.ndim == 4
        square = kernel.ndim in (2, 4) and kernel.shape[0] == kernel.shape[1] and kernel.shape[2:3] == kernel.shape[3:]
        if not square:
            raise ValueError(f"kernel: expected shape (n, n) or (n, n, k, k), got {kernel.shape}.")
        n, kb, given = kernel.shape[0], (kernel.shape[2] if full else 1), kernel.shape
        if n == 0 or kb == 0:
            raise ValueError(f"kernel: empty, got shape {kernel.shape}; pass the kernel of at least one sample.")
    else:
        name, full = "features", features.ndim == 3
        if features.ndim not in (2, 3):
            raise ValueError(f"features: expected shape (n, p) or (n, k, p), got {features.shape}.")
        n, kb, given = features.shape[0], (features.shape[1] if full else 1), features.shape
        if 0 in features.shape:
            raise ValueError(f"features: empty, got shape {features.shape}; pass features of at least one sample "
                             "and one coordinate.")
    if residuals.shape[:1] != (n,) or residuals.ndim > 2:
        raise ValueError(f"residuals: expected shape (n,) or (n, k) with n = {n} from {name}, got {residuals.shape}.")
    if full:
        if residuals.shape[1:] != (kb,) and not (kb == 1 and residuals.ndim == 1):
            raise ValueError(f"residuals: expected shape (n, k) = ({n}, {kb}) to match {name} {given}, "
                             f"got {residuals.shape}.")
        q = 1
    else:
        q = residuals.shape[1] if residuals.ndim == 2 else 1
    if cross_kernel is not None:
        expect = (n, kb, kb) if full else (n,)
        if cross_kernel.ndim != len(expect) + 1 or cross_kernel.shape[1:] != expect:
            raise ValueError(f"cross_kernel: expected shape (m, {', '.join(map(str, expect))}) to match kernel "
                             f"{kernel.shape}, got {cross_kernel.shape}.")
    if cross_features is not None:
        expect = features.shape[1:]
        if cross_features.ndim != features.ndim or cross_features.shape[1:] != expect:
            raise ValueError(f"cross_features: expected shape (m, {', '.join(map(str, expect))}) to match features "
                             f"{features.shape}, got {cross_features.shape}.")
    return n, kb, q, n * kb


def _flat_kernel(kernel):
    """(n, n) as is; (n, n, k, k) -> sample-major (n·k, n·k)."""
    if kernel.ndim == 2:
        return kernel
    a, b, k, _ = kernel.shape
    return kernel.transpose(0, 2, 1, 3).reshape(a * k, b * k)


def _check_spectrum(s, name):
    """Raise when min eigenvalue < -1e-5·λmax (not PSD); else return round-off-clipped s."""
    top = float(np.max(s)) if s.size else 0.0
    low = float(np.min(s)) if s.size else 0.0
    if top <= 0:
        raise ValueError(f"{name}: expected a positive semi-definite kernel with a positive eigenvalue, "
                         f"got λmax = {top:g}.")
    if low < -1e-5 * top:
        raise ValueError(f"{name}: expected a positive semi-definite kernel, got min eigenvalue {low:g} = "
                         f"{low / top:.3g}·λmax (allowed ≥ -1e-5·λmax); build it as J Jᵀ or add a jitter.")
    return jnp.maximum(s, 0.0)


class _Factorization(NamedTuple):
    """U-coordinates of the data: kept spectrum s (r,), T = (J U)ᵀ (r, N), B_v (M, r) or None;
    for the dual basis also the full eigendecomposition (s_all, V) of K, needed by dual Schur."""

    s: Any
    T: Any
    Bv: Any
    tol: float
    rank: int
    V: Any = None
    s_all: Any = None


def _factor_dual(kernel, features, cross_kernel, cross_features, R, N, dtype):
    """eigh K = V diag(s) Vᵀ (K = ΦΦᵀ from features); T = S^½ V_keptᵀ, B_v = K_v V_kept S^-½."""
    if kernel is None:
        phi = features.reshape(N, -1)
        K = phi @ phi.T
    else:
        K = _flat_kernel(kernel)
        asym = np.max(np.abs(K - K.T))
        scale = np.max(np.abs(K))
        if asym > np.sqrt(np.finfo(K.dtype).eps) * scale:
            raise ValueError(f"kernel: expected a symmetric kernel, got max|K - Kᵀ| = {asym:.3g} "
                             f"({asym / scale:.3g} relative); symmetrize it with (K + Kᵀ)/2.")
    s_all, V = jnp.linalg.eigh(jnp.asarray(K, dtype))
    s_all = _check_spectrum(s_all, "kernel")
    tol = N * float(jnp.finfo(dtype).eps) * float(s_all[-1])
    r_dim = int(jnp.sum(s_all > tol))
    s, Vk = s_all[N - r_dim:], V[:, N - r_dim:]  # eigh sorts ascending: the kept ones are last
    Kv = None
    if cross_kernel is not None:
        Kv = _flat_kernel(cross_kernel)
    elif cross_features is not None:
        Kv = cross_features.reshape(-1, features.shape[-1]) @ features.reshape(N, -1).T
    Bv = None if Kv is None else jnp.asarray(Kv, dtype) @ Vk / jnp.sqrt(s)
    return _Factorization(s, jnp.sqrt(s)[:, None] * Vk.T, Bv, tol, r_dim, V, s_all)


def _factor_primal(features, cross_features, N, dtype):
    """eigh ΦᵀΦ = U diag(s) Uᵀ; T = U_keptᵀ Φᵀ, B_v = Φ_v U_kept."""
    phi = jnp.asarray(features.reshape(N, -1), dtype)
    p = phi.shape[1]
    s_p, U = jnp.linalg.eigh(phi.T @ phi)
    s_p = _check_spectrum(s_p, "features Gram ΦᵀΦ")
    tol = max(N, p) * float(jnp.finfo(dtype).eps) * float(s_p[-1])
    r_dim = int(jnp.sum(s_p > tol))
    s, Uk = s_p[p - r_dim:], U[:, p - r_dim:]
    Bv = None if cross_features is None else jnp.asarray(cross_features.reshape(-1, p), dtype) @ Uk
    return _Factorization(s, Uk.T @ phi.T, Bv, tol, r_dim)


# ----------------------------------------------------------------------------------------------
# Per-sample kernels (pure, vmapped over samples, jitted per chunk)


def _phi(u, lr, t, discrete, tol):
    """φ = g(u) on shifted eigenvalues u = μ + λ; at t = ∞ a pseudo-inverse (0 for u ≤ tol).

    ``discrete`` may be traced (both filters are NaN-free), so flow and GD share one compilation.
    """
    g = jnp.where(discrete, filter_values(u, lr=lr, steps=t, discrete=True),
                  filter_values(u, lr=lr, steps=t, discrete=False))
    return jnp.where(jnp.isinf(t) & (u <= tol), 0.0, g)


def _measures(d, Z, s, Bv, return_coords):
    """The four LOO measures (and d) from d = Uᵀ(w - w_{-i}) (r, q)."""
    out = {
        "weight": jnp.sum(d * d),
        "train": jnp.sum(s[:, None] * d * d),
        "self": (Z.T @ d).reshape(-1),
    }
    if Bv is not None:
        out["val"] = jnp.sum((Bv @ d) ** 2)
    if return_coords:
        out["coords"] = d
    return out


def _downdate_sample(i, s, T, R, c, Bv, lr, steps, lams, tol, *, kb, discrete, return_coords):
    """d_i for every grid point: φ(s)∘c - Q φ(μ) Qᵀ (c - Z r_i), one downdate reused across the grid."""
    r_dim, q = c.shape
    Z = jax.lax.dynamic_slice(T, (0, i * kb), (r_dim, kb))
    Ri = jax.lax.dynamic_slice(R, (i * kb, 0), (kb, q))
    dd = secular.downdate(s, Z)
    y = secular.transpose_apply(dd, c - Z @ Ri)  # Qᵀ(c - Z r_i), shared by every grid point
    grid = lambda f: jax.vmap(lambda t: jax.vmap(lambda lam: f(t, lam))(lams))(steps)
    phi_mu = grid(lambda t, lam: _phi(dd.roots + lam, lr, t, discrete, tol))  # (Gt, Gλ, r)
    # One application of Q to all grid points at once: columns (r, Gt·Gλ·q).
    cols = jnp.moveaxis(phi_mu[..., None] * y, -2, 0).reshape(r_dim, -1)
    downdated = jnp.moveaxis(secular.basis_apply(dd, cols).reshape(r_dim, *phi_mu.shape[:2], q), 0, -2)

    def point(t, lam, new):
        d = _phi(s + lam, lr, t, discrete, tol)[:, None] * c - new
        return _measures(d, Z, s, Bv, return_coords)

    out = jax.vmap(lambda t, row: jax.vmap(lambda lam, new: point(t, lam, new))(lams, row))(steps, downdated)
    out["converged"] = jnp.broadcast_to(dd.converged, phi_mu.shape[:2])  # per sample, on the grid's axes
    return out


def _schur_dual_sample(i, s, T, Bv, V, s_all, rho, lams, *, kb, return_coords):
    """t = ∞, dual: block Schur on A = M⁻¹ = V diag(1/h) Vᵀ, h = s_all + λ.

    With a = A r, c_i = (A[B,B])⁻¹ a[B] and δ_i = A[:, B] c_i = a - pad(a_{-i}) (Schur complement of
    the block B in M; DESIGN.md). In U-coordinates d_i = S^½ V_keptᵀ δ_i = (√s/h)∘(V[B, kept]ᵀ c_i), so
    ||Δw||² = δᵀKδ = ||d||² etc. follow from the shared formulas without the cancelling forms
    c·a_B - λ cᵀ(A²)_BB c. Cost O(N k²) per sample and λ.
    """
    r_dim, n_rows = T.shape
    Z = jax.lax.dynamic_slice(T, (0, i * kb), (r_dim, kb))
    VB = jax.lax.dynamic_slice(V, (i * kb, 0), (kb, n_rows))

    def point(lam):
        h = s_all + lam
        a_block = VB @ (rho / h[:, None])
        c_block = jnp.linalg.solve((VB / h) @ VB.T, a_block)
        proj = (VB.T @ c_block)[n_rows - r_dim:]
        h_kept = h[n_rows - r_dim:]
        d = (jnp.sqrt(s) / h_kept)[:, None] * proj
        return _measures(d, Z, s, Bv, return_coords)

    out = jax.vmap(point)(lams)
    return jax.tree_util.tree_map(lambda x: x[None], out)


def _schur_primal_sample(i, s, T, R, c, Bv, lams, *, kb, return_coords):
    """t = ∞, primal: Woodbury on H = ΦᵀΦ + λI = U diag(h) Uᵀ on the data span, h = s + λ.

    H w = Φᵀ r and H_{-i} w_{-i} = Φᵀ r - Φ_iᵀ r_i with H_{-i} = H - Φ_iᵀ Φ_i give
    H_{-i}(w - w_{-i}) = Φ_iᵀ e_i, e_i = r_i - Φ_i w (fitted residual of sample i), and by the
    push-through identity H_{-i}⁻¹ Φ_iᵀ = H⁻¹ Φ_iᵀ (I - P_i)⁻¹ with the leverage block
    P_i = Φ_i H⁻¹ Φ_iᵀ. In U-coordinates (Φ_iᵀ -> Z_i, Uᵀw -> c/h):
        d_i = diag(1/h) Z_i (I - Z_iᵀ diag(1/h) Z_i)⁻¹ (r_i - Z_iᵀ (c/h)).
    Leverage 1 (λ = 0 and sample i alone spans a direction, so I - P_i is singular): rotate the
    block, P_i = W diag(γ) Wᵀ, v_a = H⁻¹ Z_i w_a. A row with γ_a = 1 has Φ v_a = e_a: no other row
    sees v_a, and H_{-i} has no curvature along it. Gradient flow from w0 never moves along such a
    direction, so its t → ∞ limit is the min-norm solution on the remaining rows: remove the rows
    with γ_a < 1 by the formula above (w' = w - d_B), then project w' off span{v_a}:
        d_i = d_B + V (VᵀV)⁻¹ Vᵀ w'.
    A row counts as alone when the remaining samples' curvature along v_a, γ_a(1 - γ_a)/||v_a||², is
    ≤ tol = N·eps·s_max (the rank cut-off of the factorization). Without such rows this is the
    formula above.
    """
    r_dim, q = c.shape
    Z = jax.lax.dynamic_slice(T, (0, i * kb), (r_dim, kb))
    Ri = jax.lax.dynamic_slice(R, (i * kb, 0), (kb, q))
    tol = T.shape[1] * jnp.finfo(s.dtype).eps * s[-1]

    def point(lam):
        h = s + lam
        Zh = Z / h[:, None]
        gamma, W = jnp.linalg.eigh(Z.T @ Zh)
        Vall = Zh @ W  # v_a = H⁻¹ Z_i w_a, (r, kb)
        e = W.T @ (Ri - Zh.T @ c)  # rotated fitted residual of sample i
        alone = (gamma > 0.5) & (gamma * (1.0 - gamma) <= tol * jnp.sum(Vall ** 2, axis=0))
        inv = jnp.where(alone, 0.0, 1.0 / jnp.where(alone, 1.0, 1.0 - gamma))
        d_rest = Vall @ (inv[:, None] * e)
        V = jnp.where(alone[None, :], Vall, 0.0)
        gram = V.T @ V + jnp.diag(jnp.where(alone, 0.0, 1.0))
        d = d_rest + V @ jnp.linalg.solve(gram, V.T @ (c / h[:, None] - d_rest))
        return _measures(d, Z, s, Bv, return_coords)

    out = jax.vmap(point)(lams)
    return jax.tree_util.tree_map(lambda x: x[None], out)


def _schur_device(idx, s, T, R, c, Bv, V, s_all, rho, lams, path, kb, return_coords):
    """t = ∞ on one device: all measures for the samples idx, vmapped, (chunk, 1, Gλ, ...)."""
    if path == "schur_dual":
        one = functools.partial(_schur_dual_sample, s=s, T=T, Bv=Bv, V=V, s_all=s_all, rho=rho, lams=lams,
                                kb=kb, return_coords=return_coords)
    else:
        one = functools.partial(_schur_primal_sample, s=s, T=T, R=R, c=c, Bv=Bv, lams=lams, kb=kb,
                                return_coords=return_coords)
    return jax.vmap(one)(idx)


def _downdate_device(ids, s, T, R, c, Bv, lr, steps, lams, tol, discrete, kb, return_coords):
    """Finite t on one device: samples one after another (lax.map), so that every sample's root
    iteration stops at its own slowest root instead of the slowest of a vmapped batch."""
    one = functools.partial(_downdate_sample, s=s, T=T, R=R, c=c, Bv=Bv, lr=lr, steps=steps, lams=lams, tol=tol,
                            kb=kb, discrete=discrete, return_coords=return_coords)
    return jax.lax.map(one, ids)


@functools.lru_cache(maxsize=None)
def _split_over_devices(per_device, num_args, static):
    """jit(shard_map(per_device)): sample ids (first argument, a multiple of the local device count)
    split over the local devices, every other argument replicated, outputs concatenated along
    samples. ``static`` are the trailing hashable arguments (closed over). Each process uses its own
    devices (a multi-process run gives each process its own samples, ``ntk_info.distributed``).

    JAX 0.4.35 (the neural-tangents extra's) has no jax.shard_map, and its SPMD partitioner aborts on
    the secular root finder's while loops inside a manual region ("hlo_sharding_util ...
    !to_merge.IsManual()"; measured for k = 1): there the same split is a pmap over (devices, ids/devices).
    """
    call = lambda ids, *args: per_device(ids, *args, *static)  # noqa: E731
    devices = jax.local_devices()
    if not hasattr(jax, "shard_map"):
        mapped = jax.pmap(call, in_axes=(0,) + (None,) * (num_args - 1), devices=devices)

        def split(ids, *args):
            out = mapped(ids.reshape(len(devices), -1), *args)
            return jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), out)

        return split
    mesh = Mesh(np.array(devices), ("samples",))
    specs = (PartitionSpec("samples"),) + (PartitionSpec(),) * (num_args - 1)
    return jax.jit(jax.shard_map(call, mesh=mesh, in_specs=specs, out_specs=PartitionSpec("samples"),
                                 check_vma=False))


def _downdate_devices(ids, s, T, R, c, Bv, lr, steps, lams, tol, discrete, kb, return_coords):
    """``_downdate_device`` with the ids split over the local devices."""
    return _split_over_devices(_downdate_device, 11, (kb, return_coords))(ids, s, T, R, c, Bv, lr, steps, lams, tol,
                                                                           discrete)


def _rational_device(ids, s, T, R, c, Bv, consts, poles, residues, kb, grid_shape, return_coords):
    """Finite t through partial fractions φ(μ + λ) ≈ c0 + Σ_j a_j / (μ - p_j) (``ntk_info.rational``),
    batched over the samples ids. Woodbury on the resolvents of diag(s) - Z_i Z_iᵀ gives

        d_i = c0 Z_i r_i + Σ_j a_j F_j⁻¹ Z_i N_ij⁻¹ (r_i - Z_iᵀ F_j⁻¹ c),
        F_j = diag(s) - p_j I,  N_ij = I - Z_iᵀ F_j⁻¹ Z_i,

    the difference φ(s)∘c - φ(diag(s) - Z_i Z_iᵀ)(c - Z_i r_i) without forming either term:
    O(P r k (k + q)) per sample and grid point (P poles) instead of the downdate's O(k r²).
    Every O(r) contraction is one real matrix product over the batch (poles × r times r × samples):
    N from the products Z_i[l, a] Z_i[l, c], the right-hand sides from Z_i, and Re Σ_j a_j F_j⁻¹ β_ij
    (Z_i is real); only the k × k solves are complex. consts (G,), poles and residues (G, P) for the
    G = Gt·Gλ grid points.
    """
    rows = (ids[:, None] * kb + jnp.arange(kb)).reshape(-1)
    Zt = T[:, rows]  # (r, b·kb): column (i, a) = Z_i[:, a]
    r_dim, q = c.shape
    b = ids.shape[0]
    G, P = poles.shape
    Ri = R[rows].reshape(b, kb, q)
    F = 1.0 / (s[None, None, :] - poles[:, :, None])  # (G, P, r) complex
    F2 = jnp.concatenate([F.real, F.imag]).reshape(2 * G * P, r_dim)  # real and imaginary parts, one product
    Z3 = Zt.reshape(r_dim, b, kb)
    upper_a, upper_c = np.triu_indices(kb)  # Z_iᵀ F Z_i is symmetric: products of the upper triangle only
    position = np.zeros((kb, kb), int)
    position[upper_a, upper_c] = position[upper_c, upper_a] = np.arange(upper_a.size)
    outer = (Z3[:, :, upper_a] * Z3[:, :, upper_c]).reshape(r_dim, b * upper_a.size)
    ZFZ = (F2 @ outer).reshape(2, G, P, b, upper_a.size)[..., position]
    N = jnp.eye(kb, dtype=F2.dtype) - (ZFZ[0] + 1j * ZFZ[1])
    ZFc = ((F2[:, :, None] * c[None]).transpose(0, 2, 1).reshape(2 * G * P * q, r_dim) @ Zt).reshape(2, G, P, q, b, kb)
    ZFc = ZFc[0] + 1j * ZFc[1]
    rhs = Ri[None, None].astype(N.dtype) - jnp.moveaxis(ZFc, 2, -1)  # (G, P, b, kb, q)
    beta = jnp.linalg.solve(N, rhs)  # (G, P, b, kb, q)
    AF = residues[:, :, None] * F  # (G, P, r)
    beta = beta.reshape(G, P, b * kb * q)
    M = jnp.einsum("gpl,gpm->glm", AF.real, beta.real) - jnp.einsum("gpl,gpm->glm", AF.imag, beta.imag)
    d = jnp.sum(Z3[None, :, :, :, None] * M.reshape(G, r_dim, b, kb, q), axis=3)  # (G, r, b, q)
    ZR = jnp.einsum("lba,baq->lbq", Z3, Ri)
    d = d + consts[:, None, None, None] * ZR[None]
    d2 = jnp.sum(d * d, axis=3)  # (G, r, b)
    out = {
        "weight": jnp.sum(d2, axis=1).T,
        "train": jnp.einsum("l,glb->bg", s, d2),
        "self": jnp.einsum("lba,glbq->bgaq", Z3, d).reshape(b, G, kb * q),
    }
    if Bv is not None:
        pred = Bv @ jnp.moveaxis(d, 1, 0).reshape(r_dim, G * b * q)  # (M, G·b·q)
        out["val"] = jnp.sum((pred * pred).reshape(-1, G, b, q), axis=(0, 3)).T
    if return_coords:
        out["coords"] = jnp.transpose(d, (2, 0, 1, 3))  # (b, G, r, q)
    return jax.tree_util.tree_map(lambda x: x.reshape((x.shape[0],) + grid_shape + x.shape[2:]), out)


def _rational_devices(ids, s, T, R, c, Bv, consts, poles, residues, kb, grid_shape, return_coords):
    """``_rational_device`` with the ids split over the local devices."""
    return _split_over_devices(_rational_device, 9, (kb, grid_shape, return_coords))(ids, s, T, R, c, Bv, consts,
                                                                                      poles, residues)


@dataclasses.dataclass(frozen=True)
class SamplePlan:
    """How the per-sample changes are solved (``per_sample_plan``): ``path`` "rational", "downdate",
    "schur_dual" or "schur_primal"; ``fractions`` (consts, poles, residues) for "rational"; the
    training settings as 1-D grids; ``tol`` the rank cut-off; ``block_size`` rows per sample."""

    path: str
    fractions: Any
    lr: float
    steps: np.ndarray
    weight_decay: np.ndarray
    discrete: bool
    tol: float
    block_size: int
    dtype: Any


def per_sample_plan(s_max, *, basis, lr, steps, weight_decay, discrete, solver, tol, block_size, dtype) -> SamplePlan:
    """Choose the per-sample solver once for a spectrum with largest eigenvalue ``s_max`` (see
    ``leave_one_out``'s solver table): Schur when every step count is inf, else verified partial
    fractions unless ``solver="downdate"`` or no fit verifies; ``steps``/``weight_decay`` 1-D grids."""
    steps_grid = np.atleast_1d(np.asarray(steps, dtype=float))
    lams = np.atleast_1d(np.asarray(weight_decay, dtype=float))
    all_inf = bool(np.all(np.isinf(steps_grid)))
    path = "downdate" if not all_inf else ("schur_dual" if basis == "dual" else "schur_primal")
    fractions = None
    if path == "downdate" and solver != "downdate":
        fractions = _partial_fractions(float(s_max), float(lr), steps_grid, lams, bool(discrete), dtype)
        if fractions is None and solver == "rational":
            raise ValueError("solver: 'rational' found no verified partial-fraction form of the filter for every "
                             "grid point (t = ∞ with weight_decay = 0, or η·t·λmax too large); "
                             "use solver='auto'.")
        path = "rational" if fractions is not None else path
    return SamplePlan(path, fractions, float(lr), steps_grid, lams, bool(discrete), float(tol), int(block_size),
                      dtype)


def sample_changes(plan: SamplePlan, s, T, R, c, Bv, *, V=None, s_all=None, return_coords=False, chunk_size=None,
                   progress=True) -> dict:
    """Per-sample LOO measures of the n = T.shape[1]/block_size samples whose U-coordinates are the
    columns of T (r, N) (module docstring: Z_i = T[:, B_i]), residuals R (N, q), c = Uᵀ Φᵀ r of the
    full data (r, q), B_v (M, r) or None; ``V``/``s_all`` the full dual eigenbasis for "schur_dual".
    T and R may hold any subset of the samples (a batch of a streamed pass): the factorization (s, c)
    is the full data's. Chunks of ``chunk_size`` samples (default: a ~0.4 GB budget for "rational", ~1.6 GB otherwise) are split over
    the local devices. Returns {"weight", "train", "self"[, "val", "coords"]}, each (Gt, Gλ, n, ...).
    """
    kb, dtype, path = plan.block_size, plan.dtype, plan.path
    steps_grid, lams = plan.steps, plan.weight_decay
    r_dim, q = c.shape
    n = T.shape[1] // kb
    rho = V.T @ R if path == "schur_dual" else None
    if chunk_size is None:
        if path == "rational":
            n_poles = int(plan.fractions[1].shape[1])
            grid = len(steps_grid) * len(lams)
            per_sample = 8 * r_dim * (kb * kb + 3 * grid * kb * q) + 32 * grid * n_poles * kb * (kb + q)
            budget = 4e8  # matrix products over a few hundred samples already run at full speed
        else:
            per_sample = 8 * (3 * kb * r_dim * r_dim + len(steps_grid) * len(lams) * r_dim * (q + kb + 2))
            budget = 1.6e9
        chunk_size = max(1, min(n, int(budget // max(per_sample, 1))))
    devices = jax.local_device_count()
    chunk_size = int(min(max(1, chunk_size), n))
    chunk_size = -(-chunk_size // devices) * devices  # a multiple of the device count (padded)
    starts = range(0, n, chunk_size)
    pieces = []
    lr_j, steps_j, lams_j = jnp.asarray(plan.lr, dtype), jnp.asarray(steps_grid, dtype), jnp.asarray(lams, dtype)
    for start in tqdm(starts, desc="leave-one-out", disable=not progress or len(starts) == 1):
        idx = np.arange(start, start + chunk_size)
        valid = int(np.sum(idx < n))
        idx = jnp.asarray(np.minimum(idx, n - 1))  # pad the last chunk (same shape: no retrace)
        if path == "rational":
            out = _rational_devices(idx, s, T, R, c, Bv, *plan.fractions, kb, (len(steps_grid), len(lams)),
                                    bool(return_coords))
        elif path == "downdate":
            out = _downdate_devices(idx, s, T, R, c, Bv, lr_j, steps_j, lams_j, jnp.asarray(plan.tol, dtype),
                                    jnp.asarray(plan.discrete), kb, bool(return_coords))
        else:
            out = _split_over_devices(_schur_device, 10, (path, kb, bool(return_coords)))(
                idx, s, T, R, c, Bv, V, s_all, rho, lams_j)
        pieces.append(jax.tree_util.tree_map(lambda x, v=valid: x[:v], out))
    out = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *pieces)
    if path.startswith("schur"):  # Schur outputs carry a length-1 steps axis; broadcast to the steps grid
        out = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (x.shape[0], len(steps_grid)) + x.shape[2:]), out)
    return jax.tree_util.tree_map(lambda x: jnp.moveaxis(x, 0, 2), out)  # (Gt, Gλ, n, ...)


def _partial_fractions(s_max, lr, steps_grid, lams, discrete, dtype):
    """Verified partial fractions of φ(μ + λ) on [0, s_max] for every grid point, padded to a common
    number of poles (consts (G,), poles, residues (G, P)); None if any grid point has no verified fit."""
    fits = []
    for t in steps_grid:
        for lam in lams:
            if np.isinf(t):
                # φ = 1/(μ + λ): exactly one pole at -λ (none for λ = 0, a pseudo-inverse)
                fit = rational.PartialFractions(0.0, np.array([-lam], complex), np.array([1.0 + 0j])) if lam > 0 \
                    else None
            else:
                def h(mu, t=t, lam=lam):
                    with _enable_x64(True):  # the fit is float64 even when the engine runs in float32
                        return np.asarray(filter_values(jnp.asarray(mu + lam, jnp.float64), lr=lr, steps=t,
                                                        discrete=discrete))

                fit = rational.fit_filter(h, s_max, resolution=1.0 / (lr * t * s_max) if t > 0 else 1.0)
            if fit is None:
                return None
            fits.append(fit)
    P = max(len(f.poles) for f in fits)
    pad = lambda x, fill: np.concatenate([x, np.full(P - len(x), fill, complex)])
    cdtype = jnp.complex128 if dtype == jnp.float64 else jnp.complex64
    consts = jnp.asarray([np.real(f.constant) for f in fits], dtype)
    poles = jnp.asarray(np.stack([pad(f.poles, -1.0 - s_max) for f in fits]), cdtype)
    residues = jnp.asarray(np.stack([pad(f.residues, 0.0) for f in fits]), cdtype)
    return consts, poles, residues



# ----------------------------------------------------------------------------------------------
# Public entry


def _float64_engine(fn):
    """Run ``fn`` with JAX's x64 enabled (restored afterwards), so float64 is available whatever the flag."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _enable_x64(True):
            return fn(*args, **kwargs)
    return wrapper


def _mean_loss_offset(s, c, lr, steps_grid, lams, discrete, tol, n):
    """[φ_n(s) - φ_{n-1}(s)]∘c per grid point (Gt, Gλ, r, q), φ_m(u) = g(u + mλ; η/m) (module docstring)."""
    def phi(m):
        return jax.vmap(lambda t: jax.vmap(lambda lam: _phi(s + m * lam, lr / m, t, discrete, tol))(lams))(steps_grid)
    return (phi(n) - phi(n - 1))[..., None] * c


@_float64_engine
def leave_one_out(kernel=None, *, features=None, residuals, lr, steps, weight_decay=0.0, discrete=False,
                  cross_kernel=None, cross_features=None, mode="auto", solver="auto", return_coords=False,
                  chunk_size=None, progress=True, loss="sum", dtype="float64") -> LOOResult:
    """Exact LOO changes of the linear(ized) model for every training sample, in O(N³ + n·P·k²·r).

    Model and training (``ntk_info.dynamics``): f(x) = f0(x) + J(x)(w - w0), t = ``steps``
    GD steps (``discrete=True``) or gradient-flow time η t (default) with learning rate η = ``lr``
    and weight decay λ = ``weight_decay`` toward w0; ``steps=float('inf')`` is the converged model.
    ``loss="sum"`` (default): L = Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||²; ``loss="mean"``: the data
    term times 1/n, and the model without sample i has the data term times 1/(n-1) (exact, module
    docstring; keeps the per-sample coordinates in memory, n·r·q floats per grid point).
    ``steps`` and ``weight_decay`` may be 1-D grids: outputs gain leading axes (len(steps),
    len(weight_decay)) for those given as arrays; the downdate roots are computed once per sample.

    Inputs: ``kernel`` K (n, n) or (n, n, k, k), or ``features`` Φ (n, p) or (n, k, p) with K = ΦΦᵀ;
    ``residuals`` r = Y - f0(X): (n,) or (n, k). An (n, n) kernel (or (n, p) features) with (n, k)
    residuals means k independent outputs sharing the kernel; (n, n, k, k) is flattened sample-major
    to N = n·k rows and removing sample i drops its k rows. ``cross_kernel`` K(X_v, X) (m, n[, k, k])
    or ``cross_features`` Φ_v (m[, k], p) add ``prediction_change_sq`` (F-SI, SI paper eq. 16–17).

    mode ("auto" decision table; N = rows, p = feature dimension):
        kernel given                 -> "dual"    (eigh of the N×N kernel)
        features, p < N              -> "primal"  (eigh of the p×p Gram ΦᵀΦ, O(p³ + n·k·p²))
        features, p ≥ N              -> "dual"    (K = ΦΦᵀ)
    "dual" or "primal" force the basis ("primal" needs features).

    solver (finite t):
        "rational"  φ(μ + λ) as verified partial fractions c0 + Σ_j a_j/(μ - p_j) on [0, s_max]
                    (``ntk_info.rational``, max error ≤ 1e-12·max|φ|, ~10–25 poles), each resolvent of
                    the downdated Gram a k×k Woodbury solve: O(P·r·k²) per sample, all samples batched;
        "downdate"  the exact secular eigen-downdate (``ntk_info.secular``), O(k·r²) per sample; a
                    secular root that misses its stopping test within the iteration cap gives a
                    RuntimeWarning naming the samples (``roots_converged`` in the result);
        "auto"      "rational" when every grid point has a verified fit (not for t = ∞ with λ = 0, nor
                    for η t s_max beyond ~1e5), else "downdate".
    When every step count is inf the
    block-Schur formulas are used instead of the downdate (reported mode "schur", basis kept in
    ``basis``); dual Schur needs M = K + λI invertible. Mixed grids (inf and finite steps) use the
    downdate for all points, with φ = pseudo-inverse 1/(μ+λ) at t = ∞. At t = ∞ with λ = 0 a sample
    that alone spans a direction (leverage 1) gets gradient flow's t → ∞ limit: the model without it
    stays at w0 along that direction (min-norm least squares on the remaining samples).

    Stability: a RuntimeWarning (for gradient flow too: the real network is trained by GD) when
    lr ≥ 2/(λmax + λ) (mean loss: 2/(λmax/n + λ)), the limit beyond which GD diverges; not when every
    step count is inf (the converged model does not depend on lr).

    Precision: ``dtype="float64"`` (default) computes in float64 whatever ``jax_enable_x64`` says;
    ``dtype="float32"`` is an explicit opt-in with measured errors of 1e-2 to 2e-1 of the largest entry
    on spectra spanning 5 decades (module docstring). Rank: eigenvalues ≤ tol = max(N, p_used)·eps·s_max
    are dropped (exact: they carry no weight change); ``rank`` and ``tolerance`` are reported.
    ``chunk_size`` samples are processed per call, split over all devices (default: from a ~1.6 GB
    memory budget), with a tqdm bar. Outputs are numpy arrays.

    >>> import numpy as np
    >>> X = np.eye(3); res = leave_one_out(kernel=X, residuals=np.ones(3), lr=1.0, steps=float("inf"), progress=False)
    >>> np.round(np.asarray(res.self_prediction_change), 6).tolist()
    [1.0, 1.0, 1.0]
    """
    if mode not in ("auto", "dual", "primal"):
        raise ValueError(f"mode: expected 'auto', 'dual' or 'primal', got {mode!r}.")
    if solver not in ("auto", "rational", "downdate"):
        raise ValueError(f"solver: expected 'auto', 'rational' or 'downdate', got {solver!r}.")
    if loss not in LOSSES:
        raise ValueError(f"loss: expected 'sum' or 'mean', got {loss!r}.")
    try:
        dtype_name = np.dtype(dtype).name
    except TypeError:
        dtype_name = None
    if dtype_name not in DTYPES:
        raise ValueError(f"dtype: expected 'float64' (default) or 'float32' (explicit opt-in), got {dtype!r}.")
    dtype = jnp.float64 if dtype_name == "float64" else jnp.float32
    if mode == "primal" and features is None:
        raise ValueError("mode: 'primal' needs explicit features=Φ (n, p) or (n, k, p), got a kernel only; "
                         "use mode='dual' or 'auto' with a kernel.")
    _check_settings(lr, steps, weight_decay, discrete)
    kernel = None if kernel is None else _as_float(kernel, "kernel", dtype)
    features = None if features is None else _as_float(features, "features", dtype)
    residuals = _as_float(residuals, "residuals", dtype)
    cross_kernel = None if cross_kernel is None else _as_float(cross_kernel, "cross_kernel", dtype)
    cross_features = None if cross_features is None else _as_float(cross_features, "cross_features", dtype)
    n, kb, q, N = _shapes(kernel, features, residuals, cross_kernel, cross_features)
    if np.ndim(lr) != 0:
        raise ValueError(f"lr: expected one learning rate (grids are over steps and weight_decay), got {lr!r}.")
    if loss == "mean" and n < 2:
        raise ValueError(f"loss: 'mean' needs n ≥ 2 samples (the model without a sample has n - 1), got n = {n}.")

    if mode == "auto":
        basis = "primal" if features is not None and features.shape[-1] < N else "dual"
    else:
        basis = mode
    steps_grid = np.atleast_1d(np.asarray(steps, dtype=float))
    lams_user = np.atleast_1d(np.asarray(weight_decay, dtype=float))
    # Sum-loss settings: of the full model (η_f, λ_f) and of the models without one sample (lr, lams),
    # which is what the per-sample solvers below run; equal for the sum loss.
    scale_full, scale_loo = (1, 1) if loss == "sum" else (n, n - 1)
    lr_full, lams_full = float(lr) / scale_full, lams_user * scale_full
    lr_user, want_coords = float(lr), bool(return_coords)
    lr, lams, return_coords = lr_user / scale_loo, lams_user * scale_loo, want_coords or loss == "mean"
    all_inf = bool(np.all(np.isinf(steps_grid)))
    R = jnp.asarray(residuals.reshape(N, q), dtype)

    if basis == "dual":
        fac = _factor_dual(kernel, features, cross_kernel, cross_features, R, N, dtype)
        if np.any(np.isinf(steps_grid)) and np.any(lams == 0) and fac.rank < N:
            raise ValueError(_SINGULAR.format(r=fac.rank, N=N))
    else:
        fac = _factor_primal(features, cross_features, N, dtype)
    s, T, Bv, tol, r_dim = fac.s, fac.T, fac.Bv, fac.tol, fac.rank
    c = T @ R
    if not all_inf:  # the converged model does not depend on lr
        _warn_unstable(lr_user, float(s[-1]), weight_decay, loss=loss, n=n, stacklevel=4)

    # Trained model: Uᵀ(w - w0) = φ(s)∘c, fitted residuals R - Tᵀ(φ(s)∘c), per grid point.
    phi_s = jax.vmap(lambda t: jax.vmap(lambda lam: _phi(s + lam, lr_full, t, discrete, tol))(
        jnp.asarray(lams_full, dtype)))(jnp.asarray(steps_grid, dtype))
    trained = phi_s[..., None] * c
    fitted = R - jnp.einsum("rn,tlrq->tlnq", T, trained)

    plan = per_sample_plan(float(s[-1]), basis=basis, lr=lr, steps=steps_grid, weight_decay=lams, discrete=discrete,
                           solver=solver, tol=tol, block_size=kb, dtype=dtype)
    path = plan.path
    V, s_all = (fac.V, fac.s_all) if path == "schur_dual" else (None, None)
    out = sample_changes(plan, s, T, R, c, Bv, V=V, s_all=s_all, return_coords=return_coords, chunk_size=chunk_size,
                         progress=progress)

    if loss == "mean":  # d_i = [φ_n(s) - φ_{n-1}(s)]∘c + d_i^{(n-1)}; every measure is recomputed from d_i
        offset = _mean_loss_offset(s, c, float(lr_user), jnp.asarray(steps_grid, dtype), jnp.asarray(lams_user, dtype),
                                   bool(discrete), tol, n)
        d = out["coords"] + offset[:, :, None]
        Zs = T.reshape(r_dim, n, kb)
        out["coords"], out["weight"] = d, jnp.sum(d * d, axis=(-2, -1))
        out["train"] = jnp.einsum("l,tgnlq->tgn", s, d * d)
        out["self"] = jnp.einsum("lna,tgnlq->tgnaq", Zs, d).reshape(d.shape[:3] + (-1,))
        if Bv is not None:
            out["val"] = jnp.sum(jnp.einsum("ml,tgnlq->tgnmq", Bv, d) ** 2, axis=(-2, -1))
    roots_converged = None
    if "converged" in out:
        roots_converged = np.asarray(out.pop("converged")[0, 0])
        if not roots_converged.all():
            bad = np.flatnonzero(~roots_converged)
            warnings.warn(f"secular root finder: {bad.size} of {n} samples have roots that missed the stopping test "
                          f"within the iteration cap (samples {bad[:10].tolist()}{' ...' if bad.size > 10 else ''}); "
                          "their LOO values may be inaccurate: compare with solver='rational', or report this "
                          "case. result.roots_converged marks them.", RuntimeWarning, stacklevel=3)

    squeeze = tuple(ax for ax, arg in ((0, steps), (1, weight_decay)) if np.ndim(arg) == 0)
    one_d = residuals.ndim == 1

    def finish(x):
        return np.asarray(jnp.squeeze(x, axis=squeeze) if squeeze else x)

    self_change = out["self"].reshape(out["self"].shape[:3] + ((kb * q,) if not one_d else ()))
    fitted_out = fitted.reshape(fitted.shape[:2] + (n,) + ((kb * q,) if not one_d else ()))
    coords = {}
    if want_coords:
        d = out["coords"]
        coords = dict(weight_change_coords=finish(d if q > 1 else d[..., 0]), train_coords=np.asarray(T),
                      spectrum=np.asarray(s), trained_coords=finish(trained if q > 1 else trained[..., 0]))
    return LOOResult(
        weight_change_sq=finish(out["weight"]),
        prediction_change_sq=finish(out["val"]) if "val" in out else None,
        self_prediction_change=finish(self_change),
        train_prediction_change_sq=finish(out["train"]),
        fitted_residuals=finish(fitted_out),
        n_val=0 if Bv is None else (cross_kernel if cross_kernel is not None else cross_features).shape[0],
        mode="schur" if all_inf else basis,
        basis=basis,
        rank=r_dim,
        tolerance=tol,
        block_size=kb,
        lr=lr_user,
        steps=steps,
        weight_decay=weight_decay,
        discrete=bool(discrete),
        solver="schur" if all_inf else path,
        loss=loss,
        dtype=dtype_name,
        roots_converged=roots_converged,
        **coords,
    )

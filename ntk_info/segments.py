"""Exact leave-one-out through a piecewise linearization of the real training run (segments).

The single linearization at w0 (``ntk_info.leave_one_out``) fails when the network's kernel moves
during training (SI paper Table 1, CNN from scratch). Here the real network is trained once by
full-batch GD with the closed form's conventions (sum loss, weight decay λ toward w0), checkpoints
w_0, ..., w_S are kept at steps τ_0 = 0 < ... < τ_S = t, and segment s (t_s = τ_{s+1} - τ_s steps)
is the model linearized at w_s, in the sketched coordinates θ of ONE projection P shared by all
checkpoints (Φ_s = J(w_s) P, ``ntk_info.features``):

    f_s(x; θ) = f(x; w_s) + Φ_s(x)(θ - θ_s),     L = Σ_i ½||f_s(x_i; θ) - y_i||² + (λ/2)||θ - θ0||².

Removing sample i. With u = θ - θ_s, r_s = Y - f(X; w_s), v_s = θ_s - θ0 (the checkpoint's offset,
P_sketch(w_s - w0)), b_s = Φ_sᵀ r_s - λ v_s (minus the gradient at the checkpoint), M = Φ_sᵀΦ_s + λI
and M_{-i} = M - Φ_{s,i}ᵀΦ_{s,i}, t_s GD steps from u_0 give u = ψ(M) u_0 + g(M) b with the filter
g(u) = (1 - (1 - ηu)^t)/u of ``ntk_info.dynamics`` and the transition ψ(u) = (1 - ηu)^t = 1 - u g(u)
(flow: g = (1 - e^{-ηtu})/u, ψ = e^{-ηtu}). The full run starts at u_0 = 0, the run without i at
u_0 = -δ_s(i) with b_{-i} = b - Φ_{s,i}ᵀ r_{s,i}, so δ = θ - θ_{-i} obeys the affine recursion

    δ_{s+1}(i) = ψ(M_{-i}) δ_s(i) + [g(M) b - g(M_{-i}) b_{-i}],      δ_0(i) = 0.          (1)

The bracket is today's single-segment LOO change of the model linearized at w_s (its residuals
r_s, decay still toward w0: the anchor enters only through b); the decay anchor cancels in ψ.
In the eigenbasis U of Φ_sᵀΦ_s (kept spectrum s, Z_i = UᵀΦ_{s,i}ᵀ, c = Uᵀb, x = Uᵀδ_s(i),
A_i = diag(s) - Z_i Z_iᵀ, φ(μ) = g(μ + λ)):

    Uᵀδ_{s+1} = φ(s)∘c - φ(A_i)(c - Z_i r_i) + ψ(A_i + λ) x,
    (I - UUᵀ)δ_{s+1} = ψ(λ) (I - UUᵀ) δ_s        (M_{-i} = λ off the data span of segment s).

δ lives in the p sketched coordinates (the spans of different segments differ), so it is carried
as a (p, q) vector per sample; per segment and sample φ(A_i) and ψ(A_i + λ) = I - φ(A_i)(A_i + λ) are
applied with verified partial fractions of φ (``ntk_info.rational``, each resolvent a k×k Woodbury
solve), with the exact secular downdate where no fit verifies, or by the t_s GD steps themselves for short segments.
S = 1 is ``leave_one_out``; a linear model (all Φ_s equal, exact residuals) gives the same for any
S (GD is a semigroup); S = t is exact unrolled GD of the model linearized at every step, i.e.
unrolled differentiation with the Gauss-Newton Jacobian products (cf. Bae et al. 2024, "Training
data attribution via approximate unrolled differentiation", who segment the trajectory too) but for
the finite removal, not a first-order one.

What is exact and what is not. For the piecewise-linear model in θ-coordinates every number here
is exact. Its relation to the real network: (a) within a segment the network is replaced by its
tangent at w_s (the error shrinks with t_s); (b) the kernels J_a J_bᵀ between any two checkpoints
(also the cross-time ones that carry δ from one segment into the next) are replaced by the sketch
J_a P Pᵀ J_bᵀ, unbiased only because P is shared (independent sketches per checkpoint would give
E[P_a P_bᵀ] = 0 and lose δ); with P = I (a budget covering every leaf) (b) is exact; (c) ||δ||² is
the sketched weight norm, as for ``leave_one_out``; (d) the curvature of the residual term
(Σ_i e_i ∇²f_i) is dropped, as in every Gauss-Newton method. Outputs are read out with the last
segment's features: f(X_v) - f_{-i}(X_v) = Φ_{S-1}(X_v) δ_S(i).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

try:  # jax ≥ 0.6; 0.4.35 (the neural-tangents extra) has it under experimental
    from jax import enable_x64
except ImportError:  # pragma: no cover
    from jax.experimental import enable_x64

from ntk_info import rational, secular
from ntk_info.dynamics import filter_values
from ntk_info.loo import LOOResult

__all__ = ["Segment", "SOLVERS", "SPACINGS", "checkpoint_steps", "segmented_leave_one_out", "sketch_weights",
           "transition_values", "train_checkpoints", "segmented_network_loo"]

SPACINGS = ("uniform", "early")
SOLVERS = ("auto", "rational", "downdate", "direct")
_DIRECT_MAX_STEPS = 64  # segments this short are stepped directly (exact, O(t_s r k q) per sample)
_CHUNK_BYTES = 4e8  # per-chunk working memory of the per-sample solves


class Segment(NamedTuple):
    """One linearization: features Φ_s (n, p) or (n, k, p) at w_s, residuals r_s = Y - f(X; w_s)
    ((n,) or (n, k)), offset v_s = θ_s - θ0 in the sketched coordinates ((p,) or (p, q); None: the
    model's own trajectory, from 0), and the number of GD steps t_s ≥ 1 of the segment."""

    features: Any
    residuals: Any
    offset: Any
    steps: int


def transition_values(u, *, lr, steps, discrete=True):
    """ψ(u) = (1 - ηu)^t (discrete GD) or e^{-ηtu} (flow): the t-step transition of a mode of curvature u.

    NaN-free for negative bases (sign (-1)^t) and 0^0 = 1.
    """
    u = jnp.asarray(u)
    lr = jnp.asarray(lr, u.dtype)
    t = jnp.asarray(steps, u.dtype)
    if not discrete:
        return jnp.exp(-lr * t * u)
    base = 1.0 - lr * u
    mag = jnp.abs(base)
    power = jnp.exp(t * jnp.log(jnp.where(mag == 0.0, 1.0, mag)))
    power = jnp.where(mag == 0.0, jnp.where(t == 0.0, 1.0, 0.0), power)
    odd = jnp.mod(t, 2.0) == 1.0
    return jnp.where((base < 0) & odd, -power, power)


def checkpoint_steps(steps: int, segments: int, spacing="uniform") -> np.ndarray:
    """Checkpoint steps τ_0 = 0 < τ_1 < ... < τ_S = ``steps`` for S = ``segments``.

    ``spacing``: "uniform" τ_s = round(s t / S); "early" τ_s = round(t (s/S)²) (denser early, where the
    kernel moves most), nudged to stay strictly increasing; or an explicit increasing sequence of
    S + 1 integers from 0 to ``steps``.
    """
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps: expected an integer number of GD steps ≥ 1 for segments, got {steps!r}")
    if not isinstance(spacing, str):
        tau = np.asarray(spacing)
        if tau.ndim != 1 or not np.issubdtype(tau.dtype, np.integer) or tau[0] != 0 or tau[-1] != steps \
                or np.any(np.diff(tau) < 1) or tau.size != segments + 1:
            raise ValueError(f"spacing: expected {SPACINGS} or {segments + 1} increasing integers from 0 to "
                             f"steps={steps}, got {spacing!r}")
        return tau.astype(int)
    if not isinstance(segments, (int, np.integer)) or isinstance(segments, bool) or not 1 <= segments <= steps:
        raise ValueError(f"segments: expected an integer in [1, steps={steps}], got {segments!r}")
    frac = np.arange(segments + 1) / segments
    if spacing == "uniform":
        tau = np.round(frac * steps).astype(int)
    elif spacing == "early":
        tau = np.round(frac ** 2 * steps).astype(int)
        for s in range(1, segments + 1):  # at least one step per segment, end fixed
            tau[s] = max(tau[s], tau[s - 1] + 1)
        for s in range(segments - 1, 0, -1):
            tau[s] = min(tau[s], tau[s + 1] - 1)
    else:
        raise ValueError(f"spacing: expected one of {SPACINGS} or an explicit sequence of steps, got {spacing!r}")
    return tau


# ----------------------------------------------------------------------------------------------
# One segment: factorization and the per-sample solves


class _Basis(NamedTuple):
    U: Any      # (p, r) kept eigenvectors of ΦᵀΦ
    s: Any      # (r,) kept eigenvalues
    T: Any      # (r, N) = UᵀΦᵀ
    tol: float


def _factor(phi):
    """Eigenbasis of ΦᵀΦ (primal eigh when p < N, else from the N×N kernel), ranks as in ``leave_one_out``."""
    N, p = phi.shape
    if p < N:
        s_all, U = jnp.linalg.eigh(phi.T @ phi)
        tol = max(N, p) * float(jnp.finfo(phi.dtype).eps) * float(s_all[-1])
        keep = int(jnp.sum(s_all > tol))
        s, U = s_all[p - keep:], U[:, p - keep:]
        return _Basis(U, s, U.T @ phi.T, tol)
    s_all, V = jnp.linalg.eigh(phi @ phi.T)
    tol = N * float(jnp.finfo(phi.dtype).eps) * float(s_all[-1])
    keep = int(jnp.sum(s_all > tol))
    s, V = s_all[N - keep:], V[:, N - keep:]
    return _Basis(phi.T @ (V / jnp.sqrt(s)), s, jnp.sqrt(s)[:, None] * V.T, tol)


def _fit(h, s_max, resolution):
    fit = rational.fit_filter(h, s_max, resolution=resolution)
    if fit is None:
        return None
    return (jnp.asarray(np.real(fit.constant)), jnp.asarray(fit.poles, jnp.complex128),
            jnp.asarray(fit.residues, jnp.complex128))


def _fit_phi(s_max, lr, t, lam, discrete):
    """Verified partial fractions (c0, poles, residues) of φ(μ) = g(μ + λ) on [0, s_max], or None."""
    fit = rational.fit_filter(
        lambda mu: np.asarray(filter_values(jnp.asarray(mu + lam), lr=lr, steps=t, discrete=discrete)),
        s_max, resolution=1.0 / (lr * t * s_max))
    if fit is None:
        return None
    return (jnp.asarray(np.real(fit.constant)), jnp.asarray(fit.poles, jnp.complex128),
            jnp.asarray(fit.residues, jnp.complex128))


@functools.partial(jax.jit, static_argnames=("propagate",))
def _rational_chunk(Z, Ri, x, s, c, lam, fit, *, propagate):
    """New U-coordinates φ(s)∘c - φ(A)(c - Z r_i) + ψ(A + λ) x for a chunk of samples (b, r, q).

    φ(A) y = c0 y + Σ_j a_j (A - p_j)⁻¹ y, (A - p)⁻¹ = F⁻¹ + F⁻¹ Z N⁻¹ Zᵀ F⁻¹ (Woodbury; F = diag(s) - p,
    N = I - Zᵀ F⁻¹ Z). The first two terms as in ``leave_one_out``, cancellation-free:
    c0 Z r_i + Σ_j a_j F_j⁻¹ Z N_j⁻¹ (r_i - Zᵀ F_j⁻¹ c). The transition through the same poles,
    ψ(A + λ) x = x - φ(A) (A + λ) x (ψ = 1 - u g(u)): error ≤ fit error · (s_max + λ) ||x||, i.e.
    ~1e-12 · η t_s s_max relative to ||x||.
    """
    c0, poles, residues = fit
    Finv = 1.0 / (s[None, :] - poles[:, None])  # (P, r)
    Zc = Z.astype(Finv.dtype)
    ZF = jnp.einsum("bla,pl->bpla", Zc, Finv)
    N = jnp.eye(Z.shape[-1], dtype=Finv.dtype) - jnp.einsum("bpla,blc->bpac", ZF, Zc)
    rhs = Ri[:, None].astype(Finv.dtype) - jnp.einsum("bpla,lq->bpaq", ZF, c.astype(Finv.dtype))
    if not propagate:
        beta = jnp.linalg.solve(N, rhs)
        return jnp.einsum("p,bpla,bpaq->blq", residues, ZF, beta).real + c0 * jnp.einsum("bla,baq->blq", Z, Ri)
    q = c.shape[1]
    y = (s + lam)[None, :, None] * x - jnp.einsum("bla,bam->blm", Z, jnp.einsum("bla,blm->bam", Z, x))
    yc = y.astype(Finv.dtype)
    beta = jnp.linalg.solve(N, jnp.concatenate([rhs, jnp.einsum("bpla,blm->bpam", ZF, yc)], axis=-1))
    d = jnp.einsum("p,bpla,bpaq->blq", residues, ZF, beta[..., :q]).real + c0 * jnp.einsum("bla,baq->blq", Z, Ri)
    phi_y = c0 * y + jnp.einsum("p,pl,blm->blm", residues, Finv, yc).real \
        + jnp.einsum("p,bpla,bpam->blm", residues, ZF, beta[..., q:]).real
    return d + x - phi_y


@functools.partial(jax.jit, static_argnames=("discrete", "propagate"))
def _downdate_chunk(Z, Ri, x, s, c, lr, t, lam, *, discrete, propagate):
    """The same through the exact secular downdate A = Q diag(μ) Qᵀ (``ntk_info.secular``), per sample."""
    q = c.shape[1]
    phi_s = filter_values(s + lam, lr=lr, steps=t, discrete=discrete)

    def one(args):
        Zi, Rii, xi = args
        dd = secular.downdate(s, Zi)
        rhs = jnp.concatenate([c - Zi @ Rii, xi], axis=1) if propagate else c - Zi @ Rii
        y = secular.transpose_apply(dd, rhs)
        phi_mu = filter_values(dd.roots + lam, lr=lr, steps=t, discrete=discrete)
        cols = phi_mu[:, None] * y[:, :q]
        if propagate:
            psi_mu = transition_values(dd.roots + lam, lr=lr, steps=t, discrete=discrete)
            cols = jnp.concatenate([cols, psi_mu[:, None] * y[:, q:]], axis=1)
        w = secular.basis_apply(dd, cols)
        out = phi_s[:, None] * c - w[:, :q]
        return out + w[:, q:] if propagate else out

    return jax.lax.map(one, (Z, Ri, x))


@functools.partial(jax.jit, static_argnames=("steps", "discrete"))
def _direct_chunk(Z, Ri, x, s, c, lr, lam, *, steps, discrete):
    """The t_s GD steps themselves: δ ← δ - η[(A + λ)δ - Z e_i(τ)], e_i(τ) = r_i - Zᵀ u_τ, with the full
    run u_τ = g_τ(s + λ)∘c (exact for the segment model; discrete GD only)."""
    del discrete

    def step(tau, delta):
        u = filter_values(s + lam, lr=lr, steps=tau.astype(s.dtype), discrete=True)[:, None] * c
        e = Ri - jnp.einsum("bla,lq->baq", Z, u)
        Ad = (s + lam)[None, :, None] * delta - jnp.einsum("bla,bam->blm", Z, jnp.einsum("bla,blm->bam", Z, delta))
        return delta - lr * (Ad - jnp.einsum("bla,baq->blq", Z, e))

    return jax.lax.fori_loop(0, steps, step, x)


# ----------------------------------------------------------------------------------------------
# Public entry: the recursion (1) over segments


def _validated(segment, index, shape):
    """Float64 arrays (Φ (N, p), R (N, q), v (p, q) or None) of one segment, its kb, and checks."""
    phi = np.asarray(segment.features, np.float64)
    res = np.asarray(segment.residuals, np.float64)
    name = f"segments[{index}]"
    if phi.ndim not in (2, 3):
        raise ValueError(f"{name}.features: expected shape (n, p) or (n, k, p), got {phi.shape}")
    n, p = phi.shape[0], phi.shape[-1]
    kb = phi.shape[1] if phi.ndim == 3 else 1
    if phi.ndim == 3:
        if res.shape not in ((n, kb),) + (((n,),) if kb == 1 else ()):
            raise ValueError(f"{name}.residuals: expected shape ({n}, {kb}) to match features {phi.shape}, "
                             f"got {res.shape}")
        R = res.reshape(n * kb, 1)
    else:
        if res.shape[:1] != (n,) or res.ndim > 2:
            raise ValueError(f"{name}.residuals: expected shape ({n},) or ({n}, q), got {res.shape}")
        R = res.reshape(n, -1)
    q = R.shape[1]
    if shape is not None and shape != (n, kb, p, q):
        raise ValueError(f"{name}: expected (n, k, p, q) = {shape} like segment 0 (one projection for all "
                         f"checkpoints), got {(n, kb, p, q)}")
    if not (np.isfinite(phi).all() and np.isfinite(R).all()):
        raise ValueError(f"{name}: features or residuals contain NaN/inf (did the real training diverge?)")
    v = None
    if segment.offset is not None:
        v = np.asarray(segment.offset, np.float64)
        v = v.reshape(p, -1) if v.size == p * q or v.ndim == 1 else v
        if v.shape not in ((p, q), (p, 1)):
            raise ValueError(f"{name}.offset: expected shape ({p},) or ({p}, {q}), got {np.shape(segment.offset)}")
        v = np.broadcast_to(v, (p, q))
    t = segment.steps
    if not isinstance(t, (int, np.integer)) or isinstance(t, bool) or t < 1:
        raise ValueError(f"{name}.steps: expected an integer number of GD steps ≥ 1, got {t!r}")
    return phi.reshape(n * kb, p), R, v, int(t), (n, kb, p, q)


def segmented_leave_one_out(segments: Sequence[Segment], *, lr, weight_decay=0.0, discrete=True,
                            cross_features=None, solver="auto", chunk_size=None, progress=True,
                            on_segment=None) -> LOOResult:
    """Exact LOO of the piecewise-linearized training run, recursion (1) of the module docstring.

    ``segments``: an iterable of :class:`Segment` (consumed one at a time, so it may be a generator
    computing Φ_s on demand), all with the same n, k, p. lr η, ``weight_decay`` λ (toward θ0),
    ``discrete`` GD (default) or gradient flow. ``cross_features`` Φ_v (m[, k], p) at the LAST
    segment's checkpoint give ``prediction_change_sq``. ``solver`` per segment: "rational" (verified
    partial fractions), "downdate" (secular), "direct" (the t_s steps, discrete only), "auto":
    direct for t_s ≤ 64 (discrete), else rational where the fits verify, else downdate.

    Returns a ``LOOResult`` whose fields are read out with the last segment's features:
    weight_change_sq = ||δ_S||², self_prediction_change = Φ_{S-1,i} δ_S, train_prediction_change_sq
    = ||Φ_{S-1} δ_S||², prediction_change_sq = ||Φ_v δ_S||², fitted_residuals = r_{S-1} - Φ_{S-1} u
    (the last segment's full run); mode/basis/rank/solver of the last segment, steps = Σ t_s.
    ``on_segment(s, segment, delta)``, if given, is called after each segment s with that
    :class:`Segment` and δ_{s+1} as a numpy (n, p, q) array (diagnostics: where along training the
    perturbation stops tracking retraining, ``experiments/segments_tracking.py``).
    Works in float64 whatever JAX's x64 flag says.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver: expected one of {SOLVERS}, got {solver!r}")
    if solver == "direct" and not discrete:
        raise ValueError("solver: 'direct' steps discrete GD; use discrete=True or solver='auto'")
    lr = float(lr)
    lam = float(weight_decay)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite learning rate > 0, got {lr!r}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"weight_decay: expected a finite λ ≥ 0, got {weight_decay!r}")
    with enable_x64(True):
        return _run(segments, lr, lam, bool(discrete), cross_features, solver, chunk_size, progress, on_segment)


def _run(segments, lr, lam, discrete, cross_features, solver, chunk_size, progress, on_segment):
    shape = delta = v_model = None
    total_steps, solvers, one_d = 0, [], False
    basis = phi = R = c = None
    for index, segment in enumerate(tqdm(segments, desc="segments", disable=not progress)):
        phi_np, R_np, v_np, t, shape = _validated(segment, index, shape)
        one_d = np.ndim(segment.residuals) == 1
        n, kb, p, q = shape
        if delta is None:
            delta = jnp.zeros((n, p, q))
            v_model = jnp.zeros((p, q))
        phi, R = jnp.asarray(phi_np), jnp.asarray(R_np)
        basis = _factor(phi)
        U, s, T = basis.U, basis.s, basis.T
        v = v_model if v_np is None else jnp.asarray(v_np)
        b = phi.T @ R - lam * v
        c = U.T @ b
        propagate = index > 0
        x = jnp.einsum("ipq,pr->irq", delta, U)  # Uᵀ δ_s(i)
        s_max = float(s[-1])
        if lr * (s_max + lam) >= 2.0 and discrete:
            import warnings

            warnings.warn(f"segment {index}: η(λmax + λ) = {lr * (s_max + lam):.3g} ≥ 2, the linearized segment "
                          "is unstable (edge of stability): its LOO perturbation grows over the segment",
                          RuntimeWarning, stacklevel=3)
        kind = solver
        fits = None
        if kind == "auto":
            kind = "direct" if discrete and t <= _DIRECT_MAX_STEPS else "rational"
        if kind == "rational":
            fits = _fit_phi(s_max, lr, t, lam, discrete)
            if fits is None:
                if solver == "rational":
                    raise ValueError(f"solver: 'rational' found no verified partial-fraction form for segment "
                                     f"{index} (η t λmax = {lr * t * s_max:.3g}); use solver='auto'")
                kind = "downdate"
        solvers.append(kind)
        r_dim = s.shape[0]
        Zall = jnp.moveaxis(T.reshape(r_dim, n, kb), 1, 0)  # (n, r, kb)
        Rall = R.reshape(n, kb, q)
        if chunk_size is None:
            poles = 0 if fits is None else fits[1].shape[0]
            per_sample = 16 * r_dim * (max(poles, 1) * (kb + 2 * q) + 3 * q) + 8 * kb * r_dim * r_dim
            chunk = max(1, min(n, int(_CHUNK_BYTES // per_sample)))
        else:
            chunk = int(chunk_size)
        new = []
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            Z, Ri, xi = Zall[sl], Rall[sl], x[sl]
            if kind == "direct":
                out = _direct_chunk(Z, Ri, xi, s, c, lr, lam, steps=t, discrete=discrete)
            elif kind == "rational":
                out = _rational_chunk(Z, Ri, xi, s, c, lam, fits, propagate=propagate)
            else:
                out = _downdate_chunk(Z, Ri, xi, s, c, lr, t, lam, discrete=discrete, propagate=propagate)
            new.append(out)
        new = jnp.concatenate(new)  # Uᵀ δ_{s+1}(i)  (n, r, q)
        psi_lam = float(transition_values(lam, lr=lr, steps=t, discrete=discrete))
        delta = jnp.einsum("pr,irq->ipq", U, new - psi_lam * x) + psi_lam * delta
        phi_s = filter_values(s + lam, lr=lr, steps=t, discrete=discrete)
        v_perp = v - U @ (U.T @ v)
        v_model = v + U @ (phi_s[:, None] * c) + (psi_lam - 1.0) * v_perp
        total_steps += t
        if on_segment is not None:
            on_segment(index, segment, np.asarray(delta))
    if delta is None:
        raise ValueError("segments: expected at least one Segment, got none")
    n, kb, p, q = shape
    x = new
    Z = jnp.moveaxis(basis.T.reshape(-1, n, kb), 1, 0)
    self_change = jnp.einsum("nla,nlq->naq", Z, x)
    fitted = R - basis.T.T @ (filter_values(basis.s + lam, lr=lr, steps=t, discrete=discrete)[:, None] * c)
    val = None
    n_val = 0
    if cross_features is not None:
        cf = np.asarray(cross_features, np.float64)
        if cf.shape[1:-1] != ((kb,) if kb > 1 or cf.ndim == 3 else ()) or cf.shape[-1] != p:
            raise ValueError(f"cross_features: expected shape (m, {kb}, {p}) or (m, {p}) like the segments' "
                             f"features, got {cf.shape}")
        n_val = cf.shape[0]
        Bv = jnp.asarray(cf.reshape(-1, p))
        val = jnp.sum(jnp.einsum("mp,ipq->imq", Bv, delta) ** 2, axis=(1, 2))
    return LOOResult(
        weight_change_sq=np.asarray(jnp.sum(delta ** 2, axis=(1, 2))),
        prediction_change_sq=None if val is None else np.asarray(val),
        self_prediction_change=np.asarray(self_change.reshape(n, -1)[:, 0] if one_d else self_change.reshape(n, -1)),
        train_prediction_change_sq=np.asarray(jnp.einsum("l,nlq->n", basis.s, x * x)),
        fitted_residuals=np.asarray(fitted.reshape(n, -1)[:, 0] if one_d else fitted.reshape(n, -1)),
        n_val=n_val, mode="segments", basis="primal" if p < n * kb else "dual", rank=int(basis.s.shape[0]),
        tolerance=basis.tol, block_size=kb, lr=lr, steps=total_steps, weight_decay=lam, discrete=discrete,
        solver="+".join(sorted(set(solvers))),
    )


# ----------------------------------------------------------------------------------------------
# From a network: train once, keep checkpoints, linearize at each with one projection


def _half_squared_norm(params, x):
    """½||params||² for every input row (batch, 1): its Jacobian with respect to params is params."""
    total = sum(0.5 * jnp.sum(leaf * leaf) for leaf in jax.tree_util.tree_leaves(params))
    return jnp.broadcast_to(total, (x.shape[0], 1))


def sketch_weights(projection, weights) -> np.ndarray:
    """Pᵀw (p,): the projection of ``ntk_info.features`` applied to a weight-space vector (a pytree
    like the projection's params), so that Φ(x)·Pᵀw = J(x) P Pᵀ w ≈ J(x) w and E||Pᵀw||² = ||w||².

    Computed as the projected Jacobian of params ↦ ½||params||² at params = w (its Jacobian is w), so
    it is exact for every projection method (one module-level function: compiled once).
    """
    probe = dataclasses.replace(projection, apply_fn=_half_squared_norm, params=weights)
    return np.asarray(probe.features(np.zeros((1, 1), np.float32), progress=False).phi[0, 0])


def train_checkpoints(apply_fn: Callable, params0, X, Y, *, lr, checkpoints, weight_decay=0.0) -> list:
    """Weights w_{τ_0}, ..., w_{τ_S} of one full-batch GD run (``ntk_info.training.train``: sum loss,
    decay λ toward w0 = ``params0``) at the steps ``checkpoints`` (increasing, from 0)."""
    from ntk_info.training import train

    weights = [params0]
    for a, b in zip(checkpoints[:-1], checkpoints[1:]):
        weights.append(train(apply_fn, params0, X, Y, lr=lr, steps=int(b - a), weight_decay=weight_decay,
                             start_params=weights[-1]))
    return weights


def _drift(phi, phi0):
    """(||K - K0||_F / ||K0||_F, λmax(K)) with K = ΦΦᵀ, through the smaller of the two Grams."""
    a = phi.reshape(-1, phi.shape[-1]).astype(np.float64)
    b = phi0.reshape(-1, phi0.shape[-1]).astype(np.float64)
    if a.shape[0] <= a.shape[1]:
        K, K0 = a @ a.T, b @ b.T
        return float(np.linalg.norm(K - K0) / np.linalg.norm(K0)), float(np.linalg.eigvalsh(K)[-1])
    G, G0, C = a.T @ a, b.T @ b, a.T @ b
    diff2 = np.sum(G * G) + np.sum(G0 * G0) - 2.0 * np.sum(C * C)
    return float(np.sqrt(max(diff2, 0.0)) / np.linalg.norm(G0)), float(np.linalg.eigvalsh(G)[-1])


def segmented_network_loo(apply_fn: Callable, params0, X, Y, *, projection, lr, steps, weight_decay=0.0,
                          segments, spacing="uniform", X_val=None, kernel="full", batch_size=None,
                          first_features=None, solver="auto", progress=True, on_segment=None):
    """Train the real network once, linearize at S = ``segments`` checkpoints, return (LOOResult, info).

    Training: ``steps`` full-batch GD steps of size ``lr``, sum loss, decay ``weight_decay`` toward
    w0 = ``params0`` (exactly the discrete-GD filter's iteration). Checkpoints from
    :func:`checkpoint_steps` (``spacing``). Segment s: Φ_s from ``projection`` moved to w_s (same
    per-leaf sketch, ``dataclasses.replace(projection, params=w_s)``), r_s = Y - f(X; w_s) (Y float
    (n, k)), offset Pᵀ(w_s - w0) (:func:`sketch_weights`). ``kernel="trace"`` uses the output-averaged
    features (n, k·p)/√k as ``score`` does, with the model's own offsets (weight space of k copies).
    ``first_features``: Φ_0 already computed with ``projection`` (skips one pass). Φ_v of ``X_val``
    at w_{S-1}. info: checkpoints, per-checkpoint kernel drift ||K_s - K_0||/||K_0|| and
    λmax(K_s)/λmax(K_0) (also at the final weights w_S), stability margins η λmax/2, timings.
    ``on_segment``: passed to :func:`segmented_leave_one_out`; info["weights"] then holds the checkpoints' params.
    """
    t0 = time.perf_counter()
    tau = checkpoint_steps(int(steps), segments, spacing)
    weights = train_checkpoints(apply_fn, params0, X, Y, lr=lr, checkpoints=tau, weight_decay=weight_decay)
    jax.block_until_ready(weights[-1])
    t_train = time.perf_counter()
    Y = np.asarray(Y, np.float64)
    k = Y.shape[1]
    drift, lmax, phi0 = [], [], []

    def features_at(s):
        if s == 0 and first_features is not None:
            return first_features
        return dataclasses.replace(projection, params=weights[s]).features(X, batch_size=batch_size, progress=False)

    def shaped(phi):
        return phi.reshape(phi.shape[0], -1) / math.sqrt(k) if kernel == "trace" else phi

    def generate():
        for s in range(len(tau) - 1):
            feats = features_at(s)
            if s == 0:
                phi0.append(feats.phi)
            d, lm = _drift(feats.phi, phi0[0])
            drift.append(d)
            lmax.append(lm)
            offset = None
            if kernel != "trace":
                offset = np.zeros(feats.phi.shape[-1]) if s == 0 else sketch_weights(
                    projection, jax.tree_util.tree_map(lambda a, b: a - b, weights[s], params0))
            yield Segment(shaped(feats.phi), Y - np.asarray(feats.outputs, np.float64), offset,
                          int(tau[s + 1] - tau[s]))

    cross = None
    if X_val is not None:
        cross = shaped(dataclasses.replace(projection, params=weights[-2]).features(
            X_val, batch_size=batch_size, progress=False).phi)
    loo = segmented_leave_one_out(generate(), lr=lr, weight_decay=weight_decay, discrete=True, cross_features=cross,
                                  solver=solver, progress=progress, on_segment=on_segment)
    t_loo = time.perf_counter()
    final = features_at(len(tau) - 1) if len(tau) > 1 else None
    d_final, lm_final = _drift(final.phi, phi0[0])
    info = {
        "segments": len(tau) - 1, "spacing": spacing if isinstance(spacing, str) else "explicit",
        "checkpoints": tau.tolist(), "segment_solvers": loo.solver,
        "kernel_drift": drift + [d_final],
        "lambda_max_ratio": [m / lmax[0] for m in lmax + [lm_final]],
        "stability_margin": [lr * m / 2.0 for m in lmax + [lm_final]],
        "final_train_residual_norm": float(np.linalg.norm(Y - np.asarray(final.outputs, np.float64))),
        "seconds_training": t_train - t0, "seconds_segments": t_loo - t_train,
        "seconds_final_features": time.perf_counter() - t_loo,
    }
    if on_segment is not None:
        info["weights"] = weights
    return loo, info

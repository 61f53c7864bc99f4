"""Eigen-decomposition of a low-rank downdate diag(s) - Z Zᵀ, applied without forming eigenvectors.

Removing one training sample from a linear(ized) model changes its Gram matrix by a rank-k downdate.
In the eigenbasis of the full Gram this is diag(s) - Z Zᵀ, and the leave-one-out dynamics need
Q φ(μ) Qᵀ x for its eigenpairs (μ, Q). We never form Q: a rank-k downdate is k rank-one steps, and
for each step (Golub 1973; Bunch, Nielsen & Sorensen 1978; Gu & Eisenstat 1995):

* the new eigenvalues are the roots of the secular equation; written as the rank-one *update*
  d' + z zᵀ with d' = -d (so that μ = -λ), f(λ) = 1 + Σ_l z_l² / (d'_l - λ) = 0 has exactly one
  root in each interval between consecutive poles, and the last one in (d'_max, d'_max + ||z||²);
* each root is found with the "middle way" rational interpolation of Li (1994) — the iteration of
  LAPACK's dlaed4 — from the nearer pole as origin (so d'_l - λ is computed without cancellation),
  inside a bracket that falls back to bisection, so it is safe on every interval;
* deflation: components with |z_l|·||z|| below tol are decoupled (eigenpair (d_l, e_l)); groups of
  (near-)equal poles are rotated by a Householder reflection so that only one member keeps a
  non-zero z (Gu & Eisenstat 1995, §3);
* z is then recomputed from the roots (Löwner's formula, Gu & Eisenstat 1995, eq. 3.3), so that the
  Cauchy-structured eigenvectors q_j ∝ (d' - λ_j)⁻¹ ẑ are orthogonal to working precision.
Applying Qᵀ or Q to a vector costs O(r) per root, O(r²) per rank-one step.

API (the LOO engine is written against it):
    dd = downdate(s, Z)            s: (r,) eigenvalues, Z: (r, k)
    dd.roots                       (r,) eigenvalues μ of diag(s) - Z Zᵀ
    dd.converged, dd.iterations    every root met the stopping test (bool), sweeps used (int)
    apply(dd, fvals, x)            Q diag(fvals) Qᵀ x, fvals (r,) = f(dd.roots), x (r,) or (r, q)
    transpose_apply(dd, x), basis_apply(dd, y)     Qᵀ x and Q y separately (x, y: (r, q))
All are pure and jit/vmap-compatible; ``downdate_dense`` is the brute-force reference.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["downdate", "downdate_dense", "apply", "transpose_apply", "basis_apply", "SecularDowndate", "DenseDowndate"]

_MAX_ITERATIONS = 60  # full sweeps (then as many compacted ones); bisection alone needs ≤ 52 halvings; typical: 3–6
_FUSED_COLUMNS = 8  # up to this many right-hand sides, recompute reciprocals in fused passes
_ACCEPT_STEP = 1e-12  # relative step below which a rational (quadratically convergent) step is final


class DenseDowndate(NamedTuple):
    """Reference: explicit eigenvectors from a dense eigh of diag(s) - Z Zᵀ (O(r³))."""

    roots: jnp.ndarray
    vectors: jnp.ndarray


class RankOneFactor(NamedTuple):
    """One rank-one step d' + z zᵀ in sorted, deflated coordinates (see module docstring)."""

    perm: jnp.ndarray        # (r,) sort order of the poles d' = -d
    group: jnp.ndarray       # (r,) group id of (near-)equal poles
    householder: jnp.ndarray  # (r,) Householder vectors, one per group (zero for singletons)
    householder_sq: jnp.ndarray  # (r,) their squared norms, per index
    poles: jnp.ndarray       # (r,) sorted poles d'
    origin: jnp.ndarray      # (r,) index of the pole each root is measured from
    tau: jnp.ndarray         # (r,) root λ_j = poles[origin_j] + tau_j
    zhat: jnp.ndarray        # (r,) Löwner-recomputed z (zero where deflated)
    active: jnp.ndarray      # (r,) bool, not deflated
    inv_norm: jnp.ndarray    # (r,) 1 / ||(d' - λ_j)⁻¹ ẑ|| for active roots


class SecularDowndate(NamedTuple):
    """Eigen-decomposition of diag(s) - Z Zᵀ as k stacked rank-one factors (leading axis k).

    converged: whether every root of every rank-one step met the stopping test (|f| ≤ 16·eps·scale
    of the secular function, a bracket of 4 ulps, or a final rational step ≤ 1e-12 relative) within
    the iteration cap; iterations: the most sweeps any step used. A root that hit the cap is the
    midpoint or last iterate of its bracket, still inside its interval but not to full precision.
    """

    roots: jnp.ndarray
    factors: RankOneFactor
    converged: jnp.ndarray
    iterations: jnp.ndarray


def downdate_dense(s, Z) -> DenseDowndate:
    """Eigenpairs of diag(s) - Z Zᵀ by recomputing the eigendecomposition (brute-force reference)."""
    mu, q = jnp.linalg.eigh(jnp.diag(s) - Z @ Z.T)
    return DenseDowndate(mu, q)


def _row_reduce(arrays, op=jnp.add, init=0.0):
    """Row reductions of same-shape arrays in one fused pass.

    XLA:CPU emits a multi-operand reduce as one vectorized loop that evaluates the shared
    elementwise producers (here the Cauchy reciprocals) once; a single-operand reduce of the same
    expression measured 3-5x slower here, so a lone array is paired with a zero dummy.
    """
    arrays = tuple(arrays)
    if len(arrays) == 1:
        arrays = arrays + (jnp.zeros_like(arrays[0]),)
        out = jax.lax.reduce(arrays, (jnp.asarray(init, arrays[0].dtype), jnp.zeros((), arrays[0].dtype)),
                             lambda a, b: (op(a[0], b[0]), a[1] + b[1]), (1,))
        return out[:1]
    inits = tuple(jnp.asarray(init, a.dtype) for a in arrays)
    return jax.lax.reduce(arrays, inits, lambda a, b: tuple(op(x, y) for x, y in zip(a, b)), (1,))


def _inverse_gaps(factor: RankOneFactor, rows_are_roots: bool):
    """1 / (d'_l - λ_j) on active pairs (0 elsewhere), as [j, l] or, transposed, [l, j].

    d'_l - λ_j is formed as (d'_l - d'_origin(j)) - tau_j, exact to rounding near the origin pole.
    """
    lam_origin = factor.poles[factor.origin]
    if rows_are_roots:
        gap = (factor.poles[None, :] - lam_origin[:, None]) - factor.tau[:, None]
    else:
        gap = (factor.poles[:, None] - lam_origin[None, :]) - factor.tau[None, :]
    mask = factor.active[:, None] & factor.active[None, :]
    return jnp.where(mask, 1.0 / jnp.where(mask, gap, 1.0), 0.0)


def _cauchy_matvec(inv, x):
    """inv @ x for the Cauchy reciprocals ``inv`` (fused row reductions for few columns, GEMM for many)."""
    if x.shape[1] > _FUSED_COLUMNS:
        return inv @ x
    return jnp.stack(_row_reduce(inv * x[None, :, col] for col in range(x.shape[1])), axis=1)


def _factor_transpose_apply(factor: RankOneFactor, x):
    """Qᵀ x for one rank-one factor; x (r, q): (Qᵀx)_j = ||·||⁻¹ Σ_l ẑ_l x_l / (d'_l - λ_j)."""
    y = _householder(factor, x[factor.perm])
    sums = _cauchy_matvec(_inverse_gaps(factor, rows_are_roots=True), factor.zhat[:, None] * y)
    return jnp.where(factor.active[:, None], factor.inv_norm[:, None] * sums, y)


def _factor_apply(factor: RankOneFactor, y):
    """Q y for one rank-one factor; y (r, q): (Qy)_l = ẑ_l Σ_j ||·||_j⁻¹ y_j / (d'_l - λ_j)."""
    scaled = jnp.where(factor.active[:, None], factor.inv_norm[:, None] * y, 0.0)
    sums = _cauchy_matvec(_inverse_gaps(factor, rows_are_roots=False), scaled)
    u = jnp.where(factor.active[:, None], factor.zhat[:, None] * sums, y)
    return jnp.zeros_like(u).at[factor.perm].set(_householder(factor, u))


def _householder(factor: RankOneFactor, x):
    """Apply the block-diagonal reflection H = I - 2 v vᵀ / vᵀv (one block per pole group); x (r, q)."""
    v = factor.householder
    proj = jax.ops.segment_sum(v[:, None] * x, factor.group, num_segments=v.shape[0])[factor.group]
    safe = jnp.where(factor.householder_sq > 0, factor.householder_sq, 1.0)
    return x - (2.0 * v / safe)[:, None] * proj


def _secular_roots(poles, z2, active, tol, max_iterations):
    """Roots of 1 + Σ_l z2_l / (poles_l - λ) = 0 for every active index (poles ascending).

    Root j lies in (poles_j, poles_next(j)), next(j) the next active index, or in
    (poles_j, poles_j + Σ z2) for the last. Returns (origin, tau, converged, iterations) with
    λ_j = poles[origin] + tau; deflated indices get origin j, tau 0 (their root is their own pole).
    At most ``max_iterations`` full sweeps, then up to as many over the unconverged roots.
    """
    r = poles.shape[0]
    index = jnp.arange(r)
    candidate = jnp.where(active, index, r)
    after = jax.lax.cummin(candidate, reverse=True)
    nxt = jnp.concatenate([after[1:], jnp.array([r])])
    has_next = nxt < r
    nxt_safe = jnp.minimum(nxt, r - 1)
    z2sum = jnp.sum(z2)
    width = jnp.where(has_next, poles[nxt_safe] - poles, z2sum)
    before = jax.lax.cummax(jnp.where(active, index, -1))
    prv = jnp.concatenate([jnp.array([-1]), before[:-1]])
    # Two-pole model of root j: the poles bounding its interval, or for the last root (no pole
    # above) the two nearest poles below, as dlaed4 does; psi sums the poles up to the lower one.
    pole_a = jnp.where(has_next, index, jnp.maximum(prv, 0))
    pole_b = jnp.where(has_next, nxt_safe, index)
    two_poles = has_next | (prv >= 0)
    split = jnp.where(has_next, index, index - 1)
    eps = jnp.finfo(poles.dtype).eps

    def pieces(origin, tau, split):
        # One pass over the (rows × r) grid: a variadic reduction shares the reciprocal between the sums.
        delta = (poles[None, :] - poles[origin][:, None]) - tau[:, None]
        inv = jnp.where(active[None, :], 1.0 / jnp.where(active[None, :], delta, 1.0), 0.0)
        t = z2[None, :] * inv
        zero = jnp.zeros_like(t)
        left = index[None, :] <= split[:, None]
        psi, total, dpsi, dtotal = _row_reduce((jnp.where(left, t, zero), t, jnp.where(left, t * inv, zero), t * inv))
        return psi, total - psi, dpsi, dtotal - dpsi

    # Origin: the pole nearer the root, decided by the sign of f at the interval's midpoint.
    half = 0.5 * width
    psi, phi, _, _ = pieces(index, half, split)
    f_mid = 1.0 + psi + phi
    use_upper = has_next & (f_mid < 0)
    origin = jnp.where(use_upper, nxt_safe, index)
    lower = jnp.where(use_upper, -half, 0.0)
    upper = jnp.where(use_upper, 0.0, jnp.where(has_next, half, width))
    # Initial guess (as in dlaed4): keep the two bounding poles exact and freeze the others at the
    # midpoint, c + a/(p_lo - λ) + b/(p_hi - λ) = 0, a quadratic in tau; else the bracket's middle.
    a = z2
    b = jnp.where(has_next, z2[nxt_safe], 0.0)
    c = f_mid - a / (-half) - jnp.where(has_next, b / jnp.where(has_next, half, 1.0), 0.0)
    # In tau about the lower pole: c τ² - (c w + a + b) τ + a w = 0, root in (0, w/2].
    bq = c * width + a + b
    disc = jnp.sqrt(jnp.abs(bq * bq - 4.0 * c * a * width))
    tau_lo = jnp.where(has_next, 2.0 * a * width / (bq + disc), a / jnp.where(c > 0, c, 1.0))
    # About the upper pole: c τ² + (c w - a - b) τ - b w = 0, root in [-w/2, 0).
    bu = c * width - a - b
    disc_u = jnp.sqrt(jnp.abs(bu * bu + 4.0 * c * b * width))
    tau_hi = jnp.where(bu >= 0, (-bu - disc_u) / (2.0 * jnp.where(c == 0, 1.0, c)), -2.0 * b * width / (disc_u - bu))
    guess = jnp.where(use_upper, tau_hi, tau_lo)
    good = jnp.isfinite(guess) & (guess > lower) & (guess < upper)
    tau = jnp.where(good, guess, 0.5 * (lower + upper))
    # Distances from the origin to the two model poles.
    dist_a = poles[pole_a] - poles[origin]
    dist_b = poles[pole_b] - poles[origin]

    def step(rows, tau, lower, upper, done):
        """One safeguarded middle-way iteration for the roots ``rows`` (state arrays are per row)."""
        psi, phi, dpsi, dphi = pieces(origin[rows], tau, split[rows])
        f = 1.0 + psi + phi
        # Keep the bracket: f increases between poles.
        upper = jnp.where(f > 0, tau, upper)
        lower = jnp.where(f < 0, tau, lower)
        d_a = dist_a[rows] - tau
        d_b = dist_b[rows] - tau
        nxt_row, two_row = has_next[rows], two_poles[rows]
        # Middle way (Li 1994; LAPACK dlaed4): fit c + s/(d_a - η) + S/(d_b - η) to f and f'.
        c = f - jnp.where(two_row, d_a * dpsi, 0.0) - d_b * dphi
        a = (d_a + d_b) * f - d_a * d_b * (dpsi + dphi)
        b = d_a * d_b * f
        disc = jnp.sqrt(jnp.abs(a * a - 4.0 * b * c))
        safe_c = jnp.where(c == 0, 1.0, c)
        quad = jnp.where(a <= 0, (a - disc) / (2.0 * safe_c), 2.0 * b / (a + disc))
        # Last root: both model poles lie below it, the other root of the quadratic (dlaed4, I = N).
        abs_c = jnp.where(c == 0, 1.0, jnp.abs(c))
        disc_last = jnp.sqrt(jnp.abs(a * a - 4.0 * b * jnp.abs(c)))
        quad_last = jnp.where(a >= 0, (a + disc_last) / (2.0 * abs_c), 2.0 * b / (a - disc_last))
        eta = jnp.where(c == 0, b / a, jnp.where(nxt_row, quad, quad_last))
        eta = jnp.where(two_row, eta, d_b * f / safe_c)  # a single pole: its rational model is exact
        newton = -f / (dpsi + dphi)
        eta = jnp.where(f * eta >= 0, newton, eta)  # the step must go against f
        proposal = tau + eta
        inside = jnp.isfinite(proposal) & (proposal > lower) & (proposal < upper)
        new_tau = jnp.where(inside, proposal, 0.5 * (lower + upper))
        scale = 1.0 + jnp.abs(psi) + jnp.abs(phi) + jnp.abs(tau) * (dpsi + dphi)
        converged = (jnp.abs(f) <= 16.0 * eps * scale) | (upper - lower <= 4.0 * eps * jnp.abs(tau))
        converged = converged | ~active[rows]
        # A rational step this small is past the quadratic phase: its error is O(step²), so accept it.
        settled = inside & (jnp.abs(eta) <= _ACCEPT_STEP * jnp.abs(tau))
        new_tau = jnp.where(converged | done, tau, new_tau)
        return new_tau, lower, upper, done | converged | settled

    # Full sweeps while many roots are unconverged, then sweeps over a compacted set of at most
    # r/8 of them, so that a few slow roots don't cost full O(r²) passes.
    budget = max(r // 8, 1)

    def full_cond(state):
        it, _, _, _, done = state
        return (it < max_iterations) & (jnp.sum(~done) > budget)

    def full_body(state):
        it, tau, lower, upper, done = state
        return (it + 1, *step(index, tau, lower, upper, done))

    def tail_cond(state):
        it, _, _, _, done = state
        return (it < 2 * max_iterations) & ~jnp.all(done)

    def tail_body(state):
        it, tau, lower, upper, done = state
        rows = jnp.nonzero(~done, size=budget, fill_value=jnp.argmax(done))[0]
        new = step(rows, tau[rows], lower[rows], upper[rows], done[rows])
        return (it + 1, *(full.at[rows].set(part) for full, part in zip((tau, lower, upper, done), new)))

    state = (0, tau, lower, upper, ~active)
    state = jax.lax.while_loop(full_cond, full_body, state)
    iterations, tau, _, _, done = jax.lax.while_loop(tail_cond, tail_body, state)
    origin = jnp.where(active, origin, index)
    tau = jnp.where(active, tau, 0.0)
    return origin, tau, jnp.all(done), iterations


def _loewner(poles, origin, tau, z, active):
    """ẑ_i² = Π_j (λ_j - d'_i) / Π_{j≠i} (d'_j - d'_i) over active indices (Gu & Eisenstat 1995, eq. 3.3).

    Paired as Π_{j≠i} [(λ_j - d'_i)/(d'_j - d'_i)] · (λ_i - d'_i), so that the factors stay O(1).
    """
    r = poles.shape[0]
    lam_minus_pole = (poles[origin][None, :] - poles[:, None]) + tau[None, :]  # [i, j] = λ_j - d'_i
    pole_gap = poles[None, :] - poles[:, None]  # [i, j] = d'_j - d'_i
    eye = jnp.eye(r, dtype=bool)
    mask = active[:, None] & active[None, :]
    ratio = jnp.where(eye, lam_minus_pole, lam_minus_pole / jnp.where(eye | ~mask, 1.0, pole_gap))
    (zhat2,) = _row_reduce((jnp.where(mask, ratio, 1.0),), op=jnp.multiply, init=1.0)
    return jnp.where(active, jnp.sign(z) * jnp.sqrt(jnp.maximum(zhat2, 0.0)), 0.0)


def _rank_one(d, z, max_iterations):
    """Factor for diag(d) - z zᵀ; returns (factor, new eigenvalues, converged, iterations)."""
    r = d.shape[0]
    eps = jnp.finfo(d.dtype).eps
    perm = jnp.argsort(-d)
    poles = -d[perm]
    zs = z[perm]
    znorm2 = zs @ zs
    tol = 8.0 * eps * jnp.maximum(jnp.max(jnp.abs(poles)), znorm2)

    # Groups of (near-)equal poles; the last member of a group keeps the group's whole z.
    starts = jnp.concatenate([jnp.array([True]), jnp.diff(poles) > tol])
    group = jnp.cumsum(starts) - 1
    is_rep = jnp.concatenate([starts[1:], jnp.array([True])])
    size = jax.ops.segment_sum(jnp.ones_like(zs), group, num_segments=r)[group]
    gnorm = jnp.sqrt(jax.ops.segment_sum(zs * zs, group, num_segments=r))[group]
    z_rep = jax.ops.segment_sum(jnp.where(is_rep, zs, 0.0), group, num_segments=r)[group]
    sign_rep = jnp.where(z_rep >= 0, 1.0, -1.0)
    multi = size > 1
    v = jnp.where(multi, zs + jnp.where(is_rep, sign_rep * gnorm, 0.0), 0.0)
    vsq = jax.ops.segment_sum(v * v, group, num_segments=r)[group]
    zt = jnp.where(multi, jnp.where(is_rep, -sign_rep * gnorm, 0.0), zs)
    active = jnp.abs(zt) * jnp.sqrt(znorm2) > tol
    z2 = jnp.where(active, zt * zt, 0.0)

    origin, tau, converged, iterations = _secular_roots(poles, z2, active, tol, max_iterations)
    zhat = _loewner(poles, origin, tau, zt, active)
    factor = RankOneFactor(perm, group, v, vsq, poles, origin, tau, zhat, active, jnp.zeros_like(poles))
    (norms2,) = _row_reduce(((_inverse_gaps(factor, rows_are_roots=True) * zhat[None, :]) ** 2,))
    inv_norm = jnp.where(active, 1.0 / jnp.sqrt(jnp.where(active, norms2, 1.0)), 0.0)
    factor = factor._replace(inv_norm=inv_norm)
    roots = -(poles[origin] + tau)
    return factor, roots, converged, iterations


def downdate(s, Z, max_iterations=None) -> SecularDowndate:
    """Eigen-decomposition of diag(s) - Z Zᵀ (s: (r,), Z: (r, k)) as k secular rank-one steps.

    Step j downdates by the j-th column of Z expressed in the current eigenbasis (Qᵀ z_j), so
    Q = Q_1 Q_2 ⋯ Q_k. Cost O(k² r²) per call (roots, Löwner, and rotating the remaining columns).
    ``max_iterations`` (default 60, a static int) caps the root sweeps; the result's ``converged``
    says whether every root met the stopping test within it (the caller decides what to do).
    """
    cap = _MAX_ITERATIONS if max_iterations is None else int(max_iterations)
    Z = Z.reshape(Z.shape[0], -1)
    d, rest, factors = s, Z, []
    converged, iterations = jnp.asarray(True), jnp.asarray(0)
    for j in range(Z.shape[1]):
        factor, d, ok, its = _rank_one(d, rest[:, j], cap)
        factors.append(factor)
        converged, iterations = converged & ok, jnp.maximum(iterations, its)
        if j + 1 < Z.shape[1]:
            rest = _factor_transpose_apply(factor, rest)
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *factors)
    return SecularDowndate(d, stacked, converged, iterations)


def transpose_apply(dd, x):
    """Qᵀ x for the downdated eigenbasis Q; x (r, q)."""
    if isinstance(dd, DenseDowndate):
        return dd.vectors.T @ x
    y, _ = jax.lax.scan(lambda acc, f: (_factor_transpose_apply(f, acc), None), x, dd.factors)
    return y


def basis_apply(dd, y):
    """Q y for the downdated eigenbasis Q; y (r, q)."""
    if isinstance(dd, DenseDowndate):
        return dd.vectors @ y
    out, _ = jax.lax.scan(lambda acc, f: (_factor_apply(f, acc), None), y, dd.factors, reverse=True)
    return out


def apply(dd, fvals, x):
    """Q diag(fvals) Qᵀ x for the downdated eigenbasis Q; x (r,) or (r, q)."""
    x2 = x[:, None] if x.ndim == 1 else x
    out = basis_apply(dd, fvals[:, None] * transpose_apply(dd, x2))
    return out[:, 0] if x.ndim == 1 else out

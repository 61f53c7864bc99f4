"""Influence functions with the damped Gauss-Newton Hessian, and the proximal Bregman response (PBRF).

Convention (the project's): sum loss at the trained weights θˢ = ``params``,

    L(θ) = Σ_i ℓ_i(θ) + (λ/2)||θ - θ0||²,     ℓ_i(θ) = ½||f(θ, x_i) - y_i||²,

and the damped Gauss-Newton Hessian (GNH) of PBRF paper (Bae et al. 2022) eq. 6,

    H = JᵀJ + μ I,     μ = λ + damping,      J = ∂f(θˢ, X)/∂θ  (N = n·k rows).

Removing sample i (downweighting it by ε = 1 in the sum loss; ε = 1/N in the paper's mean loss)
moves the weights, to first order (PBRF paper eq. 4/19, MPE paper eq. 9; a Newton step on L - ℓ_i),

    Δθ_i := θ_{-i} - θˢ ≈ H⁻¹ ∇ℓ_i(θˢ),      ∇ℓ_i = J_iᵀ (f(θˢ, x_i) - y_i).

Sign: θ_{-i} - θˢ = +H⁻¹∇ℓ_i (L - ℓ_i has gradient -∇ℓ_i at a stationary θˢ), so in the package's
"full minus removed" convention (``LOOResult``, ``BruteForceResult``) θˢ - θ_{-i} ≈ -H⁻¹∇ℓ_i. The
tests check this against exact ridge retraining, θ_{-i} - θ = H⁻¹∇ℓ_i / (1 - h_ii) (Cook 1977; MPE
paper eq. 23). Reported per removed sample:

- ``weight_change_sq``        ||Δθ_i||²,
- ``prediction_change_sq``    ||J_val Δθ_i||² (first order; summed over validation inputs and outputs),
- ``self_prediction_change``  f(x_i) - f_{-i}(x_i) ≈ -J_i Δθ_i (full minus removed, (s, k)),
- ``params_change``           θˢ - θ_{-i} ≈ -Δθ_i (full minus removed, raveled, only on request),
- ``self_influence``          ∇ℓ_iᵀ H⁻¹ ∇ℓ_i  (≥ 0),
- ``test_loss_change``      L_val(θ_{-i}) - L_val(θˢ) ≈ ∇L_valᵀ Δθ_i = s_testᵀ ∇ℓ_i with
  s_test = H⁻¹ ∇L_val (Koh & Liang 2017; PBRF paper eq. 20, 50) and L_val = Σ_j ½||f(x_j) - y_j||²
  over the validation set. Positive: removing i *increases* the validation loss (i helps);
  this is -1 × Koh & Liang's I_up,loss.

Solvers: ``exact`` in kernel space by Woodbury, H⁻¹Jᵀ = Jᵀ(K + μI)⁻¹ with K = JJᵀ the exact
empirical NTK at θˢ (jax.jacrev; small N); ``cg`` and ``lissa`` only use GNH-vector products
Jᵀ(Jv) (jax.linearize + jax.linear_transpose, J is never formed).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

__all__ = ["InfluenceResult", "influence", "pbrf", "flat_jacobian"]


@dataclasses.dataclass(frozen=True)
class InfluenceResult:
    """Per removed sample (row j is sample ``indices[j]``); see the module docstring for the formulas.

    self_prediction_change (s, k): f(x_i) - f_{-i}(x_i); params_change (s, d) or None: θˢ - θ_{-i}
    raveled (``jax.flatten_util.ravel_pytree`` order), only when asked for; both "full minus removed"
    like ``LOOResult``, whereas ``test_loss_change`` is L_val(θ_{-i}) - L_val(θˢ). ``settings``:
    method, μ, solver parameters (e.g. the LiSSA scale and its contraction bound (1 - μ/σ)^depth).
    """

    indices: np.ndarray
    weight_change_sq: np.ndarray
    prediction_change_sq: np.ndarray | None
    self_influence: np.ndarray
    test_loss_change: np.ndarray | None
    self_prediction_change: np.ndarray
    params_change: np.ndarray | None
    method: str
    settings: dict


# ----------------------------------------------------------------------------- helpers


def flat_jacobian(apply_fn: Callable, params: Any, X, batch_size: int | None = None) -> jax.Array:
    """The exact Jacobian ∂f(θ, x_i)/∂θ as an (n, k, d) array, θ raveled by ``ravel_pytree``.

    Computed with ``jax.jacrev`` on batches of ``batch_size`` inputs (all at once by default).
    """
    flat, unravel = ravel_pytree(params)

    @jax.jit
    def jac(xb):
        def f(w):
            return apply_fn(unravel(w), xb).reshape(-1)

        return jax.jacrev(f)(flat).reshape(xb.shape[0], -1, flat.size)

    n = X.shape[0]
    step = n if batch_size is None else int(batch_size)
    return jnp.concatenate([jac(X[s:s + step]) for s in range(0, n, step)], axis=0)


def _as_outputs(apply_fn, params, X, Y, name_x, name_y):
    """Validate (X, Y) against the network; return X, Y as (n, k) and the outputs f(θ, X) as (n, k)."""
    X = jnp.asarray(X)
    if X.ndim < 2 or X.shape[0] == 0:
        raise ValueError(f"{name_x}: expected an array of n >= 1 inputs with a leading sample axis, got shape "
                         f"{X.shape}")
    n = X.shape[0]
    out = apply_fn(params, X)
    Y = jnp.asarray(Y)
    if Y.shape[:1] != (n,) or Y.size != out.size:
        raise ValueError(f"{name_y}: expected targets of the network's output shape {out.shape} (or (n,) for one "
                         f"output) for {n} inputs, got shape {Y.shape}")
    return X, Y.reshape(n, -1).astype(out.dtype), out.reshape(n, -1)


def _validate_common(apply_fn, params, X, Y, weight_decay, damping, X_val, Y_val, subset):
    if not callable(apply_fn):
        raise TypeError(f"apply_fn: expected a callable apply_fn(params, x), got {type(apply_fn).__name__}")
    X, Y, out = _as_outputs(apply_fn, params, X, Y, "X", "Y")
    n = X.shape[0]
    for name, value in (("weight_decay", weight_decay), ("damping", damping)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: expected a finite value >= 0, got {value}")
    if (X_val is None) != (Y_val is None):
        raise ValueError("X_val, Y_val: pass both (validation inputs and targets) or neither; got "
                         f"X_val={'None' if X_val is None else 'array'}, Y_val={'None' if Y_val is None else 'array'}")
    val = None
    if X_val is not None:
        X_val = jnp.asarray(X_val, X.dtype)
        if X_val.shape[1:] != X.shape[1:]:
            raise ValueError(f"X_val: expected inputs shaped like X's, (m, {', '.join(map(str, X.shape[1:]))}), "
                             f"got {X_val.shape}")
        val = _as_outputs(apply_fn, params, X_val, Y_val, "X_val", "Y_val")
    subset = np.arange(n) if subset is None else np.asarray(subset)
    if subset.ndim != 1 or subset.size == 0 or not np.issubdtype(subset.dtype, np.integer) \
            or subset.min() < 0 or subset.max() >= n or np.unique(subset).size != subset.size:
        raise ValueError(f"subset: expected distinct integer sample indices in [0, {n}), got {subset!r}")
    return X, Y, out, val, subset


def _per_sample_grads(f_flat, flat, X, E, subset):
    """∇ℓ_i = J_iᵀ e_i for i in ``subset`` as (s, d), one VJP per sample (no Jacobian is formed)."""

    def grad_i(x, e):
        _, vjp = jax.vjp(lambda w: f_flat(w, x[None]).reshape(-1), flat)
        return vjp(e)[0]

    return jax.jit(jax.vmap(grad_i))(X[subset], E[subset])


# ----------------------------------------------------------------------------- exact (kernel space)


@jax.jit
def _exact_kernel(J, E, J_val, G_val, sel, mu):
    """Woodbury solve in kernel space (PBRF paper eq. 6): Δθ_i = Jᵀ (K + μI)⁻¹ P_i e_i.

    J (N, d) rows ordered (sample, output); E (n, k) residuals f - y; ``sel`` (s,) removed samples;
    P_i e_i places e_i in block i. With C = (K + μI)⁻¹ [P_i e_i]_i (N, s):
    ||Δθ_i||² = cᵢᵀ K cᵢ, J_val Δθ_i = K_v cᵢ, ∇ℓ_iᵀH⁻¹∇ℓ_i = e_iᵀ (K cᵢ)[block i].
    """
    n, k = E.shape
    K = J @ J.T
    s = sel.shape[0]
    R = jnp.zeros((n, k, s), E.dtype).at[sel, :, jnp.arange(s)].set(E[sel]).reshape(n * k, s)
    factor = jax.scipy.linalg.cho_factor(K + mu * jnp.eye(n * k, dtype=K.dtype), lower=True)
    C = jax.scipy.linalg.cho_solve(factor, R)
    KC = K @ C
    weight_sq = jnp.sum(C * KC, axis=0)
    self_change = KC.reshape(n, k, s)[sel, :, jnp.arange(s)]                      # J_i Δθ_i, (s, k)
    self_inf = jnp.einsum("sk,sk->s", E[sel], self_change)
    dtheta = (J.T @ C).T
    ok = jnp.isfinite(factor[0]).all()
    if J_val is None:
        return dtheta, weight_sq, None, self_inf, None, self_change, ok
    P = (J_val @ J.T) @ C
    return dtheta, weight_sq, jnp.sum(P ** 2, axis=0), self_inf, G_val @ P, self_change, ok


# ----------------------------------------------------------------------------- iterative solvers


def _gnh_operator(f_flat, flat, X, mu):
    """v -> (JᵀJ + μI) v with J at θˢ on all of X, via one linearization (JVP) and its transpose (VJP)."""
    _, jvp = jax.linearize(lambda w: f_flat(w, X), flat)
    vjp = jax.linear_transpose(jvp, flat)
    return lambda v: vjp(jvp(v))[0] + mu * v


def _cg_solve(f_flat, flat, X, mu, B, tol, maxiter):
    """(JᵀJ + μI)⁻¹ b for each row of B (s, d) by conjugate gradients (PBRF paper App. G eq. 47)."""
    matvec = _gnh_operator(f_flat, flat, X, mu)

    def one(b):
        return jax.scipy.sparse.linalg.cg(matvec, b, tol=tol, atol=0.0, maxiter=maxiter)[0]

    return jax.vmap(one)(B)


def _lissa_solve(f_flat, flat, X, mu, B, key, scale, depth, repeats, batch_size):
    """LiSSA (Agarwal et al. 2017; Koh & Liang 2017; PBRF paper App. G eq. 48-49), rows of B (s, d).

    Recursion, with σ = ``scale`` and G_t the GNH estimated on a random batch of b samples, rescaled
    by n/b so that E[G_t] = JᵀJ (the full GNH when ``batch_size`` is None):

        h_0 = v,   h_t = v + (1 - μ/σ) h_{t-1} - G_t h_{t-1} / σ,   estimate h_T / σ,

    i.e. σ⁻¹ Σ_{t=0..T} (I - (G + μI)/σ)^t v -> (G + μI)⁻¹ v (eq. 48 with the t = 0 term written
    out), averaged over ``repeats`` independent runs (eq. 49). Departure from Koh & Liang's code,
    where the update is v + (1 - damping) h - Gh/σ: here damping is in Hessian units (μ/σ), so the
    fixed point is the μ-damped iHVP itself; their code's effective damping is damping·σ, which is the
    CG-vs-LiSSA mismatch described in PBRF paper §4.5. Converges iff σ > (λ_max(G) + μ)/2; the
    error after T steps is at most (1 - μ/σ)^(T+1) relative.
    """
    n = X.shape[0]

    def gnh(h, k):
        if batch_size is None:
            xb, scale_b = X, 1.0
        else:
            xb, scale_b = X[jax.random.choice(k, n, (batch_size,), replace=False)], n / batch_size
        _, jvp = jax.linearize(lambda w: f_flat(w, xb), flat)
        return scale_b * jax.linear_transpose(jvp, flat)(jvp(h))[0]

    def run(v, k):
        def body(t, h):
            return v + (1.0 - mu / scale) * h - gnh(h, jax.random.fold_in(k, t)) / scale

        return jax.lax.fori_loop(0, depth, body, v) / scale

    keys = jax.random.split(key, repeats)
    return jax.vmap(lambda v: jnp.mean(jax.vmap(lambda k: run(v, k))(keys), axis=0))(B)


def _power_lambda_max(f_flat, flat, X, key, iters=50):
    """Largest eigenvalue of JᵀJ by power iteration (used for the default LiSSA scale)."""
    op = _gnh_operator(f_flat, flat, X, 0.0)
    v = jax.random.normal(key, flat.shape, flat.dtype)

    def body(_, v):
        w = op(v)
        return w / jnp.linalg.norm(w)

    v = jax.lax.fori_loop(0, iters, body, v / jnp.linalg.norm(v))
    return jnp.vdot(v, op(v))


# ----------------------------------------------------------------------------- public API


def influence(apply_fn: Callable, params: Any, X, Y, *, weight_decay: float = 0.0, damping: float = 0.0,
              X_val=None, Y_val=None, subset=None, method: str = "exact", cg_tol: float = 1e-10,
              cg_maxiter: int | None = None, lissa_depth: int = 1000, lissa_scale: float | None = None,
              lissa_repeats: int = 1, lissa_batch_size: int | None = None, seed: int = 0,
              chunk_size: int = 64, return_params_change: bool = False, progress: bool = False
              ) -> InfluenceResult:
    """GNH influence of removing each sample of ``subset`` at the trained weights ``params``.

    Δθ_i = θ_{-i} - θˢ ≈ (JᵀJ + μI)⁻¹ ∇ℓ_i (PBRF paper eq. 6, μ = ``weight_decay`` + ``damping``,
    sum loss ℓ_i = ½||f(x_i) - y_i||²); see the module docstring for the reported quantities, their
    signs, and ``test_loss_change`` (s_test trick, PBRF paper eq. 50).

    ``method``: ``"exact"`` (kernel space, J from ``jax.jacrev``, memory N·d; μ = 0 allowed only when
    K = JJᵀ is nonsingular, then Δθ is the minimum-norm (pseudo-inverse) solution), ``"cg"``
    (``cg_tol`` relative residual, ``cg_maxiter``) or ``"lissa"`` (``lissa_depth`` T, ``lissa_scale`` σ,
    default 1.1·(λ_max(JᵀJ) + μ) from 50 power iterations, ``lissa_repeats`` R, ``lissa_batch_size``
    b or None for the full GNH; PBRF paper App. G). Iterative solves run ``chunk_size`` samples at a time.
    ``X``: (n, ...) inputs; ``Y``: (n,) or (n, k) targets; ``X_val``/``Y_val``: validation set.

    >>> import jax.numpy as jnp
    >>> X, Y = jnp.array([[1.0], [2.0]]), jnp.array([1.0, 1.0])
    >>> w = jnp.array([[0.5]])            # the ridge solution for λ = 1: (1 + 4 + 1)⁻¹ · 3
    >>> r = influence(lambda w, x: x @ w, w, X, Y, weight_decay=1.0)
    >>> [round(float(v), 4) for v in r.self_influence]   # e_i² x_i² / (||x||² + λ), e = (-0.5, 0)
    [0.0417, 0.0]
    """
    if method not in ("exact", "cg", "lissa"):
        raise ValueError(f"method: expected 'exact', 'cg' or 'lissa', got {method!r}")
    X, Y, out, val, subset = _validate_common(apply_fn, params, X, Y, weight_decay, damping, X_val, Y_val, subset)
    mu = float(weight_decay) + float(damping)
    if method != "exact" and mu <= 0:
        raise ValueError(f"weight_decay + damping: {method} needs μ > 0 (the GNH JᵀJ is singular), got {mu}; "
                         "pass damping > 0 (e.g. 1e-3) or use method='exact'")
    if method == "lissa":
        for name, value in (("lissa_depth", lissa_depth), ("lissa_repeats", lissa_repeats)):
            if not (isinstance(value, (int, np.integer)) and value >= 1):
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if lissa_batch_size is not None and not (isinstance(lissa_batch_size, (int, np.integer))
                                                 and 1 <= lissa_batch_size <= X.shape[0]):
            raise ValueError(f"lissa_batch_size: expected None or an integer in [1, {X.shape[0]}], got "
                             f"{lissa_batch_size!r}")
        if lissa_scale is not None and not (np.isfinite(lissa_scale) and lissa_scale > 0):
            raise ValueError(f"lissa_scale: expected None (automatic) or a finite σ > 0, got {lissa_scale}")
    if not (isinstance(chunk_size, (int, np.integer)) and chunk_size >= 1):
        raise ValueError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
    E = out - Y
    flat, unravel = ravel_pytree(params)
    dtype = flat.dtype

    def f_flat(w, x):
        return apply_fn(unravel(w), x).reshape(-1)

    settings = {"method": method, "mu": mu, "weight_decay": float(weight_decay), "damping": float(damping)}
    if method == "exact":
        n, k = E.shape
        J = flat_jacobian(apply_fn, params, X).reshape(n * k, -1)
        J_val = G_val = None
        if val is not None:
            X_v, Y_v, out_v = val
            J_val = flat_jacobian(apply_fn, params, X_v).reshape(out_v.size, -1)
            G_val = (out_v - Y_v).reshape(-1)
        *fields, ok = _exact_kernel(J, E, J_val, G_val, jnp.asarray(subset), jnp.asarray(mu, dtype))
        if not bool(ok):
            raise ValueError(f"weight_decay + damping: the kernel K + μI with μ = {mu} is not positive definite "
                             "(K = JJᵀ is singular); pass damping > 0")
        return _result(subset, *fields, return_params_change, method, settings)

    grads_all = _per_sample_grads(f_flat, flat, X, E, jnp.asarray(subset))
    key = jax.random.PRNGKey(seed)
    if method == "cg":
        maxiter = 10 * flat.size if cg_maxiter is None else int(cg_maxiter)
        settings.update(cg_tol=float(cg_tol), cg_maxiter=maxiter)
        solve = jax.jit(lambda B: _cg_solve(f_flat, flat, X, mu, B, cg_tol, maxiter))
    else:
        if lissa_scale is None:
            lam_max = float(_power_lambda_max(f_flat, flat, X, jax.random.fold_in(key, 1)))
            lissa_scale = 1.1 * (lam_max + mu)
        settings.update(lissa_scale=float(lissa_scale), lissa_depth=int(lissa_depth),
                        lissa_repeats=int(lissa_repeats), lissa_batch_size=lissa_batch_size,
                        lissa_contraction=float((1.0 - mu / lissa_scale) ** (lissa_depth + 1)))
        solve = jax.jit(lambda B: _lissa_solve(f_flat, flat, X, mu, B, key, float(lissa_scale),
                                               int(lissa_depth), int(lissa_repeats), lissa_batch_size))
    chunks = []
    starts = range(0, subset.size, chunk_size)
    for s in tqdm(starts, desc=f"influence ({method})", unit="chunk", disable=not progress):
        chunks.append(solve(grads_all[s:s + chunk_size]))
    dtheta = jnp.concatenate(chunks, axis=0)
    w_sq = jnp.sum(dtheta ** 2, axis=1)
    self_inf = jnp.sum(dtheta * grads_all, axis=1)
    self_change = _self_jvp(f_flat, flat, X[subset], dtheta)
    p_sq = t_change = None
    if val is not None:
        X_v, Y_v, out_v = val
        _, jvp_v = jax.linearize(lambda w: f_flat(w, X_v), flat)
        p_sq = jnp.sum(jax.vmap(jvp_v)(dtheta) ** 2, axis=1)
        # s_test trick (PBRF paper eq. 50): one solve for H⁻¹∇L_val, then dot products with ∇ℓ_i.
        grad_val = jax.linear_transpose(jvp_v, flat)((out_v - Y_v).reshape(-1))[0]
        s_test = solve(grad_val[None])[0]
        t_change = grads_all @ s_test
    return _result(subset, dtheta, w_sq, p_sq, self_inf, t_change, self_change, return_params_change, method,
                   settings)


def _self_jvp(f_flat, flat, X_sel, dtheta):
    """J_i Δθ_i for each removed sample (one JVP each), (s, k)."""
    return jax.vmap(lambda x, d: jax.jvp(lambda w: f_flat(w, x[None]), (flat,), (d,))[1])(X_sel, dtheta)


def _result(subset, dtheta, w_sq, p_sq, self_inf, t_change, self_change, return_params_change, method, settings):
    """Package the fields; Δθ_i = θ_{-i} - θˢ and J_iΔθ_i are flipped to "full minus removed"."""
    def np_or_none(a):
        return None if a is None else np.asarray(a)

    return InfluenceResult(indices=np.asarray(subset), weight_change_sq=np.asarray(w_sq),
                           prediction_change_sq=np_or_none(p_sq), self_influence=np.asarray(self_inf),
                           test_loss_change=np_or_none(t_change), self_prediction_change=-np.asarray(self_change),
                           params_change=-np.asarray(dtheta) if return_params_change else None,
                           method=method, settings=settings)


# ----------------------------------------------------------------------------- PBRF


def _pbrf_kernel(f_flat, flat, X, E, X_val, G_val, sel, eps, mu, *, optimizer, steps, linearize):
    """Minimize the proximal Bregman objective for each removed sample; return Δθ_i = (θ_i - θˢ)/ε.

    Sum-loss form of PBRF paper eq. 8 (eq. 10 when ``linearize``), MSE loss, for removing sample i:

        P_i(θ) = Σ_j ½||f(θ, x_j) - f(θˢ, x_j)||² - ε ℓ_i(θ) + (μ/2)||θ - θˢ||²,

    (the Bregman divergence of ½||· - y||² is ½||· - ·||²; the weight decay's Bregman term around θˢ
    is (λ/2)||θ - θˢ||², so the proximity weight is μ = λ + damping). Linearized (eq. 10):
    f -> f(θˢ) + J(θ - θˢ) and ℓ_i -> ∇ℓ_i(θˢ)ᵀ θ, whose minimizer is exactly ε H⁻¹∇ℓ_i.
    Started at θˢ, ``steps`` updates of ``optimizer``, vmapped over the removals.
    """
    f_s = f_flat(flat, X)
    n = X.shape[0]
    E_flat = E.reshape(n, -1)
    _, jvp = jax.linearize(lambda w: f_flat(w, X), flat)

    def objective(w, i):
        d = w - flat
        if linearize:
            diff = jvp(d)
            _, vjp_i = jax.vjp(lambda u: f_flat(u, X[i][None]), flat)
            removed = jnp.vdot(vjp_i(E_flat[i])[0], d)
        else:
            diff = f_flat(w, X) - f_s
            removed = 0.5 * jnp.sum((f_flat(w, X[i][None]) - (f_s.reshape(n, -1)[i] - E_flat[i])) ** 2)
        return 0.5 * jnp.sum(diff ** 2) - eps * removed + 0.5 * mu * jnp.sum(d ** 2)

    def one(i):
        def step(carry, _):
            w, state = carry
            g = jax.grad(objective)(w, i)
            updates, state = optimizer.update(g, state, w)
            return (optax.apply_updates(w, updates), state), None

        (w, _), _ = jax.lax.scan(step, (flat, optimizer.init(flat)), None, length=steps)
        return (w - flat) / eps

    dtheta = jax.vmap(one)(sel)
    if linearize:
        self_change = jax.vmap(lambda i, d: jax.jvp(lambda w: f_flat(w, X[i][None]), (flat,), (d,))[1])(sel, dtheta)
    else:
        self_change = jax.vmap(lambda i, d: f_flat(flat + eps * d, X[i][None]) - f_s.reshape(n, -1)[i])(sel, dtheta)
        self_change = self_change / eps
    if X_val is None:
        return dtheta, self_change, None, None
    f_v = f_flat(flat, X_val)
    if linearize:
        _, jvp_v = jax.linearize(lambda w: f_flat(w, X_val), flat)
        change = jax.vmap(jvp_v)(dtheta)
        return dtheta, self_change, change, change @ G_val
    new = jax.vmap(lambda d: f_flat(flat + eps * d, X_val))(dtheta)
    change = (new - f_v) / eps
    y_v = f_v - G_val
    loss_change = (0.5 * jnp.sum((new - y_v) ** 2, axis=1) - 0.5 * jnp.sum(G_val ** 2)) / eps
    return dtheta, self_change, change, loss_change


def pbrf(apply_fn: Callable, params: Any, X, Y, *, lr: float, steps: int, weight_decay: float = 0.0,
         damping: float = 0.0, X_val=None, Y_val=None, subset=None, epsilon: float = 1.0,
         linearize: bool = False, optimizer: optax.GradientTransformation | None = None,
         chunk_size: int = 16, return_params_change: bool = False, progress: bool = False) -> InfluenceResult:
    """Proximal Bregman response function (PBRF paper eq. 8; eq. 10 with ``linearize``), per removal.

    From θˢ = ``params``, minimize
    P_i(θ) = Σ_j ½||f(θ, x_j) - f(θˢ, x_j)||² - ε ℓ_i(θ) + (μ/2)||θ - θˢ||²
    (sum loss, MSE, μ = ``weight_decay`` + ``damping``, ε = ``epsilon``: 1 removes the sample, small ε
    probes the linear response) with ``steps`` updates of ``optimizer`` (default ``optax.sgd(lr)``,
    i.e. full-batch GD; the paper uses the base learning rate / 10 and half the base epochs), and
    report the response rescaled back, Δθ_i = (θ_i - θˢ)/ε, in the fields of :func:`influence`:
    ||Δθ_i||², ||Δf_val||² with Δf_val = (f(θ_i, X_val) - f(θˢ, X_val))/ε (J_val Δθ_i when
    linearized), the validation loss change (L_val(θ_i) - L_val(θˢ))/ε (its first-order part
    ∇L_valᵀΔθ_i when linearized), ``self_influence`` = ∇ℓ_i(θˢ)ᵀΔθ_i, and in the "full minus
    removed" convention ``self_prediction_change`` = (f(θˢ, x_i) - f(θ_i, x_i))/ε and
    ``params_change`` = -Δθ_i.
    The linearized PBRF's minimizer is exactly the GNH influence Δθ_i = H⁻¹∇ℓ_i (PBRF App. B.4).
    """
    X, Y, out, val, subset = _validate_common(apply_fn, params, X, Y, weight_decay, damping, X_val, Y_val, subset)
    if not (isinstance(steps, (int, np.integer)) and steps >= 1):
        raise ValueError(f"steps: expected an integer >= 1, got {steps!r}")
    if optimizer is None:
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a finite learning rate > 0, got {lr}")
        optimizer = optax.sgd(lr)
    if not (np.isfinite(epsilon) and epsilon != 0):
        raise ValueError(f"epsilon: expected a finite, nonzero downweighting factor, got {epsilon}")
    mu = float(weight_decay) + float(damping)
    E = out - Y
    flat, unravel = ravel_pytree(params)

    def f_flat(w, x):
        return apply_fn(unravel(w), x).reshape(-1)

    X_v = G_val = None
    if val is not None:
        X_v, Y_v, out_v = val
        G_val = (out_v - Y_v).reshape(-1)
    kernel = jax.jit(lambda sel: _pbrf_kernel(f_flat, flat, X, E, X_v, G_val, sel, float(epsilon), mu,
                                              optimizer=optimizer, steps=int(steps), linearize=bool(linearize)))
    chunk_size = min(int(chunk_size), subset.size)
    parts = []
    for s in tqdm(range(0, subset.size, chunk_size), desc="PBRF", unit="chunk", disable=not progress):
        chunk = subset[s:s + chunk_size]
        padded = np.concatenate([chunk, np.full(chunk_size - chunk.size, chunk[0])])
        parts.append([None if a is None else a[:chunk.size] for a in kernel(jnp.asarray(padded))])
    dtheta = jnp.concatenate([p[0] for p in parts])
    self_change = jnp.concatenate([p[1] for p in parts])
    grads = _per_sample_grads(f_flat, flat, X, E, jnp.asarray(subset))
    p_sq = t_change = None
    if val is not None:
        p_sq = jnp.sum(jnp.concatenate([p[2] for p in parts]) ** 2, axis=1)
        t_change = jnp.concatenate([p[3] for p in parts])
    settings = {"method": "pbrf_linearized" if linearize else "pbrf", "mu": mu, "epsilon": float(epsilon),
                "steps": int(steps), "lr": lr}
    return _result(subset, dtheta, jnp.sum(dtheta ** 2, axis=1), p_sq, jnp.sum(dtheta * grads, axis=1), t_change,
                   self_change, return_params_change, settings["method"], settings)

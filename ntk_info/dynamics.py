"""Closed-form training dynamics of a linear(ized) model: the filters g and predictions at time t.

Convention (SI paper §5, App. F): the loss is a SUM over samples,
    L(w) = Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||²,
and "t steps with learning rate η" means t full-batch GD steps w <- w - η ∇L (or gradient flow
dw/dt = -η ∇L for time t). With J the Jacobian at w0, K = J Jᵀ, M = K + λI and r = Y - f0(X):

    a = g(M) r,      w_t - w0 = Jᵀ a,      f_t(x) - f0(x) = K(x, X) a            (SI paper eq. 10–11)

    gradient flow   g(u) = (1 - exp(-η t u)) / u,   g(0) = η t                   (SI paper eq. 50, 53)
    discrete GD     g(u) = (1 - (1 - η u)^t) / u,   g(0) = η t   (exact for t GD steps)
    t = ∞           g(u) = 1 / u

Discrete GD converges only while η (λmax + λ) < 2 (``max_stable_lr``).

Mean loss (``loss="mean"``): L = (1/n) Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||². Its GD step is the
sum-loss step with learning rate η/n and weight decay nλ, so every formula above holds with
(η, λ) -> (η/n, nλ) (``Dynamics.as_sum_loss``). A model trained without one sample has n - 1 samples,
hence (η/(n-1), (n-1)λ): ``ntk_info.leave_one_out`` handles that exactly.

Precision: ``predict`` and ``weights`` compute in float64 whatever JAX's x64 flag says.
"""
from __future__ import annotations

import dataclasses
import warnings

import jax.numpy as jnp
import numpy as np

# jax ≥ 0.6 has jax.enable_x64; 0.4.35 (the neural-tangents extra's JAX) has it under experimental
try:
    from jax import enable_x64 as _enable_x64
except ImportError:
    from jax.experimental import enable_x64 as _enable_x64

__all__ = ["filter_values", "max_stable_lr", "Dynamics", "predict", "weights"]


def filter_values(u, *, lr, steps, discrete=False):
    """The filter g(u) of the module docstring, elementwise, NaN-free in values and gradients.

    u: eigenvalues of M = K + λI (any shape; round-off negatives are fine for finite t).
    lr (η), steps (t, may be ``inf`` and may be traced): broadcast against u.
    Flow: g(u) = -expm1(-η t u)/u. Discrete: g(u) = -expm1(t·log1p(-η u))/u for η u < 1,
    1/u for η u = 1, (1 - sign·|1 - η u|^t)/u above (oscillating, stable while η u < 2).
    u = 0 gives η t; t = ∞ gives 1/u (so ∞ at u = 0).

    >>> float(filter_values(2.0, lr=0.1, steps=float("inf")))
    0.5
    """
    u = jnp.asarray(u)
    lr = jnp.asarray(lr, dtype=u.dtype)
    steps = jnp.asarray(steps, dtype=u.dtype)
    infinite = jnp.isinf(steps)
    t = jnp.where(infinite, 1.0, steps)  # double where: no inf·0 in the finite branches
    zero = u == 0
    safe_u = jnp.where(zero, 1.0, u)
    x = lr * safe_u
    if discrete:
        below = x < 1.0
        log_below = jnp.log1p(-jnp.where(below, x, 0.0))
        finite = jnp.where(below, -jnp.expm1(t * log_below), 0.0)
        # η u ≥ 1: (1 - η u)^t = sign · |1 - η u|^t with sign = (-1)^t (t an integer).
        gap = jnp.abs(1.0 - jnp.where(below, 2.0, x))
        sign = jnp.where(jnp.mod(t, 2.0) == 0.0, 1.0, -1.0)
        magnitude = jnp.exp(t * jnp.log(jnp.where(gap == 0.0, 1.0, gap)))
        power = jnp.where(gap == 0.0, jnp.where(t == 0.0, 1.0, 0.0), sign * magnitude)  # 0^0 = 1
        finite = jnp.where(below, finite, 1.0 - power) / safe_u
    else:
        finite = -jnp.expm1(-t * x) / safe_u
    finite = jnp.where(zero, lr * t, finite)
    limit = jnp.where(zero, jnp.inf, 1.0 / safe_u)
    return jnp.where(infinite, limit, finite)


def max_stable_lr(lambda_max, weight_decay=0.0, *, loss="sum", n=None):
    """Largest learning rate for which discrete GD converges: η < 2 / (λmax + λ).

    lambda_max: largest eigenvalue of the kernel K (or of ΦᵀΦ); weight_decay: λ. With
    ``loss="mean"`` (n samples, data term scaled by 1/n) the limit is 2 / (λmax/n + λ).

    >>> max_stable_lr(3.0, 1.0)
    0.5
    """
    _check_loss(loss, n)
    scale = 1.0 if loss == "sum" else float(n)
    return 2.0 / (float(lambda_max) / scale + float(weight_decay))


@dataclasses.dataclass(frozen=True)
class Dynamics:
    """Training settings: learning rate η, t steps (or time, ``inf`` = converged), weight decay λ.

    loss="sum": L = Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||² (the package convention).
    loss="mean": L = (1/n) Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||², n = number of samples. Its GD
    step w <- w - η[(1/n)∇Σ + λ(w - w0)] = w - (η/n)[∇Σ + nλ(w - w0)] is the sum-loss step with
    learning rate η/n and weight decay nλ; ``as_sum_loss(n)`` returns that mapping. It is exact for
    one model; a model trained without a sample has n - 1 samples, (η/(n-1), (n-1)λ), which is why
    ``leave_one_out(loss="mean")`` treats the full and the leave-one-out models separately.
    """

    lr: float
    steps: float
    weight_decay: float = 0.0
    discrete: bool = False
    loss: str = "sum"

    def __post_init__(self):
        if self.loss not in ("sum", "mean"):
            raise ValueError(f"loss: expected 'sum' or 'mean', got {self.loss!r}.")
        _check_settings(self.lr, self.steps, self.weight_decay, self.discrete)

    def as_sum_loss(self, n: int) -> "Dynamics":
        """The equivalent sum-loss settings for n samples (identity for loss="sum")."""
        if self.loss == "sum":
            return self
        return Dynamics(self.lr / n, self.steps, self.weight_decay * n, self.discrete, "sum")

    def filter(self, u):
        """g(u) for these settings (sum loss only; call ``as_sum_loss(n)`` first for a mean loss)."""
        if self.loss != "sum":
            raise ValueError("Dynamics.filter: loss='mean' needs the sample count; use as_sum_loss(n).filter(u).")
        return filter_values(u, lr=self.lr, steps=self.steps, discrete=self.discrete)


def _check_settings(lr, steps, weight_decay, discrete):
    """ValueErrors for lr ≤ 0, steps < 0 (or non-integer discrete steps), weight_decay < 0."""
    for name, value in (("lr", lr), ("steps", steps), ("weight_decay", weight_decay)):
        arr = np.asarray(value, dtype=float)
        if arr.ndim > 1 or np.isnan(arr).any():
            raise ValueError(f"{name}: expected a number or a 1-D array of numbers, got {value!r}.")
    if not np.all(np.asarray(lr, dtype=float) > 0) or not np.all(np.isfinite(np.asarray(lr, dtype=float))):
        raise ValueError(f"lr: expected a finite learning rate > 0, got {lr!r}.")
    steps_arr = np.asarray(steps, dtype=float)
    if np.any(steps_arr < 0):
        raise ValueError(f"steps: expected steps ≥ 0 (or inf), got {steps!r}.")
    finite = steps_arr[np.isfinite(steps_arr)]
    if discrete and np.any(finite != np.round(finite)):
        raise ValueError(f"steps: discrete GD needs an integer number of steps, got {steps!r}; round it or "
                         "use discrete=False (gradient flow).")
    wd = np.asarray(weight_decay, dtype=float)
    if np.any(wd < 0) or not np.all(np.isfinite(wd)):
        raise ValueError(f"weight_decay: expected λ ≥ 0 (finite), got {weight_decay!r}.")


def _check_loss(loss, n=None):
    """ValueError unless loss is "sum" or "mean" ("mean" needs the sample count n ≥ 1)."""
    if loss not in ("sum", "mean"):
        raise ValueError(f"loss: expected 'sum' or 'mean', got {loss!r}.")
    if loss == "mean" and (n is None or int(n) < 1):
        raise ValueError(f"loss: 'mean' needs the number of samples n ≥ 1, got n = {n!r}.")


def _warn_unstable(lr, lambda_max, weight_decay, *, loss="sum", n=None, stacklevel=3):
    """RuntimeWarning when lr ≥ the GD stability limit (``max_stable_lr``) for some λ of the grid.

    Also for gradient flow: its closed form stays finite above the limit, but the real network is
    trained by GD, which diverges there, so the flow answer no longer describes it.
    """
    lrs = np.atleast_1d(np.asarray(lr, dtype=float))
    formula = "2/(λmax+λ)" if loss == "sum" else "2/(λmax/n+λ)"
    for lam in np.atleast_1d(np.asarray(weight_decay, dtype=float)):
        limit = max_stable_lr(lambda_max, lam, loss=loss, n=n)
        if np.any(lrs >= limit):
            count = "" if loss == "sum" else f", n={n}"
            warnings.warn(f"lr={lrs.max():g} is at or above the GD stability limit {formula} = {limit:g} "
                          f"(λmax={float(lambda_max):g}, weight_decay={lam:g}{count}): gradient descent with this "
                          f"lr oscillates and diverges, so neither the discrete-GD nor the gradient-flow closed "
                          f"form describes a network trained by GD; use lr < {limit:g}.",
                          RuntimeWarning, stacklevel=stacklevel)
            return


def _flatten_kernel(kernel, name):
    """(n, n) -> (n, n, 1); (n, n, k, k) -> sample-major (n·k, n·k) with block size k (float64)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim == 2:
        return kernel, 1
    if kernel.ndim == 4 and kernel.shape[2] == kernel.shape[3]:
        n, m, k, _ = kernel.shape
        return kernel.transpose(0, 2, 1, 3).reshape(n * k, m * k), k
    raise ValueError(f"{name}: expected shape (n, n) or (n, n, k, k), got {kernel.shape}.")


def _filter64(s, *, lr, steps, weight_decay, discrete, loss, n):
    """g(s + λ) in float64 (whatever the x64 flag), with the mean loss mapped to the sum loss."""
    dyn = Dynamics(lr, steps, weight_decay, discrete, loss).as_sum_loss(n)
    with _enable_x64(True):
        return np.asarray(filter_values(jnp.asarray(s + dyn.weight_decay, jnp.float64), lr=dyn.lr, steps=dyn.steps,
                                        discrete=discrete))


def predict(kernel, residuals, *, lr, steps, weight_decay=0.0, discrete=False, cross_kernel=None, loss="sum"):
    """f_t - f0 on the training inputs and (optionally) new inputs: K g(M) r and K(x, X) g(M) r.

    kernel (n, n) [outputs share it; residuals (n,) or (n, k)] or (n, n, k, k) [residuals (n, k)];
    cross_kernel (m, n) or (m, n, k, k) = K(X_new, X). Filter g of the module docstring (closed form
    via one eigh of K, float64); ``loss="mean"`` uses (η/n, nλ). Directions with eigenvalue
    ≤ N·eps·λmax are dropped (exact: they carry no weight change). Warns when lr is at or above the
    GD stability limit. Returns (train_change shaped like residuals, new_change or None).
    """
    _check_settings(lr, steps, weight_decay, discrete)
    K, k_block = _flatten_kernel(kernel, "kernel")
    r = np.asarray(residuals, dtype=np.float64)
    shape = r.shape
    R = r.reshape(K.shape[0], -1)
    n = K.shape[0] // k_block
    _check_loss(loss, n)
    s, V = np.linalg.eigh((K + K.T) / 2)
    keep = s > K.shape[0] * np.finfo(s.dtype).eps * max(s.max(), 0.0)
    s, V = s[keep], V[:, keep]
    _warn_unstable(lr, s.max() if s.size else 0.0, weight_decay, loss=loss, n=n)
    g = _filter64(s, lr=lr, steps=steps, weight_decay=weight_decay, discrete=discrete, loss=loss, n=n)
    coef = g[:, None] * (V.T @ R)
    train = (V @ (s[:, None] * coef)).reshape(shape)
    if cross_kernel is None:
        return train, None
    Kv, _ = _flatten_kernel(cross_kernel, "cross_kernel")
    new = Kv @ (V @ coef)
    return train, new.reshape((-1,) + shape[1:])


def weights(features, residuals, *, lr, steps, weight_decay=0.0, discrete=False, loss="sum"):
    """w_t - w0 = Φᵀ g(ΦΦᵀ + λI) r = g(ΦᵀΦ + λI) Φᵀ r in feature space (primal, one eigh of ΦᵀΦ).

    features (n, p) or (n, k, p) (sample-major rows); residuals (n,), (n, k) with (n, p) features
    (independent outputs sharing Φ: returns (p, k)), or (n, k) with (n, k, p) features: returns (p,).
    Float64; ``loss="mean"`` uses (η/n, nλ). Directions with eigenvalue ≤ max(N, p)·eps·λmax are
    dropped (t = ∞, λ = 0: min-norm least squares).
    """
    _check_settings(lr, steps, weight_decay, discrete)
    features = np.asarray(features, dtype=np.float64)
    _check_loss(loss, features.shape[0])
    phi = features.reshape(-1, features.shape[-1])
    r = np.asarray(residuals, dtype=np.float64)
    shared = features.ndim == 2 and r.ndim == 2  # independent outputs: one weight column per output
    R = r if shared else r.reshape(phi.shape[0], 1)
    s, U = np.linalg.eigh(phi.T @ phi)
    keep = s > max(phi.shape) * np.finfo(s.dtype).eps * max(s.max(), 0.0)  # Φᵀr has no component elsewhere
    s, U = s[keep], U[:, keep]
    _warn_unstable(lr, s.max(), weight_decay, loss=loss, n=features.shape[0])
    g = _filter64(s, lr=lr, steps=steps, weight_decay=weight_decay, discrete=discrete, loss=loss,
                  n=features.shape[0])
    w = U @ (g[:, None] * (U.T @ (phi.T @ R)))
    return w if shared else w[:, 0]

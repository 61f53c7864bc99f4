"""Brute-force leave-one-out: retrain the real network without each sample of a subset.

The ground truth the closed-form linearized LOO (``ntk_info.leave_one_out``) and influence functions
are measured against (SI paper §7, Table 1). Removing sample i is training with sample weight
m_i = 0 (``ntk_info.training.loss``), so all removals of a chunk run as one ``jax.vmap`` over 0/1
mask vectors inside jit; chunks bound the memory (each holds a copy of the weights per removal).

Reference and removal runs use the same procedure from the same start:
- cold start: w = A(S) trained from w0 for t steps, w_{-i} = A(S_{-i}) trained from w0 for t steps;
- warm start: from the trained weights w_s = A(S), continue t' steps (default t) with all samples
  (w) and without sample i (w_{-i}); with λ > 0 and converged training the continuation leaves w_s
  unchanged, otherwise this cancels the drift common to all removals.
SGD (``batch_size``) uses the same minibatch draws (same seed) for every removal.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ntk_info.training import _sq_dist, _train_core, _train_jit, _validate

__all__ = ["BruteForceResult", "brute_force_loo"]


@dataclasses.dataclass(frozen=True)
class BruteForceResult:
    """Per removed sample (row j is sample ``indices[j]``), same fields as ``LOOResult``.

    weight_change_sq (s,): ||w - w_{-i}||² over all parameters; prediction_change_sq (s,) or None:
    ||f_w(X_val) - f_{w_{-i}}(X_val)||² summed over inputs and outputs; self_prediction_change (s, k):
    f_w(x_i) - f_{w_{-i}}(x_i); train_prediction_change_sq (s,): the same norm on all of X;
    params: the reference weights w; warm_start, steps: the settings used.
    """

    indices: np.ndarray
    weight_change_sq: np.ndarray
    prediction_change_sq: np.ndarray | None
    self_prediction_change: np.ndarray
    train_prediction_change_sq: np.ndarray
    params: Any
    warm_start: bool
    steps: int


def _removal_kernel(apply_fn, params0, start, X, Y, X_val, lr, weight_decay, key, ref_params, ref_val,
                    ref_train, masks, idx, *, steps, batch_size, mean_loss=False):
    """vmap over removals: train with 0/1 sample weights ``masks`` (c, n), return the four change measures."""

    def one(mask, i):
        params = _train_core(apply_fn, params0, start, X, Y, mask, lr, weight_decay, key,
                             steps=steps, batch_size=batch_size, mean_loss=mean_loss)
        f_train = apply_fn(params, X)
        d_train = ref_train - f_train
        self_change = d_train[i].reshape(-1)
        out = (_sq_dist(ref_params, params), jnp.sum(d_train ** 2), self_change)
        if X_val is None:
            return out + (jnp.zeros((), f_train.dtype),)
        return out + (jnp.sum((ref_val - apply_fn(params, X_val)) ** 2),)

    return jax.vmap(one)(masks, idx)


_removal_jit = jax.jit(_removal_kernel, static_argnames=("apply_fn", "steps", "batch_size", "mean_loss"))


def brute_force_loo(apply_fn: Callable, params0: Any, X, Y, *, lr: float, steps: int, weight_decay: float = 0.0,
                    subset=None, X_val=None, warm_start: bool = False, warm_steps: int | None = None,
                    batch_size: int | None = None, seed: int = 0, chunk_size: int = 16,
                    progress: bool = True, loss: str = "sum") -> BruteForceResult:
    """Retrain the real network without each sample in ``subset``; return the exact LOO changes.

    Training is :func:`ntk_info.training.train` (sum-MSE, weight decay λ toward w0 = ``params0``,
    ``steps`` GD steps of size ``lr``, or SGD with ``batch_size``; ``loss="mean"`` divides the data
    term by the number of samples trained on, n for the reference and n - 1 without i). For each i
    in ``subset`` (default: all n) the run is repeated with sample weight m_i = 0, cold (from ``params0``, ``steps`` steps) or,
    with ``warm_start``, from the trained weights for ``warm_steps`` (default ``steps``) steps; see the
    module docstring for the reference run. Returns ||w - w_{-i}||², ||f_w(X_val) - f_{-i}(X_val)||²
    (summed over inputs and outputs) and f_w(x_i) - f_{-i}(x_i), as ``leave_one_out`` does for the
    linearized network. ``chunk_size`` removals are vmapped at a time.
    """
    X, Y, ones, _ = _validate(apply_fn, params0, X, Y, lr, steps, weight_decay, batch_size, None, None, loss)
    mean_loss = loss == "mean"
    n = X.shape[0]
    subset = np.arange(n) if subset is None else np.asarray(subset)
    if subset.ndim != 1 or subset.size == 0 or not np.issubdtype(subset.dtype, np.integer) \
            or subset.min() < 0 or subset.max() >= n or np.unique(subset).size != subset.size:
        raise ValueError(f"subset: expected distinct integer sample indices in [0, {n}), got {subset!r}")
    if not (isinstance(chunk_size, (int, np.integer)) and chunk_size >= 1):
        raise ValueError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
    if warm_steps is not None and (not isinstance(warm_steps, (int, np.integer)) or warm_steps < 0):
        raise ValueError(f"warm_steps: expected None (same as steps) or an integer >= 0, got {warm_steps!r}")
    if X_val is not None:
        X_val = jnp.asarray(X_val, X.dtype)
        if X_val.shape[1:] != X.shape[1:]:
            raise ValueError(f"X_val: expected inputs of shape (m, {', '.join(map(str, X.shape[1:]))}) like X, "
                             f"got {X_val.shape}")
    dtype = Y.dtype
    lr_, wd_ = jnp.asarray(lr, dtype), jnp.asarray(weight_decay, dtype)
    key = jax.random.PRNGKey(seed)
    batch_size = None if batch_size is None else int(batch_size)
    start = params0
    run_steps = int(steps)
    if warm_start:
        start = _train_jit(apply_fn, params0, params0, X, Y, ones, lr_, wd_, key,
                                steps=run_steps, batch_size=batch_size, mean_loss=mean_loss)
        run_steps = run_steps if warm_steps is None else int(warm_steps)
    ref_params = _train_jit(apply_fn, params0, start, X, Y, ones, lr_, wd_, key,
                                 steps=run_steps, batch_size=batch_size, mean_loss=mean_loss)
    ref_train = apply_fn(ref_params, X)
    ref_val = None if X_val is None else apply_fn(ref_params, X_val)

    # Every chunk has chunk_size rows (the last one padded by repeating a removal) so jit compiles once.
    chunk_size = min(int(chunk_size), subset.size)
    parts = []
    for s in tqdm(range(0, subset.size, chunk_size), desc="brute-force LOO", unit="chunk", disable=not progress):
        chunk = subset[s:s + chunk_size]
        padded = np.concatenate([chunk, np.full(chunk_size - chunk.size, chunk[0])])
        masks = jnp.ones((chunk_size, n), dtype).at[jnp.arange(chunk_size), padded].set(0.0)
        out = jax.device_get(_removal_jit(apply_fn, params0, start, X, Y, X_val, lr_, wd_, key, ref_params,
                                          ref_val, ref_train, masks, jnp.asarray(padded),
                                          steps=run_steps, batch_size=batch_size, mean_loss=mean_loss))
        parts.append([np.asarray(o)[:chunk.size] for o in out])
    w_sq, train_sq, self_change, val_sq = (np.concatenate([p[j] for p in parts]) for j in range(4))
    return BruteForceResult(indices=subset, weight_change_sq=w_sq,
                            prediction_change_sq=None if X_val is None else val_sq,
                            self_prediction_change=self_change, train_prediction_change_sq=train_sq,
                            params=ref_params, warm_start=bool(warm_start), steps=run_steps)

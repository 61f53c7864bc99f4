"""Exact LOO at dataset scale in primal mode: features streamed in batches, never all in memory.

With projected features Φ (n, k, p) (``ntk_info.features.Projection``) and N = n·k ≫ p, the LOO
needs only the p × p Gram G = ΦᵀΦ = Σ_b Φ_bᵀΦ_b, the vector h = Φᵀr = Σ_b Φ_bᵀ r_b, and per sample
its U-coordinates Z_i = Uᵀ Φ_iᵀ (``ntk_info.loo`` module docstring, primal basis). Two passes over
the data, each computing the features of one batch at a time:

    pass 1:  G += Φ_bᵀ Φ_b,  h += Φ_bᵀ r_b                      (float64 accumulation)
    eigh:    G = U diag(s) Uᵀ, keep s > tol,  c = Uᵀ h,  B_v = Φ_v U
    pass 2:  Z_b = Uᵀ Φ_bᵀ, then every sample of the batch as in ``leave_one_out``
             (``ntk_info.loo.sample_changes``: the full data's s, c, the batch's Z_b, r_b)

Memory O(p² + batch·k·p + n·k): no n × n, n·k × p or n·k × n·k array is formed. The features
are computed twice (recomputing costs less than storing n·k·p floats, e.g. 16 GB in float64 for
n = 50,000, k = 10, p = 4,000). Results are identical to ``leave_one_out(features=Φ, mode="primal")``
on the same features (tests/test_streaming.py). ``sum_across`` hooks a reduction of (G, h, ...)
across processes for multi-process runs (``ntk_info.distributed``).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ntk_info.dynamics import filter_values
from ntk_info.loo import per_sample_plan, sample_changes

__all__ = ["StreamedLOO", "streamed_leave_one_out"]


@dataclasses.dataclass(frozen=True)
class StreamedLOO:
    """Per-sample LOO changes of the samples streamed (``streamed_leave_one_out``), as ``LOOResult``.

    weight_change_sq (n,): ||w - w_{-i}||²; train_prediction_change_sq (n,); self_prediction_change
    (n, k): f(x_i) - f_{-i}(x_i); prediction_change_sq (n,) or None: over the n_val validation inputs;
    fitted_residuals (n, k): Y - f_t(X); outputs (n, k) = f0(X); kernel_diagonal (n,): tr K_ii = ||Φ_i||².
    rank: kept eigenvalues of ΦᵀΦ (of p);
    solver: "rational", "downdate" or "schur"; seconds / cpu_seconds: wall and process CPU time per
    stage ("gram pass", "eigh", "loo pass"). Only a process's own samples in a multi-process run
    (``ntk_info.distributed`` gathers them).
    """

    weight_change_sq: np.ndarray
    train_prediction_change_sq: np.ndarray
    self_prediction_change: np.ndarray
    prediction_change_sq: np.ndarray | None
    fitted_residuals: np.ndarray
    outputs: np.ndarray
    kernel_diagonal: np.ndarray
    n_val: int
    rank: int
    p: int
    solver: str
    lr: float
    steps: float
    weight_decay: float
    seconds: dict
    cpu_seconds: dict
    mode = basis = "primal"  # as LOOResult: the sum loss in float64, primal basis
    loss = "sum"
    dtype = "float64"


def _batches(n, batch_size, desc, progress):
    starts = range(0, n, batch_size)
    return tqdm(starts, desc=desc, unit="batch", disable=not progress or len(starts) == 1)


def _flat(phi):
    """(b, k, p) features -> (b·k, p) float64 rows, sample-major."""
    return np.asarray(phi, np.float64).reshape(-1, phi.shape[-1])


def streamed_leave_one_out(projection, X, Y, X_val=None, *, lr, steps, weight_decay=0.0, discrete=False,
                           batch_size: int = 512, solver="auto", chunk_size=None, sum_across: Callable | None = None,
                           on_stage: Callable | None = None, progress=True) -> StreamedLOO:
    """Exact LOO of the linearized network on the features ``projection.features`` of (X, Y), streamed.

    Same model, loss and training as ``ntk_info.leave_one_out`` (sum loss, learning rate ``lr``,
    ``steps`` GD steps with ``discrete=True`` or gradient-flow time, weight decay toward w0; one
    setting, not a grid) on the full (n·k) × (n·k) kernel ΦΦᵀ (removing sample i drops its k rows)
    in the primal basis. ``Y`` (n, k) float targets; ``X_val`` adds F-SI's prediction_change_sq.
    ``batch_size`` samples' features are computed at a time (memory ≈ batch·k·(d + p) floats);
    ``sum_across(tree) -> tree`` sums the Gram pass across processes (default: one process);
    ``on_stage(name, seconds, cpu_seconds)`` is called as each stage ends (e.g. to sample memory per stage).
    Cost O(n·k·p² + p³) plus twice the features; memory O(p² + batch·k·p + n·k).
    """
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    for name, value in (("steps", steps), ("weight_decay", weight_decay)):
        if np.ndim(value) != 0:
            raise ValueError(f"{name}: expected one value (streamed LOO takes one setting), got {value!r}; loop "
                             "over settings or use leave_one_out for grids")
    X = np.asarray(X) if not hasattr(X, "shape") else X
    Y = np.asarray(Y, np.float64)
    n = X.shape[0]
    if Y.ndim != 2 or Y.shape[0] != n:
        raise ValueError(f"Y: expected float targets of shape (n, k) with n = {n}, got {Y.shape}")
    p, k = projection.p, Y.shape[1]
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    seconds, cpu_seconds = {}, {}

    # Pass 1: G = ΦᵀΦ, h = Φᵀr (float64), f0.
    start_time, start_cpu = time.perf_counter(), time.process_time()
    gram, h = np.zeros((p, p)), np.zeros((p, 1))
    outputs, diagonal = np.empty((n, k)), np.empty(n)
    for start in _batches(n, batch_size, "features → ΦᵀΦ", progress):
        feats = projection.features(X[start:start + batch_size], batch_size=batch_size, progress=False)
        if feats.phi.shape[1] != k:
            raise ValueError(f"Y: expected {feats.phi.shape[1]} outputs per sample (the model's), got {k}")
        stop = start + feats.phi.shape[0]
        outputs[start:stop] = feats.outputs
        rows = _flat(feats.phi)
        diagonal[start:stop] = np.einsum("ij,ij->i", rows, rows).reshape(-1, k).sum(axis=1)
        gram += rows.T @ rows
        h += rows.T @ (Y[start:stop] - feats.outputs).reshape(-1, 1)
    if sum_across is not None:
        gram, h = sum_across((gram, h))
    seconds["gram pass"] = time.perf_counter() - start_time
    cpu_seconds["gram pass"] = time.process_time() - start_cpu
    if on_stage is not None:
        on_stage("gram pass", seconds["gram pass"], cpu_seconds["gram pass"])

    # Factorization of the Gram (the same on every process).
    start_time, start_cpu = time.perf_counter(), time.process_time()
    s_all, U = np.linalg.eigh(gram)
    if s_all[-1] <= 0 or s_all[0] < -1e-5 * s_all[-1]:
        raise ValueError(f"features Gram ΦᵀΦ: expected positive semi-definite with a positive eigenvalue, got "
                         f"eigenvalues in [{s_all[0]:g}, {s_all[-1]:g}]; check the features for NaN/inf")
    n_rows = n if sum_across is None else int(sum_across(np.array([n]))[0])
    tol = max(n_rows * k, p) * float(np.finfo(np.float64 if dtype == jnp.float64 else np.float32).eps) * s_all[-1]
    kept = s_all > tol
    s, Uk = s_all[kept], U[:, kept]
    r_dim = int(kept.sum())
    if np.isinf(steps) and weight_decay == 0 and r_dim >= n_rows * k:
        raise ValueError(f"steps=inf with weight_decay=0 needs features of rank < N, got rank {r_dim} = N = "
                         f"{n_rows * k}; use weight_decay > 0 or finite steps")
    c = Uk.T @ h  # (r, 1)
    phi_s = np.asarray(filter_values(jnp.asarray(s + weight_decay, jnp.float64 if dtype == jnp.float64 else
                                                 jnp.float32), lr=lr, steps=steps, discrete=discrete), np.float64)
    trained = phi_s[:, None] * c  # Uᵀ(w - w0)
    Bv = n_val = None
    if X_val is not None:
        phi_val = projection.features(X_val, batch_size=batch_size, progress=False).phi
        n_val = phi_val.shape[0]
        Bv = jnp.asarray(_flat(phi_val) @ Uk, dtype)
    plan = per_sample_plan(float(s[-1]), basis="primal", lr=lr, steps=steps, weight_decay=weight_decay,
                           discrete=discrete, solver=solver, tol=tol, block_size=k, dtype=dtype)
    s_j, c_j = jnp.asarray(s, dtype), jnp.asarray(c, dtype)
    seconds["eigh"] = time.perf_counter() - start_time
    cpu_seconds["eigh"] = time.process_time() - start_cpu
    if on_stage is not None:
        on_stage("eigh", seconds["eigh"], cpu_seconds["eigh"])

    # Pass 2: Z_b = Uᵀ Φ_bᵀ, per-sample changes of the batch against the full factorization.
    start_time, start_cpu = time.perf_counter(), time.process_time()
    fields = {"weight": [], "train": [], "self": [], "val": []}
    fitted = np.empty((n, k))
    for start in _batches(n, batch_size, "features → LOO", progress):
        feats = projection.features(X[start:start + batch_size], batch_size=batch_size, progress=False)
        stop = start + feats.phi.shape[0]
        Tb = (_flat(feats.phi) @ Uk).T  # (r, b·k)
        Rb = (Y[start:stop] - feats.outputs).reshape(-1, 1)
        fitted[start:stop] = (Rb - Tb.T @ trained).reshape(-1, k)
        out = sample_changes(plan, s_j, jnp.asarray(Tb, dtype), jnp.asarray(Rb, dtype), c_j, Bv,
                             chunk_size=chunk_size, progress=False)
        for name in fields:
            if name in out:
                fields[name].append(np.asarray(out[name][0, 0]))
    seconds["loo pass"] = time.perf_counter() - start_time
    cpu_seconds["loo pass"] = time.process_time() - start_cpu
    if on_stage is not None:
        on_stage("loo pass", seconds["loo pass"], cpu_seconds["loo pass"])
    return StreamedLOO(
        weight_change_sq=np.concatenate(fields["weight"]),
        train_prediction_change_sq=np.concatenate(fields["train"]),
        self_prediction_change=np.concatenate(fields["self"]).reshape(n, k),
        prediction_change_sq=np.concatenate(fields["val"]) if fields["val"] else None,
        fitted_residuals=fitted, outputs=outputs, kernel_diagonal=diagonal, n_val=n_val or 0, rank=r_dim, p=p,
        solver="schur" if plan.path.startswith("schur") else plan.path,
        lr=float(lr), steps=float(steps), weight_decay=float(weight_decay), seconds=seconds, cpu_seconds=cpu_seconds)

"""Dataset summarization: remove the least informative samples and retrain (SI paper §6, Fig. 2c and 7b).

Strategies for removing a fraction q of the n training samples:

- ``bottom``: the q·n samples with the lowest score (computed once),
- ``bottom-iterative``: remove 5 % of n with the lowest score, recompute the scores on what is left,
  repeat until q·n are gone (unique information is not additive: removing one sample can make
  another one unique),
- ``top``: the q·n highest scores (a baseline that should hurt most),
- ``random``: q·n samples drawn at random.

The real network (optionally another architecture than the scored one, SI paper App. A.4) is
retrained from the same initialization on every kept subset; all subsets train at once by vmapping
full-batch GD over per-sample 0/1 weight vectors (``ntk_info.training.train(sample_weights=...)``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from tqdm.auto import tqdm

__all__ = ["STRATEGIES", "keep_masks", "iterative_keep_masks", "retrain_accuracy", "SubsetRescorer"]

STRATEGIES = ("bottom", "bottom-iterative", "top", "random")


def _check_fractions(fractions):
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or fractions.size == 0 or (fractions < 0).any() or (fractions >= 1).any():
        raise ValueError(f"fractions: expected a list of removal fractions in [0, 1), got {fractions.tolist()}")
    return fractions


def keep_masks(scores, fractions, strategy: str, seed: int = 0) -> np.ndarray:
    """(len(fractions), n) 0/1 masks keeping all but round(q·n) samples chosen by ``strategy``.

    ``strategy``: ``bottom`` (remove the lowest scores), ``top`` (the highest) or ``random``.
    Ties are broken by sample index, so the masks are nested across fractions.
    """
    scores = np.asarray(scores, dtype=np.float64)
    fractions = _check_fractions(fractions)
    n = scores.size
    if strategy == "bottom":
        order = np.argsort(scores, kind="stable")
    elif strategy == "top":
        order = np.argsort(-scores, kind="stable")
    elif strategy == "random":
        order = np.random.default_rng(seed).permutation(n)
    else:
        raise ValueError(f"strategy: expected 'bottom', 'top' or 'random' (iterative: iterative_keep_masks), "
                         f"got {strategy!r}")
    masks = np.ones((fractions.size, n))
    for j, q in enumerate(fractions):
        masks[j, order[: int(round(q * n))]] = 0.0
    return masks


def iterative_keep_masks(score_fn: Callable, n: int, fractions, step: float = 0.05,
                         progress: bool = True) -> np.ndarray:
    """Masks of ``bottom-iterative`` removal: drop ``step``·n lowest scores, rescore the rest, repeat.

    ``score_fn(kept_indices) -> (len(kept_indices),)`` scores of the kept samples computed on the kept
    set only. Removal counts visit every multiple of round(step·n) and every round(q·n) requested.
    """
    fractions = _check_fractions(fractions)
    if not 0 < step < 1:
        raise ValueError(f"step: expected a fraction in (0, 1), got {step}")
    targets = sorted({int(round(q * n)) for q in fractions})
    per_step = max(int(round(step * n)), 1)
    counts = sorted(set(range(0, targets[-1] + 1, per_step)) | set(targets))
    kept = np.arange(n)
    snapshots = {}
    removed = 0
    for count in tqdm(counts, desc="iterative removal", unit="step", disable=not progress):
        if count > removed:
            scores = np.asarray(score_fn(kept), dtype=np.float64)
            if scores.shape != kept.shape:
                raise ValueError(f"score_fn: expected {kept.size} scores, got shape {scores.shape}")
            kept = np.sort(kept[np.argsort(scores, kind="stable")[count - removed:]])
            removed = count
        snapshots[count] = kept
    masks = np.zeros((fractions.size, n))
    for j, q in enumerate(fractions):
        masks[j, snapshots[int(round(q * n))]] = 1.0
    return masks


def retrain_accuracy(apply_fn: Callable, params0, X, Y, masks, X_test, y_test, *, lr: float, steps: int,
                     weight_decay: float = 0.0, chunk: int = 32, progress: bool = True) -> np.ndarray:
    """Test accuracy (m,) of the network trained from ``params0`` on each 0/1 ``masks`` row (m, n).

    Training minimizes Σ_i m_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||² with ``steps`` full-batch GD
    steps of size ``lr`` (ntk_info.training.train); ``chunk`` masks are trained at once under vmap.
    Accuracy: argmax of the outputs (sign for one output) against ``y_test`` (ints; for one output,
    label 1 is the positive class).
    """
    import jax
    import jax.numpy as jnp

    from ntk_info.training import train

    masks = np.asarray(masks, dtype=np.float64)
    if masks.ndim != 2 or masks.shape[1] != len(X):
        raise ValueError(f"masks: expected shape (m, {len(X)}), got {masks.shape}")
    X, Y, X_test = jnp.asarray(X), jnp.asarray(Y), jnp.asarray(X_test)
    y_test = np.asarray(y_test)

    @jax.jit
    def accuracies(mask_chunk):
        def one(mask):
            params = train(apply_fn, params0, X, Y, lr=lr, steps=steps, weight_decay=weight_decay,
                           sample_weights=mask.astype(Y.dtype))
            out = apply_fn(params, X_test).reshape(X_test.shape[0], -1)
            pred = jnp.argmax(out, axis=1) if out.shape[1] > 1 else (out[:, 0] > 0).astype(jnp.int32)
            return jnp.mean(pred == y_test)

        return jax.vmap(one)(mask_chunk)

    result = []
    for start in tqdm(range(0, masks.shape[0], chunk), desc="retraining", unit="chunk", disable=not progress):
        result.append(np.asarray(accuracies(jnp.asarray(masks[start:start + chunk]))))
    return np.concatenate(result)


class SubsetRescorer:
    """Scores of any kept subset of the training samples, recomputed without retracing or refitting.

    ``rescorer(kept)`` returns the scores that ``leave_one_out(kernel[kept][:, kept],
    residuals=residuals[kept], cross_kernel=cross_kernel[:, kept], ...)`` gives (float64: equal to
    round-off), for the iterative removal of ``iterative_keep_masks``. Shapes come from a fixed
    ladder of sizes n, 0.7n, 0.49n, ... (multiples of 8): the kept samples are padded with removed
    ones up to the next size and those are masked out, K_m = D K D, r_m = D r, K_v,m = K_v D with
    D = diag(kept), so a whole removal sequence compiles at most once per ladder size while each
    eigh shrinks with the kept set. Masked samples have zero kernel rows, hence only zero
    eigenvalues, which the rank cut-off drops exactly as the sliced problem would. The filter's
    partial fractions (``ntk_info.rational``) are fitted once on [0, λ_max(K)], which covers every
    kept subset (a principal submatrix's eigenvalues interlace, λ_max(K_m) ≤ λ_max(K)). Each step
    is then one eigh of the padded size and the batched Woodbury LOO. Where the
    filter has no verified fit (t = ∞, or η·t·λ_max beyond ~1e5) every call slices the kept kernel
    and runs ``leave_one_out`` from scratch instead (``fast`` is False).

    ``by``: "fsi" (||K_v δ_i||²/(2m), SI paper eq. 16–17), "si" (½||Δw||², eq. 5) or
    "loo_residual" (||y_i - f_{-i}(x_i)||). Kernel (n, n) (e.g. the trace kernel), residuals (n, q),
    cross_kernel (m, n) (needed for "fsi").
    """

    def __init__(self, kernel, residuals, cross_kernel=None, *, lr, steps, weight_decay=0.0, discrete=False,
                 by="fsi"):
        import jax
        import jax.numpy as jnp

        from ntk_info.loo import per_sample_plan

        if by not in ("fsi", "si", "loo_residual"):
            raise ValueError(f"by: expected 'fsi', 'si' or 'loo_residual', got {by!r}")
        kernel = np.asarray(kernel, np.float64)
        n = kernel.shape[0]
        if kernel.shape != (n, n):
            raise ValueError(f"kernel: expected a square (n, n) kernel, got shape {kernel.shape}")
        residuals = np.asarray(residuals, np.float64)
        residuals = residuals[:, None] if residuals.ndim == 1 else residuals
        if residuals.shape[0] != n or residuals.ndim != 2:
            raise ValueError(f"residuals: expected shape (n,) or (n, q) with n = {n}, got {residuals.shape}")
        if by == "fsi" and cross_kernel is None:
            raise ValueError("cross_kernel: by='fsi' needs the validation cross kernel K(X_v, X) (m, n), got None")
        if cross_kernel is not None and np.shape(cross_kernel)[1:] != (n,):
            raise ValueError(f"cross_kernel: expected shape (m, {n}), got {np.shape(cross_kernel)}")
        self.n, self.by = n, by
        self.dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
        s_max = float(np.linalg.eigvalsh(kernel)[-1])
        self.plan = per_sample_plan(s_max, basis="dual", lr=lr, steps=steps, weight_decay=weight_decay,
                                    discrete=discrete, solver="auto", tol=0.0, block_size=1, dtype=self.dtype)
        self.fast = self.plan.path == "rational"
        self._settings = dict(lr=lr, steps=steps, weight_decay=weight_decay, discrete=discrete)
        self._inputs = (kernel, residuals, None if cross_kernel is None else np.asarray(cross_kernel, np.float64))
        self.kernel = jnp.asarray(kernel, self.dtype)
        self.residuals = jnp.asarray(residuals, self.dtype)
        self.cross = None if cross_kernel is None or by != "fsi" else jnp.asarray(cross_kernel, self.dtype)
        self.m = 0 if cross_kernel is None else int(np.shape(cross_kernel)[0])
        self._factor = jax.jit(self._masked_factor)
        self.sizes = [n]
        while self.sizes[-1] > 16:
            self.sizes.append(max(8, -(-int(0.7 * self.sizes[-1]) // 8) * 8))

    def _masked_factor(self, mask, kernel, residuals, cross):
        """U-coordinates of the masked problem at full size: dropped eigenpairs zeroed, not cut."""
        import jax.numpy as jnp

        from ntk_info.dynamics import filter_values

        plan = self.plan
        km = kernel * mask[:, None] * mask[None, :]
        rm = residuals * mask[:, None]
        s_all, V = jnp.linalg.eigh(km)
        tol = jnp.sum(mask) * jnp.finfo(km.dtype).eps * s_all[-1]  # leave_one_out's cut-off with N = n_kept
        keep = s_all > tol
        s = jnp.where(keep, s_all, 0.0)
        root = jnp.sqrt(s)
        T = root[:, None] * V.T  # (n, n): rows of dropped eigenpairs are zero
        c = T @ rm
        Bv = None if cross is None else (cross * mask[None, :]) @ V * jnp.where(keep, 1.0 / jnp.where(keep, root, 1.0),
                                                                                  0.0)
        phi = filter_values(s + plan.weight_decay[0], lr=plan.lr, steps=plan.steps[0], discrete=plan.discrete)
        fitted = rm - T.T @ (jnp.where(keep, phi, 0.0)[:, None] * c)
        return s, T, rm, c, Bv, fitted

    def __call__(self, kept) -> np.ndarray:
        """Scores (len(kept),) of the samples ``kept`` (indices), computed on the kept samples only."""
        import jax.numpy as jnp

        from ntk_info.loo import sample_changes

        kept = np.asarray(kept)
        if not self.fast:
            return self._from_scratch(kept)
        size = min(b for b in self.sizes if b >= kept.size)
        removed = np.setdiff1d(np.arange(self.n), kept)
        rows = jnp.asarray(np.concatenate([kept, removed[: size - kept.size]]))
        mask = jnp.asarray(np.arange(size) < kept.size, self.dtype)
        s, T, R, c, Bv, fitted = self._factor(mask, self.kernel[rows][:, rows], self.residuals[rows],
                                              None if self.cross is None else self.cross[:, rows])
        out = sample_changes(self.plan, s, T, R, c, Bv, chunk_size=size, progress=False)
        first = slice(0, kept.size)
        if self.by == "fsi":
            return np.asarray(out["val"][0, 0])[first] / (2.0 * self.m)
        if self.by == "si":
            return 0.5 * np.asarray(out["weight"][0, 0])[first]
        loo_res = np.asarray(fitted)[first] + np.asarray(out["self"][0, 0])[first]
        return np.linalg.norm(loo_res, axis=1)

    def _from_scratch(self, kept):
        """The kept kernel sliced and ``leave_one_out`` run on it (filters without a verified fit)."""
        from ntk_info.loo import leave_one_out

        kernel, residuals, cross = self._inputs
        loo = leave_one_out(kernel[np.ix_(kept, kept)], residuals=residuals[kept], progress=False,
                            cross_kernel=None if cross is None or self.by != "fsi" else cross[:, kept],
                            **self._settings)
        if self.by == "fsi":
            return np.asarray(loo.prediction_change_sq) / (2.0 * self.m)
        if self.by == "si":
            return 0.5 * np.asarray(loo.weight_change_sq)
        loo_res = np.asarray(loo.fitted_residuals) + np.asarray(loo.self_prediction_change)
        return np.linalg.norm(loo_res.reshape(kept.size, -1), axis=1)

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


def _float64_jax():
    """JAX's x64 context, so the filter and its fit are float64 whatever ``jax_enable_x64`` says (jax ≥ 0.6:
    ``jax.enable_x64``; 0.4.35, the neural-tangents extra's JAX: ``jax.experimental.enable_x64``)."""
    try:
        from jax import enable_x64
    except ImportError:
        from jax.experimental import enable_x64
    return enable_x64(True)


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
    """Scores of any kept subset of the training samples: one eigendecomposition per call, nothing compiled.

    ``rescorer(kept)`` returns the scores that ``leave_one_out(kernel[kept][:, kept],
    residuals=residuals[kept], cross_kernel=cross_kernel[:, kept], ...)`` gives (float64, equal to
    round-off), for the iterative removal of ``iterative_keep_masks``. Shared kernel (n, n) (the trace
    kernel, or one output), residuals (n,) or (n, q) (q outputs sharing it), cross_kernel (m, n).

    What does not depend on the kept set is done once: the filter's verified partial fractions
    φ(μ + λ) = c0 + Σ_j a_j/(μ - p_j) (``ntk_info.loo.per_sample_plan``; t = ∞ with λ > 0 is the exact
    single pole p = -λ), fitted on [0, λmax(K)], which holds every kept spectrum (a principal
    submatrix's eigenvalues interlace). Per call, for the kept set S: K_S = V diag(s) Vᵀ (numpy/LAPACK
    eigh; eigenvalues ≤ |S|·eps·s_max dropped, ``leave_one_out``'s cut-off), Z = S^½ Vᵀ (r, |S|) with
    columns Z_i, c = Z r_S, B_v = K_v,S V S^-½; the Woodbury form of the rank-one downdate
    diag(s) - Z_i Z_iᵀ (``ntk_info.loo``, ``_rational_device`` with k = 1) gives every sample's
    U-coordinates of w - w_{-i} as

        d_i = Z_i ∘ (c0 r_iᵀ + Σ_j a_j f_j β_ijᵀ),   f_j = 1/(s - p_j),
        β_ij = (r_i - cᵀ(f_j ∘ Z_i)) / (1 - Z_iᵀ(f_j ∘ Z_i)),

    all samples at once in dense matrix products, ``chunk_bytes`` of d_i and K_v δ_i at a time
    (O(|S|³) for the eigh plus O(|S|²·(P + m)·q) for P poles and m validation inputs); then
    "fsi" = ||B_v d_i||²/(2m) (SI paper eq. 16–17), "si" = ½||d_i||² (eq. 5), "loo_residual" =
    ||y_i - f_{-i}(x_i)|| = ||(r_i - Z_iᵀ(φ(s + λ)∘c)) + Z_iᵀ d_i||. float64 (numpy) whatever
    ``jax_enable_x64`` says. Where the filter has no verified fit (t = ∞ with λ = 0, or η·t·λ_max beyond
    ~1e5) every call slices the kept kernel and runs ``leave_one_out`` from scratch instead (``fast`` is
    False).
    """

    def __init__(self, kernel, residuals, cross_kernel=None, *, lr, steps, weight_decay=0.0, discrete=False,
                 by="fsi", chunk_bytes=6.4e7):
        import jax.numpy as jnp

        from ntk_info.loo import per_sample_plan

        if by not in ("fsi", "si", "loo_residual"):
            raise ValueError(f"by: expected 'fsi', 'si' or 'loo_residual', got {by!r}")
        kernel = np.asarray(kernel, np.float64)
        n = kernel.shape[0]
        if kernel.shape != (n, n):
            raise ValueError(f"kernel: expected a square (n, n) kernel, got shape {kernel.shape}")
        asym = np.max(np.abs(kernel - kernel.T))
        if asym > np.sqrt(np.finfo(np.float64).eps) * np.max(np.abs(kernel)):
            raise ValueError(f"kernel: expected a symmetric kernel, got max|K - Kᵀ| = {asym:.3g}; symmetrize it "
                             "with (K + Kᵀ)/2.")
        residuals = np.asarray(residuals, np.float64)
        residuals = residuals[:, None] if residuals.ndim == 1 else residuals
        if residuals.shape[0] != n or residuals.ndim != 2:
            raise ValueError(f"residuals: expected shape (n,) or (n, q) with n = {n}, got {residuals.shape}")
        if by == "fsi" and cross_kernel is None:
            raise ValueError("cross_kernel: by='fsi' needs the validation cross kernel K(X_v, X) (m, n), got None")
        if cross_kernel is not None and np.shape(cross_kernel)[1:] != (n,):
            raise ValueError(f"cross_kernel: expected shape (m, {n}), got {np.shape(cross_kernel)}")
        if np.ndim(steps) != 0 or np.ndim(weight_decay) != 0:
            raise ValueError(f"steps, weight_decay: expected one value each (no grids), got {steps!r}, "
                             f"{weight_decay!r}")
        spectrum, vectors = np.linalg.eigh(kernel)
        self._whole = (spectrum, vectors)  # the first call usually keeps every sample: used once, then dropped
        s_max = float(spectrum[-1])
        if s_max <= 0 or spectrum[0] < -1e-5 * s_max:
            raise ValueError(f"kernel: expected a positive semi-definite kernel with a positive eigenvalue, got "
                             f"eigenvalues in [{spectrum[0]:g}, {s_max:g}]; build it as J Jᵀ.")
        self.n, self.by = n, by
        self._settings = dict(lr=lr, steps=steps, weight_decay=weight_decay, discrete=discrete)
        self.kernel, self.residuals = kernel, residuals
        self.cross = None if cross_kernel is None else np.asarray(cross_kernel, np.float64)
        self.m = 0 if cross_kernel is None else int(np.shape(cross_kernel)[0])
        self.chunk_bytes = float(chunk_bytes)
        if np.isinf(steps):  # φ(μ + λ) = 1/(μ - p) with p = -λ; none for λ = 0 (a pseudo-inverse)
            fractions = (0.0, np.array([-float(weight_decay)], complex), np.array([1.0 + 0j])) \
                if weight_decay > 0 else None
        else:
            with _float64_jax():
                plan = per_sample_plan(s_max, basis="dual", lr=lr, steps=steps, weight_decay=weight_decay,
                                       discrete=discrete, solver="auto", tol=0.0, block_size=1, dtype=jnp.float64)
                fractions = None if plan.path != "rational" else (
                    float(plan.fractions[0][0]), np.asarray(plan.fractions[1][0], complex),
                    np.asarray(plan.fractions[2][0], complex))
        self.fast = fractions is not None
        self.fractions = fractions
        if not self.fast:
            self._whole = None

    def __call__(self, kept) -> np.ndarray:
        """Scores (len(kept),) of the samples ``kept`` (distinct indices), computed on the kept samples only."""
        kept = np.asarray(kept)
        if kept.ndim != 1 or kept.size == 0 or not np.issubdtype(kept.dtype, np.integer) \
                or np.unique(kept).size != kept.size or kept.min() < 0 or kept.max() >= self.n:
            raise ValueError(f"kept: expected distinct sample indices in [0, {self.n}), got {kept!r}")
        if not self.fast:
            return self._from_scratch(kept)
        if self._whole is not None and np.array_equal(kept, np.arange(self.n)):
            s_all, V = self._whole
        else:
            s_all, V = np.linalg.eigh(self.kernel[np.ix_(kept, kept)])
        self._whole = None
        if s_all[-1] <= 0:
            raise ValueError(f"kept: the kernel of the {kept.size} kept samples is zero; nothing to score")
        keep = s_all > kept.size * np.finfo(np.float64).eps * s_all[-1]
        s, V = s_all[keep], V[:, keep]
        root = np.sqrt(s)
        Z = root[:, None] * V.T  # (r, |S|): the kept samples in U-coordinates
        R = self.residuals[kept]
        c = Z @ R
        Bv = None if self.by != "fsi" else (self.cross[:, kept] @ V) / root
        chunk = max(1, int(self.chunk_bytes // (8 * R.shape[1] * (Z.shape[0] + self.m))))  # d_i and K_v δ_i
        scores = [self._scores(s, Z[:, start:start + chunk], R[start:start + chunk], c, Bv)
                  for start in range(0, kept.size, chunk)]
        return np.concatenate(scores)

    def _scores(self, s, Z, R, c, Bv):
        """``by`` scores of the samples whose U-coordinates are the columns of Z (r, b), residuals R (b, q)."""
        const, poles, residues = self.fractions
        (r, b), q, P = Z.shape, R.shape[1], poles.size
        f = 1.0 / (s[:, None] - poles[None, :])  # (r, P): diagonals of the resolvents (diag(s) - p_j)⁻¹
        leverage = 1.0 - (Z * Z).T @ f  # (b, P): 1 - Z_iᵀ(f_j ∘ Z_i)
        fc = f[:, :, None] * c[:, None, :]  # (r, P, q)
        # Zᵀ (f_j ∘ c), real Z times complex fc as one real product
        Zfc = Z.T @ np.concatenate([fc.real, fc.imag], axis=1).reshape(r, 2 * P * q)
        Zfc = (Zfc[:, :P * q] + 1j * Zfc[:, P * q:]).reshape(b, P, q)
        beta = (R[:, None, :] - Zfc) / leverage[:, :, None]  # (b, P, q)
        fa = f * residues[None, :]  # (r, P)
        # Re Σ_j a_j f_j β_ij = [Re fa, -Im fa] @ [Re β; Im β], one real product; then d_i in place
        beta_t = np.moveaxis(beta, 1, 0).reshape(P, b * q)
        D = np.concatenate([fa.real, -fa.imag], axis=1) @ np.concatenate([beta_t.real, beta_t.imag], axis=0)
        D3 = D.reshape(r, b, q)
        D3 += const * R[None]
        D3 *= Z[:, :, None]  # (r, b, q): d_i in column i
        if self.by == "fsi":
            val = Bv @ D  # (m, b·q): K_v δ_i
            return np.einsum("mk,mk->k", val, val).reshape(b, q).sum(axis=1) / (2.0 * self.m)
        if self.by == "si":
            return 0.5 * np.einsum("lk,lk->k", D, D).reshape(b, q).sum(axis=1)
        phi = self._filter(s)
        fitted = R - Z.T @ (phi[:, None] * c)
        return np.linalg.norm(fitted + np.einsum("li,liq->iq", Z, D3), axis=1)

    def _filter(self, s):
        """φ(s + λ) (``ntk_info.dynamics.filter_values``, float64), on a length-n vector so that JAX compiles it once."""
        import jax.numpy as jnp

        from ntk_info.dynamics import filter_values

        u = np.zeros(self.n)
        u[:s.size] = s + self._settings["weight_decay"]
        with _float64_jax():
            phi = filter_values(jnp.asarray(u), lr=self._settings["lr"], steps=self._settings["steps"],
                                discrete=self._settings["discrete"])
            return np.asarray(phi)[:s.size]

    def _from_scratch(self, kept):
        """The kept kernel sliced and ``leave_one_out`` run on it (filters without a verified fit)."""
        from ntk_info.loo import leave_one_out

        loo = leave_one_out(self.kernel[np.ix_(kept, kept)], residuals=self.residuals[kept], progress=False,
                            cross_kernel=None if self.by != "fsi" else self.cross[:, kept], **self._settings)
        if self.by == "fsi":
            return np.asarray(loo.prediction_change_sq) / (2.0 * self.m)
        if self.by == "si":
            return 0.5 * np.asarray(loo.weight_change_sq)
        loo_res = np.asarray(loo.fitted_residuals) + np.asarray(loo.self_prediction_change)
        return np.linalg.norm(loo_res.reshape(kept.size, -1), axis=1)

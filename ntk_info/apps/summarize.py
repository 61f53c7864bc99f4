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

__all__ = ["STRATEGIES", "keep_masks", "iterative_keep_masks", "retrain_accuracy"]

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

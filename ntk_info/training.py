"""Training the real network with the conventions of the closed-form dynamics.

Loss (SI paper §2 and App. F, eq. 31; a SUM over samples, weight decay toward the init w0):

    L(w) = sum_i m_i ½||f_w(x_i) - y_i||² + (λ/2)||w - w0||²,

with per-sample weights m_i (1 by default; m_i = 0 removes sample i, which is how brute-force
leave-one-out vectorizes over removals). ``loss="mean"`` divides the data term by Σ_i m_i (n, or n - 1
with one sample removed): L = (1/Σm) Σ_i m_i ½||f_w(x_i) - y_i||² + (λ/2)||w - w0||². "Train for t steps with lr η" means t updates
w <- w - η g, where g = ∇L for full-batch gradient descent (``batch_size=None``), exactly the
iteration whose closed form is the discrete-GD filter g(u) = (1 - (1 - ηu)^t)/u. Minibatch SGD
draws b of the n samples without replacement at every step and rescales the data part of the
gradient by n/b, so that E[g] = ∇L and the same (η, t) mean the same thing; with b = n it is GD.
Updates go through ``optax.sgd``; the whole loop runs in ``jax.lax.fori_loop`` inside jit.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["train", "targets", "replace_head", "reinit_head", "pretrain_then_finetune", "loss", "output_dim"]


def _sq_dist(a, b):
    """||a - b||² summed over all leaves of two pytrees of the same structure."""
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: jnp.sum((x - y) ** 2), a, b))
    return sum(leaves, jnp.zeros((), leaves[0].dtype)) if leaves else jnp.zeros(())


def loss(apply_fn: Callable, params, params0, X, Y, sample_weights, weight_decay, data_scale=1.0):
    """L(w) = data_scale · sum_i m_i ½||f_w(x_i) - y_i||² + (λ/2)||w - w0||² (SI paper eq. 31).

    ``Y`` must have the shape of ``apply_fn(params, X)``; ``sample_weights`` has shape (n,).
    ``data_scale`` is n/b for a minibatch of b out of n samples (1 for the full batch).
    """
    residual = apply_fn(params, X) - Y
    per_sample = 0.5 * jnp.sum(residual.reshape(residual.shape[0], -1) ** 2, axis=1)
    return data_scale * jnp.sum(sample_weights * per_sample) + 0.5 * weight_decay * _sq_dist(params, params0)


def _train_core(apply_fn, params0, start_params, X, Y, sample_weights, lr, weight_decay, key, *,
                steps: int, batch_size: int | None, mean_loss: bool = False):
    """t steps of full-batch GD (``batch_size=None``) or minibatch SGD on ``loss``; traceable, vmappable.

    ``mean_loss``: the weights are divided by their sum (the data term is a weighted mean)."""
    n = X.shape[0]
    if mean_loss:
        sample_weights = sample_weights / jnp.sum(sample_weights)
    optimizer = optax.sgd(lr)
    grad_fn = jax.grad(loss, argnums=1)

    def step(t, carry):
        params, opt_state = carry
        if batch_size is None:
            grads = grad_fn(apply_fn, params, params0, X, Y, sample_weights, weight_decay)
        else:
            idx = jax.random.permutation(jax.random.fold_in(key, t), n)[:batch_size]
            grads = grad_fn(apply_fn, params, params0, X[idx], Y[idx], sample_weights[idx], weight_decay,
                            n / batch_size)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, _ = jax.lax.fori_loop(0, steps, step, (start_params, optimizer.init(start_params)))
    return params


_train_jit = jax.jit(_train_core, static_argnames=("apply_fn", "steps", "batch_size", "mean_loss"))


def output_dim(apply_fn: Callable, params, X) -> int:
    """Number of outputs k per sample of ``apply_fn(params, X)`` (evaluated abstractly, no FLOPs)."""
    out = jax.eval_shape(apply_fn, params, X[:1])
    return int(np.prod(out.shape[1:]))


def _validate(apply_fn, params0, X, Y, lr, steps, weight_decay, batch_size, sample_weights, start_params,
              loss="sum"):
    """Check user input before jit and return (X, Y reshaped to the output shape, weights, start)."""
    if loss not in ("sum", "mean"):
        raise ValueError(f"loss: expected 'sum' (Σ_i ½||f - y||²) or 'mean' (the same divided by n), got {loss!r}")
    if not callable(apply_fn):
        raise TypeError(f"apply_fn: expected a callable apply_fn(params, x), got {type(apply_fn).__name__}")
    X = jnp.asarray(X)
    Y = jnp.asarray(Y)
    n = X.shape[0] if X.ndim else 0
    if X.ndim < 2 or n == 0:
        raise ValueError(f"X: expected an array of n >= 1 inputs with a leading sample axis, got shape {X.shape}")
    if Y.shape[:1] != (n,):
        raise ValueError(f"Y: expected {n} targets (leading axis equal to X's), got shape {Y.shape}; "
                         "pass Y of shape (n,) or (n, k)")
    out = jax.eval_shape(apply_fn, params0, X)
    if int(np.prod(Y.shape)) != int(np.prod(out.shape)):
        raise ValueError(f"Y: shape {Y.shape} does not match the network output {out.shape}; "
                         "build targets with ntk_info.training.targets(labels, num_outputs)")
    Y = Y.reshape(out.shape).astype(out.dtype)
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite learning rate > 0, got {lr}")
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps: expected an integer >= 0, got {steps!r}")
    if not (np.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay: expected a finite λ >= 0, got {weight_decay}")
    if batch_size is not None and not (isinstance(batch_size, (int, np.integer)) and 1 <= batch_size <= n):
        raise ValueError(f"batch_size: expected None (full-batch GD) or an integer in [1, n={n}], got {batch_size!r}")
    if sample_weights is None:
        sample_weights = jnp.ones((n,), out.dtype)
    else:
        sample_weights = jnp.asarray(sample_weights, out.dtype)
        if sample_weights.shape != (n,):
            raise ValueError(f"sample_weights: expected shape ({n},), got {sample_weights.shape}")
        if loss == "mean" and not float(jnp.sum(sample_weights)) > 0:
            raise ValueError("sample_weights: loss='mean' divides by their sum, which must be > 0; got "
                             f"{float(jnp.sum(sample_weights))}")
    if start_params is None:
        start_params = params0
    elif jax.tree_util.tree_structure(start_params) != jax.tree_util.tree_structure(params0):
        raise ValueError("start_params: expected a pytree with the structure of params0, got "
                         f"{jax.tree_util.tree_structure(start_params)}")
    return X, Y, sample_weights, start_params


def train(apply_fn: Callable, params0: Any, X, Y, *, lr: float, steps: int, weight_decay: float = 0.0,
          batch_size: int | None = None, seed: int = 0, sample_weights=None, start_params=None, loss: str = "sum"):
    """Train the real network for ``steps`` steps of GD (or SGD) on the sum-MSE loss; return the params.

    Minimizes L(w) = sum_i m_i ½||f_w(x_i) - y_i||² + (λ/2)||w - w0||² (SI paper eq. 31), or with
    ``loss="mean"`` L(w) = (1/Σm) sum_i m_i ½||f_w(x_i) - y_i||² + (λ/2)||w - w0||², with
    w0 = ``params0`` (decay toward the init), λ = ``weight_decay``, m = ``sample_weights``, starting
    from ``start_params`` (default ``params0``). Each step is w <- w - η g with η = ``lr``: g = ∇L for
    ``batch_size=None`` (full-batch GD, the iteration the discrete-GD filter describes exactly), else
    g = (n/b)·∇(minibatch data loss) + λ(w - w0) on b = ``batch_size`` samples drawn without
    replacement per step from ``seed`` (so E[g] = ∇L; b = n is GD). ``Y``: (n,) or (n, k), reshaped to
    the network's output shape.

    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: x @ w
    >>> X, Y = jnp.eye(2), jnp.array([[1.0], [2.0]])
    >>> w = train(apply_fn, jnp.zeros((2, 1)), X, Y, lr=0.5, steps=1)
    >>> [round(float(v), 6) for v in w[:, 0]]
    [0.5, 1.0]
    """
    X, Y, sample_weights, start_params = _validate(apply_fn, params0, X, Y, lr, steps, weight_decay,
                                                   batch_size, sample_weights, start_params, loss)
    dtype = Y.dtype
    return _train_jit(apply_fn, params0, start_params, X, Y, sample_weights, jnp.asarray(lr, dtype),
                      jnp.asarray(weight_decay, dtype), jax.random.PRNGKey(seed), steps=int(steps),
                      batch_size=None if batch_size is None else int(batch_size), mean_loss=loss == "mean")


def targets(labels, num_classes: int | None = None, kind: str = "onehot", positive=None):
    """Float regression targets for the MSE loss: one-hot rows (n, C) or ±1 values (n, 1).

    ``kind="onehot"``: row i is e_{labels[i]} (``num_classes`` columns, default max label + 1).
    ``kind="pm1"``: binary task, +1 where ``labels == positive`` (default: the larger of the two
    classes present) and -1 elsewhere, shape (n, 1) — the SI paper's 4-vs-9 targets.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels: expected a 1-D array of integer class labels, got shape {labels.shape}")
    if kind == "onehot":
        num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels: expected values in [0, {num_classes}), got range "
                             f"[{labels.min()}, {labels.max()}]; pass num_classes")
        return np.eye(num_classes)[labels]
    if kind == "pm1":
        classes = np.unique(labels)
        if positive is None:
            if classes.size != 2:
                raise ValueError(f"labels: kind='pm1' needs exactly two classes (or pass positive=), got {classes}")
            positive = classes.max()
        return np.where(labels == positive, 1.0, -1.0)[:, None]
    raise ValueError(f"kind: expected 'onehot' or 'pm1', got {kind!r}")


def replace_head(params, fresh_params, head=None):
    """``params`` with the head's leaves taken from ``fresh_params``: a trained body under a fresh head.

    ``fresh_params``: a fresh initialization of the network with the new head (same architecture,
    so the same pytree structure; the head may have another output size). ``head`` selects the head
    leaves like a ``linearize_subset`` mask: a pytree of bools with the structure of ``params`` or a
    prefix of it, or a callable ``head(name) -> bool`` on ``jax.tree_util.keystr`` leaf names; None
    means the last layer of the model zoo's list layout (its last entry with parameters). Every body
    leaf must have the same shape in both, else a ValueError names it.

    >>> import numpy as np
    >>> trained = {"body": np.ones((3, 4)), "head": np.ones((4, 8))}
    >>> fresh = {"body": np.zeros((3, 4)), "head": np.zeros((4, 2))}
    >>> new = replace_head(trained, fresh, head={"body": False, "head": True})
    >>> float(new["body"].sum()), new["head"].shape
    (12.0, (4, 2))
    """
    from .adapters import selected_leaves  # the mask semantics live there

    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    if jax.tree_util.tree_structure(fresh_params) != treedef:
        raise ValueError(f"fresh_params: expected the pytree structure of params ({treedef}), got "
                         f"{jax.tree_util.tree_structure(fresh_params)}; initialize the same architecture")
    if head is None:
        if not isinstance(params, (list, tuple)):
            raise ValueError("head: needed for params that are not the model zoo's list layout; pass a mask selecting "
                             "the head leaves, e.g. {'body': False, 'head': True} or lambda name: 'head' in name")
        last = max(i for i, entry in enumerate(params) if jax.tree_util.tree_leaves(entry))
        head = [i == last for i in range(len(params))]
        head = type(params)(head) if isinstance(params, tuple) else head
    is_head = selected_leaves(params, head)
    leaves = []
    for (path, old), new, in_head in zip(path_leaves, jax.tree_util.tree_leaves(fresh_params), is_head):
        if in_head:
            leaves.append(new)
        elif np.shape(old) != np.shape(new):
            raise ValueError(f"fresh_params: body leaf {jax.tree_util.keystr(path)} has shape {np.shape(new)}, the "
                             f"trained params {np.shape(old)}; only the head may change shape")
        else:
            leaves.append(old)
    return treedef.unflatten(leaves)


def reinit_head(model, params, seed: int = 0, input_shape=None, *, head=None):
    """``params`` with the head replaced by a fresh one of ``model`` (:func:`replace_head`).

    The new head comes from ``model.init_fn`` with ``seed``, so ``model`` may have a different output
    size than the network ``params`` came from (same body). ``input_shape``: one input without batch
    axis. ``head``: which leaves form the head (None: the last layer of the zoo's list layout).
    """
    if input_shape is None:
        raise ValueError("input_shape: needed to initialize a fresh model; pass the input shape without batch axis")
    _, fresh = model.init_fn(jax.random.PRNGKey(seed), (-1, *input_shape))
    return replace_head(params, fresh, head)


def pretrain_then_finetune(pretrain_model, model, X_pre, Y_pre, *, lr: float, steps: int,
                           weight_decay: float = 0.0, batch_size: int | None = None, seed: int = 0, head=None):
    """Pretrain on another task, then put a fresh head for ``model`` on the trained body: the new w0.

    The SI paper's "pretrained on other classes, fresh head" setting (Table 1). ``pretrain_model``
    (e.g. 8 outputs for the eight other digits) is trained on (X_pre, Y_pre) with :func:`train`
    (sum-MSE loss, ``lr``, ``steps``, ``weight_decay`` toward its init, ``batch_size``); the result
    keeps its body and gets the head of ``model`` (e.g. 1 output), freshly initialized
    (:func:`replace_head`, ``head`` as there). Each model is either a zoo ``Model``
    (``pretrain_model`` initialized from ``seed``, ``model`` from ``seed + 1``) or an
    ``(apply_fn, params)`` pair, e.g. from ``from_flax`` / ``from_equinox``, whose params are the
    starting values (pretraining) and the fresh head (``model``). Both must share the body
    architecture. Fine-tuning's weight decay then pulls toward this w0.
    """
    input_shape = tuple(np.shape(X_pre)[1:])
    if isinstance(pretrain_model, tuple):
        pre_apply, params_pre = pretrain_model
    else:
        pre_apply = pretrain_model.apply_fn
        _, params_pre = pretrain_model.init_fn(jax.random.PRNGKey(seed), (-1, *input_shape))
    if isinstance(model, tuple):
        fresh = model[1]
    else:
        _, fresh = model.init_fn(jax.random.PRNGKey(seed + 1), (-1, *input_shape))
    trained = train(pre_apply, params_pre, X_pre, Y_pre, lr=lr, steps=steps, weight_decay=weight_decay,
                    batch_size=batch_size, seed=seed)
    return replace_head(trained, fresh, head)

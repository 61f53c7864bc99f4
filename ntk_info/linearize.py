"""Where to linearize: the point w_p around which f(x) ≈ f(x; w_p) + J_p(x)(w - w_p) is left out of.

Every score in ``ntk_info.score`` is an exact leave-one-out (LOO) of the network linearized at the
parameters it is given. Which parameters is a modelling choice (DESIGN.md, "Where to linearize"):

- ``"init"``: the random initialization w0, trained for t GD steps in closed form. This replays a
  training run from scratch (SI paper's default): right for summarization and for comparing with
  retraining the real network (SI paper Table 1).
- ``"trained"``: the real network trained first (Adam, minibatches, early stopping on a validation
  split; :func:`train_adam`), then the linearized model around w* is fine-tuned on the residuals
  Y - f(X; w*): finite t, or its converged ridge limit t = ∞ with λ > 0 (decay toward w*). When w*
  is (nearly) stationary, Jᵀ(Y - f(X; w*)) ≈ 0 and the t = ∞ LOO is the exact removal (Newton) step
  of sample i from w* — what influence functions and MPE approximate — with the sample's leverage
  in place of their damping.
- ``"trained-head"``: the trained body with a fresh (re-initialized) last layer: the linearized model
  carries the learned features (the "after kernel") but its outputs start near zero, so the
  residuals are the labels again and the LOO refits the head *without* the memorization of the
  sample's own label in the last layer (``ntk_info.training.reinit_head``).
- ``"pretrained"``: a body pretrained elsewhere (user weights, or another task such as other classes,
  :func:`pretrain_other_classes`) with a fresh head; the SI paper's pretrained setting.

A detector is only as good as the model whose left-out predictions it compares: on harder data the
NTK at a random initialization is a weak classifier, the after kernel a strong one.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["TrainedNetwork", "train_adam", "LINEARIZATIONS", "LinearizationPoint", "linearization_point",
           "pretrain_other_classes", "ridge_by_loo", "grid_edge", "score_at"]

LINEARIZATIONS = ("init", "trained", "trained-head", "pretrained")
TRAINING_LOSSES = ("mse", "cross-entropy")


@dataclasses.dataclass(frozen=True)
class TrainedNetwork:
    """A network trained by :func:`train_adam`.

    ``params``: the weights of the epoch with the lowest validation loss (early stopping);
    ``best_epoch``, ``epochs`` (epochs run); ``train_loss``, ``val_loss`` (epochs,) the mean loss per
    sample (½||f - y||² or cross-entropy, ``settings["loss"]``) after every epoch; ``aum`` (n,) the area under the margin (Pleiss et al. 2020): the
    mean over epochs 1..``epochs`` of f_y(x_i) - max_{c≠y} f_c(x_i), recorded for one-hot targets
    (None otherwise); ``seconds``; ``settings``.
    """

    params: Any
    best_epoch: int
    epochs: int
    train_loss: np.ndarray
    val_loss: np.ndarray
    aum: np.ndarray | None
    seconds: float
    settings: dict


def _margins(out, labels):
    """f_y - max_{c≠y} f_c per row of ``out`` (n, k)."""
    given = jnp.take_along_axis(out, labels[:, None], axis=1)[:, 0]
    other = jnp.where(jax.nn.one_hot(labels, out.shape[1], dtype=bool), -jnp.inf, out).max(axis=1)
    return given - other


def train_adam(apply_fn: Callable, params0, X, Y, X_val, Y_val, *, lr: float = 1e-3, batch_size: int = 64,
               max_epochs: int = 300, patience: int = 20, weight_decay: float = 0.0, seed: int = 0,
               min_epochs: int = 1, loss: str = "mse") -> TrainedNetwork:
    """Train on the mean loss (1/n)Σ_i ℓ(f(x_i), y_i) + (λ/2)||w||² with Adam, keep the best epoch.

    ``loss``: "mse", ℓ = ½||f - y||²; "cross-entropy", ℓ = -Σ_c y_c log softmax(f)_c (targets are class
    probabilities, e.g. one-hot rows), the loss classifiers are usually trained with.

    Adam (``optax.adamw`` with decoupled weight decay λ = ``weight_decay`` toward zero, lr ``lr``) on
    minibatches of ``batch_size`` drawn as a fresh permutation every epoch (``seed``). After every
    epoch the validation loss on (X_val, Y_val) is measured; training stops when it has not improved
    for ``patience`` epochs (or after ``max_epochs``) and the best epoch's weights are returned
    (early stopping). ``patience=None`` trains all ``max_epochs`` and returns the last weights (e.g.
    to reach near-zero training loss). Y, Y_val: float targets of the output shape (n, k).
    """
    X, Y = jnp.asarray(X), jnp.asarray(Y)
    X_val, Y_val = jnp.asarray(X_val), jnp.asarray(Y_val)
    n = X.shape[0]
    out_shape = jax.eval_shape(apply_fn, params0, X[:1]).shape
    if Y.shape != (n, *out_shape[1:]):
        raise ValueError(f"Y: expected float targets of shape {(n, *out_shape[1:])} (the network's outputs), got "
                         f"{Y.shape}; build them with ntk_info.training.targets(labels, num_classes)")
    if Y_val.shape != (X_val.shape[0], *out_shape[1:]):
        raise ValueError(f"Y_val: expected shape {(X_val.shape[0], *out_shape[1:])}, got {Y_val.shape}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite Adam learning rate > 0, got {lr!r}")
    if not (isinstance(batch_size, (int, np.integer)) and 1 <= batch_size):
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    if not (isinstance(max_epochs, (int, np.integer)) and max_epochs >= 1):
        raise ValueError(f"max_epochs: expected an integer >= 1, got {max_epochs!r}")
    if patience is not None and not (isinstance(patience, (int, np.integer)) and patience >= 1):
        raise ValueError(f"patience: expected None (no early stopping) or an integer >= 1, got {patience!r}")
    if loss not in TRAINING_LOSSES:
        raise ValueError(f"loss: expected one of {TRAINING_LOSSES}, got {loss!r}")
    if loss == "cross-entropy" and not (Y.ndim == 2 and jnp.all(Y >= 0) and jnp.allclose(Y.sum(axis=1), 1.0)):
        raise ValueError("loss='cross-entropy': expected Y of shape (n, classes) whose rows are class "
                         "probabilities (e.g. one-hot targets), got other values")
    batch_size = int(min(batch_size, n))
    steps_per_epoch = n // batch_size
    optimizer = optax.adamw(lr, weight_decay=weight_decay) if weight_decay > 0 else optax.adam(lr)
    onehot = bool(Y.ndim == 2 and jnp.all((Y == 0) | (Y == 1)) and jnp.all(Y.sum(axis=1) == 1))
    labels = jnp.argmax(Y, axis=1) if onehot else None

    def per_sample_loss(out, yb):
        out, yb = out.reshape(yb.shape[0], -1), yb.reshape(yb.shape[0], -1)
        if loss == "cross-entropy":
            return -jnp.sum(yb * jax.nn.log_softmax(out, axis=1), axis=1)
        return 0.5 * jnp.sum((out - yb) ** 2, axis=1)

    def batch_loss(params, xb, yb):
        return jnp.mean(per_sample_loss(apply_fn(params, xb), yb))

    @jax.jit
    def epoch(params, opt_state, key):
        order = jax.random.permutation(key, n)[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)

        def step(carry, idx):
            params, opt_state = carry
            grads = jax.grad(batch_loss)(params, X[idx], Y[idx])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), order)
        out = apply_fn(params, X).reshape(n, -1)
        train_loss = jnp.mean(per_sample_loss(out, Y))
        margin = _margins(out, labels) if onehot else jnp.zeros(n)
        return params, opt_state, train_loss, batch_loss(params, X_val, Y_val), margin

    start = time.perf_counter()
    params, opt_state = params0, optimizer.init(params0)
    best = (math.inf, 0, params0)
    train_hist, val_hist, margin_sum = [], [], np.zeros(n)
    key = jax.random.PRNGKey(seed)
    for e in range(1, max_epochs + 1):
        params, opt_state, tr, va, margin = epoch(params, opt_state, jax.random.fold_in(key, e))
        train_hist.append(float(tr))
        val_hist.append(float(va))
        margin_sum += np.asarray(margin)
        if patience is None:
            best = (float(va), e, params)
        elif float(va) < best[0]:
            best = (float(va), e, params)
        elif e >= min_epochs and e - best[1] >= patience:
            break
    epochs = len(train_hist)
    settings = {"optimizer": "adam" if weight_decay == 0 else "adamw", "adam_lr": lr, "batch_size": batch_size,
                "max_epochs": max_epochs, "patience": patience, "adam_weight_decay": weight_decay,
                "loss": loss, "seed": seed, "best_epoch": best[1], "epochs": epochs,
                "early_stopping": "validation loss" if patience is not None else "none (last epoch)"}
    return TrainedNetwork(params=best[2], best_epoch=best[1], epochs=epochs, train_loss=np.asarray(train_hist),
                          val_loss=np.asarray(val_hist), aum=margin_sum / epochs if onehot else None,
                          seconds=time.perf_counter() - start, settings=settings)


@dataclasses.dataclass(frozen=True)
class LinearizationPoint:
    """The parameters w_p to linearize at, which kind they are, and how they were obtained."""

    params: Any
    kind: str
    trained: TrainedNetwork | None
    settings: dict


def linearization_point(kind: str, params0, X=None, Y=None, X_val=None, Y_val=None, *, model=None,
                        apply_fn: Callable | None = None, pretrained_params=None, head_seed: int = 1,
                        train_options: dict | None = None) -> LinearizationPoint:
    """The parameters to linearize at for ``kind`` in ``LINEARIZATIONS``.

    "init": ``params0`` as is. "trained": :func:`train_adam` from ``params0`` on (X, Y) with early
    stopping on (X_val, Y_val) (``train_options`` are its keyword arguments). "trained-head": the
    same, then the last layer re-initialized from ``head_seed`` (``ntk_info.training.reinit_head``;
    needs a stax-layout ``model``). "pretrained": ``pretrained_params`` (a body trained elsewhere,
    e.g. :func:`pretrain_other_classes`) with a fresh head of ``model``.
    """
    from ntk_info.training import reinit_head

    if kind not in LINEARIZATIONS:
        raise ValueError(f"linearize: expected one of {LINEARIZATIONS}, got {kind!r}")
    if kind == "init":
        return LinearizationPoint(params0, kind, None, {"linearize": kind})
    if kind == "pretrained":
        if pretrained_params is None or model is None:
            raise ValueError("linearize='pretrained': pass pretrained_params= (a body trained elsewhere, e.g. "
                             "pretrain_other_classes(...)) and model= (its architecture, for the fresh head)")
        shape = tuple(np.shape(X)[1:]) if X is not None else None
        params = reinit_head(model, pretrained_params, head_seed, input_shape=shape)
        return LinearizationPoint(params, kind, None, {"linearize": kind, "head_seed": head_seed})
    apply_fn = apply_fn if apply_fn is not None else (model.apply_fn if model is not None else None)
    if apply_fn is None:
        raise ValueError(f"linearize={kind!r}: pass model= or apply_fn= to train the network")
    if X is None or Y is None or X_val is None or Y_val is None:
        raise ValueError(f"linearize={kind!r}: training needs X, Y and a validation split X_val, Y_val for "
                         "early stopping")
    trained = train_adam(apply_fn, params0, X, Y, X_val, Y_val, **(train_options or {}))
    settings = {"linearize": kind, **{f"train_{k}": v for k, v in trained.settings.items()},
                "train_seconds": trained.seconds}
    if kind == "trained":
        return LinearizationPoint(trained.params, kind, trained, settings)
    if model is None:
        raise ValueError("linearize='trained-head': pass model= (stax layout) to re-initialize its last layer")
    params = reinit_head(model, trained.params, head_seed, input_shape=tuple(np.shape(X)[1:]))
    return LinearizationPoint(params, kind, trained, {**settings, "head_seed": head_seed})


def pretrain_other_classes(model_factory: Callable, X_other, labels_other, X_val_other, labels_val_other, *,
                           seed: int = 0, train_options: dict | None = None):
    """Pretrain a body on other classes when no pretrained model exists: the weights of a network with
    as many outputs as those classes, trained by :func:`train_adam` with early stopping.

    ``model_factory(num_outputs)`` builds the architecture (same body as the task's model); labels are
    re-encoded to 0..C'-1. Put a fresh task head on the result with ``linearization_point("pretrained",
    ..., pretrained_params=result, model=task_model)``.
    """
    from ntk_info.models import init_params
    from ntk_info.training import targets

    classes = np.unique(np.concatenate([labels_other, labels_val_other]))
    if classes.size < 2:
        raise ValueError(f"labels_other: pretraining needs at least 2 classes, got {classes}")
    y, y_val = np.searchsorted(classes, labels_other), np.searchsorted(classes, labels_val_other)
    model = model_factory(classes.size)
    params0 = init_params(model, tuple(np.shape(X_other)[1:]), seed=seed)
    return train_adam(model.apply_fn, params0, X_other, targets(y, classes.size), X_val_other,
                      targets(y_val, classes.size), seed=seed, **(train_options or {})).params


def ridge_by_loo(features, residuals, grid) -> tuple[float, np.ndarray]:
    """λ from ``grid`` minimizing the exact LOO loss Σ_i ½||y_i - f_{-i}(x_i)||² of the converged ridge
    fit (t = ∞) on ``features`` Φ (n, p) or (n, k, p), with all λ from one factorization
    (``ntk_info.leave_one_out`` with a weight-decay grid). Returns (λ*, LOO loss per λ)."""
    from ntk_info.loo import leave_one_out
    from ntk_info.scores import loo_loss

    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 1 or grid.size == 0 or not np.all(grid > 0):
        raise ValueError(f"grid: expected a 1-D array of λ > 0 (t = ∞ needs λ > 0), got {grid!r}")
    res = leave_one_out(features=features, residuals=residuals, lr=1.0, steps=math.inf, weight_decay=grid,
                        progress=False)
    total = np.asarray(loo_loss(res).total)
    return float(grid[int(np.argmin(total))]), total


def grid_edge(losses) -> str | None:
    """"lower" / "upper" when the smallest LOO loss over an increasing λ grid is at its first / last value
    (no interior optimum on the grid), else None. "upper" at a trained point means fine-tuning from w_p on
    its residuals does not lower the LOO loss at all (w_p already fits the training set: λ → ∞ keeps f(X; w_p),
    and the LOO then only removes the sample from the fine-tuning, not from w_p's own training)."""
    losses = np.asarray(losses, dtype=float)
    if losses.ndim != 1 or losses.size == 0:
        raise ValueError(f"losses: expected a 1-D LOO loss per λ, got shape {losses.shape}")
    best = int(np.argmin(losses))
    return "lower" if best == 0 and losses.size > 1 else "upper" if best == losses.size - 1 and losses.size > 1 \
        else None


def score_at(apply_fn: Callable, params, X, Y, X_val=None, *, steps=math.inf, weight_decay="loo", lr: float = 1.0,
             ridge_grid=None, discrete: bool = False, kernel: str = "auto", coords_per_layer: int = 2000,
             seed: int = 0, method: str = "countsketch", progress: bool = False):
    """``ntk_info.score`` of the network linearized at ``params`` (any point), features computed once.

    Fine-tuning from w_p on the residuals Y - f(X; w_p) for ``steps`` (default t = ∞: the ridge fit
    with decay λ toward w_p). ``weight_decay="loo"`` picks λ from ``ridge_grid`` (default: mean
    kernel diagonal × 10^[-3..2], 6 values) by the exact LOO loss of the t = ∞ fit
    (:func:`ridge_by_loo`, one factorization for the whole grid) and records the grid, the LOO
    losses and whether the minimum is at an end of the grid (:func:`grid_edge`) in the settings.
    Returns a ``ScoreResult`` (``ntk_info.scorer``).
    """
    import time as _time

    from ntk_info.features import projected_features
    from ntk_info.scorer import kernel_for, score_features, trace_features

    start = _time.perf_counter()
    feats = projected_features(apply_fn, params, X, coords_per_layer=coords_per_layer, seed=seed, method=method,
                               progress=progress)
    phi_val = None if X_val is None else feats.projection.features(X_val, progress=progress).phi
    n, k = feats.outputs.shape
    Y = np.asarray(Y, dtype=np.float64).reshape(n, k)
    kernel_used = kernel_for(n, k, kernel)
    extra = {}
    if isinstance(weight_decay, str):
        if weight_decay != "loo":
            raise ValueError(f"weight_decay: expected a number >= 0 or 'loo' (pick λ by exact LOO), got "
                             f"{weight_decay!r}")
        phi = trace_features(feats.phi) if kernel_used == "trace" else feats.phi
        mean_diag = float(np.sum(np.square(phi)) / (n if kernel_used == "trace" else n * k))
        grid = mean_diag * np.logspace(-3, 2, 6) if ridge_grid is None else np.asarray(ridge_grid, dtype=float)
        weight_decay, losses = ridge_by_loo(phi, Y - feats.outputs, grid)
        extra = {"weight_decay_rule": "exact LOO loss of the t = inf ridge fit, minimized over the grid",
                 "weight_decay_grid": grid.tolist(), "weight_decay_grid_loo_loss": losses.tolist(),
                 "weight_decay_at_grid_edge": grid_edge(losses), "kernel_mean_diagonal": mean_diag}
    result = score_features(feats.phi, feats.outputs, Y, phi_val, lr=lr, steps=steps, weight_decay=weight_decay,
                            discrete=discrete, kernel=kernel, progress=progress)
    settings = {**feats.projection.settings(), **result.settings, **extra,
                "seconds_total": _time.perf_counter() - start}
    return dataclasses.replace(result, settings=settings, projection=feats.projection)

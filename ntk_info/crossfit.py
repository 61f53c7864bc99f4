"""Cross-fitted linearization: leave each sample out of the training of the point it is linearized at.

At the "trained" point w* (``ntk_info.linearize``) the exact LOO of the linearized model removes sample
i only from the fine-tuning around w*, not from w*'s own training, so a network that memorized a wrong
label still predicts it. Cross-fitting removes it from both: the training set is split into K folds,
network k is trained (Adam, early stopping) without fold k, and a sample of fold k is scored by the
linearized model around w*_k fine-tuned on every other training sample, left out exactly:

    f_{-i}(x_i) = f(x_i; w*_k) + J_k(x_i) Δw_{-i}                                    (i in fold k, t = ∞)
    Δw_{-i} = argmin_Δw Σ_{j≠i} ½||y_j - f(x_j; w*_k) - J_k(x_j)Δw||² + (λ_k/2)||Δw||²

(``ntk_info.leave_one_out`` with a λ grid, one factorization per fold). λ_k is chosen per fold by the
held-out fold's LOO negative log-likelihood of the given labels (softmax of the outputs at a fitted
temperature, ``ntk_info.scores.loo_temperature``), over a grid that ends at λ = ∞: no fine-tuning, the
plain out-of-fold prediction f(x_i; w*_k) of the network, as in cross-validated confident learning
(Northcutt et al. 2021). The chosen λ_k (and whether it is ∞) is recorded: it says whether the
linearized fine-tune on the other folds improved on the network that never saw the sample.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np

__all__ = ["CrossFitResult", "crossfit_leave_one_out"]


@dataclasses.dataclass(frozen=True)
class CrossFitResult:
    """``loo_outputs`` (n, k): f_{-i}(x_i) of the linearized model around the network that never saw i;
    ``fold`` (n,): the fold of every sample; ``weight_decay`` (K,): λ_k per fold (inf = out-of-fold
    network prediction, no fine-tune); ``loo_nll`` (K, grid): the held-out fold's LOO negative
    log-likelihood per grid value (λ = ∞ last); ``networks``: the K ``TrainedNetwork`` s; ``settings``."""

    loo_outputs: np.ndarray
    fold: np.ndarray
    weight_decay: np.ndarray
    loo_nll: np.ndarray
    networks: list
    settings: dict


def _held_out_nll(outputs, labels) -> float:
    """Mean -log softmax(f/T)[y] at the temperature T fitted on these outputs (``scores.loo_temperature``;
    a T at its search bound still gives the lowest NLL within it, so its warning is not repeated here)."""
    import warnings

    from ntk_info import scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        temperature = scores.loo_temperature(outputs, labels)
    return float(-np.mean(scores.loo_log_prob_given(outputs, labels, temperature)))


def crossfit_leave_one_out(apply_fn: Callable, params0, X, labels, X_val, labels_val, *, num_classes: int,
                           folds: int = 5, loss: str = "cross-entropy", ridge_grid=None, seed: int = 0,
                           train_options: dict | None = None, coords_per_layer: int = 500,
                           method: str = "subsample", progress: bool = False) -> CrossFitResult:
    """Cross-fitted exact LOO outputs of every training sample (module docstring).

    ``apply_fn``, ``params0``: the network and its initialization (every fold starts from it);
    ``labels`` (n,), ``labels_val``: integer classes < ``num_classes`` (targets are one-hot rows);
    (X_val, labels_val) is the early-stopping split. ``loss``: the training loss of
    ``ntk_info.linearize.train_adam`` ("cross-entropy" or "mse"); ``train_options``: its other keyword
    arguments. ``ridge_grid``: λ multiples of the fold's mean kernel diagonal (default 10^[-3..3]);
    λ = ∞ is always a candidate. Features: ``ntk_info.projected_features`` (``coords_per_layer``,
    ``method``; the defaults keep the K factorizations cheap: p = 500 per layer, factored for the zoo's
    Dense layers) at each w*_k.
    """
    from sklearn.model_selection import StratifiedKFold

    from ntk_info.features import projected_features
    from ntk_info.linearize import train_adam
    from ntk_info.loo import leave_one_out
    from ntk_info.training import targets

    labels = np.asarray(labels)
    n = labels.shape[0]
    for name, values in (("labels", labels), ("labels_val", np.asarray(labels_val))):
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer) or values.min(initial=0) < 0 \
                or values.max(initial=0) >= num_classes:
            raise ValueError(f"{name}: expected a 1-D array of integer classes in [0, {num_classes}), got "
                             f"dtype {values.dtype}, shape {values.shape}")
    if np.shape(X)[0] != n:
        raise ValueError(f"labels: expected one label per training input ({np.shape(X)[0]}), got {n}")
    if not (isinstance(folds, (int, np.integer)) and folds >= 2):
        raise ValueError(f"folds: expected an integer >= 2, got {folds!r}")
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() < folds:
        raise ValueError(f"folds: every class needs at least {folds} samples to appear in every fold; class "
                         f"{int(np.argmin(counts))} has {int(counts.min())} (pass fewer folds)")
    multiples = np.logspace(-3, 3, 7) if ridge_grid is None else np.asarray(ridge_grid, dtype=float)
    if multiples.ndim != 1 or multiples.size == 0 or not np.all(multiples > 0):
        raise ValueError(f"ridge_grid: expected a 1-D array of positive multiples, got {ridge_grid!r}")
    Y, Y_val = targets(labels, num_classes), targets(labels_val, num_classes)
    X = np.asarray(X)
    start = time.perf_counter()
    fold = np.empty(n, dtype=int)
    loo_outputs = np.empty((n, num_classes))
    chosen, nll, networks = [], [], []
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for k, (train, held) in enumerate(splitter.split(np.zeros(n), labels)):
        fold[held] = k
        net = train_adam(apply_fn, params0, X[train], Y[train], X_val, Y_val, seed=seed + k, loss=loss,
                         **(train_options or {}))
        networks.append(net)
        feats = projected_features(apply_fn, net.params, X, coords_per_layer=coords_per_layer, seed=seed + k,
                                   method=method, progress=progress)
        outputs = np.asarray(feats.outputs)
        mean_diag = float(np.sum(np.square(feats.phi)) / (n * num_classes))
        res = leave_one_out(features=feats.phi, residuals=Y - outputs, lr=1.0, steps=math.inf,
                            weight_decay=mean_diag * multiples, progress=False)
        # f_{-i}(x_i) = y_i - (fitted residual + self change) per λ; λ = ∞ leaves the network as it is
        candidates = [Y[held] - (np.asarray(res.fitted_residuals)[j] + np.asarray(res.self_prediction_change)[j])[held]
                      for j in range(multiples.size)] + [outputs[held]]
        fold_nll = [_held_out_nll(c, labels[held]) for c in candidates]
        best = int(np.argmin(fold_nll))
        loo_outputs[held] = candidates[best]
        chosen.append(math.inf if best == multiples.size else mean_diag * multiples[best])
        nll.append(fold_nll)
    settings = {"linearize": "crossfit", "folds": folds, "train_loss": loss, "coords_per_layer": coords_per_layer,
                "projection": method,
                "ridge_grid_multiples_of_mean_kernel_diagonal": multiples.tolist() + ["inf"],
                "weight_decay_per_fold": [lam if math.isfinite(lam) else "inf" for lam in chosen],
                "weight_decay_rule": "held-out fold's LOO negative log-likelihood (fitted temperature), "
                                     "minimized over the grid; inf = out-of-fold network prediction",
                "best_epochs": [net.best_epoch for net in networks], "seed": seed,
                "seconds_total": time.perf_counter() - start}
    return CrossFitResult(loo_outputs=loo_outputs, fold=fold, weight_decay=np.asarray(chosen),
                          loo_nll=np.asarray(nll), networks=networks, settings=settings)

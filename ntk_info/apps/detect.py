"""Detecting mislabeled and adversarial samples by their scores (SI paper Fig. 2b, 8, 10; PBRF Fig. 6).

A detector is a per-sample score, higher = more suspicious. Metrics against the known bad samples:
AUROC, average precision (AP), and the fraction of bad samples found when inspecting the top 10 %
and 20 % of the ranking. Candidate scores (all from the same split):

- ``fsi``, ``si``: functional / weight sample information (SI paper eq. 15, 5),
- ``loo_residual``: ||Y_i - f_{-i}(x_i)||, the exact leave-one-out residual of the linearized network,
- ``influence``: GNH influence self-score ∇ℓ_iᵀH⁻¹∇ℓ_i at the trained weights (PBRF paper eq. 6),
- ``mpe``: memory-perturbation sensitivity in logit space (MPE paper eq. 16),
- ``crossfit``: the LOO log-probability of the given label at the cross-fitted point (``ntk_info.crossfit``:
  each sample left out of the linearized network trained without its fold),
- ``pooled_loo_log_prob``: the LOO log-probability of the given label averaged over several linearization
  points (init, trained, trained-head): log-linear pooling of the left-out models,
- ``train_loss``: ½||f(x_i) - y_i||² of the trained network (weak: the network memorizes wrong labels),
- ``cleanlab``: 1 - label quality of cross-validated predicted probabilities of an sklearn MLP
  (an outside baseline; Northcutt et al. 2021).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["SUSPICION_COLUMNS", "suspicion_from_columns", "detection_metrics", "found_fraction", "cleanlab_scores", "training_loss", "influence_and_mpe",
           "loo_detection_scores", "loo_output_scores", "pooled_loo_log_prob", "pooled_log_prob"]


def found_fraction(scores, is_bad, inspect: float) -> float:
    """Fraction of the bad samples among the top ceil(``inspect``·n) scores (ties broken by index)."""
    scores = np.asarray(scores)
    top = np.argsort(-scores, kind="stable")[: int(math.ceil(inspect * scores.size))]
    return float(np.asarray(is_bad)[top].sum() / max(int(np.sum(is_bad)), 1))


def detection_metrics(scores: dict, is_bad) -> list[dict]:
    """AUROC, AP and found@10 %/20 % of every score in ``scores`` (name -> (n,) array) against ``is_bad`` (n,).

    AUROC and AP are sklearn.metrics' ``roc_auc_score`` and ``average_precision_score``
    (AP = Σ_k (R_k - R_{k-1}) P_k over thresholds). Rows are sorted by decreasing AUROC.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    is_bad = np.asarray(is_bad, bool)
    if is_bad.ndim != 1 or is_bad.all() or not is_bad.any():
        raise ValueError(f"is_bad: expected a 1-D mask with both bad and good samples, got {int(is_bad.sum())} "
                         f"bad of {is_bad.size}")
    rows = []
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if s.shape != is_bad.shape:
            raise ValueError(f"scores[{name!r}]: expected shape {is_bad.shape}, got {s.shape}")
        if not np.isfinite(s).all():
            raise ValueError(f"scores[{name!r}]: contains NaN or infinite values")
        rows.append({"method": name, "auroc": float(roc_auc_score(is_bad, s)),
                     "ap": float(average_precision_score(is_bad, s)),
                     "found_top10": found_fraction(s, is_bad, 0.1), "found_top20": found_fraction(s, is_bad, 0.2)})
    rows.sort(key=lambda r: -r["auroc"])
    return rows


def training_loss(apply_fn, params, X, Y) -> np.ndarray:
    """ℓ_i = ½||f(x_i) - y_i||² of the trained network, (n,)."""
    out = np.asarray(apply_fn(params, X)).reshape(len(X), -1)
    return 0.5 * np.sum((out - np.asarray(Y).reshape(len(X), -1)) ** 2, axis=1)


def influence_and_mpe(apply_fn, params, X, Y, *, weight_decay: float, damping: float, exact: bool | None = None,
                      coords_per_layer: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Influence self-scores and MPE sensitivities (logit space) at the trained ``params``, (n,) each.

    With V_i = J_i(JᵀJ + δI)⁻¹J_iᵀ (δ = ``weight_decay`` + ``damping``) and e_i = f(x_i) - y_i:
    influence_i = ∇ℓ_iᵀ(JᵀJ + δI)⁻¹∇ℓ_i = e_iᵀV_ie_i (PBRF paper eq. 6, ∇ℓ_i = J_iᵀe_i) and
    mpe_i = ||V_ie_i|| (MPE paper eq. 15 for the MSE loss, where Λ = I).
    ``exact=True``: exact Jacobians, ``ntk_info.influence.influence`` and ``ntk_info.mpe.mpe_scores``
    (O((n·k)³), memory n·k·d). ``exact=False``: J replaced by projected per-layer Jacobian features Φ
    (``coords_per_layer``, ``seed``) at ``params`` and both scores from one O(n·k·p²) solve
    (``ntk_info.mpe.mpe_from_features``). ``None``: exact when n·k <= 2000.
    """
    from ntk_info.features import projected_features
    from ntk_info.influence import influence
    from ntk_info.mpe import mpe_from_features, mpe_scores

    Y = np.asarray(Y, dtype=np.float64).reshape(len(X), -1)
    if exact is None:
        exact = Y.size <= 2000
    if exact:
        infl = influence(apply_fn, params, X, Y, weight_decay=weight_decay, damping=damping).self_influence
        mpe = mpe_scores(apply_fn, params, X, Y, weight_decay=weight_decay, damping=damping, loss="mse",
                         space="logit").sensitivity
        return np.asarray(infl), np.asarray(mpe)
    feats = projected_features(apply_fn, params, X, coords_per_layer=coords_per_layer, seed=seed, progress=False)
    res = mpe_from_features(feats.phi, feats.outputs, Y, weight_decay=weight_decay, damping=damping, loss="mse",
                            space="logit")
    infl = np.einsum("na,nab,nb->n", res.error, res.variance, res.error)
    return infl, np.asarray(res.sensitivity)


def cleanlab_scores(X, labels, *, num_classes: int, hidden: int = 256, folds: int = 5, seed: int = 0,
                    max_iter: int = 200) -> np.ndarray:
    """1 - cleanlab label quality (self-confidence) on out-of-fold probabilities of an MLPClassifier(hidden).

    Out-of-fold predicted probabilities come from ``folds``-fold stratified cross-validation
    (sklearn ``cross_val_predict``), as cleanlab recommends; higher = more likely mislabeled.
    """
    import warnings

    from cleanlab.rank import get_label_quality_scores
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neural_network import MLPClassifier

    X2 = np.asarray(X).reshape(len(X), -1)
    labels = np.asarray(labels)
    clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probs = cross_val_predict(clf, X2, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                  method="predict_proba")
    if probs.shape[1] != num_classes:
        raise ValueError(f"labels: every fold must see all {num_classes} classes, got {probs.shape[1]}")
    return 1.0 - get_label_quality_scores(labels, probs)


# Detectors whose scores.csv column means "higher = cleaner": that column and the sign that turns it into a
# suspicion score (higher = more suspicious), as detection.csv's AUROC uses it.
SUSPICION_COLUMNS = {"loo_margin": ("loo_margin", -1.0), "loo_prob": ("loo_prob_given", -1.0),
                     "crossfit": ("crossfit_log_prob_given", -1.0), "pooled": ("pooled_log_prob_given", -1.0)}


def suspicion_from_columns(columns: dict, method: str):
    """Detector ``method``'s suspicion score (higher = more suspicious) from scores.csv columns, or None."""
    column, sign = SUSPICION_COLUMNS.get(method, (method, 1.0))
    return None if column not in columns else sign * np.asarray(columns[column], dtype=float)


def loo_detection_scores(result, labels) -> dict:
    """Detection scores from the whole LOO prediction f_{-i}(x_i) = y_i - loo_residual_i of a ``ScoreResult``.

    Returns (n,) arrays: ``loo_margin`` (the left-out margin of the given label, ``ntk_info.scores.loo_margin``;
    low = suspicious), ``loo_prob_given`` (softmax(f_{-i}(x_i)/T)[y_i] with T fitted by LOO likelihood,
    ``loo_probabilities``; ``loo_log_prob_given`` its logarithm, which does not saturate), ``suggested_label`` (argmax_c f_{-i}(x_i)[c]), ``confident_joint`` (1 where the
    confident-learning per-class thresholds flag the sample) and, as floats, ``loo_temperature``. The
    targets must be one-hot rows (``targets="onehot"`` or ``ntk_info.training.targets``).
    """
    labels = np.asarray(labels)
    fitted = np.asarray(result.loo_residuals)
    if fitted.ndim != 2 or fitted.shape[0] != labels.shape[0]:
        raise ValueError(f"result: expected loo_residuals of shape ({labels.shape[0]}, k) for {labels.shape[0]} "
                         f"labels, got {fitted.shape}")
    return loo_output_scores(np.eye(fitted.shape[1])[labels] - fitted, labels)


def loo_output_scores(loo_outputs, labels) -> dict:
    """The detection scores of :func:`loo_detection_scores` from left-out outputs f_{-i}(x_i) (n, k) directly
    (e.g. ``ntk_info.crossfit.CrossFitResult.loo_outputs``)."""
    from ntk_info import scores

    labels = np.asarray(labels)
    loo_outputs = np.asarray(loo_outputs, dtype=np.float64)
    temperature = scores.loo_temperature(loo_outputs, labels)
    probs = scores.loo_probabilities(loo_outputs, temperature=temperature)
    return {"loo_margin": scores.loo_margin(loo_outputs, labels),
            "loo_prob_given": scores.loo_prob_given(probs, labels),
            "loo_log_prob_given": scores.loo_log_prob_given(loo_outputs, labels, temperature),
            "suggested_label": scores.suggested_label(loo_outputs),
            "confident_joint": scores.confident_joint_flags(probs, labels).astype(int),
            "loo_probabilities": probs, "loo_temperature": temperature}


def pooled_loo_log_prob(results, labels) -> np.ndarray:
    """(1/P) Σ_p log P^{(p)}_{-i}(y_i | x_i): the LOO log-probability of the given label averaged over the
    ``ScoreResult`` s of P linearization points (e.g. init, trained, trained-head), each with its own
    LOO-fitted temperature (:func:`loo_detection_scores`). The geometric mean of the left-out models'
    probabilities (log-linear pooling, a product of experts): a sample is only trusted where every model
    trained without it agrees with its label. Low = suspicious."""
    if not results:
        raise ValueError("results: expected at least one ScoreResult (one per linearization point), got none")
    return pooled_log_prob([loo_detection_scores(r, labels)["loo_log_prob_given"] for r in results])


def pooled_log_prob(log_probs) -> np.ndarray:
    """(1/P) Σ_p log P^{(p)}_{-i}(y_i | x_i) of P arrays of left-out log-probabilities of the given labels
    (e.g. :func:`loo_output_scores` of the scored point and of ``ntk_info.crossfit``). Low = suspicious."""
    log_probs = [np.asarray(lp, dtype=np.float64) for lp in log_probs]
    if not log_probs or any(lp.ndim != 1 or lp.shape != log_probs[0].shape for lp in log_probs):
        raise ValueError(f"log_probs: expected one or more (n,) arrays of the same n, got shapes "
                         f"{[lp.shape for lp in log_probs]}")
    return np.mean(log_probs, axis=0)

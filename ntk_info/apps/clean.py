"""Clean, then summarize: remove or relabel the samples a detector flags, and measure what that does.

Flagging (:func:`flag`): by default the samples the model trained *without* them assigns to another
class, i.e. a negative LOO margin (``ntk_info.scores.loo_margin``) — a threshold with no tuning, the
analogue of cleanlab's "predicted label ≠ given label" rule on out-of-sample predictions; or the top
``fraction`` by a suspicion score. Cleaning (:func:`clean`): ``"remove"`` drops the flagged samples,
``"relabel"`` gives them the LOO-suggested label (``ntk_info.scores.suggested_label``).
:func:`clean_and_evaluate` retrains the network on the data before and after (``ntk_info.linearize
.train_adam``, early stopping on the validation split) and reports test accuracy both ways, so that
summarization afterwards runs on cleaned data.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["CleanResult", "flag", "clean", "clean_and_evaluate", "ACTIONS"]

ACTIONS = ("remove", "relabel")


@dataclasses.dataclass(frozen=True)
class CleanResult:
    """``keep`` (n,) bool: samples kept; ``labels`` (n,): labels after cleaning (relabelled where flagged and
    ``action="relabel"``); ``flagged`` (n,) bool; ``action``; ``rule`` (how samples were flagged)."""

    keep: np.ndarray
    labels: np.ndarray
    flagged: np.ndarray
    action: str
    rule: str

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())


def flag(loo_margin=None, *, suspicion=None, fraction: float | None = None) -> tuple[np.ndarray, str]:
    """Flag samples: loo_margin < 0 (default), or the top ceil(``fraction``·n) of ``suspicion`` (higher = worse).

    Returns (flagged (n,) bool, the rule in words).
    """
    if fraction is None:
        if loo_margin is None:
            raise ValueError("loo_margin: needed for the default rule (flag where the LOO margin is negative); or "
                             "pass suspicion= and fraction=")
        margin = np.asarray(loo_margin, dtype=np.float64)
        return margin < 0, "LOO margin < 0 (the model trained without the sample predicts another class)"
    if suspicion is None:
        raise ValueError("suspicion: needed with fraction= (flag the top fraction by this score)")
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction!r}")
    s = np.asarray(suspicion, dtype=np.float64)
    if s.ndim != 1 or not np.isfinite(s).all():
        raise ValueError(f"suspicion: expected a finite 1-D score per sample, got shape {s.shape}")
    top = np.argsort(-s, kind="stable")[: int(math.ceil(fraction * s.size))]
    flagged = np.zeros(s.size, bool)
    flagged[top] = True
    return flagged, f"top {fraction:g} by suspicion"


def clean(labels, flagged, *, action: str = "remove", suggested=None, rule: str = "given") -> CleanResult:
    """Remove (``action="remove"``) or relabel to ``suggested`` (``action="relabel"``) the ``flagged`` samples."""
    labels = np.asarray(labels)
    flagged = np.asarray(flagged, dtype=bool)
    if flagged.shape != labels.shape:
        raise ValueError(f"flagged: expected shape {labels.shape} (one per label), got {flagged.shape}")
    if action not in ACTIONS:
        raise ValueError(f"action: expected one of {ACTIONS}, got {action!r}")
    if action == "remove":
        if flagged.all():
            raise ValueError("flagged: every sample is flagged; removing them leaves nothing to train on")
        return CleanResult(~flagged, labels.copy(), flagged, action, rule)
    if suggested is None:
        raise ValueError("suggested: action='relabel' needs the suggested labels (e.g. loo_detection_scores(...)"
                         "['suggested_label'])")
    suggested = np.asarray(suggested)
    if suggested.shape != labels.shape:
        raise ValueError(f"suggested: expected shape {labels.shape}, got {suggested.shape}")
    return CleanResult(np.ones(labels.size, bool), np.where(flagged, suggested, labels), flagged, action, rule)


def clean_and_evaluate(apply_fn, params0, X, labels, cleaned: CleanResult, X_val, y_val, X_test, y_test, *,
                       num_classes: int, true_labels=None, train_options: dict | None = None) -> dict:
    """Test accuracy of the network trained on the data as given and on the cleaned data (same init).

    Training: :func:`ntk_info.linearize.train_adam` from ``params0`` with early stopping on (X_val,
    y_val). Returns accuracy_before, accuracy_after, n_flagged, n_kept, and with ``true_labels`` the
    label precision of the flags (fraction of flagged samples whose label was wrong), the wrong labels
    left in the training set before/after cleaning.
    """
    import jax.numpy as jnp

    from ntk_info.linearize import train_adam
    from ntk_info.training import targets

    labels = np.asarray(labels)
    Y_val = targets(np.asarray(y_val), num_classes)

    def accuracy(keep, y):
        net = train_adam(apply_fn, params0, X[keep], targets(y[keep], num_classes), X_val, Y_val,
                         **(train_options or {}))
        pred = np.argmax(np.asarray(apply_fn(net.params, jnp.asarray(X_test))).reshape(len(X_test), -1), axis=1)
        return float(np.mean(pred == np.asarray(y_test)))

    everything = np.ones(labels.size, bool)
    out = {"action": cleaned.action, "rule": cleaned.rule, "n_flagged": cleaned.n_flagged,
           "n_kept": int(cleaned.keep.sum()), "accuracy_before": accuracy(everything, labels),
           "accuracy_after": accuracy(cleaned.keep, cleaned.labels)}
    if true_labels is not None:
        true_labels = np.asarray(true_labels)
        wrong = labels != true_labels
        out["flag_precision"] = float(wrong[cleaned.flagged].mean()) if cleaned.n_flagged else float("nan")
        out["wrong_labels_before"] = int(wrong.sum())
        out["wrong_labels_after"] = int((cleaned.labels != true_labels)[cleaned.keep].sum())
    return out

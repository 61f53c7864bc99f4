"""Which data source (or group, e.g. subclass) is worth more to the model? (SI paper §6, Fig. 2a and 9.)

The question a user asks is what each source is worth: how the model does without it, and with only
it. ``source_table`` answers it exactly for the linearized network (``ntk_info.group_loo``: the model
retrained without every sample of the source, and trained on only them), in validation loss and
accuracy (and test accuracy), next to per-source summaries of the per-sample scores. Per-sample F-SI
measures surprise, and wrong labels are surprising: a source with flipped labels has *higher* mean
F-SI and LOO residual while being worth *less* — read the per-sample scores as "how unusual", the
leave-source-out columns as "how valuable". ``retrained_source_accuracy`` checks the linearized
answer against the real network retrained without (and on only) each source.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["group_summary", "QUANTILES", "classification_metrics", "source_table", "network_source_table",
           "retrained_source_accuracy",
           "add_retrained_columns", "format_table", "SOURCE_COLUMNS"]

QUANTILES = (0.1, 0.25, 0.75, 0.9)
SOURCE_COLUMNS = ("by", "group", "count", "val_loss_without", "val_accuracy_without", "delta_val_loss_without",
                  "delta_val_accuracy_without", "val_loss_only", "val_accuracy_only", "delta_val_loss_only",
                  "delta_val_accuracy_only")


def group_summary(scores, groups, *, score_name: str = "fsi") -> list[dict]:
    """One row per distinct value of ``groups`` (n,): count, mean, median and ``QUANTILES`` of ``scores`` (n,).

    Rows are sorted by decreasing mean (most informative source first); a last row ``(all)`` covers
    every sample.
    """
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    if scores.ndim != 1 or groups.shape != scores.shape:
        raise ValueError(f"groups: expected one group per score ({scores.shape}), got shape {groups.shape}")
    if scores.size == 0:
        raise ValueError("scores: expected at least one sample, got none")

    def row(name, values):
        out = {"group": str(name), "score": score_name, "count": int(values.size), "mean": float(values.mean()),
               "median": float(np.median(values))}
        out.update({f"q{int(round(100 * q)):02d}": float(np.quantile(values, q)) for q in QUANTILES})
        return out

    rows = [row(g, scores[groups == g]) for g in np.unique(groups)]
    rows.sort(key=lambda r: -r["mean"])
    return rows + [row("(all)", scores)]


def classification_metrics(outputs, labels) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss ½||f(x) - e_y||² (the training loss, one-hot targets) and accuracy over the last-but-one
    axis of ``outputs`` (..., m, k); the predicted class is argmax_k f (one output: f > 0 is class 1)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    labels = np.asarray(labels)
    k = outputs.shape[-1]
    if k == 1:
        targets, pred = labels[:, None].astype(np.float64), (outputs[..., 0] > 0).astype(int)
    else:
        targets, pred = np.eye(k)[labels], np.argmax(outputs, axis=-1)
    loss = 0.5 * np.mean(np.sum((outputs - targets) ** 2, axis=-1), axis=-1)
    return loss, np.mean(pred == labels, axis=-1)


def _check_cross(name, features, outputs0, labels, train_features):
    if features is None:
        return None
    features, outputs0, labels = np.asarray(features), np.asarray(outputs0), np.asarray(labels)
    if features.shape[1:] != train_features.shape[1:]:
        raise ValueError(f"{name}_features: expected shape (m, {', '.join(map(str, train_features.shape[1:]))}) to "
                         f"match features {train_features.shape}, got {features.shape}")
    if outputs0.ndim != 2 or outputs0.shape[0] != features.shape[0] or labels.shape != (features.shape[0],):
        raise ValueError(f"{name}_outputs0 / {name}_labels: expected ({features.shape[0]}, k) outputs of the network "
                         f"at initialization and ({features.shape[0]},) labels, got {outputs0.shape} and "
                         f"{labels.shape}")
    return features, outputs0, labels


def source_table(*, features, residuals, labels, groups, lr, steps, weight_decay=0.0, discrete=True,
                 val_features, val_outputs0, val_labels, test_features=None, test_outputs0=None, test_labels=None,
                 scores: dict | None = None, flag_score: str = "loo_residual", flag_fraction: float = 0.1,
                 by: str = "source", method: str = "auto") -> list[dict]:
    """One row per source (distinct value of ``groups`` (n,)) and a last row ``(all)`` (the full model).

    The linearized network f(x) = f0(x) + Φ(x)(w - w0) on ``features`` Φ (n, p) [k outputs sharing
    the kernel, e.g. the trace kernel] or (n, k, p), ``residuals`` Y - f0(X) (n, k), one-hot targets of
    ``labels`` (n,), trained as ``ntk_info.leave_one_out`` (``lr``, ``steps``, ``weight_decay``,
    ``discrete``), retrained exactly without each source and on only each source
    (``ntk_info.group_loo.leave_group_out``, ``method``). Validation (and test) inputs: their features
    Φ_v, the network's outputs f0 at initialization (m, k) and labels (m,).

    Columns: by, group, count; val_loss_without, val_accuracy_without (model trained without the
    source) and delta_* = without - full; val_loss_only, val_accuracy_only and delta_* = only - full;
    test_accuracy_without/_only (with test inputs); heldout_loss, heldout_accuracy (the source's own
    samples predicted by the model trained without it, against their labels — low for a source whose
    labels the rest of the data contradicts); weight_change_sq ||w - w_{-source}||²; for each
    per-sample score in ``scores`` (name -> (n,)): mean, median, q10, q90; flagged_share: the fraction of
    the source among the top ``flag_fraction`` of ``scores[flag_score]`` (what detection would flag).
    Loss: mean over inputs of ½||f(x) - e_y||²; accuracy: argmax.
    """
    from ntk_info.group_loo import leave_group_out

    features = np.asarray(features, dtype=np.float64)
    residuals = np.asarray(residuals, dtype=np.float64)
    labels, groups = np.asarray(labels), np.asarray(groups)
    n = features.shape[0]
    if residuals.ndim != 2 or residuals.shape[0] != n:
        raise ValueError(f"residuals: expected shape ({n}, k) (Y - f0(X), one column per output), got "
                         f"{residuals.shape}")
    if labels.shape != (n,) or groups.shape != (n,):
        raise ValueError(f"labels / groups: expected one entry per sample, shape ({n},), got {labels.shape} and "
                         f"{groups.shape}")
    if not 0 < flag_fraction < 1:
        raise ValueError(f"flag_fraction: expected a fraction in (0, 1), got {flag_fraction}")
    scores = {name: np.asarray(v, dtype=np.float64) for name, v in (scores or {}).items()}
    for name, values in scores.items():
        if values.shape != (n,):
            raise ValueError(f"scores[{name!r}]: expected shape ({n},), got {values.shape}")
    if scores and flag_score not in scores:
        raise ValueError(f"flag_score: {flag_score!r} is not among the scores {sorted(scores)}")
    val = _check_cross("val", val_features, val_outputs0, val_labels, features)
    test = _check_cross("test", test_features, test_outputs0, test_labels, features)
    cross = np.concatenate([val[0]] + ([test[0]] if test else []))
    res = leave_group_out(features=features, residuals=residuals, groups=groups, lr=lr, steps=steps,
                          weight_decay=weight_decay, discrete=discrete, cross_features=cross, method=method)
    m_val = val[0].shape[0]
    k = residuals.shape[1]
    offset = np.concatenate([val[1]] + ([test[1]] if test else [])).reshape(-1, k)

    def split(fit):  # f - f0 at the stacked cross inputs -> (val outputs, test outputs)
        out = np.asarray(fit).reshape(fit.shape[:-2] + (-1, k)) + offset
        return out[..., :m_val, :], out[..., m_val:, :]

    (full_val, full_test), (without_val, without_test), (only_val, only_test) = \
        split(res.cross_fit), split(res.cross_fit_without), split(res.cross_fit_only)
    full_loss, full_acc = classification_metrics(full_val, val[2])
    wo_loss, wo_acc = classification_metrics(without_val, val[2])
    on_loss, on_acc = classification_metrics(only_val, val[2])
    targets = np.eye(k)[labels] if k > 1 else labels[:, None].astype(np.float64)
    held_out = np.asarray(res.held_out_residuals).reshape(n, k)
    if scores:
        top = np.argsort(-scores[flag_score], kind="stable")[: int(math.ceil(flag_fraction * n))]
        flagged = np.zeros(n, bool)
        flagged[top] = True
    rows = []
    for g, name in enumerate(res.groups):
        members = groups == name
        row = {"by": by, "group": str(name), "count": int(res.sizes[g]),
               "val_loss_without": float(wo_loss[g]), "val_accuracy_without": float(wo_acc[g]),
               "delta_val_loss_without": float(wo_loss[g] - full_loss),
               "delta_val_accuracy_without": float(wo_acc[g] - full_acc),
               "val_loss_only": float(on_loss[g]), "val_accuracy_only": float(on_acc[g]),
               "delta_val_loss_only": float(on_loss[g] - full_loss),
               "delta_val_accuracy_only": float(on_acc[g] - full_acc)}
        if test:
            row["test_accuracy_without"] = float(classification_metrics(without_test[g], test[2])[1])
            row["test_accuracy_only"] = float(classification_metrics(only_test[g], test[2])[1])
        held_loss, held_acc = classification_metrics((targets - held_out)[members], labels[members])
        row.update(heldout_loss=float(held_loss), heldout_accuracy=float(held_acc),
                   weight_change_sq=float(res.weight_change_sq[g]))
        for score_name, values in scores.items():
            part = values[members]
            row.update({f"{score_name}_mean": float(part.mean()), f"{score_name}_median": float(np.median(part)),
                        f"{score_name}_q10": float(np.quantile(part, 0.1)),
                        f"{score_name}_q90": float(np.quantile(part, 0.9))})
        if scores:
            row["flagged_share"] = float(flagged[members].mean())
        rows.append(row)
    total = {key: "" for key in rows[0]}
    total.update(by=by, group="(all)", count=n, val_loss_only=float(full_loss), val_accuracy_only=float(full_acc))
    if test:
        total["test_accuracy_only"] = float(classification_metrics(full_test, test[2])[1])
    for score_name, values in scores.items():
        total.update({f"{score_name}_mean": float(values.mean()), f"{score_name}_median": float(np.median(values)),
                      f"{score_name}_q10": float(np.quantile(values, 0.1)),
                      f"{score_name}_q90": float(np.quantile(values, 0.9))})
    if scores:
        total["flagged_share"] = float(flag_fraction)
    return rows + [total]


def network_source_table(apply_fn, params0, X, Y, labels, groups, X_val, y_val, X_test=None, y_test=None, *, lr,
                         steps, weight_decay=0.0, discrete=True, coords_per_layer=2000, seed=0,
                         projection="countsketch", kernel="trace", scores=None, by="source", method="auto",
                         progress=True) -> list[dict]:
    """``source_table`` for a network ``apply_fn`` linearized at ``params0``: projected per-layer Jacobian
    features (``ntk_info.projected_features``, one projection for the training, validation and test
    inputs; ``coords_per_layer``, ``seed``, ``projection``), residuals Y - f0(X), and f0 at the
    validation/test inputs. ``kernel="trace"``: the k outputs share the output-averaged kernel (as
    ``ntk_info.score(kernel="trace")``); ``"full"``: the (n·k)² kernel.
    """
    from ntk_info.features import projected_features

    if kernel not in ("trace", "full"):
        raise ValueError(f"kernel: expected 'trace' or 'full', got {kernel!r}")
    feats = projected_features(apply_fn, params0, X, coords_per_layer=coords_per_layer, seed=seed, method=projection,
                               progress=progress)
    cross = [feats.projection.features(A, progress=progress) for A in (X_val, X_test) if A is not None]
    n, k = feats.outputs.shape

    def shaped(phi):
        return phi.reshape(phi.shape[0], -1) / math.sqrt(k) if kernel == "trace" else phi

    test = dict(test_features=shaped(cross[1].phi), test_outputs0=cross[1].outputs, test_labels=y_test) \
        if X_test is not None else {}
    return source_table(features=shaped(feats.phi), residuals=np.asarray(Y, np.float64) - feats.outputs,
                        labels=labels, groups=groups, lr=lr, steps=steps, weight_decay=weight_decay,
                        discrete=discrete, val_features=shaped(cross[0].phi), val_outputs0=cross[0].outputs,
                        val_labels=y_val, scores=scores, by=by, method=method, **test)


def retrained_source_accuracy(apply_fn, params0, X, Y, groups, X_val, y_val, *, lr: float, steps: int,
                              weight_decay: float = 0.0, progress: bool = True) -> dict:
    """The real network retrained from ``params0`` without each source and on only each source.

    Returns {"full": accuracy, "without": {group: accuracy}, "only": {group: accuracy}} on (X_val, y_val),
    with the training of ``ntk_info.training.train`` (sum loss, ``steps`` full-batch GD steps), all
    subsets trained at once (``ntk_info.apps.summarize.retrain_accuracy``).
    """
    from ntk_info.apps.summarize import retrain_accuracy

    groups = np.asarray(groups)
    names = np.unique(groups)
    masks = np.concatenate([np.ones((1, groups.size))] + [(groups != g)[None] for g in names]
                           + [(groups == g)[None] for g in names]).astype(np.float64)
    acc = retrain_accuracy(apply_fn, params0, X, Y, masks, X_val, y_val, lr=lr, steps=steps,
                           weight_decay=weight_decay, progress=progress)
    G = names.size
    return {"full": float(acc[0]), "without": {str(g): float(a) for g, a in zip(names, acc[1:1 + G])},
            "only": {str(g): float(a) for g, a in zip(names, acc[1 + G:])}}


def add_retrained_columns(rows: list[dict], retrained: dict) -> list[dict]:
    """Put the real network's accuracies (``retrained_source_accuracy``) beside the linearized ones."""
    out = []
    for row in rows:
        row = dict(row)
        if row["group"] == "(all)":
            row.update(val_accuracy_without_retrained="", delta_val_accuracy_without_retrained="",
                       val_accuracy_only_retrained=retrained["full"])
        else:
            without = retrained["without"][row["group"]]
            row.update(val_accuracy_without_retrained=without,
                       delta_val_accuracy_without_retrained=without - retrained["full"],
                       val_accuracy_only_retrained=retrained["only"][row["group"]])
        out.append(row)
    return out


def format_table(rows: list[dict], keys) -> str:
    """Fixed-width text table; floats with 4 significant digits (1.234e-05, never 0.0000)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    keys = [k for k in keys if any(k in r for r in rows)]
    width = {k: max(len(k), *(len(cell(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(f"{k:>{width[k]}}" for k in keys)]
    lines += ["  ".join(f"{cell(r.get(k, '')):>{width[k]}}" for k in keys) for r in rows]
    return "\n".join(lines)

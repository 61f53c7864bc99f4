"""Clean, then summarize: flag rules by hand, and the planted-noise story end to end."""
import numpy as np
import pytest

from ntk_info.apps.clean import clean, clean_and_evaluate, flag


def test_flag_and_clean_by_hand():
    margin = np.array([0.5, -0.1, 0.0, -2.0])
    flagged, rule = flag(margin)
    assert flagged.tolist() == [False, True, False, True] and "margin" in rule
    flagged, _ = flag(suspicion=np.array([0.1, 0.9, 0.5, 0.2]), fraction=0.5)
    assert flagged.tolist() == [False, True, True, False]
    labels = np.array([0, 1, 2, 0])
    removed = clean(labels, [False, True, False, True])
    assert removed.keep.tolist() == [True, False, True, False] and removed.labels.tolist() == [0, 1, 2, 0]
    relabelled = clean(labels, [False, True, False, True], action="relabel", suggested=np.array([0, 2, 1, 1]))
    assert relabelled.keep.all() and relabelled.labels.tolist() == [0, 2, 2, 1]
    with pytest.raises(ValueError, match="suggested"):
        clean(labels, [True, False, False, False], action="relabel")
    with pytest.raises(ValueError, match="fraction"):
        flag(suspicion=np.ones(4), fraction=1.5)
    with pytest.raises(ValueError, match="every sample"):
        clean(labels, [True] * 4)


def test_planted_noise_clean_then_summarize():
    """Blobs with 10 % flipped labels: the LOO margin at the trained-head point flags them, cleaning
    removes (or fixes) them, and afterwards the top-F-SI samples are no longer mostly wrong labels."""
    from sklearn.datasets import make_blobs

    from ntk_info.apps.detect import loo_detection_scores
    from ntk_info.apps.summarize import keep_masks
    from ntk_info.data import add_label_noise
    from ntk_info.linearize import linearization_point, score_at
    from ntk_info.models import init_params, mlp
    from ntk_info.training import targets

    X_all, y_all = make_blobs(n_samples=140, centers=[(-4, 0), (4, 0), (0, 6)], cluster_std=1.0, random_state=0)
    X_all = (X_all - X_all.mean(0)) / X_all.std(0)
    X, y = X_all[:80], y_all[:80]
    X_val, y_val, X_test, y_test = X_all[80:110], y_all[80:110], X_all[110:], y_all[110:]
    labels, is_noisy, _ = add_label_noise(y, 0.1, 3, seed=0)
    model = mlp(3, width=32)
    params0 = init_params(model, X.shape[1:], seed=0)
    opts = dict(lr=1e-2, batch_size=16, max_epochs=100, patience=10)
    point = linearization_point("trained-head", params0, X, targets(labels, 3), X_val, targets(y_val, 3), model=model,
                                train_options=opts)
    result = score_at(model.apply_fn, point.params, X, targets(labels, 3), X_val, coords_per_layer=10_000)
    loo = loo_detection_scores(result, labels)
    flagged, rule = flag(loo["loo_margin"])
    # the flags are the planted flips (blobs are separable: every flip is detectable)
    assert (flagged & is_noisy).sum() >= 0.75 * is_noisy.sum()
    assert (flagged & ~is_noisy).sum() <= 2
    assert np.mean(loo["suggested_label"][is_noisy] == y[is_noisy]) >= 0.75

    relabelled = clean(labels, flagged, action="relabel", suggested=loo["suggested_label"], rule=rule)
    assert np.sum(relabelled.labels != y) <= 0.25 * np.sum(labels != y)
    cleaned = clean(labels, flagged, rule=rule)
    report = clean_and_evaluate(model.apply_fn, params0, X, labels, cleaned, X_val, y_val, X_test, y_test,
                                num_classes=3, true_labels=y, train_options=opts)
    assert report["wrong_labels_before"] == is_noisy.sum()
    assert report["wrong_labels_after"] <= 0.25 * report["wrong_labels_before"]
    assert report["flag_precision"] >= 0.7
    assert report["accuracy_after"] >= report["accuracy_before"] - 1 / 30

    # summarize: before cleaning the highest-F-SI 10 % are mostly flipped labels; after, few are
    top_before = keep_masks(np.asarray(result.fsi), [0.9], "bottom")[0].astype(bool)  # removes the bottom 90 %
    kept = np.flatnonzero(cleaned.keep)
    after = score_at(model.apply_fn, point.params, X[kept], targets(labels[kept], 3), X_val, coords_per_layer=10_000,
                     weight_decay=result.settings["weight_decay"])
    top_after = keep_masks(np.asarray(after.fsi), [0.9], "bottom")[0].astype(bool)
    wrong_before = np.mean(is_noisy[top_before])
    wrong_after = np.mean(is_noisy[kept][top_after])
    assert wrong_before >= 0.5 and wrong_after <= 0.25


@pytest.mark.slow
def test_cli_detect_linearize_trained_head_and_clean(tmp_path, capsys):
    """`ntk-info detect --linearize trained-head --clean relabel`: the new columns, clean.csv, settings."""
    import json

    from ntk_info.cli import main
    from ntk_info.report import read_csv

    out = tmp_path / "d"
    status = main(["detect", "--out", str(out), "--n-train", "60", "--width", "16", "--coords-per-layer", "200",
                   "--no-progress", "--methods", "loo_residual,loo_margin,loo_prob", "--linearize", "trained-head",
                   "--clean", "relabel"])
    stdout, err = capsys.readouterr()
    assert status == 0, err
    scores = read_csv(out / "scores.csv")
    assert {"loo_margin", "loo_prob_given", "suggested_label"} <= set(scores[0])
    flagged = [r for r in scores if r["loo_margin"] < 0]
    clean_rows = read_csv(out / "clean.csv")
    assert sorted(r["index"] for r in clean_rows if r["flagged"] == 1) == sorted(r["index"] for r in flagged)
    for r in clean_rows:  # relabelled to the LOO-suggested class
        if r["flagged"] == 1:
            assert str(r["new_label"]) == str(scores[int(r["index"])]["suggested_label"])
    settings = json.loads((out / "settings.json").read_text())
    assert settings["linearize"] == "trained-head" and settings["clean"]["action"] == "relabel"
    assert settings["linearize_weight_decay"] > 0 and "test accuracy" in stdout

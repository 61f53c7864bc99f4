"""Detection metrics on hand-computed cases, removal masks, vmapped retraining, source summaries, cleanlab."""
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_info.apps.detect import cleanlab_scores, detection_metrics, found_fraction, training_loss
from ntk_info.apps.sources import group_summary
from ntk_info.apps.summarize import iterative_keep_masks, keep_masks, retrain_accuracy
from ntk_info.training import train


def test_detection_metrics_hand_computed():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    bad = np.array([1, 0, 1, 0, 0, 0], bool)
    (row,) = detection_metrics({"s": scores}, bad)
    # AUROC: pairs (bad, good) ordered correctly: 0.9 beats all 4 goods, 0.7 beats 3 of 4 -> 7/8
    assert row["auroc"] == pytest.approx(7 / 8)
    # AP: precision at each bad sample's rank, averaged: (1/1 + 2/3) / 2
    assert row["ap"] == pytest.approx((1 + 2 / 3) / 2)
    # top 10% of 6 = 1 sample (one of two bad), top 20% = 2 samples (still one bad)
    assert row["found_top10"] == 0.5 and row["found_top20"] == 0.5
    assert found_fraction(scores, bad, 0.5) == 1.0


def test_detection_metrics_ties_and_order():
    bad = np.array([1, 0, 0, 1], bool)
    rows = detection_metrics({"tied": np.ones(4), "perfect": np.array([2.0, 0, 0, 1])}, bad)
    assert [r["method"] for r in rows] == ["perfect", "tied"]  # sorted by AUROC
    assert rows[0]["auroc"] == 1.0 and rows[0]["ap"] == 1.0
    assert rows[1]["auroc"] == 0.5  # a tie counts one half


def test_detection_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="both bad and good"):
        detection_metrics({"s": np.ones(3)}, np.zeros(3, bool))
    with pytest.raises(ValueError, match=r"scores\['s'\]: expected shape \(3,\)"):
        detection_metrics({"s": np.ones(4)}, np.array([1, 0, 0], bool))
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics({"s": np.array([1.0, np.nan, 0])}, np.array([1, 0, 0], bool))


def test_keep_masks():
    scores = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 0.0, 6.0, 7.0, 8.0, 9.0])
    bottom = keep_masks(scores, [0.2, 0.5], "bottom")
    np.testing.assert_array_equal(np.flatnonzero(bottom[0] == 0), [1, 5])
    np.testing.assert_array_equal(np.flatnonzero(bottom[1] == 0), [1, 2, 3, 4, 5])
    top = keep_masks(scores, [0.3], "top")
    np.testing.assert_array_equal(np.flatnonzero(top[0] == 0), [7, 8, 9])
    rand = keep_masks(scores, [0.1, 0.4], "random", seed=3)
    assert rand.sum(axis=1).tolist() == [9, 6] and (rand[1] <= rand[0]).all()  # nested
    with pytest.raises(ValueError, match="fractions"):
        keep_masks(scores, [1.0], "bottom")
    with pytest.raises(ValueError, match="strategy"):
        keep_masks(scores, [0.1], "middle")


def test_iterative_masks_rescore_on_the_kept_set():
    rng = np.random.default_rng(0)
    points = np.sort(rng.uniform(size=40))

    def isolation(kept):  # distance to the nearest kept neighbour: changes when neighbours go
        p = points[kept]
        d = np.abs(p[:, None] - p[None, :]) + np.eye(p.size) * 9
        return d.min(axis=1)

    masks = iterative_keep_masks(isolation, 40, [0.1, 0.25], step=0.025, progress=False)
    # reference: remove 1 (2.5% of 40) lowest at a time, rescoring; 0.25 -> 10 removals
    kept = np.arange(40)
    snaps = {}
    for removed in range(1, 11):
        kept = np.sort(kept[np.argsort(isolation(kept), kind="stable")[1:]])
        snaps[removed] = kept
    np.testing.assert_array_equal(np.flatnonzero(masks[0]), snaps[4])
    np.testing.assert_array_equal(np.flatnonzero(masks[1]), snaps[10])
    once = keep_masks(isolation(np.arange(40)), [0.25], "bottom")
    assert not np.array_equal(once[0], masks[1])  # recomputing changes the choice here


def test_retrain_accuracy_vmapped_equals_training_on_the_subset():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 3))
    labels = (X[:, 0] + 0.3 * rng.normal(size=30) > 0).astype(int)
    Y = np.eye(2)[labels]
    X_test = rng.normal(size=(50, 3))
    y_test = (X_test[:, 0] > 0).astype(int)
    apply_fn = lambda w, x: x @ w  # noqa: E731
    w0 = jnp.asarray(rng.normal(size=(3, 2)) * 0.1)
    masks = keep_masks(X[:, 0] * (2 * labels - 1), [0.0, 0.3, 0.6], "top")
    acc = retrain_accuracy(apply_fn, w0, X, Y, masks, X_test, y_test, lr=0.01, steps=50, weight_decay=0.1,
                           chunk=2, progress=False)
    for mask, a in zip(masks, acc):
        keep = mask > 0
        w = train(apply_fn, w0, X[keep], Y[keep], lr=0.01, steps=50, weight_decay=0.1)
        assert a == pytest.approx(np.mean(np.argmax(X_test @ np.asarray(w), axis=1) == y_test))
    assert acc[0] > acc[2]  # removing the most confidently right samples hurts


def test_training_loss():
    Y = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = training_loss(lambda w, x: x * w, 2.0, np.array([[1.0, 0.0], [0.0, 0.0]]), Y)
    np.testing.assert_allclose(out, [0.5 * 1.0, 0.5 * 1.0])


def test_group_summary():
    scores = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    groups = np.array(["a", "a", "a", "b", "b"])
    rows = group_summary(scores, groups)
    assert [r["group"] for r in rows] == ["b", "a", "(all)"]
    assert rows[0]["mean"] == 15.0 and rows[0]["count"] == 2 and rows[0]["median"] == 15.0
    assert rows[1]["q25"] == pytest.approx(1.5) and rows[1]["q75"] == pytest.approx(2.5)
    assert rows[2]["count"] == 5 and rows[2]["mean"] == pytest.approx(7.2)
    with pytest.raises(ValueError, match="one group per score"):
        group_summary(scores, groups[:3])


def test_cleanlab_flags_a_flipped_label():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-3, 0.5, size=(30, 2)), rng.normal(3, 0.5, size=(30, 2))])
    labels = np.repeat([0, 1], 30)
    labels[[4, 40]] = 1 - labels[[4, 40]]
    s = cleanlab_scores(X, labels, num_classes=2, hidden=8, folds=3, max_iter=200)
    assert set(np.argsort(-s)[:2]) == {4, 40}


def test_influence_and_mpe_features_route_equals_exact_route():
    from ntk_info.apps.detect import influence_and_mpe
    from ntk_info.influence import influence
    from ntk_info.models import get_model, init_params

    rng = np.random.default_rng(0)
    model = get_model("mlp", 3, width=6)
    params = init_params(model, (4,), seed=0)
    X = rng.normal(size=(10, 4))
    Y = np.eye(3)[rng.integers(0, 3, size=10)]
    exact = influence_and_mpe(model.apply_fn, params, X, Y, weight_decay=0.0, damping=0.1, exact=True)
    # every leaf (at most 24 coordinates) is kept whole: Φ = J exactly
    feats = influence_and_mpe(model.apply_fn, params, X, Y, weight_decay=0.0, damping=0.1, exact=False,
                              coords_per_layer=100)
    np.testing.assert_allclose(feats[0], exact[0], rtol=1e-8)
    np.testing.assert_allclose(feats[1], exact[1], rtol=1e-8)
    # brute force: e_iᵀ J_i (JᵀJ + δI)⁻¹ J_iᵀ e_i with the dense Jacobian
    from ntk_info.influence import flat_jacobian

    J = np.asarray(flat_jacobian(model.apply_fn, params, X))  # (n, k, d)
    E = np.asarray(model.apply_fn(params, X)) - Y
    H = np.einsum("nad,nae->de", J, J) + 0.1 * np.eye(J.shape[-1])
    grads = np.einsum("nad,na->nd", J, E)
    np.testing.assert_allclose(exact[0], np.einsum("nd,nd->n", grads, np.linalg.solve(H, grads.T).T), rtol=1e-8)
    np.testing.assert_allclose(exact[0], influence(model.apply_fn, params, X, Y, damping=0.1).self_influence)

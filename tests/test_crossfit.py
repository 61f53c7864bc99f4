"""Cross-fitted linearization (ntk_info.crossfit) against brute force, and cross-entropy training.

For every sample i of fold k, the cross-fitted LOO output must equal retraining the network linearized
at w*_k (the Adam network trained without fold k) without sample i: the converged ridge fit with the
fold's λ_k in weight space, or the network's own output where λ_k = ∞. Small MLP, coords_per_layer
above every leaf size (Φ = J exactly), float64.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ntk_info.apps.detect import detection_metrics, loo_output_scores
from ntk_info.crossfit import crossfit_leave_one_out
from ntk_info.linearize import train_adam
from ntk_info.models import init_params, mlp
from ntk_info.training import targets

OPTS = dict(max_epochs=40, patience=None, batch_size=8, lr=1e-2)


def _blobs(seed, n, k=3, d=4, noise=0.0):
    """k Gaussian blobs; ``noise``: fraction of labels flipped to another class (returns the flip mask)."""
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.normal(size=(k, d))
    labels = np.arange(n) % k
    X = centers[labels] + rng.normal(size=(n, d))
    flipped = np.zeros(n, bool)
    flipped[rng.choice(n, size=int(round(noise * n)), replace=False)] = True
    noisy = np.where(flipped, (labels + rng.integers(1, k, size=n)) % k, labels)
    return X, noisy, flipped


def _ridge_loo_output(apply_fn, w_p, X, Y, i, lam):
    """f_{p,-i}(x_i): the linearized model at w_p fitted to every sample but i: (JᵀJ + λI)δ = Jᵀr in weight
    space."""
    flat, unravel = ravel_pytree(w_p)
    keep = np.arange(len(X)) != i
    J = np.asarray(jax.jacobian(lambda v: apply_fn(unravel(v), jnp.asarray(X[keep])).reshape(-1))(flat))
    r = (Y[keep] - np.asarray(apply_fn(w_p, jnp.asarray(X[keep])))).reshape(-1)
    delta = np.linalg.solve(J.T @ J + lam * np.eye(flat.size), J.T @ r)
    J_i = np.asarray(jax.jacobian(lambda v: apply_fn(unravel(v), jnp.asarray(X[i:i + 1])).reshape(-1))(flat))
    return np.asarray(apply_fn(w_p, jnp.asarray(X[i:i + 1])))[0] + J_i @ delta


@pytest.mark.parametrize("loss,ridge_grid", [("cross-entropy", None), ("mse", [1e-2, 1e-1]), ("mse", [1e9])])
def test_crossfit_matches_retraining_the_linearized_fold_network(loss, ridge_grid):
    X, labels, _ = _blobs(0, 15)
    X_val, labels_val, _ = _blobs(1, 6)
    model = mlp(3, width=6)
    params0 = init_params(model, X.shape[1:], seed=0)
    res = crossfit_leave_one_out(model.apply_fn, params0, X, labels, X_val, labels_val, num_classes=3, folds=3,
                                 loss=loss, ridge_grid=ridge_grid, coords_per_layer=10_000, train_options=OPTS)
    Y = targets(labels, 3)
    assert sorted(np.bincount(res.fold).tolist()) == [5, 5, 5]
    assert res.loo_nll.shape == (3, (7 if ridge_grid is None else len(ridge_grid)) + 1)
    for k, net in enumerate(res.networks):
        # the fold network never saw its fold: it is Adam on the other folds from params0
        again = train_adam(model.apply_fn, params0, X[res.fold != k], Y[res.fold != k], X_val,
                           targets(labels_val, 3), seed=k, loss=loss, **OPTS)
        for a, b in zip(jax.tree_util.tree_leaves(net.params), jax.tree_util.tree_leaves(again.params)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        # λ_k is the grid value with the lowest held-out LOO NLL; λ = ∞ is the last candidate
        assert math.isinf(res.weight_decay[k]) == (np.argmin(res.loo_nll[k]) == res.loo_nll.shape[1] - 1)
        for i in np.flatnonzero(res.fold == k):
            if math.isinf(res.weight_decay[k]):
                brute = np.asarray(model.apply_fn(net.params, jnp.asarray(X[i:i + 1])))[0]
            else:
                brute = _ridge_loo_output(model.apply_fn, net.params, X, Y, i, res.weight_decay[k])
            np.testing.assert_allclose(res.loo_outputs[i], brute, rtol=1e-7, atol=1e-9 * np.abs(brute).max())
    if ridge_grid == [1e9]:  # a huge λ and λ = ∞ leave the network's own prediction
        outs = np.concatenate([np.asarray(model.apply_fn(net.params, jnp.asarray(X[res.fold == k])))
                               for k, net in enumerate(res.networks)])
        np.testing.assert_allclose(np.sort(res.loo_outputs, axis=0), np.sort(outs, axis=0), rtol=1e-6, atol=1e-8)


def test_crossfit_flags_planted_label_flips():
    X, labels, flipped = _blobs(3, 90, noise=0.1)
    X_val, labels_val, _ = _blobs(4, 30)
    model = mlp(3, width=16)
    params0 = init_params(model, X.shape[1:], seed=0)
    res = crossfit_leave_one_out(model.apply_fn, params0, X, labels, X_val, labels_val, num_classes=3,
                                 coords_per_layer=200, method="subsample", train_options=dict(max_epochs=60))
    suspicion = -loo_output_scores(res.loo_outputs, labels)["loo_log_prob_given"]
    row = detection_metrics({"crossfit": suspicion}, flipped)[0]
    assert row["auroc"] > 0.95 and row["found_top10"] >= 0.75


def test_crossfit_bad_arguments_name_themselves():
    X, labels, _ = _blobs(0, 12)
    model = mlp(3, width=4)
    params0 = init_params(model, X.shape[1:], seed=0)
    with pytest.raises(ValueError, match="folds: every class needs at least 5"):
        crossfit_leave_one_out(model.apply_fn, params0, X, labels, X, labels, num_classes=3)
    with pytest.raises(ValueError, match="labels: expected one label per training input"):
        crossfit_leave_one_out(model.apply_fn, params0, X, labels[:-1], X, labels, num_classes=3)
    with pytest.raises(ValueError, match="folds: expected an integer >= 2"):
        crossfit_leave_one_out(model.apply_fn, params0, X, labels, X, labels, num_classes=3, folds=1)
    with pytest.raises(ValueError, match=r"labels: expected a 1-D array of integer classes in \[0, 3\)"):
        crossfit_leave_one_out(model.apply_fn, params0, X, labels + 1, X, labels, num_classes=3, folds=2)
    with pytest.raises(ValueError, match="ridge_grid"):
        crossfit_leave_one_out(model.apply_fn, params0, X, labels, X, labels, num_classes=3, folds=2,
                               ridge_grid=[0.0])


def test_train_adam_cross_entropy_loss_is_the_softmax_cross_entropy():
    X, labels, _ = _blobs(5, 30)
    model = mlp(3, width=8)
    params0 = init_params(model, X.shape[1:], seed=0)
    Y = targets(labels, 3)
    res = train_adam(model.apply_fn, params0, X, Y, X[:9], Y[:9], loss="cross-entropy", max_epochs=30, patience=None,
                     batch_size=10, lr=1e-2)
    logits = np.asarray(model.apply_fn(res.params, X))
    by_hand = np.mean(-jax.nn.log_softmax(logits, axis=1)[np.arange(30), labels])
    np.testing.assert_allclose(res.train_loss[-1], by_hand, rtol=1e-10)
    assert res.train_loss[-1] < 0.5 * res.train_loss[0]
    assert res.settings["loss"] == "cross-entropy"
    with pytest.raises(ValueError, match="loss: expected one of"):
        train_adam(model.apply_fn, params0, X, Y, X, Y, loss="hinge")
    with pytest.raises(ValueError, match="class probabilities"):
        train_adam(model.apply_fn, params0, X, 2.0 * Y, X, Y, loss="cross-entropy")


def _npz(tmp_path, labels, seed=0):
    rng = np.random.default_rng(seed)
    X = 3.0 * np.eye(4)[labels % 4] + rng.normal(size=(labels.size, 4))
    path = tmp_path / "data.npz"
    np.savez(path, X=X, y=labels)
    return str(path)


def test_pipeline_crossfit_uses_fewer_folds_for_rare_classes_and_refuses_singletons(tmp_path):
    from ntk_info.apps.pipeline import ConfigError, Pipeline, PipelineConfig, load_data

    labels = np.r_[np.zeros(20, int), np.ones(20, int), 2 * np.ones(6, int)]  # 3 of class 2 in training
    config = PipelineConfig(data=_npz(tmp_path, labels), width=8, steps=10, coords_per_layer=50, trust_samples=0,
                            val_fraction=0.5).validate()
    data = load_data(config)
    folds = int(np.bincount(data.labels).min())
    assert 2 <= folds < 5
    pipe = Pipeline(config, data, progress=False)
    res = pipe.crossfit()
    assert pipe.crossfit_result is res and res.settings["folds"] == folds == len(res.networks)
    assert np.array_equal(np.unique(res.fold), np.arange(folds)) and res.loo_outputs.shape == (len(data.labels), 3)

    labels = np.r_[np.zeros(20, int), np.ones(20, int), 2 * np.ones(2, int)]
    config = PipelineConfig(data=_npz(tmp_path, labels), width=8, steps=10, coords_per_layer=50, trust_samples=0,
                            val_fraction=0.5).validate()
    data = load_data(config)
    assert np.bincount(data.labels).min() == 1
    with pytest.raises(ConfigError, match="cross-fitting needs at least 2 training samples of every class; "
                                          "class"):
        Pipeline(config, data, progress=False).crossfit()

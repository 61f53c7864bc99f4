"""Every linearization point against brute-force retraining of the network linearized around it.

For a point w_p, the linearized model f_p(x; w) = f(x; w_p) + J_p(x)(w - w_p) is retrained from w_p
without sample i (real GD steps on f_p, or the converged ridge solution in weight space), and its
prediction on x_i must equal what ``ntk_info.score`` at w_p says: y_i - loo_residual_i. Small
MLPs, coords_per_layer above every leaf size (Φ = J exactly), float64.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_info import score
from ntk_info.linearize import (LINEARIZATIONS, linearization_point, pretrain_other_classes, ridge_by_loo,
                                train_adam)
from ntk_info.models import init_params, mlp
from ntk_info.training import targets, train


def _problem(seed=0, n=10, d=3, k=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    labels = np.arange(n) % k
    X_val = rng.normal(size=(6, d))
    labels_val = np.arange(6) % k
    return X, labels, X_val, labels_val


def _linearized(apply_fn, w_p):
    """f_p(w, x) = f(x; w_p) + J_p(x)(w - w_p) as an apply_fn of the deviation from w_p."""
    def apply_lin(w, x):
        delta = jax.tree_util.tree_map(lambda a, b: a - b, w, w_p)
        f0, df = jax.jvp(lambda v: apply_fn(v, x), (w_p,), (delta,))
        return f0 + df
    return apply_lin


def _brute_loo_predictions(apply_fn, w_p, X, Y, *, lr, steps, weight_decay):
    """f_{p,-i}(x_i) for every i by retraining the linearized model without sample i."""
    apply_lin = _linearized(apply_fn, w_p)
    n = X.shape[0]
    preds = []
    for i in range(n):
        keep = np.arange(n) != i
        if math.isinf(steps):  # ridge: (J_{-i}ᵀJ_{-i} + λI) δ = J_{-i}ᵀ r_{-i}, in weight space
            from jax.flatten_util import ravel_pytree
            flat, unravel = ravel_pytree(w_p)
            J = jax.jacobian(lambda v: apply_fn(unravel(v), jnp.asarray(X[keep])).reshape(-1))(flat)
            r = (Y[keep] - np.asarray(apply_fn(w_p, jnp.asarray(X[keep])))).reshape(-1)
            delta = np.linalg.solve(np.asarray(J).T @ np.asarray(J) + weight_decay * np.eye(flat.size),
                                    np.asarray(J).T @ r)
            w = unravel(flat + delta)
        else:
            w = train(apply_lin, w_p, X[keep], Y[keep], lr=lr, steps=steps, weight_decay=weight_decay)
        preds.append(np.asarray(apply_lin(w, jnp.asarray(X[i:i + 1])))[0])
    return np.array(preds)


def _point(kind, model, params0, X, Y, X_val, Y_val):
    opts = dict(max_epochs=30, patience=5, batch_size=4, lr=1e-2)
    if kind == "pretrained":
        X_other, labels_other, X_val_other, labels_val_other = _problem(seed=7)
        body = pretrain_other_classes(lambda k: mlp(k, width=8), X_other, labels_other % 2, X_val_other,
                                      labels_val_other % 2, train_options=opts)
        return linearization_point(kind, params0, X, model=model, pretrained_params=body)
    return linearization_point(kind, params0, X, Y, X_val, Y_val, model=model, train_options=opts)


FAST = [("trained-head", 40, 0.0), ("trained", math.inf, 0.3)]
SLOW = [(kind, steps, lam) for kind in LINEARIZATIONS for steps, lam in ((40, 0.0), (math.inf, 0.3))
        if (kind, steps, lam) not in FAST]


@pytest.mark.parametrize("kind,steps,weight_decay", FAST + [pytest.param(*case, marks=pytest.mark.slow)
                                                            for case in SLOW])
def test_loo_at_every_point_matches_retraining_the_linearized_model(kind, steps, weight_decay):
    X, labels, X_val, labels_val = _problem()
    k = 3
    model = mlp(k, width=8)
    params0 = init_params(model, X.shape[1:], seed=0)
    Y, Y_val = targets(labels, k), targets(labels_val, k)
    point = _point(kind, model, params0, X, Y, X_val, Y_val)
    if kind != "init":  # the point really moved away from the initialization
        moved = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree_util.tree_leaves(point.params),
                                                                 jax.tree_util.tree_leaves(params0)))
        assert moved > 1e-3
    lr = 0.05
    res = score(model.apply_fn, point.params, X, Y, lr=lr, steps=steps, weight_decay=weight_decay, discrete=True,
                kernel="full", coords_per_layer=10_000, progress=False)
    brute = _brute_loo_predictions(model.apply_fn, point.params, X, Y, lr=lr, steps=int(steps) if
                                   math.isfinite(steps) else steps, weight_decay=weight_decay)
    ours = Y - res.loo_residuals
    np.testing.assert_allclose(ours, brute, rtol=1e-7, atol=1e-9 * np.abs(brute).max())


def test_trained_head_keeps_the_trained_body_and_replaces_the_head():
    X, labels, X_val, labels_val = _problem()
    model = mlp(3, width=8)
    params0 = init_params(model, X.shape[1:], seed=0)
    Y, Y_val = targets(labels, 3), targets(labels_val, 3)
    opts = dict(max_epochs=20, patience=None, batch_size=5, lr=1e-2, seed=3)
    trained = linearization_point("trained", params0, X, Y, X_val, Y_val, model=model, train_options=opts)
    head = linearization_point("trained-head", params0, X, Y, X_val, Y_val, model=model, train_options=opts)
    np.testing.assert_array_equal(head.params[1][0], trained.params[1][0])  # body: same trained weights
    assert not np.allclose(head.params[3][0], trained.params[3][0])        # head: fresh
    assert head.settings["linearize"] == "trained-head"


def test_train_adam_returns_the_best_validation_epoch():
    X, labels, X_val, labels_val = _problem(n=30)
    model = mlp(3, width=16)
    params0 = init_params(model, X.shape[1:], seed=1)
    Y, Y_val = targets(labels, 3), targets(labels_val, 3)
    # random labels: the validation loss has a minimum, then rises while the net memorizes
    res = train_adam(model.apply_fn, params0, X, Y, X_val, Y_val, lr=3e-2, batch_size=10, max_epochs=200,
                     patience=10)
    assert res.epochs < 200 and res.epochs - res.best_epoch == 10
    val = 0.5 * np.mean(np.sum((np.asarray(model.apply_fn(res.params, X_val)) - Y_val) ** 2, axis=1))
    np.testing.assert_allclose(val, res.val_loss.min(), rtol=1e-10)
    np.testing.assert_allclose(val, res.val_loss[res.best_epoch - 1], rtol=1e-10)
    # AUM: mean margin over epochs, bounded by the margins seen
    assert res.aum.shape == (30,) and np.isfinite(res.aum).all()


def test_ridge_by_loo_matches_brute_force_loo_loss():
    rng = np.random.default_rng(2)
    phi = rng.normal(size=(12, 5))
    R = rng.normal(size=(12, 2))
    grid = np.array([0.01, 0.3, 3.0, 30.0])
    lam, total = ridge_by_loo(phi, R, grid)
    brute = []
    for g in grid:
        loss = 0.0
        for i in range(12):
            keep = np.arange(12) != i
            w = np.linalg.solve(phi[keep].T @ phi[keep] + g * np.eye(5), phi[keep].T @ R[keep])
            loss += 0.5 * np.sum((R[i] - phi[i] @ w) ** 2)
        brute.append(loss)
    np.testing.assert_allclose(total, brute, rtol=1e-9)
    assert lam == grid[int(np.argmin(brute))]


def test_bad_arguments_name_themselves():
    X, labels, X_val, labels_val = _problem()
    model = mlp(3, width=8)
    params0 = init_params(model, X.shape[1:], seed=0)
    with pytest.raises(ValueError, match="linearize"):
        linearization_point("after", params0, model=model)
    with pytest.raises(ValueError, match="X_val"):
        linearization_point("trained", params0, X, targets(labels, 3), model=model)
    with pytest.raises(ValueError, match="pretrained_params"):
        linearization_point("pretrained", params0, X, model=model)
    with pytest.raises(ValueError, match="grid"):
        ridge_by_loo(np.ones((3, 2)), np.ones(3), [0.0, 1.0])


def test_score_linearize_trained_is_score_at_the_adam_weights():
    X, labels, X_val, labels_val = _problem()
    model = mlp(3, width=8)
    params0 = init_params(model, X.shape[1:], seed=0)
    opts = dict(max_epochs=15, patience=None, batch_size=5, lr=1e-2, seed=2)
    common = dict(lr=0.05, steps=math.inf, weight_decay=0.3, kernel="full", coords_per_layer=10_000, progress=False)
    via_score = score(model.apply_fn, params0, X, labels, X_val, targets="onehot", linearize="trained",
                      Y_val=labels_val, train_options=opts, **common)
    w_star = train_adam(model.apply_fn, params0, X, targets(labels, 3), X_val, targets(labels_val, 3), **opts).params
    direct = score(model.apply_fn, w_star, X, labels, X_val, targets="onehot", **common)
    np.testing.assert_allclose(via_score.loo_residuals, direct.loo_residuals, rtol=1e-10, atol=1e-12)
    assert via_score.settings["linearize"] == "trained" and direct.settings["linearize"] == "init"
    with pytest.raises(ValueError, match="Y_val"):
        score(model.apply_fn, params0, X, labels, X_val, targets="onehot", linearize="trained", **common)
    with pytest.raises(ValueError, match="linearize"):
        score(model.apply_fn, params0, X, labels, targets="onehot", linearize="after", **common)


def test_grid_edge_flags_a_ridge_without_interior_optimum():
    """grid_edge by hand; and at a stationary point (residuals orthogonal to the features, Φᵀr = 0) the
    exact LOO residual is r_i(1 + φ_iᵀ(Φ_{-i}ᵀΦ_{-i} + λ)⁻¹φ_i), falling toward r_i as λ grows: no interior
    optimum, the minimum sits at the top of any grid ("upper")."""
    from ntk_info.linearize import grid_edge

    assert grid_edge([3.0, 2.0, 1.0]) == "upper" and grid_edge([1.0, 2.0, 3.0]) == "lower"
    assert grid_edge([3.0, 1.0, 2.0]) is None and grid_edge([1.0]) is None
    with pytest.raises(ValueError, match="losses"):
        grid_edge(np.ones((2, 2)))
    rng = np.random.default_rng(3)
    phi = rng.normal(size=(15, 4))
    R = rng.normal(size=(15, 2))
    R -= phi @ np.linalg.lstsq(phi, R, rcond=None)[0]  # Φᵀ R = 0: w_p fits the training set
    grid = np.logspace(-3, 4, 8)
    lam, total = ridge_by_loo(phi, R, grid)
    assert np.all(np.diff(total) < 0) and lam == grid[-1] and grid_edge(total) == "upper"
    by_hand = sum(0.5 * np.sum((R[i] * (1 + phi[i] @ np.linalg.solve(np.delete(phi, i, 0).T @ np.delete(phi, i, 0)
                                                                      + grid[0] * np.eye(4), phi[i]))) ** 2)
                  for i in range(15))
    assert total[0] == pytest.approx(by_hand, rel=1e-9)

"""MPE sensitivities, LOO-CV and LOCO estimates against dense float64 references and exact retraining."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_info.influence import flat_jacobian
from ntk_info.mpe import (loco_estimate, loco_exact, loo_cv_estimate, mpe_from_features, mpe_from_kernel,
                          mpe_scores)


def tanh_mlp(seed, d_in, width, k):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {"W1": jax.random.normal(k1, (d_in, width)) / np.sqrt(d_in), "b1": 0.1 * jax.random.normal(k3, (width,)),
              "W2": 2 * jax.random.normal(k2, (width, k)) / np.sqrt(width), "b2": jnp.zeros((k,))}
    return (lambda p, x: jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]), params


def dense_reference(J, F, Y, delta, loss):
    """Σ = (JᵀΛJ + δI)⁻¹ formed densely; V_i = J_iΣJ_iᵀ; deviations of MPE eq. 15 and 16."""
    n, k, d = J.shape
    if loss == "mse":
        P, Lam = F, np.broadcast_to(np.eye(k), (n, k, k))
    elif k == 1:
        P = 1 / (1 + np.exp(-F))
        Lam = (P * (1 - P))[:, :, None]
    else:
        P = np.exp(F - F.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        Lam = np.stack([np.diag(p) - np.outer(p, p) for p in P])
    precision = np.einsum("nad,nab,nbe->de", J, Lam, J) + delta * np.eye(d)
    Sigma = np.linalg.inv(precision)
    V = np.einsum("nad,de,nbe->nab", J, Sigma, J)
    E = P - Y
    logit = np.einsum("nab,nb->na", V, E)
    return V, E, logit, np.einsum("nab,nb->na", Lam, logit)


@pytest.mark.parametrize("loss,k,delta", [("mse", 2, 0.5), ("xent", 3, 0.2), ("xent", 1, 1e-3), ("mse", 1, 5.0)])
def test_network_mpe_matches_dense_laplace(loss, k, delta):
    apply_fn, params = tanh_mlp(0, 3, 5, k)
    rng = np.random.default_rng(1)
    n = 7
    X = rng.normal(size=(n, 3))
    Y = np.eye(k)[rng.integers(0, k, n)] if (loss == "xent" and k > 1) else \
        (rng.integers(0, 2, (n, 1)).astype(float) if loss == "xent" else rng.normal(size=(n, k)))
    J = np.asarray(flat_jacobian(apply_fn, params, X))
    F = np.asarray(apply_fn(params, X))
    V, E, logit, prob = dense_reference(J, F, Y, delta, loss)
    for space, dev in (("logit", logit), ("prob", prob)):
        res = mpe_scores(apply_fn, params, X, Y, weight_decay=delta / 2, damping=delta / 2, loss=loss, space=space)
        assert res.space == space and res.loss == loss
        np.testing.assert_allclose(res.variance, V, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(res.error, E, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(res.deviation, dev, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(res.sensitivity, np.linalg.norm(dev, axis=1), rtol=1e-8, atol=1e-12)
        primal = mpe_from_features(J, F, Y, weight_decay=delta, loss=loss, space=space)
        np.testing.assert_allclose(primal.deviation, dev, rtol=1e-7, atol=1e-11)
    if loss == "xent":
        assert not np.allclose(logit, prob)                   # the two spaces differ by σ'(f) = Λ


def test_linear_regression_mpe_is_the_exact_ridge_loo_formula():
    """MPE eq. 23-25: f_i(θ^{\\i}) - f_i(θ) = v_i e_i/(1 - v_i) exactly; eq. 27: v_i e_i is d/dε at ε = 0."""
    rng = np.random.default_rng(2)
    n, p, delta = 12, 5, 0.8
    X, y = rng.normal(size=(n, p)), rng.normal(size=n)

    def fit(weights):      # argmin Σ_i w_i ½(x_iᵀθ - y_i)² + (δ/2)||θ||²
        return np.linalg.solve(X.T @ (weights[:, None] * X) + delta * np.eye(p), X.T @ (weights * y))

    theta = fit(np.ones(n))
    res = mpe_from_features(X, X @ theta, y, weight_decay=delta)
    v = np.einsum("ip,pq,iq->i", X, np.linalg.inv(X.T @ X + delta * np.eye(p)), X)
    np.testing.assert_allclose(res.variance[:, 0, 0], v, rtol=1e-10)
    loo_pred = np.empty(n)
    for i in range(n):
        w = np.ones(n)
        w[i] = 0.0
        loo_pred[i] = X[i] @ fit(w)                                   # brute-force retraining without i
        eps = 1e-6                                                    # downweight i by ε: first order
        w[i] = 1.0 - eps
        np.testing.assert_allclose((X[i] @ fit(w) - X[i] @ theta) / eps, res.deviation[i, 0], rtol=1e-4)
    e = X @ theta - y
    np.testing.assert_allclose(loo_pred - X @ theta, v * e / (1 - v), rtol=1e-9)
    np.testing.assert_allclose(loo_cv_estimate(res, corrected=True), 0.5 * (loo_pred - y) ** 2, rtol=1e-9)
    # The uncorrected eq. 19 estimate underestimates the LOO loss (the (1 - v)⁻¹ factor is > 1).
    assert np.all(loo_cv_estimate(res) <= loo_cv_estimate(res, corrected=True) + 1e-15)
    kernel = mpe_from_kernel(X @ X.T, X @ theta, y, weight_decay=delta)
    np.testing.assert_allclose(kernel.deviation, res.deviation, rtol=1e-9)


def test_loco_estimate_and_exact_group_removal():
    rng = np.random.default_rng(3)
    n, p, k, lam = 15, 4, 2, 0.6
    X, Y = rng.normal(size=(n, p)), rng.normal(size=(n, k))
    groups = rng.integers(0, 3, n)
    W = np.linalg.solve(X.T @ X + lam * np.eye(p), X.T @ Y)
    features = np.einsum("np,ab->nabp", X, np.eye(k)).reshape(n, k, k * p)     # f(x) = W x, one block per output
    res = mpe_from_features(features, X @ W, Y, weight_decay=lam)
    per = loo_cv_estimate(res)
    est = loco_estimate(res, groups)
    assert set(est) == set(np.unique(groups).tolist())
    for g, value in est.items():
        np.testing.assert_allclose(value, per[groups == g].sum(), rtol=1e-12)
    # loco_exact: kernel ridge (t = ∞) retrained without the whole group, brute force.
    exact = loco_exact(np.einsum("ip,jp,ab->ijab", X, X, np.eye(k)), Y, groups, weight_decay=lam)
    for g, value in exact.items():
        keep = groups != g
        Wg = np.linalg.solve(X[keep].T @ X[keep] + lam * np.eye(p), X[keep].T @ Y[keep])
        np.testing.assert_allclose(value, 0.5 * np.sum((X[~keep] @ Wg - Y[~keep]) ** 2), rtol=1e-9)


def test_input_errors_name_the_argument():
    F, Y = np.zeros((4, 2)), np.eye(2)[[0, 1, 0, 1]]
    K = np.eye(4)
    with pytest.raises(ValueError, match="weight_decay \\+ damping"):
        mpe_from_kernel(K, F, Y, weight_decay=0.0)
    with pytest.raises(ValueError, match="space"):
        mpe_from_kernel(K, F, Y, weight_decay=1.0, space="probability")
    with pytest.raises(ValueError, match="kernel"):
        mpe_from_kernel(K, F, Y, weight_decay=1.0)                     # (n, n) kernel with k = 2 outputs
    with pytest.raises(ValueError, match="targets"):
        mpe_from_kernel(np.eye(4)[:, :, None, None] * np.eye(2), F, 2 * Y, weight_decay=1.0, loss="xent")
    res = mpe_from_kernel(np.eye(4)[:, :, None, None] * np.eye(2), F, Y, weight_decay=1.0, loss="xent")
    with pytest.raises(ValueError, match="corrected"):
        loo_cv_estimate(res, corrected=True)
    with pytest.raises(ValueError, match="groups"):
        loco_estimate(res, [0, 1])


@pytest.mark.parametrize("k", [1, 3])
def test_mpe_on_a_linear_model_matches_the_exact_linearized_loo(k):
    """At the ridge optimum of a linear model, MPE (eq. 23-25 form) = ``leave_one_out`` at t = ∞."""
    from ntk_info.loo import leave_one_out
    from ntk_info.mpe import loo_cv_exact

    rng = np.random.default_rng(4)
    n, p, lam = 10, 6, 0.4
    X, Y, W0 = rng.normal(size=(n, p)), rng.normal(size=(n, k)), rng.normal(size=(p, k))
    W = np.linalg.solve(X.T @ X + lam * np.eye(p), X.T @ Y + lam * W0)   # ridge toward the init W0
    res = mpe_from_kernel(np.einsum("ip,jp,ab->ijab", X, X, np.eye(k)), X @ W, Y, weight_decay=lam)
    exact = leave_one_out(kernel=X @ X.T, residuals=Y - X @ W0, lr=1.0, steps=float("inf"), weight_decay=lam,
                          progress=False)
    corrected = np.einsum("nab,nb->na", res.variance,
                          np.linalg.solve(np.eye(k)[None] - res.variance, res.error[:, :, None])[:, :, 0])
    np.testing.assert_allclose(-np.asarray(exact.self_prediction_change).reshape(n, k), corrected, rtol=1e-8)
    per_sample = loo_cv_exact(X @ X.T, residuals=Y - X @ W0, lr=1.0, steps=float("inf"), weight_decay=lam)
    np.testing.assert_allclose(per_sample, loo_cv_estimate(res, corrected=True), rtol=1e-8)
    # The first-order eq. 19 estimate is below the exact LOO loss, and differs from it.
    assert np.all(loo_cv_estimate(res) < per_sample)

"""Influence functions (exact / CG / LiSSA) and the PBRF against dense float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ntk_info.influence import flat_jacobian, influence, pbrf


def tanh_mlp(key, d_in, width, k):
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"W1": jax.random.normal(k1, (d_in, width)) / np.sqrt(d_in), "b1": 0.1 * jax.random.normal(k3, (width,)),
              "W2": jax.random.normal(k2, (width, k)) / np.sqrt(width), "b2": jnp.zeros((k,))}

    def apply_fn(p, x):
        return jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]

    return apply_fn, params


def problem(seed=0, n=10, d_in=3, width=6, k=2, m=5):
    key = jax.random.PRNGKey(seed)
    kx, ky, kv, kw, kp = jax.random.split(key, 5)
    apply_fn, params = tanh_mlp(kp, d_in, width, k)
    X = jax.random.normal(kx, (n, d_in))
    Y = jax.random.normal(ky, (n, k))
    X_val = jax.random.normal(kv, (m, d_in))
    Y_val = jax.random.normal(kw, (m, k))
    return apply_fn, params, X, Y, X_val, Y_val


def dense_reference(apply_fn, params, X, Y, X_val, Y_val, mu, subset):
    """Form J and H = JᵀJ + μI densely; Δθ_i = H⁻¹ J_iᵀ e_i; the four quantities by definition."""
    n = X.shape[0]
    J = np.asarray(flat_jacobian(apply_fn, params, X))                      # (n, k, d)
    E = np.asarray(apply_fn(params, X)).reshape(n, -1) - np.asarray(Y).reshape(n, -1)
    Jf = J.reshape(-1, J.shape[-1])
    H = Jf.T @ Jf + mu * np.eye(Jf.shape[1])
    grads = np.einsum("nkd,nk->nd", J, E)[subset]
    dtheta = np.linalg.solve(H, grads.T).T
    J_v = np.asarray(flat_jacobian(apply_fn, params, X_val)).reshape(-1, Jf.shape[1])
    g_val = (np.asarray(apply_fn(params, X_val)) - np.asarray(Y_val).reshape(X_val.shape[0], -1)).reshape(-1)
    self_change = -np.einsum("nkd,nd->nk", J[subset], dtheta)        # f(x_i) - f_{-i}(x_i), first order
    return {"params_change": -dtheta, "self_prediction_change": self_change,
            "weight_change_sq": np.sum(dtheta ** 2, 1),
            "self_influence": np.sum(dtheta * grads, 1),
            "prediction_change_sq": np.sum((dtheta @ J_v.T) ** 2, 1),
            "test_loss_change": dtheta @ J_v.T @ g_val, "lam_max": np.linalg.eigvalsh(Jf.T @ Jf)[-1]}


FIELDS = ("params_change", "self_prediction_change", "weight_change_sq", "self_influence", "prediction_change_sq",
          "test_loss_change")


@pytest.mark.parametrize("n,k,mu", [(4, 1, 1e-3), (10, 2, 0.3), (30, 2, 3.0)])  # N < d and N > d (d = 38)
def test_exact_matches_dense_reference(n, k, mu):
    apply_fn, params, X, Y, X_val, Y_val = problem(n=n, k=k)
    subset = np.array([0, n - 1, 2])
    ref = dense_reference(apply_fn, params, X, Y, X_val, Y_val, mu, subset)
    res = influence(apply_fn, params, X, Y, weight_decay=mu / 2, damping=mu / 2, X_val=X_val, Y_val=Y_val,
                    subset=subset, return_params_change=True)
    np.testing.assert_array_equal(res.indices, subset)
    for field in FIELDS:
        np.testing.assert_allclose(getattr(res, field), ref[field], rtol=1e-8, atol=1e-12, err_msg=field)
    assert np.all(res.self_influence >= 0)


def test_exact_without_damping_is_the_pseudo_inverse_solution():
    apply_fn, params, X, Y, _, _ = problem(n=5, k=1)                       # N = 5 < d: K nonsingular
    res = influence(apply_fn, params, X, Y, return_params_change=True)
    J = np.asarray(flat_jacobian(apply_fn, params, X))[:, 0, :]
    E = np.asarray(apply_fn(params, X))[:, 0] - np.asarray(Y)[:, 0]
    # θ - θ_{-i} = -(JᵀJ)⁺ J_iᵀ e_i: the minimum-norm solution of JᵀJ Δ = ∇ℓ_i, sign flipped.
    expected = -(np.linalg.pinv(J.T @ J) @ (J * E[:, None]).T).T
    np.testing.assert_allclose(res.params_change, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["cg", "lissa"])
def test_iterative_solvers_match_exact(method):
    apply_fn, params, X, Y, X_val, Y_val = problem(seed=1, n=12, k=2)
    subset = np.arange(0, 12, 3)
    lam_max = dense_reference(apply_fn, params, X, Y, X_val, Y_val, 0.0, subset)["lam_max"]
    damping = 0.1 * lam_max                       # μ/σ ≈ 0.08: (1 - μ/σ)^600 < 1e-20, LiSSA converged
    exact = influence(apply_fn, params, X, Y, weight_decay=0.05, damping=damping, X_val=X_val, Y_val=Y_val,
                      subset=subset, return_params_change=True)
    res = influence(apply_fn, params, X, Y, weight_decay=0.05, damping=damping, X_val=X_val, Y_val=Y_val,
                    subset=subset, method=method, lissa_depth=600, chunk_size=3, return_params_change=True)
    if method == "lissa":
        assert res.settings["lissa_contraction"] < 1e-12
        assert res.settings["lissa_scale"] > 1.05 * (lam_max + damping)   # power iteration found λ_max
    for field in FIELDS:
        np.testing.assert_allclose(getattr(res, field), getattr(exact, field), rtol=1e-7, atol=1e-11, err_msg=field)


def test_lissa_too_shallow_is_not_converged():
    """A test that can fail: truncating the Neumann series after a few terms must visibly differ."""
    apply_fn, params, X, Y, _, _ = problem(seed=2, n=8, k=1)
    exact = influence(apply_fn, params, X, Y, damping=1e-2)
    shallow = influence(apply_fn, params, X, Y, damping=1e-2, method="lissa", lissa_depth=3)
    assert np.max(np.abs(shallow.weight_change_sq / exact.weight_change_sq - 1)) > 0.1


def test_stochastic_lissa_is_unbiased_on_average():
    apply_fn, params, X, Y, _, _ = problem(seed=3, n=12, k=1)
    lam_max = dense_reference(apply_fn, params, X, Y, X, Y, 0.0, np.arange(1))["lam_max"]
    damping = 0.3 * lam_max
    exact = influence(apply_fn, params, X, Y, damping=damping, subset=np.arange(4), return_params_change=True)
    res = influence(apply_fn, params, X, Y, damping=damping, subset=np.arange(4), method="lissa",
                    lissa_batch_size=6, lissa_scale=4.0 * (lam_max + damping), lissa_depth=200,
                    lissa_repeats=64, seed=0, return_params_change=True)
    err = np.linalg.norm(res.params_change - exact.params_change) / np.linalg.norm(exact.params_change)
    assert err < 0.05


def test_linearized_pbrf_equals_influence_and_pbrf_small_epsilon_is_first_order():
    apply_fn, params, X, Y, X_val, Y_val = problem(seed=4, n=10, k=2)
    subset = np.array([1, 5, 7])
    lam_max = dense_reference(apply_fn, params, X, Y, X_val, Y_val, 0.0, subset)["lam_max"]
    wd, damping = 0.1 * lam_max, 0.1 * lam_max
    lr = 1.0 / (lam_max + wd + damping)                   # GD contraction ≤ 1 - μ·lr = 5/6 per step
    kw = dict(weight_decay=wd, damping=damping, X_val=X_val, Y_val=Y_val, subset=subset,
              return_params_change=True)
    inf = influence(apply_fn, params, X, Y, **kw)
    lin = pbrf(apply_fn, params, X, Y, lr=lr, steps=300, linearize=True, chunk_size=2, **kw)
    for field in FIELDS:
        np.testing.assert_allclose(getattr(lin, field), getattr(inf, field), rtol=1e-9, atol=1e-12, err_msg=field)
    # The nonlinear PBRF (eq. 8) agrees to first order in ε: relative gap O(ε).
    nonlin = pbrf(apply_fn, params, X, Y, lr=lr, steps=300, epsilon=1e-4, **kw)
    gap = np.linalg.norm(nonlin.params_change - inf.params_change) / np.linalg.norm(inf.params_change)
    assert gap < 1e-3
    # ... but not at ε = 1 on a tanh network (the linearization error of PBRF paper §4.4 exists).
    full = pbrf(apply_fn, params, X, Y, lr=lr, steps=300, epsilon=1.0, **kw)
    gap_full = np.linalg.norm(full.params_change - inf.params_change) / np.linalg.norm(inf.params_change)
    assert gap_full > 10 * gap


@pytest.mark.parametrize("k", [1, 2])
def test_influence_on_ridge_equals_exact_loo_up_to_leverage_factor(k):
    """Linear f = xW, ridge toward W0: exact LOO θ - θ_{-i} = -H⁻¹∇ℓ_i / (1 - h_ii) (Cook; MPE eq. 23)."""
    rng = np.random.default_rng(5)
    n, p, lam = 9, 4, 0.7
    X = rng.normal(size=(n, p))
    Y = rng.normal(size=(n, k))
    X_val, Y_val = rng.normal(size=(6, p)), rng.normal(size=(6, k))
    W0 = rng.normal(size=(p, k))

    def ridge(Xs, Ys):     # argmin Σ ½||x W - y||² + (λ/2)||W - W0||²
        return np.linalg.solve(Xs.T @ Xs + lam * np.eye(p), Xs.T @ Ys + lam * W0)

    def apply_fn(W, x):
        return x @ W

    W = ridge(X, Y)
    res = influence(apply_fn, jnp.asarray(W), X, Y, weight_decay=lam, X_val=X_val, Y_val=Y_val,
                    return_params_change=True)
    A = np.linalg.inv(X.T @ X + lam * np.eye(p))
    h = np.einsum("ip,pq,iq->i", X, A, X)                                    # leverages
    E = X @ W - Y
    np.testing.assert_allclose(res.self_influence, h * np.sum(E ** 2, 1), rtol=1e-10)
    val_loss = lambda Wx: 0.5 * np.sum((X_val @ Wx - Y_val) ** 2)           # noqa: E731
    for i in range(n):
        keep = np.arange(n) != i
        delta = ridge(X[keep], Y[keep]) - W                                  # brute-force retrain: θ_{-i} - θ
        np.testing.assert_allclose(res.params_change[i] / (1 - h[i]), -delta.reshape(-1), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.self_prediction_change[i] / (1 - h[i]), -X[i] @ delta, rtol=1e-9,
                                   atol=1e-12)
        # sign of the test-loss change: first-order part + the exact quadratic remainder of a linear model
        exact_change = val_loss(W + delta) - val_loss(W)
        approx = res.test_loss_change[i] / (1 - h[i]) + 0.5 * res.prediction_change_sq[i] / (1 - h[i]) ** 2
        np.testing.assert_allclose(approx, exact_change, rtol=1e-9, atol=1e-12)


def test_stax_params_and_one_output_targets():
    from ntk_info.models import init_params, mlp

    model = mlp(num_outputs=1, width=8)
    params = init_params(model, (3,), seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 3)), rng.normal(size=(6,))
    res = influence(model.apply_fn, params, X, y, damping=0.1, return_params_change=True)
    flat, _ = ravel_pytree(params)
    assert res.params_change.shape == (6, flat.size)
    cg = influence(model.apply_fn, params, X, y, damping=0.1, method="cg")
    np.testing.assert_allclose(cg.weight_change_sq, res.weight_change_sq, rtol=1e-7)


def test_input_errors_name_the_argument():
    apply_fn, params, X, Y, X_val, Y_val = problem()
    with pytest.raises(ValueError, match="method"):
        influence(apply_fn, params, X, Y, method="newton")
    with pytest.raises(ValueError, match="damping"):
        influence(apply_fn, params, X, Y, method="cg")
    with pytest.raises(ValueError, match="Y:"):
        influence(apply_fn, params, X, Y[:, :1])
    with pytest.raises(ValueError, match="subset"):
        influence(apply_fn, params, X, Y, subset=[0, 99])
    with pytest.raises(ValueError, match="X_val, Y_val"):
        influence(apply_fn, params, X, Y, X_val=X_val)
    with pytest.raises(ValueError, match="epsilon"):
        pbrf(apply_fn, params, X, Y, lr=0.1, steps=1, epsilon=0.0)
    with pytest.raises(TypeError, match="apply_fn"):
        influence("mlp", params, X, Y)

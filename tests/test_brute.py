"""brute_force_loo(): retraining without a sample, against float64 closed forms on linearized networks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ntk_info.brute import brute_force_loo
from ntk_info.models import init_params, mlp
from ntk_info.training import train


def _linearized(apply_fn, params0):
    """f_lin(w, x) = f(w0, x) + J(x)(w - w0), an exactly linear model in the network's parameters."""

    def apply_lin(w, x):
        delta = jax.tree_util.tree_map(lambda a, b: a - b, w, params0)
        f0, df = jax.jvp(lambda q: apply_fn(q, x), (params0,), (delta,))
        return f0 + df

    return apply_lin


def _jacobian(apply_fn, params, X):
    """Rows = outputs (n·k), columns = flattened parameters."""
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jacobian(lambda v: apply_fn(unravel(v), X).reshape(-1))(flat))


def _closed_form_loo(J, r, J_val, k, lr, steps, lam):
    """Reference: ω = Jᵀ g(JJᵀ + λI) r with the discrete-GD filter, recomputed from scratch without each block."""

    def omega(Jm, rm):
        s, V = np.linalg.eigh(Jm @ Jm.T + lam * np.eye(len(rm)))
        g = (1 - (1 - lr * s) ** steps) / s
        return Jm.T @ (V @ (g * (V.T @ rm)))

    w = omega(J, r)
    n = len(r) // k
    out = []
    for i in range(n):
        keep = np.repeat(np.arange(n) != i, k)
        dw = w - omega(J[keep], r[keep])
        out.append((dw @ dw, np.sum((J_val @ dw) ** 2), J[i * k:(i + 1) * k] @ dw))
    return [np.array(v) for v in zip(*out)]


def _problem(seed, n=10, m=5, d=3, k=2, width=8):
    rng = np.random.default_rng(seed)
    model = mlp(num_outputs=k, width=width)
    X, X_val = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    Y = rng.normal(size=(n, k))
    return model, init_params(model, (d,), seed=seed), X, Y, X_val


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_brute_force_on_linearized_network_equals_closed_form_loo(lam):
    model, p0, X, Y, X_val = _problem(0)
    f_lin = _linearized(model.apply_fn, p0)
    J, J_val = _jacobian(model.apply_fn, p0, X), _jacobian(model.apply_fn, p0, X_val)
    r = (Y - np.asarray(model.apply_fn(p0, X))).reshape(-1)
    lr = 1.0 / (np.linalg.eigvalsh(J @ J.T).max() + lam)
    steps = 60
    w_sq, val_sq, self_change = _closed_form_loo(J, r, J_val, 2, lr, steps, lam)
    res = brute_force_loo(f_lin, p0, X, Y, lr=lr, steps=steps, weight_decay=lam, X_val=X_val, chunk_size=4,
                          progress=False)
    np.testing.assert_array_equal(res.indices, np.arange(10))
    np.testing.assert_allclose(res.weight_change_sq, w_sq, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(res.prediction_change_sq, val_sq, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(res.self_prediction_change, self_change, rtol=1e-8, atol=1e-12)


def test_warm_start_on_linear_model_equals_weight_space_closed_form():
    """Warm start: from w_s = A(S), t' more GD steps with and without i; linear model, weight-space reference."""
    rng = np.random.default_rng(1)
    n, p, lam, t, t_warm = 8, 5, 0.3, 15, 9
    X, Y, w0 = rng.normal(size=(n, p)), rng.normal(size=(n, 1)), rng.normal(size=(p, 1))
    lr = 1.0 / (np.linalg.eigvalsh(X.T @ X).max() + lam)

    def gd(w, Xm, Ym, steps):
        for _ in range(steps):
            w = w - lr * (Xm.T @ (Xm @ w - Ym) + lam * (w - w0))
        return w

    w_s = gd(w0, X, Y, t)
    w_ref = gd(w_s, X, Y, t_warm)
    expect = []
    for i in range(n):
        keep = np.arange(n) != i
        expect.append(np.sum((w_ref - gd(w_s, X[keep], Y[keep], t_warm)) ** 2))
    res = brute_force_loo(lambda w, x: x @ w, jnp.asarray(w0), X, Y, lr=lr, steps=t, weight_decay=lam,
                          warm_start=True, warm_steps=t_warm, subset=[0, 3, 5, 6, 7], progress=False)
    np.testing.assert_allclose(res.weight_change_sq, np.array(expect)[[0, 3, 5, 6, 7]], rtol=1e-10)
    np.testing.assert_allclose(np.asarray(res.params), w_ref, atol=1e-12)


def test_chunking_and_subset_order_change_nothing():
    model, p0, X, Y, X_val = _problem(2)
    kw = dict(lr=0.05, steps=20, weight_decay=0.1, X_val=X_val, progress=False)
    a = brute_force_loo(model.apply_fn, p0, X, Y, subset=[7, 2, 5], chunk_size=2, **kw)
    b = brute_force_loo(model.apply_fn, p0, X, Y, subset=[7, 2, 5], chunk_size=16, **kw)
    for f in ("weight_change_sq", "prediction_change_sq", "self_prediction_change"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-12, atol=1e-15)
    # one removal by hand on the real network: train without sample 2
    keep = np.arange(10) != 2
    w = train(model.apply_fn, p0, X, Y, lr=0.05, steps=20, weight_decay=0.1)
    w_2 = train(model.apply_fn, p0, X[keep], Y[keep], lr=0.05, steps=20, weight_decay=0.1)
    dw = ravel_pytree(w)[0] - ravel_pytree(w_2)[0]
    np.testing.assert_allclose(a.weight_change_sq[1], float(dw @ dw), rtol=1e-10)
    np.testing.assert_allclose(a.self_prediction_change[1],
                               np.asarray(model.apply_fn(w, X[2:3]) - model.apply_fn(w_2, X[2:3]))[0], rtol=1e-10)


def test_subset_validation():
    model, p0, X, Y, _ = _problem(3)
    for bad in ([], [0, 0], [10], [0.5]):
        with pytest.raises(ValueError, match="subset"):
            brute_force_loo(model.apply_fn, p0, X, Y, lr=0.1, steps=1, subset=bad, progress=False)
    with pytest.raises(ValueError, match="X_val"):
        brute_force_loo(model.apply_fn, p0, X, Y, lr=0.1, steps=1, X_val=np.ones((2, 7)), progress=False)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_brute_force_on_linearized_network_equals_leave_one_out(lam):
    """The package's closed-form engine (ntk_info.leave_one_out, discrete GD) is exact LOO retraining."""
    from ntk_info.loo import leave_one_out

    model, p0, X, Y, X_val = _problem(4)
    n, k, m = 10, 2, 5
    J = _jacobian(model.apply_fn, p0, X).reshape(n, k, -1)
    J_val = _jacobian(model.apply_fn, p0, X_val).reshape(m, k, -1)
    kernel = np.einsum("iap,jbp->ijab", J, J)
    cross = np.einsum("iap,jbp->ijab", J_val, J)
    r = Y - np.asarray(model.apply_fn(p0, X))
    lr, steps = 1.0 / (np.linalg.eigvalsh(kernel.transpose(0, 2, 1, 3).reshape(n * k, -1)).max() + lam), 45
    loo = leave_one_out(kernel, residuals=r, lr=lr, steps=steps, weight_decay=lam, discrete=True,
                        cross_kernel=cross, progress=False)
    res = brute_force_loo(_linearized(model.apply_fn, p0), p0, X, Y, lr=lr, steps=steps, weight_decay=lam,
                          X_val=X_val, progress=False)
    np.testing.assert_allclose(res.weight_change_sq, loo.weight_change_sq, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(res.prediction_change_sq, loo.prediction_change_sq, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(res.self_prediction_change, loo.self_prediction_change, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(res.train_prediction_change_sq, loo.train_prediction_change_sq, rtol=1e-8,
                               atol=1e-14)

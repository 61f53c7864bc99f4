"""Filters g and closed-form dynamics against literal GD iterates, matrix exponentials and retraining."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from reference import run_gd, trained_weights

from ntk_info.dynamics import Dynamics, filter_values, max_stable_lr, predict, weights


def _linear(seed, n=9, p=6, k=None):
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n, p))
    R = rng.normal(size=(n,) if k is None else (n, k))
    return phi, R


def _closed_form(phi, R, lr, steps, lam, discrete):
    """w_t - w0 = U g(s + λ) Uᵀ Φᵀ r with the package's filter on the primal Gram."""
    s, U = np.linalg.eigh(phi.T @ phi)
    g = np.asarray(filter_values(jnp.asarray(np.clip(s, 0, None) + lam), lr=lr, steps=steps, discrete=discrete))
    return U @ (g[:, None] * (U.T @ (phi.T @ R.reshape(len(R), -1))))


@pytest.mark.parametrize("lam", [0.0, 0.3, 30.0])
@pytest.mark.parametrize("factor, steps", [(0.5, 1), (0.9, 40), (1.6, 25), (1.99, 7)])
def test_discrete_filter_matches_gd_iterates(factor, steps, lam):
    """t literal GD steps on Σ½||Φw - r||² + (λ/2)||w||² equal the discrete filter to 1e-12 (incl. ηu ∈ (1, 2))."""
    phi, R = _linear(0)
    lr = factor / (np.linalg.eigvalsh(phi.T @ phi).max() + lam)  # η(λmax + λ) = factor < 2
    w_gd = run_gd(phi, R[:, None], lr, steps, lam)
    w = _closed_form(phi, R, lr, steps, lam, True)
    np.testing.assert_allclose(w, w_gd, rtol=0, atol=1e-12 * np.abs(w_gd).max())


@pytest.mark.parametrize("lam", [0.1, 2.0])
def test_flow_filter_matches_matrix_exponential(lam):
    """Gradient flow dw/dτ = -η(Hw - Φᵀr): w(t) = (I - e^{-ηtH}) H⁻¹ Φᵀ r, H = ΦᵀΦ + λI."""
    phi, R = _linear(1)
    lr, steps = 0.05, 7.0
    H = phi.T @ phi + lam * np.eye(phi.shape[1])
    w_ref = (np.eye(len(H)) - scipy.linalg.expm(-lr * steps * H)) @ np.linalg.solve(H, phi.T @ R)
    w = _closed_form(phi, R, lr, steps, lam, False)[:, 0]
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-12 * np.abs(w_ref).max())


def test_filter_limits_and_gradients():
    u = jnp.array([0.0, 1e-14, 1e-3, 0.5, 1.0, 1.5, -1e-15])
    lr, t = 1.0, 5.0
    for discrete in (False, True):
        g = np.asarray(filter_values(u, lr=lr, steps=t, discrete=discrete))
        assert g[0] == lr * t and abs(g[1] - lr * t) < 1e-12 and abs(g[6] - lr * t) < 1e-12
        grad = jax.grad(lambda x, d=discrete: jnp.sum(filter_values(x, lr=lr, steps=t, discrete=d)))(u)
        assert np.all(np.isfinite(np.asarray(grad)))
    # exact values at ηu = 1 (GD lands on the minimum) and ηu = 1.5 (oscillation, odd t)
    g = np.asarray(filter_values(u, lr=lr, steps=t, discrete=True))
    assert g[4] == 1.0 and abs(g[5] - (1 - (-0.5) ** 5) / 1.5) < 1e-15
    ginf = np.asarray(filter_values(u[2:6], lr=lr, steps=math.inf))
    np.testing.assert_allclose(ginf, 1.0 / np.asarray(u[2:6]), rtol=1e-15)
    assert np.isinf(float(filter_values(0.0, lr=lr, steps=math.inf)))
    # large t: flow and GD both converge to 1/u
    np.testing.assert_allclose(np.asarray(filter_values(u[3:5], lr=lr, steps=1e4)), 1 / np.asarray(u[3:5]), rtol=1e-14)


def test_max_stable_lr_is_the_divergence_threshold():
    phi, R = _linear(2)
    lmax = np.linalg.eigvalsh(phi.T @ phi).max()
    lr = max_stable_lr(lmax, 0.5)
    assert lr == 2.0 / (lmax + 0.5)
    below = run_gd(phi, R, 0.98 * lr, 400, 0.5)
    above = run_gd(phi, R, 1.02 * lr, 400, 0.5)
    assert np.abs(below).max() < 10 * np.abs(trained_weights(phi, R, 1, math.inf, 0.5, False)).max()
    assert np.abs(above).max() > 1e3


def test_mean_loss_maps_to_sum_loss():
    """GD on (1/n)Σ½||f - y||² + (λ/2)||w||² with lr η equals the sum loss with lr η/n, weight decay nλ."""
    phi, R = _linear(3)
    n, lr, lam, steps = len(R), 0.3, 0.05, 30
    w = np.zeros(phi.shape[1])
    for _ in range(steps):
        w = w - lr * (phi.T @ (phi @ w - R) / n + lam * w)
    dyn = Dynamics(lr, steps, lam, discrete=True, loss="mean").as_sum_loss(n)
    assert (dyn.lr, dyn.weight_decay, dyn.loss) == (lr / n, lam * n, "sum")
    w_cf = weights(phi, R, lr=dyn.lr, steps=dyn.steps, weight_decay=dyn.weight_decay, discrete=True)
    np.testing.assert_allclose(w_cf, w, rtol=0, atol=1e-12 * np.abs(w).max())
    s = jnp.linspace(0.0, 3.0, 5)
    np.testing.assert_allclose(dyn.filter(s), filter_values(s, lr=lr / n, steps=steps, discrete=True))
    with pytest.raises(ValueError, match="loss='mean' needs the sample count"):
        Dynamics(lr, steps, loss="mean").filter(s)
    with pytest.raises(ValueError, match="loss: expected 'sum' or 'mean'"):
        Dynamics(lr, steps, loss="avg")


@pytest.mark.parametrize("steps, discrete", [(6, True), (2.5, False), (math.inf, False)])
@pytest.mark.parametrize("lam", [0.0, 0.4])
def test_predict_and_weights_match_explicit_weights(steps, discrete, lam):
    rng = np.random.default_rng(4)
    n, k, p = 6, 2, 20  # K full rank (n·k = 12 ≤ p)
    F, Fv, R = rng.normal(size=(n, k, p)), rng.normal(size=(3, k, p)), rng.normal(size=(n, k))
    phi = F.reshape(n * k, p)
    lr = 1.0 / (np.linalg.eigvalsh(phi.T @ phi).max() + lam)
    w_ref = trained_weights(phi, R.reshape(-1), lr, steps, lam, discrete)
    w = weights(F, R, lr=lr, steps=steps, weight_decay=lam, discrete=discrete)
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-10 * np.abs(w_ref).max())
    K = np.einsum("nkp,mlp->nmkl", F, F)
    Kv = np.einsum("nkp,mlp->nmkl", Fv, F)
    train, new = predict(K, R, lr=lr, steps=steps, weight_decay=lam, discrete=discrete, cross_kernel=Kv)
    np.testing.assert_allclose(train, (phi @ w_ref).reshape(n, k), rtol=0, atol=1e-9 * np.abs(R).max())
    np.testing.assert_allclose(new, (Fv.reshape(-1, p) @ w_ref).reshape(3, k), rtol=0, atol=1e-9 * np.abs(R).max())


def test_predict_shared_kernel_independent_outputs():
    rng = np.random.default_rng(5)
    phi, phiv, R = rng.normal(size=(7, 4)), rng.normal(size=(3, 4)), rng.normal(size=(7, 3))
    w_ref = trained_weights(phi, R, 0.05, 9.0, 0.0, False)
    train, new = predict(phi @ phi.T, R, lr=0.05, steps=9.0, cross_kernel=phiv @ phi.T)
    np.testing.assert_allclose(train, phi @ w_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(new, phiv @ w_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(weights(phi, R, lr=0.05, steps=9.0), w_ref, rtol=0, atol=1e-10)
    t0, _ = predict(phi @ phi.T, R[:, 0], lr=0.05, steps=0)
    assert t0.shape == (7,) and np.all(t0 == 0)


def test_unstable_lr_warns_with_the_limit():
    phi, R = _linear(6)
    lmax = np.linalg.eigvalsh(phi @ phi.T).max()
    with pytest.warns(RuntimeWarning, match="stability limit 2/\\(λmax\\+λ\\)"):
        predict(phi @ phi.T, R, lr=2.5 / lmax, steps=3, discrete=True)


@pytest.mark.parametrize("kw, message", [
    (dict(lr=-1.0, steps=1), "lr: expected a finite learning rate > 0"),
    (dict(lr=0.1, steps=-2), "steps: expected steps ≥ 0"),
    (dict(lr=0.1, steps=2.5, discrete=True), "discrete GD needs an integer number of steps"),
    (dict(lr=0.1, steps=2, weight_decay=-1.0), "weight_decay: expected λ ≥ 0"),
])
def test_setting_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        Dynamics(**kw)

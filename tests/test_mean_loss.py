"""loss="mean": (1/n) Σ_i ½||f(x_i) - y_i||² + (λ/2)||w - w0||², the model without i on n - 1 samples.

References that do not use the sum-loss mapping: GD literally run on the mean loss, and the
gradient-flow solution of dw/dτ = -η[(1/m)Φᵀ(Φw - r) + λw] by a matrix exponential of the augmented
system; then ntk_info.training.train / brute_force_loo on a linear network f(x) = x·w.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from ntk_info.brute import brute_force_loo
from ntk_info.loo import leave_one_out
from ntk_info.training import train


def _mean_loss_weights(phi, R, lr, steps, lam, discrete):
    """w - w0 after training on the mean loss over the rows' samples (m = rows / kb), float64."""
    m = phi.shape[0]
    p = phi.shape[1]
    A = phi.T @ phi / m + lam * np.eye(p)
    b = phi.T @ R / m
    if discrete:
        w = np.zeros_like(b)
        for _ in range(int(steps)):
            w = w - lr * (A @ w - b)
        return w
    if math.isinf(steps):
        return np.linalg.lstsq(A, b, rcond=None)[0] if lam == 0 else np.linalg.solve(A, b)
    aug = np.zeros((p + b.shape[1], p + b.shape[1]))  # d/dτ [w; e] = [[-ηA, ηb], [0, 0]] [w; e]
    aug[:p, :p], aug[:p, p:] = -lr * A, lr * b
    E = scipy.linalg.expm(steps * aug)
    return E[:p, p:]


def _loo_mean(F, R, Fv, lr, steps, lam, discrete):
    """Brute-force LOO under the mean loss: the full model on n samples, the others on n - 1."""
    n = F.shape[0]
    kb = F.shape[1] if F.ndim == 3 else 1
    phi = F.reshape(n * kb, -1)
    Rm = R.reshape(n * kb, -1) if F.ndim == 3 else R.reshape(n, -1)
    phiv = Fv.reshape(-1, phi.shape[1])

    def fit(rows):  # the mean is over samples (rows / kb): (1/rows) Σ_rows ½(√kb φ w - √kb r)² is that mean
        return _mean_loss_weights(phi[rows] * math.sqrt(kb), Rm[rows] * math.sqrt(kb), lr, steps, lam, discrete)

    w = fit(np.arange(n * kb))
    out = {"weight": [], "train": [], "self": [], "val": []}
    for i in range(n):
        keep = np.ones(n * kb, bool)
        keep[i * kb:(i + 1) * kb] = False
        dw = w - fit(np.flatnonzero(keep))
        out["weight"].append(np.sum(dw ** 2))
        out["train"].append(np.sum((phi @ dw) ** 2))
        out["self"].append((phi[~keep] @ dw).reshape(-1))
        out["val"].append(np.sum((phiv @ dw) ** 2))
    res = {k: np.array(v) for k, v in out.items()}
    res["fitted"] = (Rm - phi @ w).reshape(R.shape)
    res["self"] = res["self"].reshape(R.shape)
    return res


def _close(got, want, tol=1e-9):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.max(np.abs(want)))


def _problem(layout, seed=0, n=7, p=5):
    rng = np.random.default_rng(seed)
    if layout == "full3":
        return rng.normal(size=(n, 3, p)), rng.normal(size=(n, 3)), rng.normal(size=(3, 3, p))
    if layout == "shared3":
        return rng.normal(size=(n, p)), rng.normal(size=(n, 3)), rng.normal(size=(3, p))
    return rng.normal(size=(n, p)), rng.normal(size=n), rng.normal(size=(3, p))


@pytest.mark.parametrize("layout", ["k1", "full3", "shared3"])
@pytest.mark.parametrize("discrete, steps, lam", [(True, 40, 0.0), (True, 40, 0.3), (False, 25.0, 0.0),
                                                  (False, 25.0, 0.3), (False, math.inf, 0.3)])
def test_mean_loss_matches_retraining(layout, discrete, steps, lam):
    F, R, Fv = _problem(layout)
    phi = F.reshape(-1, F.shape[-1])
    n = F.shape[0]
    lr = 1.0 / (np.linalg.eigvalsh(phi.T @ phi).max() / n + lam)  # half the mean-loss GD stability limit
    res = leave_one_out(features=F, residuals=R, lr=lr, steps=steps, weight_decay=lam, discrete=discrete,
                        cross_features=Fv, loss="mean", progress=False)
    assert res.loss == "mean" and res.lr == lr
    ref = _loo_mean(F, R, Fv, lr, steps, lam, discrete)
    _close(res.weight_change_sq, ref["weight"])
    _close(res.train_prediction_change_sq, ref["train"])
    _close(res.self_prediction_change, ref["self"])
    _close(res.prediction_change_sq, ref["val"])
    _close(res.fitted_residuals, ref["fitted"])
    # The naive mapping (η/n, nλ) for every model is not the mean-loss LOO: the test can tell them apart.
    naive = leave_one_out(features=F, residuals=R, lr=lr / n, steps=steps, weight_decay=lam * n, discrete=discrete,
                          cross_features=Fv, progress=False)
    if not (math.isinf(steps) and lam == 0):
        assert np.max(np.abs(naive.weight_change_sq - ref["weight"])) > 1e-4 * np.max(ref["weight"])


def test_mean_loss_grid_and_both_solvers():
    F, R, Fv = _problem("full3", seed=1)
    phi = F.reshape(-1, F.shape[-1])
    n = F.shape[0]
    lr = 0.5 * n / np.linalg.eigvalsh(phi.T @ phi).max()
    steps, lams = np.array([3.0, 30.0]), np.array([0.0, 0.05])
    for solver in ("rational", "downdate"):
        res = leave_one_out(features=F, residuals=R, lr=lr, steps=steps, weight_decay=lams, cross_features=Fv,
                            loss="mean", solver=solver, return_coords=True, progress=False)
        assert res.weight_change_sq.shape == (2, 2, n) and res.solver == solver
        for a, t in enumerate(steps):
            for b, lam in enumerate(lams):
                ref = _loo_mean(F, R, Fv, lr, t, lam, False)
                _close(res.weight_change_sq[a, b], ref["weight"])
                _close(res.prediction_change_sq[a, b], ref["val"])
                _close(np.sum(res.weight_change_coords[a, b] ** 2, axis=-1), ref["weight"])


def test_train_and_brute_force_with_mean_loss_on_a_linear_network():
    """Real GD training (training.train, brute_force_loo) with loss="mean" equals the closed form."""
    rng = np.random.default_rng(2)
    n, d = 9, 4
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, 1))
    Xv = rng.normal(size=(3, d))
    apply_fn = lambda w, x: x @ w  # noqa: E731  (linear: the linearization is exact)
    w0 = jnp.asarray(rng.normal(size=(d, 1)))
    lam, steps = 0.2, 60
    lr = 1.0 / (np.linalg.eigvalsh(X.T @ X).max() / n + lam)
    w = train(apply_fn, w0, X, Y, lr=lr, steps=steps, weight_decay=lam, loss="mean")
    want = np.asarray(w0) + _mean_loss_weights(X, Y - X @ np.asarray(w0), lr, steps, lam, True)
    np.testing.assert_allclose(np.asarray(w), want, rtol=0, atol=1e-12)
    w_sum = train(apply_fn, w0, X, Y, lr=lr, steps=steps, weight_decay=lam)  # the default is still the sum
    assert np.max(np.abs(np.asarray(w_sum) - want)) > 1e-3
    brute = brute_force_loo(apply_fn, w0, X, Y, lr=lr, steps=steps, weight_decay=lam, X_val=Xv, loss="mean",
                            progress=False)
    res = leave_one_out(features=X, residuals=(Y - X @ np.asarray(w0))[:, 0], lr=lr, steps=steps, weight_decay=lam,
                        discrete=True, cross_features=Xv, loss="mean", progress=False)
    _close(brute.weight_change_sq, res.weight_change_sq, tol=1e-10)
    _close(brute.prediction_change_sq, res.prediction_change_sq, tol=1e-10)
    _close(brute.self_prediction_change[:, 0], res.self_prediction_change, tol=1e-10)
    with pytest.raises(ValueError, match="loss: expected 'sum'"):
        train(apply_fn, w0, X, Y, lr=lr, steps=steps, loss="avg")
    with pytest.raises(ValueError, match="loss: expected 'sum'"):
        brute_force_loo(apply_fn, w0, X, Y, lr=lr, steps=steps, loss="avg", progress=False)


def test_mean_loss_errors():
    F, R, _ = _problem("k1")
    with pytest.raises(ValueError, match="loss: expected 'sum' or 'mean', got 'avg'"):
        leave_one_out(features=F, residuals=R, lr=0.1, steps=3.0, loss="avg", progress=False)
    with pytest.raises(ValueError, match="loss: 'mean' needs n ≥ 2 samples"):
        leave_one_out(features=F[:1], residuals=R[:1], lr=0.1, steps=3.0, loss="mean", progress=False)

"""score() against leave_one_out on the exact NTK, against explicit retraining of the linearized model, and its API."""
import re
import sys

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ntk_info
from ntk_info import scores
from ntk_info.models import get_model, init_params
from ntk_info.scorer import TRACE_ROWS_THRESHOLD, score

N, D_IN, WIDTH = 10, 3, 8  # stax Dense has no bias: leaves W1 (3·8 = 24), W2 (8·k)
LR, STEPS = 0.05, 30


def make_problem(k, seed=0):
    model = get_model("mlp", k, width=WIDTH)
    params = init_params(model, (D_IN,), seed=seed)
    rng = np.random.default_rng(seed)
    X, X_val = rng.normal(size=(N, D_IN)), rng.normal(size=(6, D_IN))
    Y = rng.normal(size=(N, k))
    return model.apply_fn, params, X, Y, X_val


def exact_ntk(apply_fn, params, x1, x2=None):
    """K(x1, x2)_{ij,ab} = ⟨∂f_a(x1_i)/∂w, ∂f_b(x2_j)/∂w⟩ (n1, n2, k, k) from the full Jacobian (jacrev)."""
    flat, unravel = ravel_pytree(params)
    jac = lambda x: np.asarray(jax.jacrev(lambda w: apply_fn(unravel(w), x))(flat))  # noqa: E731  (n, k, d)
    J1 = jac(x1)
    J2 = J1 if x2 is None else jac(x2)
    return np.einsum("iad,jbd->ijab", J1, J2)


def exact_loo(apply_fn, params, X, Y, X_val, **kw):
    K = exact_ntk(apply_fn, params, X)
    K_val = exact_ntk(apply_fn, params, X_val, X)
    f0 = np.asarray(apply_fn(params, X))
    return ntk_info.leave_one_out(kernel=K, residuals=Y - f0, cross_kernel=K_val, progress=False, **kw)


@pytest.mark.parametrize("k,steps,weight_decay,discrete", [(1, STEPS, 0.0, False), (2, STEPS, 0.0, False),
                                                           (2, STEPS, 0.3, True), (1, float("inf"), 0.5, False)])
def test_full_budget_equals_exact_ntk_loo(k, steps, weight_decay, discrete):
    apply_fn, params, X, Y, X_val = make_problem(k)
    res = score(apply_fn, params, X, Y, X_val, lr=LR, steps=steps, weight_decay=weight_decay, discrete=discrete,
                coords_per_layer=100, kernel="full", trust_samples=0, progress=False)
    ref = exact_loo(apply_fn, params, X, Y, X_val, lr=LR, steps=steps, weight_decay=weight_decay, discrete=discrete)
    tol = dict(rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(res.weight_change_sq, ref.weight_change_sq, **tol)
    np.testing.assert_allclose(res.prediction_change_sq, ref.prediction_change_sq, **tol)
    np.testing.assert_allclose(res.fsi, scores.fsi(ref, 1.0), **tol)
    np.testing.assert_allclose(res.si, scores.si_isotropic(ref, 1.0), **tol)
    np.testing.assert_allclose(res.si_langevin, scores.si_langevin(ref, lr=LR, batch_size=N,
                                                                  weight_decay=weight_decay), **tol)
    loo_residual = np.asarray(ref.fitted_residuals).reshape(N, k) + np.asarray(ref.self_prediction_change).reshape(N, k)
    np.testing.assert_allclose(res.loo_residuals, loo_residual, **tol)
    assert res.settings["p"] == 24 + 8 * k and res.settings["kernel"] == "full" and res.settings["k"] == k


def test_loo_residuals_equal_explicit_retraining():
    """Brute force: train the linearized network (true Jacobian) by t GD steps without sample i."""
    k, steps, lam = 2, 25, 0.1
    apply_fn, params, X, Y, X_val = make_problem(k, seed=1)
    res = score(apply_fn, params, X, Y, X_val, lr=LR, steps=steps, weight_decay=lam, discrete=True,
                coords_per_layer=10**6, trust_samples=0, progress=False)
    flat, unravel = ravel_pytree(params)
    J = np.asarray(jax.jacrev(lambda w: apply_fn(unravel(w), X))(flat))  # (n, k, d)
    J_val = np.asarray(jax.jacrev(lambda w: apply_fn(unravel(w), X_val))(flat))
    R = Y - np.asarray(apply_fn(params, X))

    def train(mask):
        w = np.zeros(J.shape[-1])
        for _ in range(steps):
            grad = -np.einsum("ikd,ik->d", J * mask[:, None, None], R - J @ w) + lam * w
            w = w - LR * grad
        return w

    w_full = train(np.ones(N))
    for i in range(N):
        mask = np.ones(N)
        mask[i] = 0.0
        w_i = train(mask)
        np.testing.assert_allclose(res.loo_residuals[i], R[i] - J[i] @ w_i, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.weight_change_sq[i], np.sum((w_full - w_i) ** 2), rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(res.prediction_change_sq[i], np.sum((J_val @ (w_full - w_i)) ** 2),
                                   rtol=1e-9, atol=1e-14)


def test_projection_error_shrinks_with_budget():
    """With fewer coordinates than the network has, F-SI deviates from the exact one, less so with more coordinates."""
    apply_fn, params, X, Y, X_val = make_problem(1, seed=2)
    ref = scores.fsi(exact_loo(apply_fn, params, X, Y, X_val, lr=LR, steps=STEPS), 1.0)
    errors = {}
    for budget in (3, 16):
        errors[budget] = np.mean([
            np.linalg.norm(score(apply_fn, params, X, Y, X_val, lr=LR, steps=STEPS, coords_per_layer=budget,
                                 seed=seed, trust_samples=0, progress=False).fsi - ref) / np.linalg.norm(ref)
            for seed in range(4)])
    assert errors[3] > 1.5 * errors[16] > 0, errors


def test_trace_kernel_equals_output_averaged_ntk():
    k = 3
    apply_fn, params, X, Y, X_val = make_problem(k)
    res = score(apply_fn, params, X, Y, X_val, lr=LR, steps=STEPS, coords_per_layer=100, kernel="trace",
                trust_samples=0, progress=False)
    K = exact_ntk(apply_fn, params, X)
    K_val = exact_ntk(apply_fn, params, X_val, X)
    trace = lambda kern: np.einsum("ijaa->ij", kern) / k  # noqa: E731  (neural-tangents trace_axes=(-1,))
    ref = ntk_info.leave_one_out(kernel=trace(K), residuals=Y - np.asarray(apply_fn(params, X)),
                                 cross_kernel=trace(K_val), lr=LR, steps=STEPS, progress=False)
    np.testing.assert_allclose(res.prediction_change_sq, ref.prediction_change_sq, rtol=1e-8)
    np.testing.assert_allclose(res.self_prediction_change, np.asarray(ref.self_prediction_change), rtol=1e-8,
                               atol=1e-12)
    assert res.settings["kernel"] == "trace"


def test_auto_kernel_choice():
    """auto: 'full' for n·k ≤ 4000, 'trace' above (a linear model keeps the big case cheap)."""
    apply_fn = lambda w, x: x @ w  # noqa: E731
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 2))
    for n, expected in ((TRACE_ROWS_THRESHOLD // 2, "full"), (TRACE_ROWS_THRESHOLD // 2 + 1, "trace")):
        X = rng.normal(size=(n, 3))
        res = score(apply_fn, w0, X, rng.normal(size=(n, 2)), lr=1e-3, steps=10, trust_samples=0, progress=False)
        assert res.settings["kernel"] == expected


def test_targets_and_outputs():
    apply_fn, params, X, Y, X_val = make_problem(1)
    y1 = Y[:, 0]
    a = score(apply_fn, params, X, y1, lr=LR, steps=STEPS, trust_samples=0, progress=False)
    b = score(apply_fn, params, X, Y, lr=LR, steps=STEPS, trust_samples=0, progress=False)
    np.testing.assert_allclose(a.si, b.si, rtol=1e-12)
    assert a.fsi is None and a.prediction_change_sq is None
    apply3, params3, X3, _, _ = make_problem(3)
    labels = np.arange(N) % 3
    c = score(apply3, params3, X3, labels, lr=LR, steps=STEPS, targets="onehot", trust_samples=0, progress=False)
    d = score(apply3, params3, X3, np.eye(3)[labels], lr=LR, steps=STEPS, trust_samples=0, progress=False)
    np.testing.assert_allclose(c.loo_residuals, d.loo_residuals, rtol=1e-12)
    with pytest.raises(ValueError, match="targets='onehot'"):
        score(apply3, params3, X3, labels, lr=LR, steps=STEPS, progress=False)
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 3\)"):
        score(apply3, params3, X3, labels + 1, lr=LR, steps=STEPS, targets="onehot", progress=False)
    with pytest.raises(ValueError, match=r"expected shape \(10, 3\)"):
        score(apply3, params3, X3, Y, lr=LR, steps=STEPS, progress=False)
    with pytest.raises(ValueError, match="same length"):
        score(apply_fn, params, X, Y[:-1], lr=LR, steps=STEPS, progress=False)
    with pytest.raises(ValueError, match="empty data"):
        score(apply_fn, params, X[:0], Y[:0], lr=LR, steps=STEPS, progress=False)
    with pytest.raises(ValueError, match="lr"):
        score(apply_fn, params, X, Y, lr=-1.0, steps=STEPS, progress=False)
    with pytest.raises(ValueError, match="kernel"):
        score(apply_fn, params, X, Y, lr=LR, steps=STEPS, kernel="diag", progress=False)


def test_result_export(tmp_path, monkeypatch):
    apply_fn, params, X, Y, X_val = make_problem(2)
    res = score(apply_fn, params, X, Y, X_val, lr=LR, steps=STEPS, trust_samples=0, progress=False)
    table = res.to_dict()
    assert set(table) >= {"si", "si_langevin", "fsi", "weight_change_sq", "prediction_change_sq", "loo_residuals"}
    np.testing.assert_allclose(res.loo_loss, 0.5 * np.sum(res.loo_residuals ** 2, axis=1))
    frame = res.to_dataframe()
    assert len(frame) == N and "loo_residuals_1" in frame
    res.to_csv(tmp_path / "scores.csv")
    data = np.genfromtxt(tmp_path / "scores.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(data["fsi"], res.fsi)
    np.testing.assert_array_equal(data["loo_residuals_0"], res.loo_residuals[:, 0])
    for key in ("projection_method", "coords_per_layer", "seed", "p", "lr", "steps", "weight_decay", "discrete",
                "mode", "kernel", "n", "k", "seconds_total"):
        assert key in res.settings
    phi = res.projection.features(X, progress=False).phi
    diag = np.einsum("iap,iap->i", phi, phi)
    assert res.kernel_diagonal_stats == pytest.approx({"min": diag.min(), "median": np.median(diag),
                                                       "mean": diag.mean(), "max": diag.max()}, rel=1e-12)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas"):
        res.to_dataframe()


def test_mean_loss_is_passed_to_the_engine():
    """score(loss="mean") is leave_one_out(loss="mean") on score's own features, not the sum loss."""
    apply_fn, params, X, Y, X_val = make_problem(2, seed=3)
    lr = LR * N  # the same step size as the sum-loss tests
    res = score(apply_fn, params, X, Y, X_val, lr=lr, steps=STEPS, weight_decay=0.01, loss="mean", kernel="full",
                coords_per_layer=100, progress=False)
    feats, feats_val = (res.projection.features(x, progress=False) for x in (X, X_val))
    ref = ntk_info.leave_one_out(features=feats.phi, residuals=Y - feats.outputs, cross_features=feats_val.phi,
                                 lr=lr, steps=STEPS, weight_decay=0.01, loss="mean", progress=False)
    np.testing.assert_allclose(res.weight_change_sq, ref.weight_change_sq, rtol=1e-12)
    np.testing.assert_allclose(res.fsi, scores.fsi(ref), rtol=1e-12)
    np.testing.assert_allclose(res.si_langevin, scores.si_langevin(ref, batch_size=N), rtol=1e-12)
    assert res.settings["loss"] == "mean" and res.settings["dtype"] == "float64"
    naive = score(apply_fn, params, X, Y, X_val, lr=LR, steps=STEPS, weight_decay=0.01 * N, kernel="full",
                  coords_per_layer=100, progress=False)  # (η/n, nλ) for every model: off by the n - 1 models
    assert np.max(np.abs(naive.weight_change_sq - res.weight_change_sq)) > 1e-3 * np.max(res.weight_change_sq)
    with pytest.raises(ValueError, match="loss: expected one of"):
        score(apply_fn, params, X, Y, lr=lr, steps=STEPS, loss="avg", progress=False)
    with pytest.raises(ValueError, match="dtype: expected one of"):
        score(apply_fn, params, X, Y, lr=lr, steps=STEPS, dtype="float16", progress=False)


@pytest.mark.parametrize("discrete", [False, True])
def test_unstable_lr_warns_with_the_limit(discrete):
    """Above 2/(λmax + λ) GD diverges: score warns, for gradient flow too, and names the limit."""
    apply_fn, params, X, Y, _ = make_problem(1, seed=4)
    phi = score(apply_fn, params, X, Y, lr=LR, steps=1, coords_per_layer=100, progress=False) \
        .projection.features(X, progress=False).phi[:, 0]
    limit = 2.0 / (np.linalg.eigvalsh(phi @ phi.T).max() + 0.1)
    with pytest.warns(RuntimeWarning, match="GD stability limit 2/\\(λmax\\+λ\\) = ") as record:
        score(apply_fn, params, X, Y, lr=1.05 * limit, steps=STEPS, weight_decay=0.1, discrete=discrete,
              coords_per_layer=100, progress=False)
    message = next(str(w.message) for w in record if "stability limit" in str(w.message))
    stated = float(re.search(r"= (\S+) \(λmax=", message).group(1))
    assert stated == pytest.approx(limit, rel=1e-5) and message.endswith(f"use lr < {stated:g}.")

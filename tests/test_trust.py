"""ntk_info.trust: the verdict and the figures behind it, against networks whose answer is known."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

import ntk_info
from ntk_info.evidence import THRESHOLDS, correlation_with_interval, kernel_drift, largest_eigenvalue, verdict
from ntk_info.features import projected_features
from ntk_info.models import mlp, init_params
from ntk_info.training import train


def classification(n, d, seed=0, n_val=16):
    rng = np.random.default_rng(seed)
    X, X_val, w = rng.normal(size=(n, d)), rng.normal(size=(n_val, d)), rng.normal(size=d)
    return X, np.sign(X @ w)[:, None], X_val, np.sign(X_val @ w)[:, None]


def lambda_max(apply_fn, params, X):
    return largest_eigenvalue(projected_features(apply_fn, params, X, progress=False).phi)


def test_wide_mlp_small_lr_is_trusted_by_default():
    X, Y, X_val, Y_val = classification(24, 4)
    model = mlp(1, width=512)
    params = init_params(model, (4,), seed=0)
    lr = 0.2 / lambda_max(model.apply_fn, params, X)
    res = ntk_info.score(model.apply_fn, params, X, Y, X_val, lr=lr, steps=100, discrete=True, Y_val=Y_val,
                         progress=False)
    tr = res.trust
    json.dumps(tr, allow_nan=False)  # settings.json-ready
    assert tr["verdict"] == "trusted", tr["reasons"]
    spot = tr["spot_check"]
    assert spot["samples"] == 8 and spot["ranked_by"] == "fsi" and len(set(spot["indices"])) == 8
    assert spot["predictions"]["pearson"] > 0.95 and spot["weights"]["pearson"] > 0.95
    lo, hi = spot["predictions"]["pearson_interval"]
    assert lo <= spot["predictions"]["pearson"] <= hi
    assert tr["linearization_gap"] < 0.1 and tr["kernel_drift"] < 0.1 and not tr["edge_of_stability"]
    assert abs(tr["stability_margin_init"] - 0.1) < 1e-6
    assert tr["accuracy"]["real"]["val"] is not None and tr["accuracy"]["linearized"]["train"] is not None
    assert res.settings["seconds_trust"] == tr["seconds"]["total"]


def test_small_net_at_the_stability_limit_is_not_trusted():
    X, Y, X_val, _ = classification(24, 4, seed=1)
    model = mlp(1, width=16)
    params = init_params(model, (4,), seed=1)
    lr = 1.9 / lambda_max(model.apply_fn, params, X)
    res = ntk_info.score(model.apply_fn, params, X, Y, X_val, lr=lr, steps=1000, discrete=True, trust_samples=8,
                         progress=False)
    tr = res.trust
    assert tr["verdict"] == "not trusted", tr
    assert tr["edge_of_stability"]
    assert any("edge of stability" in r or "diverged" in r for r in tr["reasons"])
    assert any("lower the learning rate" in a for a in tr["advice"])


@pytest.mark.parametrize("kernel", ["full", "trace"])
def test_exactly_linear_model_has_no_gap_and_perfect_spot_check(kernel):
    """f(x) = x @ W is its own linearization: gap 0, drift 0, the scores are exact leave-one-out (its NTK is
    x_i·x_j δ_ab, so the output-averaged "trace" kernel is exact too)."""
    rng = np.random.default_rng(2)
    n, d, k = 20, 6, 2
    X, X_val = rng.normal(size=(n, d)), rng.normal(size=(9, d))
    Y = rng.normal(size=(n, k))
    apply_fn = lambda W, x: x @ W  # noqa: E731
    W0 = rng.normal(size=(d, k)) * 0.1
    lr = 0.3 / lambda_max(apply_fn, W0, X)
    res = ntk_info.score(apply_fn, W0, X, Y, X_val, lr=lr, steps=200, weight_decay=0.5, discrete=True,
                         kernel=kernel, trust_samples=6, progress=False)
    tr = res.trust
    assert tr["linearization_gap"] < 1e-8 and tr["linearization_gap_train"] < 1e-8
    assert tr["kernel_drift"] < 1e-12 and abs(tr["lambda_max_ratio"] - 1) < 1e-12
    for measure in ("predictions", "weights"):
        spot = tr["spot_check"][measure]
        np.testing.assert_allclose(spot["predicted"], spot["actual"], rtol=1e-7)
        assert spot["pearson"] > 1 - 1e-10 and spot["spearman"] == pytest.approx(1.0)
    assert tr["accuracy"] is None  # regression targets
    assert tr["verdict"] == "trusted" and tr["settings"]["kernel"] == kernel


def test_drift_uses_the_same_projection():
    """With a sketch (coords < d), the sketched Jacobian of a linear model is constant: drift exactly 0 only if
    the trained-weight features reuse the projection (a fresh sketch would differ)."""
    rng = np.random.default_rng(3)
    n, d = 16, 30
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, 1))
    apply_fn = lambda W, x: x @ W  # noqa: E731
    W0 = np.zeros((d, 1))
    lr = 0.2 / lambda_max(apply_fn, W0, X)
    res = ntk_info.score(apply_fn, W0, X, Y, lr=lr, steps=50, discrete=True, coords_per_layer=8, trust_samples=4,
                         progress=False)
    assert res.trust["kernel_drift"] < 1e-12 and res.trust["gap_inputs"] == "training"
    fresh = projected_features(apply_fn, W0, X, coords_per_layer=8, seed=1, progress=False).phi
    same = projected_features(apply_fn, W0, X, coords_per_layer=8, seed=0, progress=False).phi
    assert kernel_drift(same, fresh)["drift"] > 0.05
    assert "predictions" not in res.trust["spot_check"] and res.trust["spot_check"]["ranked_by"] == "si"


def test_kernel_drift_zero_at_zero_steps_and_equal_to_the_jacobian_kernels():
    model = mlp(2, width=8)
    params = init_params(model, (3,), seed=4)
    X = np.random.default_rng(4).normal(size=(7, 3))
    Y = np.random.default_rng(5).normal(size=(7, 2))
    feats = projected_features(model.apply_fn, params, X, coords_per_layer=10**6, progress=False)
    unmoved = train(model.apply_fn, params, X, Y, lr=0.05, steps=0)
    at_zero = dataclasses.replace(feats.projection, params=unmoved).features(X, progress=False)
    assert kernel_drift(feats.phi, at_zero.phi) == {"drift": 0.0, "rows": 14}
    trained = train(model.apply_fn, params, X, Y, lr=0.05, steps=300)
    moved = dataclasses.replace(feats.projection, params=trained).features(X, progress=False)

    def jacobian_kernel(p):
        flat, unravel = jax.flatten_util.ravel_pytree(p)
        J = jax.jacrev(lambda w: model.apply_fn(unravel(w), jnp.asarray(X)).reshape(-1))(flat)
        return np.asarray(J @ J.T)

    K0, K1 = jacobian_kernel(params), jacobian_kernel(trained)
    expected = np.linalg.norm(K1 - K0) / np.linalg.norm(K0)
    assert expected > 1e-3
    assert kernel_drift(feats.phi, moved.phi)["drift"] == pytest.approx(expected, rel=1e-10)
    assert largest_eigenvalue(moved.phi) == pytest.approx(np.linalg.eigvalsh(K1)[-1], rel=1e-10)


@pytest.mark.parametrize("shape", [(30, 50), (2300, 40), (60, 2100)])
def test_largest_eigenvalue_dense_and_lanczos(shape):
    rng = np.random.default_rng(6)
    A = rng.normal(size=shape) * np.geomspace(1, 1e-3, shape[1])
    A[:, 0] *= 3  # a clear top eigenvalue
    expected = np.linalg.svd(A, compute_uv=False)[0] ** 2
    assert largest_eigenvalue(A) == pytest.approx(expected, rel=1e-8)


def test_correlation_with_interval_matches_scipy():
    rng = np.random.default_rng(7)
    a = rng.exponential(size=10)
    b = a + rng.normal(scale=0.5, size=10)
    out = correlation_with_interval(a, b, seed=0)
    assert out["pearson"] == pytest.approx(pearsonr(a, b)[0], rel=1e-12)
    assert out["spearman"] == pytest.approx(spearmanr(a, b)[0], rel=1e-12)
    for name in ("pearson", "spearman"):
        lo, hi = out[f"{name}_interval"]
        assert -1 <= lo < out[name] < hi <= 1
    constant = correlation_with_interval(a, np.ones(10))
    assert constant["pearson"] is None and constant["pearson_interval"] is None


def _figures(pearson=0.98, weights=0.95, gap=0.05, margin=0.1, drift=0.05):
    return {"linearization_gap": gap, "stability_margin": margin, "stability_margin_init": margin,
            "kernel_drift": drift, "lr_for_margin": 1.0, "diverged": False,
            "spot_check": {"samples": 8, "ranked_by": "fsi", "ranked_by_measure": "predictions",
                           "predictions": {"pearson": pearson}, "weights": {"pearson": weights}}}


@pytest.mark.parametrize("change,expected", [
    ({}, "trusted"),
    ({"pearson": 0.85}, "caution"),
    ({"weights": 0.6}, "caution"),
    ({"gap": 0.4}, "caution"),
    ({"drift": 0.8}, "caution"),
    ({"margin": 0.8}, "caution"),
    ({"pearson": None}, "caution"),
    ({"pearson": 0.3}, "not trusted"),
    ({"gap": 0.9}, "not trusted"),
    ({"drift": 3.5}, "not trusted"),
    ({"margin": THRESHOLDS["edge_margin"]}, "not trusted"),
])
def test_verdict_rules(change, expected):
    label, reasons, advice = verdict(_figures(**change))
    assert label == expected and reasons and advice


def test_verdict_of_a_diverged_run():
    figures = dict(_figures(), diverged=True, stability_margin=None, kernel_drift=None, linearization_gap=None)
    figures["spot_check"] = {"samples": 8, "ranked_by": "fsi", "ranked_by_measure": "predictions"}
    label, reasons, advice = verdict(figures)
    assert label == "not trusted" and "diverged" in reasons[0] and "lower the learning rate" in advice[0]


def test_trust_refuses_settings_other_than_the_scores():
    X, Y, X_val, _ = classification(12, 3, seed=8)
    model = mlp(1, width=16)
    params = init_params(model, (3,), seed=8)
    res = ntk_info.score(model.apply_fn, params, X, Y, X_val, lr=0.01, steps=20, trust_samples=0, progress=False)
    assert res.trust is None
    common = dict(result=res, lr=0.01, steps=20)
    with pytest.raises(ValueError, match="lr: the scores were computed with"):
        ntk_info.trust(model.apply_fn, params, X, Y, X_val, **{**common, "lr": 0.02})
    with pytest.raises(ValueError, match="loss: only 'sum'"):
        ntk_info.trust(model.apply_fn, params, X, Y, X_val, loss="mean", **common)
    with pytest.raises(ValueError, match="samples: expected an integer in"):
        ntk_info.trust(model.apply_fn, params, X, Y, X_val, samples=2, **common)
    with pytest.raises(ValueError, match="X_val: pass the validation inputs"):
        ntk_info.trust(model.apply_fn, params, X, Y, X_val[:3], **common)
    with pytest.raises(ValueError, match=r"trust_samples: .*steps=inf is not a finite number of GD steps"):
        ntk_info.score(model.apply_fn, params, X, Y, X_val, lr=0.01, steps=float("inf"), trust_samples=4,
                       progress=False)
    # by default the check is skipped where it cannot apply, and the result says why
    res = ntk_info.score(model.apply_fn, params, X, Y, X_val, lr=0.01, steps=float("inf"), weight_decay=0.1,
                         progress=False)
    assert res.trust is None and "not a finite number of GD steps" in res.settings["trust_skipped"]

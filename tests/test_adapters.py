"""Adapters on real Flax Linen / NNX and Equinox models: scores equal those of the same network written as a
plain apply_fn (float64); a parameter mask linearizes only the head, checked against brute-force ridge LOO."""
import doctest

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ntk_info
from ntk_info import adapters
from ntk_info.adapters import from_equinox, from_flax, linearize_subset

F64 = jnp.float64
D_IN, HIDDEN, K = 4, 6, 3
EPS = 1e-5  # BatchNorm epsilon (Flax default)


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(10, D_IN)), rng.normal(size=(10, K)), rng.normal(size=(5, D_IN))


def scores(apply_fn, params, **kwargs):
    X, Y, X_val = data()
    settings = dict(lr=1.0, steps=np.inf, weight_decay=0.01, coords_per_layer=1000, progress=False)
    return ntk_info.score(apply_fn, params, X, Y, X_val, trust_samples=0, **{**settings, **kwargs})


def assert_same_scores(a, b):
    for name in ("si", "si_langevin", "fsi", "loo_residuals", "outputs", "fitted_residuals"):
        x, y = getattr(a, name), getattr(b, name)
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12 * np.abs(y).max(), err_msg=name)


def batch_norm(h, mean, var, scale, bias):
    return (h - mean) / np.sqrt(var + EPS) * scale + bias


# ----------------------------------------------------------------------------- Flax Linen


class LinenNet(nn.Module):
    """Dense -> BatchNorm -> tanh -> Dense, inputs shifted by a frozen non-trainable 'constants' collection."""

    @nn.compact
    def __call__(self, x, train=False):
        shift = self.variable("constants", "shift", lambda: jnp.linspace(-1.0, 1.0, D_IN, dtype=F64))
        h = nn.Dense(HIDDEN, param_dtype=F64)(x - shift.value)
        h = nn.BatchNorm(use_running_average=not train, param_dtype=F64, epsilon=EPS)(h)
        return nn.Dense(K, param_dtype=F64)(jnp.tanh(h))


@pytest.fixture(scope="module")
def linen():
    module = LinenNet()
    variables = module.init(jax.random.PRNGKey(0), jnp.ones((1, D_IN), F64))
    rng = np.random.default_rng(1)
    variables["batch_stats"]["BatchNorm_0"] = {"mean": rng.normal(size=HIDDEN),
                                               "var": rng.uniform(0.5, 2.0, size=HIDDEN)}
    variables["params"]["BatchNorm_0"] = {"scale": rng.uniform(0.5, 1.5, size=HIDDEN),
                                          "bias": rng.normal(size=HIDDEN)}
    variables["constants"]["shift"] = rng.normal(size=D_IN)
    return module, variables


def linen_plain(variables):
    """The same network by hand: its parameters as a plain dict with other names, frozen arrays as constants."""
    p, stats, shift = variables["params"], variables["batch_stats"]["BatchNorm_0"], variables["constants"]["shift"]
    params = {"W1": p["Dense_0"]["kernel"], "b1": p["Dense_0"]["bias"], "gamma": p["BatchNorm_0"]["scale"],
              "beta": p["BatchNorm_0"]["bias"], "W2": p["Dense_1"]["kernel"], "b2": p["Dense_1"]["bias"]}

    def apply_fn(w, x):
        h = batch_norm((x - shift) @ w["W1"] + w["b1"], stats["mean"], stats["var"], w["gamma"], w["beta"])
        return jnp.tanh(h) @ w["W2"] + w["b2"]

    return apply_fn, params


def test_linen_with_batchnorm_and_frozen_collection_equals_plain(linen):
    module, variables = linen
    apply_fn, params = from_flax(module, variables)
    assert params is variables["params"]
    plain_fn, plain_params = linen_plain(variables)
    X = data()[0]
    np.testing.assert_allclose(apply_fn(params, X), plain_fn(plain_params, X), rtol=1e-13)
    assert_same_scores(scores(apply_fn, params), scores(plain_fn, plain_params))


def test_linen_training_mode_batchnorm_is_refused(linen):
    module, variables = linen
    apply_fn, params = from_flax(module, variables, call_kwargs={"train": True})
    with pytest.raises(ValueError, match="inference mode"):
        ntk_info.projected_features(apply_fn, params, data()[0], progress=False)
    with pytest.raises(ValueError, match="'params' collection"):
        from_flax(module, variables["params"]["Dense_0"])
    with pytest.raises(TypeError, match="from_equinox"):
        from_flax(lambda p, x: x, variables)


# ----------------------------------------------------------------------------- Flax NNX


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.dense1 = nnx.Linear(D_IN, HIDDEN, param_dtype=F64, rngs=rngs)
        self.norm = nnx.BatchNorm(HIDDEN, param_dtype=F64, epsilon=EPS, rngs=rngs)
        self.head = nnx.Linear(HIDDEN, K, param_dtype=F64, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.tanh(self.norm(self.dense1(x))))


@pytest.fixture(scope="module")
def nnx_model():
    model = NNXNet(nnx.Rngs(0))
    rng = np.random.default_rng(2)
    model.norm.mean.set_value(jnp.asarray(rng.normal(size=HIDDEN)))
    model.norm.var.set_value(jnp.asarray(rng.uniform(0.5, 2.0, size=HIDDEN)))
    model.norm.scale.set_value(jnp.asarray(rng.uniform(0.5, 1.5, size=HIDDEN)))
    model.norm.bias.set_value(jnp.asarray(rng.normal(size=HIDDEN)))
    model.eval()
    return model


def test_nnx_with_batchnorm_equals_plain(nnx_model):
    m = nnx_model
    apply_fn, params = from_flax(m)
    assert sorted(params) == ["dense1", "head", "norm"] and sorted(params["norm"]) == ["bias", "scale"]
    mean, var = np.asarray(m.norm.mean.get_value()), np.asarray(m.norm.var.get_value())

    def plain_fn(w, x):
        h = batch_norm(x @ w[0] + w[1], mean, var, w[2], w[3])
        return jnp.tanh(h) @ w[4] + w[5]

    plain_params = [np.asarray(v.get_value()) for v in (m.dense1.kernel, m.dense1.bias, m.norm.scale, m.norm.bias,
                                                  m.head.kernel, m.head.bias)]
    X = data()[0]
    np.testing.assert_allclose(apply_fn(params, X), plain_fn(plain_params, X), rtol=1e-13)
    assert_same_scores(scores(apply_fn, params), scores(plain_fn, plain_params))
    # other parameter values (e.g. a checkpoint) replace the module's own; the module itself is untouched
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, params)
    apply_2, params_2 = from_flax(m, doubled)
    np.testing.assert_allclose(apply_2(params_2, X), plain_fn([2 * a for a in plain_params], X), rtol=1e-13)
    np.testing.assert_allclose(apply_fn(params, X), plain_fn(plain_params, X), rtol=1e-13)


def test_nnx_training_mode_is_refused(nnx_model):
    model = NNXNet(nnx.Rngs(0))
    model.train()
    apply_fn, params = from_flax(model)
    with pytest.raises(ValueError, match=r"inference mode first \(module.eval\(\)\)"):
        ntk_info.projected_features(apply_fn, params, data()[0], progress=False)
    with pytest.raises(ValueError, match="pure dict with the structure"):
        from_flax(nnx_model, {"dense1": {"kernel": np.ones((D_IN, HIDDEN))}})


# ----------------------------------------------------------------------------- Equinox


class EqxNet(eqx.Module):
    """Non-array leaves (an activation function, an int) and an integer array are filtered out (frozen)."""

    lin1: eqx.nn.Linear
    lin2: eqx.nn.Linear
    order: jax.Array
    activation: callable = jnp.tanh
    scale: int = 2

    def __call__(self, x):
        return self.lin2(self.activation(self.lin1(x[self.order]))) * self.scale


class BatchedLinear(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return x @ self.w


def test_equinox_equals_plain():
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    model = EqxNet(eqx.nn.Linear(D_IN, HIDDEN, dtype=F64, key=k1), eqx.nn.Linear(HIDDEN, K, dtype=F64, key=k2),
                   jnp.array([2, 0, 3, 1]))
    apply_fn, params = from_equinox(model)
    leaves = jax.tree_util.tree_leaves(params)
    assert len(leaves) == 4 and all(leaf.dtype == F64 for leaf in leaves)  # the int array is not a parameter
    order = np.array([2, 0, 3, 1])

    def plain_fn(w, x):
        return (jnp.tanh(x[:, order] @ w["A"].T + w["a"]) @ w["B"].T + w["b"]) * 2

    plain_params = {"A": model.lin1.weight, "a": model.lin1.bias, "B": model.lin2.weight, "b": model.lin2.bias}
    X = data()[0]
    np.testing.assert_allclose(apply_fn(params, X), plain_fn(plain_params, X), rtol=1e-13)
    assert_same_scores(scores(apply_fn, params), scores(plain_fn, plain_params))
    # per_sample=False: the module sees the whole batch; a scalar output per sample becomes (batch, 1)
    w = np.arange(1.0, D_IN + 1)
    batched_fn, batched_params = from_equinox(BatchedLinear(jnp.asarray(w)), per_sample=False)
    np.testing.assert_allclose(batched_fn(batched_params, X), (X @ w)[:, None], rtol=1e-13)
    with pytest.raises(TypeError, match="equinox.Module"):
        from_equinox(lambda x: x)


# ----------------------------------------------------------------------------- parameter mask


def test_head_mask_equals_brute_force_ridge_loo(linen):
    """Only the head linearized: the network is linear in it, so the LOO is exact ridge retraining of the head
    on the frozen body's outputs H (brute force: refit without sample i); SI = ½||θ - θ_{-i}||²."""
    module, variables = linen
    head_only = {"Dense_0": False, "BatchNorm_0": False, "Dense_1": True}
    apply_fn, params = from_flax(module, variables, mask=head_only)
    assert jax.tree_util.tree_leaves(params["Dense_0"]) == [] == jax.tree_util.tree_leaves(params["BatchNorm_0"])
    lam = 0.3
    res = scores(apply_fn, params, weight_decay=lam)
    X, Y, _ = data()
    _, p = linen_plain(variables)
    stats = variables["batch_stats"]["BatchNorm_0"]
    H = np.tanh(batch_norm((X - variables["constants"]["shift"]) @ p["W1"] + p["b1"], stats["mean"], stats["var"],
                           p["gamma"], p["beta"]))  # the frozen body's outputs
    Ha = np.hstack([H, np.ones((len(X), 1))])
    theta0 = np.vstack([p["W2"], p["b2"][None]])

    def ridge(rows):
        A = Ha[rows].T @ Ha[rows] + lam * np.eye(HIDDEN + 1)
        return np.linalg.solve(A, Ha[rows].T @ Y[rows] + lam * theta0)

    theta = ridge(np.arange(len(X)))
    si, loo_res = [], []
    for i in range(len(X)):
        theta_i = ridge(np.arange(len(X)) != i)
        si.append(0.5 * np.sum((theta - theta_i) ** 2))
        loo_res.append(Y[i] - Ha[i] @ theta_i)
    np.testing.assert_allclose(res.si, si, rtol=1e-8)
    np.testing.assert_allclose(res.loo_residuals, loo_res, rtol=1e-8, atol=1e-12)
    # the callable form selects the same leaves and gives the same scores
    apply_c, params_c = from_flax(module, variables, mask=lambda name: name.startswith("['Dense_1']"))
    np.testing.assert_allclose(scores(apply_c, params_c, weight_decay=lam).si, si, rtol=1e-8)


def test_mask_features_are_the_masked_columns(linen):
    """Full budget: Φ of the masked model is Φ of the full model restricted to the masked leaves' columns."""
    module, variables = linen
    X = data()[0]
    apply_fn, params = from_flax(module, variables)
    full = ntk_info.projected_features(apply_fn, params, X, coords_per_layer=1000, progress=False)
    mask = {"Dense_0": {"bias": False, "kernel": True}, "BatchNorm_0": False, "Dense_1": {"bias": True,
                                                                                        "kernel": False}}
    apply_sub, sub = from_flax(module, variables, mask=mask)
    part = ntk_info.projected_features(apply_sub, sub, X, coords_per_layer=1000, progress=False)
    assert part.projection.leaf_names == ("['Dense_0']['kernel']", "['Dense_1']['bias']")
    starts = np.cumsum((0,) + full.projection.layer_sizes)
    cols = {name: slice(starts[i], starts[i + 1]) for i, name in enumerate(full.projection.leaf_names)}
    expected = np.concatenate([full.phi[..., cols[name]] for name in part.projection.leaf_names], axis=-1)
    np.testing.assert_allclose(part.phi, expected, rtol=1e-13)
    np.testing.assert_allclose(part.outputs, full.outputs, rtol=1e-13)


def test_mask_errors():
    apply_fn = lambda p, x: x @ p["a"] @ p["b"]  # noqa: E731
    params = {"a": np.ones((2, 3)), "b": np.ones((3, 1))}
    with pytest.raises(ValueError, match="selects none"):
        linearize_subset(apply_fn, params, {"a": False, "b": False})
    with pytest.raises(ValueError, match="prefix"):
        linearize_subset(apply_fn, params, {"a": True, "c": False})
    with pytest.raises(TypeError, match="bool leaves"):
        linearize_subset(apply_fn, params, {"a": 1, "b": 0})
    with pytest.raises(TypeError, match="bool per leaf"):
        linearize_subset(apply_fn, params, lambda name: name)
    apply_sub, sub = linearize_subset(apply_fn, params, {"a": True, "b": False})
    with pytest.raises(ValueError, match="params_sub"):
        apply_sub(params, np.ones((1, 2)))


def test_docstring_examples_run():
    results = doctest.testmod(adapters, optionflags=doctest.ELLIPSIS)
    assert results.attempted >= 10 and results.failed == 0, results

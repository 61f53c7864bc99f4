"""save_params / load_params: round trips in every format and pytree kind, and mismatches that name the leaf."""
import doctest

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_info import checkpoint
from ntk_info.adapters import from_equinox
from ntk_info.checkpoint import load_params, save_params
from ntk_info.models import get_model, init_params

SUFFIX = {"npz": "params.npz", "msgpack": "params.msgpack", "orbax": "ckpt"}


def zoo_params(seed=0):
    """The model zoo's stax layout: a list of per-layer entries, () or (W, None)."""
    return init_params(get_model("cnn", 3), (20, 20, 1), seed=seed)


def linen_variables(seed=0):
    module = nn.Sequential([nn.Dense(5), nn.BatchNorm(use_running_average=True), nn.Dense(2)])
    return module.init(jax.random.PRNGKey(seed), jnp.ones((1, 3)))


def assert_same_tree(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("fmt", ["npz", "msgpack", "orbax"])
@pytest.mark.parametrize("make", [zoo_params, linen_variables])
def test_round_trip(tmp_path, fmt, make):
    params, other = make(0), make(1)
    path = tmp_path / SUFFIX[fmt]
    save_params(path, params)
    loaded = load_params(path, like=other)  # another init of the same model: same structure, other values
    assert_same_tree(loaded, params)
    assert not np.allclose(jax.tree_util.tree_leaves(other)[-1], jax.tree_util.tree_leaves(loaded)[-1])
    abstract = jax.eval_shape(lambda: other)  # ShapeDtypeStruct leaves are enough
    assert_same_tree(load_params(path, like=abstract), params)


def test_equinox_npz_and_dtype_cast(tmp_path):
    model = eqx.nn.MLP(3, 2, width_size=4, depth=1, key=jax.random.PRNGKey(0))
    _, params = from_equinox(model)
    save_params(tmp_path / "m.npz", params)
    _, like = from_equinox(eqx.nn.MLP(3, 2, width_size=4, depth=1, key=jax.random.PRNGKey(1)))
    assert_same_tree(load_params(tmp_path / "m.npz", like=like), params)
    like64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), like)  # float32 file, float64 model
    loaded = load_params(tmp_path / "m.npz", like=like64)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(loaded))
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(loaded)[0], jax.tree_util.tree_leaves(params)[0])


@pytest.mark.parametrize("fmt", ["npz", "msgpack", "orbax"])
def test_mismatches_name_the_leaf(tmp_path, fmt):
    params = {"body": {"kernel": np.ones((3, 4)), "bias": np.zeros(4)}, "head": {"kernel": np.ones((4, 2))}}
    path = tmp_path / SUFFIX[fmt]
    save_params(path, params)
    wider = {"body": {"kernel": np.ones((3, 5)), "bias": np.zeros(5)}, "head": {"kernel": np.ones((5, 2))}}
    with pytest.raises(ValueError, match=r"leaf \['body'\]\['bias'\] has shape \(4,\) in the file, like expects "
                                         r"\(5,\)"):
        load_params(path, like=wider)
    more = {**params, "extra": {"scale": np.ones(2)}}
    with pytest.raises(ValueError, match=r"leaf \['extra'\]\['scale'\] is not in the file"):
        load_params(path, like=more)
    fewer = {"body": params["body"]}
    with pytest.raises(ValueError, match=r"the file has 1 entry like does not: \['head'\]\['kernel'\]"):
        load_params(path, like=fewer)
    ints = {**params, "head": {"kernel": np.ones((4, 2), np.int32)}}
    with pytest.raises(ValueError, match=r"leaf \['head'\]\['kernel'\] has dtype float64 in the file, like "
                                         r"expects int32"):
        load_params(path, like=ints)


def test_format_and_path_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the checkpoint format"):
        save_params(tmp_path / "p.pkl", {"w": np.ones(2)})
    with pytest.raises(ValueError, match="format: expected"):
        load_params(tmp_path / "p.npz", like=None, format="pickle")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_params(tmp_path / "missing.npz", like={"w": np.ones(2)})
    save_params(tmp_path / "p.npz", np.ones(3))  # a bare array is one leaf named 'params'
    assert sorted(load_params(tmp_path / "p.npz")) == ["params"]
    np.testing.assert_array_equal(load_params(tmp_path / "p.npz", like=np.zeros(3)), np.ones(3))


def test_docstring_examples_run():
    results = doctest.testmod(checkpoint)
    assert results.attempted >= 5 and results.failed == 0, results


def test_nnx_state_saved_with_orbax_loads_into_another_instance(tmp_path):
    """Flax's recipe: checkpointer.save(path, nnx.state(model)); Orbax stores list indices and NNX variables as
    string keys ('0', 'value'), matched to like=nnx.state(other) by key path."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from ntk_info.adapters import from_flax

    def make(seed):
        model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(seed)), nnx.BatchNorm(4, rngs=nnx.Rngs(seed)),
                               nnx.Linear(4, 2, rngs=nnx.Rngs(seed)))
        model.eval()
        return model

    model, other = make(0), make(1)
    model.layers[1].mean.set_value(jnp.arange(4.0, dtype=jnp.float32))  # non-parameter state is restored too
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", nnx.state(model))
    checkpointer.wait_until_finished()
    nnx.update(other, load_params(tmp_path / "state", like=nnx.state(other)))
    X = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    (f, p), (g, q) = from_flax(model), from_flax(other)
    np.testing.assert_array_equal(g(q, X), f(p, X))
    save_params(tmp_path / "params.npz", p)  # the adapter's pure-dict params: integer list keys in the names
    assert_same_tree(load_params(tmp_path / "params.npz", like=q), p)

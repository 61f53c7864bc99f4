"""The plain-JAX model zoo equals neural-tangents stax on the same weights: outputs and empirical NTK.

Runs in the neural-tangents environment only (`make test-nt`, marker ``nt``), which CI also runs.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_info import models

pytestmark = pytest.mark.nt
import neural_tangents as nt  # noqa: E402  (the nt extra; a missing install fails loudly)
stax = nt.stax


def _stax_mlp(k, width):
    return stax.serial(stax.Flatten(), stax.Dense(width), stax.Relu(), stax.Dense(k))


def _stax_cnn(k):
    return stax.serial(
        stax.Conv(32, (4, 4), (2, 2), "SAME"), stax.Relu(),
        stax.Conv(32, (4, 4), (2, 2), "SAME"), stax.Relu(),
        stax.Conv(64, (3, 3), (1, 1), "VALID"), stax.Relu(),
        stax.Conv(256, (3, 3), (1, 1), "VALID"), stax.Relu(),
        stax.Flatten(), stax.Dense(256), stax.Relu(), stax.Dense(k))


def _stax_resnet(k, channels, blocks):
    def block():
        main = stax.serial(stax.Relu(), stax.Conv(channels, (3, 3), padding="SAME"),
                           stax.Relu(), stax.Conv(channels, (3, 3), padding="SAME"))
        return stax.serial(stax.FanOut(2), stax.parallel(main, stax.Identity()), stax.FanInSum())

    return stax.serial(stax.Conv(channels, (3, 3), padding="SAME"), *[block() for _ in range(blocks)],
                       stax.Relu(), stax.GlobalAvgPool(), stax.Dense(k))


def _to_stax_resnet(params, blocks):
    """Our residual block's params are the main branch's list; stax wraps it in FanOut/parallel/FanInSum."""
    return [params[0], *[[(), (params[1 + b], ()), ()] for b in range(blocks)], *params[1 + blocks:]]


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_zoo_equals_stax_outputs_and_ntk(name):
    jax.config.update("jax_enable_x64", True)
    k = 3
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 12, 12, 1), jnp.float64)
    if name == "mlp":
        model = models.mlp(k, width=64)
        s_init, s_apply, _ = _stax_mlp(k, 64)
        params = models.init_params(model, x.shape[1:], seed=0)
        s_params = params
    elif name == "cnn":
        model = models.cnn(k)
        s_init, s_apply, _ = _stax_cnn(k)
        x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1), jnp.float64)
        params = models.init_params(model, x.shape[1:], seed=0)
        s_params = params
    else:
        model = models.resnet(k, channels=8, blocks=2)
        s_init, s_apply, _ = _stax_resnet(k, 8, 2)
        params = models.init_params(model, x.shape[1:], seed=0)
        s_params = _to_stax_resnet(params, 2)
    # the layouts agree leaf for leaf with stax's own init
    _, ref_params = s_init(jax.random.PRNGKey(0), (-1,) + x.shape[1:])
    assert jax.tree_util.tree_structure(ref_params) == jax.tree_util.tree_structure(s_params)
    assert [a.shape for a in jax.tree_util.tree_leaves(ref_params)] == \
        [a.shape for a in jax.tree_util.tree_leaves(s_params)]
    ours = model.apply_fn(params, x)
    theirs = s_apply(s_params, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    ntk_ours = nt.empirical_ntk_fn(model.apply_fn, trace_axes=(), implementation=1)(x, None, params)
    ntk_theirs = nt.empirical_ntk_fn(s_apply, trace_axes=(), implementation=1)(x, None, s_params)
    np.testing.assert_allclose(ntk_ours, ntk_theirs, rtol=1e-9, atol=1e-12 * float(jnp.max(jnp.abs(ntk_theirs))))

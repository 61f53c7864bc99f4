"""Pretraining on other classes with a fresh head (SI paper Table 1 setting), for zoo models and adapters."""
import doctest

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_info import training
from ntk_info.adapters import from_flax
from ntk_info.models import init_params, mlp
from ntk_info.training import pretrain_then_finetune, replace_head, targets, train


class Net(nn.Module):
    outputs: int

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(6, param_dtype=jnp.float64)(x)
        h = nn.BatchNorm(use_running_average=True, param_dtype=jnp.float64)(h)
        return nn.Dense(self.outputs, param_dtype=jnp.float64, name="head")(jnp.tanh(h))


def test_flax_pretrain_keeps_trained_body_under_fresh_head():
    rng = np.random.default_rng(0)
    X_pre, labels = rng.normal(size=(12, 4)), np.arange(12) % 4
    Y_pre = targets(labels, 4)
    pre = from_flax(Net(4), Net(4).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.float64)))
    fine_module = Net(2)
    fine_vars = fine_module.init(jax.random.PRNGKey(1), jnp.ones((1, 4), jnp.float64))
    fine = from_flax(fine_module, fine_vars)
    head = lambda name: name.startswith("['head']")  # noqa: E731
    w0 = pretrain_then_finetune(pre, fine, X_pre, Y_pre, lr=0.05, steps=20, head=head)
    trained = train(pre[0], pre[1], X_pre, Y_pre, lr=0.05, steps=20)
    for layer in ("Dense_0", "BatchNorm_0"):  # body: the pretrained values, which moved away from the init
        for name in w0[layer]:
            np.testing.assert_array_equal(w0[layer][name], trained[layer][name])
    assert not np.allclose(w0["Dense_0"]["kernel"], pre[1]["Dense_0"]["kernel"])
    for name in ("kernel", "bias"):  # head: the fresh one of the 2-output model
        np.testing.assert_array_equal(w0["head"][name], fine[1]["head"][name])
    assert fine[0](w0, X_pre).shape == (12, 2)


def test_zoo_pretrain_default_head_is_the_last_layer():
    pre, fine = mlp(num_outputs=3, width=8), mlp(num_outputs=1, width=8)
    X = np.random.default_rng(1).normal(size=(9, 5))
    Y = targets(np.arange(9) % 3, 3)
    w0 = pretrain_then_finetune(pre, fine, X, Y, lr=0.05, steps=5, seed=2)
    assert isinstance(w0, list) and w0[3][0].shape == (8, 1)
    as_pairs = pretrain_then_finetune((pre.apply_fn, init_params(pre, (5,), seed=2)),
                                      (fine.apply_fn, init_params(fine, (5,), seed=3)), X, Y, lr=0.05, steps=5, seed=2)
    for a, b in zip(jax.tree_util.tree_leaves(w0), jax.tree_util.tree_leaves(as_pairs)):
        np.testing.assert_array_equal(a, b)


def test_replace_head_errors():
    trained = {"body": np.ones((3, 4)), "head": np.ones((4, 8))}
    with pytest.raises(ValueError, match=r"body leaf \['body'\] has shape \(3, 5\)"):
        replace_head(trained, {"body": np.zeros((3, 5)), "head": np.zeros((4, 2))}, head={"body": False, "head": True})
    with pytest.raises(ValueError, match="structure of params"):
        replace_head(trained, {"body": np.zeros((3, 4))}, head={"body": False, "head": True})
    with pytest.raises(ValueError, match="head: needed"):
        replace_head(trained, trained)


def test_docstring_examples_run():
    results = doctest.testmod(training)
    assert results.attempted >= 8 and results.failed == 0, results

"""neural-tangents' empirical NTK (implementations 1 and 2) equals exact_ntk's plain-JAX Jacobian contraction.

Runs in the neural-tangents environment only (`make test-nt`, marker ``nt``), which CI also runs.
"""
import importlib
import pkgutil

import jax
import numpy as np
import pytest

import ntk_info
from ntk_info.features import exact_ntk
from ntk_info.models import get_model, init_params

pytestmark = pytest.mark.nt
import neural_tangents  # noqa: E402,F401  (the nt extra; a missing install fails loudly)


@pytest.mark.parametrize("name,shape,kwargs", [("mlp", (4,), {"width": 16}),
                                               ("resnet", (5, 5, 2), {"channels": 4, "blocks": 1})])
@pytest.mark.parametrize("implementation", [1, 2])
def test_neural_tangents_equals_plain_jax(name, shape, kwargs, implementation):
    jax.config.update("jax_enable_x64", True)
    model = get_model(name, 3, **kwargs)
    params = init_params(model, shape, seed=0)
    rng = np.random.default_rng(0)
    X, X_val = rng.normal(size=(7, *shape)), rng.normal(size=(4, *shape))
    ours = exact_ntk(model.apply_fn, params, X, batch_size=3, progress=False)
    theirs = exact_ntk(model.apply_fn, params, X, batch_size=3, implementation=implementation, progress=False)
    assert ours.shape == theirs.shape == (7, 7, 3, 3)
    np.testing.assert_allclose(theirs, ours, rtol=1e-10, atol=1e-12 * np.abs(ours).max())
    cross = exact_ntk(model.apply_fn, params, X_val, X, implementation=implementation, progress=False)
    np.testing.assert_allclose(cross, exact_ntk(model.apply_fn, params, X_val, X, progress=False), rtol=1e-10,
                               atol=1e-12 * np.abs(ours).max())


def test_every_module_imports_on_the_pinned_jax():
    """Everything under ntk_info imports next to neural-tangents' JAX (0.4.35); Flax / Equinox are optional."""
    names = [info.name for info in pkgutil.walk_packages(ntk_info.__path__, "ntk_info.")]
    assert "ntk_info.features" in names and "ntk_info.adapters" in names
    for name in names:
        importlib.import_module(name)
    for name in ntk_info.__all__:
        getattr(ntk_info, name)

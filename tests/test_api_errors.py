"""The Python API names the argument that is wrong (issue 9 §6): one test per case."""
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_info import leave_one_out, projected_features, score


def _mlp():
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.normal(size=(3, 5))), "w2": jnp.asarray(rng.normal(size=(5, 2)))}
    apply_fn = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]  # noqa: E731
    X, Y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    return apply_fn, params, X, Y


def test_score_x_val_of_another_feature_shape_names_x_val():
    apply_fn, params, X, Y = _mlp()
    with pytest.raises(ValueError, match=r"^X_val: expected inputs of shape \(m, 3\) like X \(6, 3\), got \(4, 5\)"):
        score(apply_fn, params, X, Y, np.ones((4, 5)), lr=0.01, steps=3, progress=False)


def test_nan_in_x_names_x_and_the_row():
    apply_fn, params, X, Y = _mlp()
    X = X.copy()
    X[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"^X: 1 of 6 rows contain NaN or inf \(rows \[4\]\)"):
        score(apply_fn, params, X, Y, lr=0.01, steps=3, progress=False)
    Xv = np.ones((3, 3))
    Xv[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"^X_val: 1 of 3 rows contain NaN or inf \(rows \[0\]\)"):
        score(apply_fn, params, X[:4], Y[:4], Xv, lr=0.01, steps=3, progress=False)
    with pytest.raises(ValueError, match=r"^inputs: 1 of 6 rows contain NaN or inf \(rows \[4\]\)"):
        projected_features(apply_fn, params, X, progress=False)


def test_integer_params_name_params():
    apply_fn, params, X, Y = _mlp()
    ints = {"w1": jnp.ones((3, 5), jnp.int32), "w2": params["w2"]}
    with pytest.raises(ValueError, match=r"^params: expected floating-point leaves .* at \['w1'\]"):
        score(apply_fn, ints, X, Y, lr=0.01, steps=3, progress=False)


def test_string_x_names_x():
    apply_fn, params, X, Y = _mlp()
    with pytest.raises(ValueError, match=r"^X: expected a real numeric array, got dtype <U"):
        score(apply_fn, params, np.array([["a", "b", "c"]] * 6), Y, lr=0.01, steps=3, progress=False)
    with pytest.raises(ValueError, match=r"^X_val: expected a real numeric array"):
        score(apply_fn, params, X, Y, [["a", "b", "c"]], lr=0.01, steps=3, progress=False)


def test_empty_kernel_and_features_are_refused():
    with pytest.raises(ValueError, match=r"^kernel: empty, got shape \(0, 0\)"):
        leave_one_out(np.zeros((0, 0)), residuals=np.zeros(0), lr=0.1, steps=1.0, progress=False)
    with pytest.raises(ValueError, match=r"^features: empty, got shape \(4, 0\)"):
        leave_one_out(features=np.zeros((4, 0)), residuals=np.zeros(4), lr=0.1, steps=1.0, progress=False)
    with pytest.raises(ValueError, match=r"^features: empty, got shape \(0, 3\)"):
        leave_one_out(features=np.zeros((0, 3)), residuals=np.zeros(0), lr=0.1, steps=1.0, progress=False)


def test_non_numeric_and_complex_engine_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"^residuals: expected a real numeric array, got dtype complex"):
        leave_one_out(np.eye(3), residuals=np.ones(3) * 1j, lr=0.1, steps=1.0, progress=False)
    with pytest.raises(ValueError, match=r"^kernel: expected a real numeric array, got dtype <U"):
        leave_one_out(np.array([["a"]]), residuals=np.ones(1), lr=0.1, steps=1.0, progress=False)


def test_documented_submodules_are_attributes():
    """README names ntk_info.influence, .mpe, .brute, .streaming, .distributed: each is reachable as an attribute."""
    import ntk_info

    for name in ("influence", "mpe", "brute", "streaming", "distributed"):
        assert getattr(ntk_info, name).__name__ == f"ntk_info.{name}"
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        ntk_info.nonexistent

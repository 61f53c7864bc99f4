"""Projected features against a brute-force float64 NTK (full Jacobian by jacrev), and their error paths."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ntk_info.features import exact_ntk, kernel_relative_error, projected_features
from ntk_info.models import get_model, init_params

N, D_IN, WIDTH, K_OUT = 12, 4, 24, 2  # stax Dense has no bias by default: leaves W1 96, W2 48


def brute_ntk(apply_fn, params, x1, x2):
    """K[i, j, a, b] = <∂f_a(x1_i)/∂w, ∂f_b(x2_j)/∂w> from the full flattened Jacobian (float64)."""
    flat, unravel = ravel_pytree(params)
    j1 = jax.jacrev(lambda w: apply_fn(unravel(w), x1))(flat)  # (n1, k, d)
    j2 = jax.jacrev(lambda w: apply_fn(unravel(w), x2))(flat)
    return np.einsum("iap,jbp->ijab", j1, j2)


@pytest.fixture(scope="module")
def problem():
    model = get_model("mlp", K_OUT, width=WIDTH)
    params = init_params(model, (D_IN,), seed=1)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D_IN))
    X_val = rng.normal(size=(5, D_IN))
    return model.apply_fn, params, X, X_val, brute_ntk(model.apply_fn, params, X, X)


def test_exact_ntk_matches_brute_force(problem):
    """Plain-JAX Jacobian contraction: one block, uneven blocks (symmetric: upper triangle mirrored), cross."""
    apply_fn, params, X, X_val, K = problem
    np.testing.assert_allclose(exact_ntk(apply_fn, params, X, progress=False), K, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(exact_ntk(apply_fn, params, X, batch_size=5, progress=False), K, rtol=1e-10,
                               atol=1e-12)
    for batch_size in (None, 2, 4):
        np.testing.assert_allclose(exact_ntk(apply_fn, params, X_val, X, batch_size=batch_size, progress=False),
                                   brute_ntk(apply_fn, params, X_val, X), rtol=1e-10, atol=1e-12)


def test_exact_ntk_multi_leaf_conv_and_errors():
    """A conv net with several leaves (nested pytree) against brute force; bad implementation is named."""
    model = get_model("resnet", 3, channels=4, blocks=1)
    params = init_params(model, (5, 5, 2), seed=0)
    X = np.random.default_rng(2).normal(size=(7, 5, 5, 2))
    np.testing.assert_allclose(exact_ntk(model.apply_fn, params, X, batch_size=3, progress=False),
                               brute_ntk(model.apply_fn, params, X, X), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="implementation: expected None"):
        exact_ntk(model.apply_fn, params, X, implementation=3, progress=False)


@pytest.mark.parametrize("method", ["subsample", "countsketch", "gaussian", "rademacher"])
def test_full_budget_is_exact(problem, method):
    apply_fn, params, X, X_val, K = problem
    res = projected_features(apply_fn, params, X, coords_per_layer=96, method=method, progress=False)
    assert res.phi.shape == (N, K_OUT, 96 + 48) and res.outputs.shape == (N, K_OUT)
    assert kernel_relative_error(res.phi, K) < 1e-10
    np.testing.assert_allclose(res.outputs, apply_fn(params, X), rtol=1e-12)
    val = res.projection.features(X_val, progress=False)
    np.testing.assert_allclose(np.einsum("iap,jbp->ijab", val.phi, res.phi), brute_ntk(apply_fn, params, X_val, X),
                               rtol=1e-10, atol=1e-12)


def test_error_decreases_with_budget(problem):
    apply_fn, params, X, _, K = problem
    mean_err = []
    for budget in (4, 16, 64):
        errs = [kernel_relative_error(projected_features(apply_fn, params, X, coords_per_layer=budget, seed=s,
                                                         progress=False).phi, K) for s in range(6)]
        mean_err.append(np.mean(errs))
    assert mean_err[0] > 1.5 * mean_err[1] > 2.25 * mean_err[2] > 0, mean_err


@pytest.mark.parametrize("method", ["subsample", "countsketch", "gaussian", "rademacher"])
def test_unbiased_over_seeds(problem, method):
    """Mean of ΦΦᵀ over seeds approaches K: its error is far below a single draw's."""
    apply_fn, params, X, _, K = problem
    kernels = []
    for seed in range(60):
        phi = projected_features(apply_fn, params, X, coords_per_layer=8, seed=seed, method=method,
                                 progress=False).phi
        kernels.append(np.einsum("iap,jbp->ijab", phi, phi))
    single = np.mean([np.linalg.norm(k - K) for k in kernels]) / np.linalg.norm(K)
    mean = np.linalg.norm(np.mean(kernels, axis=0) - K) / np.linalg.norm(K)
    assert mean < 0.35 * single, (mean, single)  # 1/sqrt(60) ≈ 0.13 for an unbiased estimator


def test_subsample_coordinates_and_scale(problem):
    apply_fn, params, X, _, _ = problem
    proj = projected_features(apply_fn, params, X, coords_per_layer=30, seed=3, method="subsample",
                              progress=False).projection
    assert proj.layer_sizes == (30, 30)
    for idx, d, m, scale in zip(proj.indices, proj.leaf_dims, proj.layer_sizes, proj.scales):
        if m < d:
            idx = np.asarray(idx)
            assert len(np.unique(idx)) == m and idx.min() >= 0 and idx.max() < d  # without replacement
            assert scale == pytest.approx(np.sqrt(d / m))
        else:
            assert idx is None and scale == 1.0
    # the same seed gives the same coordinates, another seed other ones
    again = projected_features(apply_fn, params, X, coords_per_layer=30, seed=3, method="subsample",
                               progress=False).projection
    other = projected_features(apply_fn, params, X, coords_per_layer=30, seed=4, method="subsample",
                               progress=False).projection
    assert np.array_equal(proj.indices[0], again.indices[0]) and not np.array_equal(proj.indices[0], other.indices[0])


def test_countsketch_buckets_partition_every_coordinate(problem):
    """Every coordinate of a sketched leaf lands in exactly one bucket with sign ±1; buckets are balanced;
    Φ equals the explicit sketch J P with P[c, h(c)] = s_c."""
    apply_fn, params, X, _, _ = problem
    res = projected_features(apply_fn, params, X, coords_per_layer=30, seed=3, progress=False)
    proj = res.projection
    assert proj.method == "countsketch"
    J = jax.vmap(jax.jacrev(lambda p, x: apply_fn(p, x[None])[0]), in_axes=(None, 0))(params, X)
    leaves = jax.tree_util.tree_leaves(J)
    blocks = []
    for leaf, (idx, sgn, d, m) in enumerate(zip(proj.indices, proj.signs, proj.leaf_dims, proj.layer_sizes)):
        j_leaf = np.asarray(leaves[leaf]).reshape(N, K_OUT, d)
        if idx is None:
            blocks.append(j_leaf)
            continue
        idx, sgn = np.asarray(idx), np.asarray(sgn)
        real = sgn != 0
        assert np.array_equal(np.sort(idx[real]), np.arange(d))  # a partition of the coordinates
        assert set(np.unique(sgn[real])) <= {-1, 1}
        sizes = real.sum(axis=0)
        assert sizes.max() - sizes.min() <= 1  # balanced buckets
        P = np.zeros((d, m))
        for b in range(m):
            P[idx[real[:, b], b], b] = sgn[real[:, b], b]
        blocks.append(j_leaf @ P)
    np.testing.assert_allclose(res.phi, np.concatenate(blocks, axis=-1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["subsample", "countsketch", "gaussian"])
def test_cross_features_and_batches_consistent(problem, method):
    """Features of [X; X_val] in one call equal train + projection.features(X_val); batch size changes nothing."""
    apply_fn, params, X, X_val, _ = problem
    both = projected_features(apply_fn, params, np.concatenate([X, X_val]), coords_per_layer=10, seed=2,
                              method=method, batch_size=4, progress=False)
    train = projected_features(apply_fn, params, X, coords_per_layer=10, seed=2, method=method, batch_size=5,
                               progress=False)
    val = train.projection.features(X_val, progress=False)
    np.testing.assert_allclose(both.phi, np.concatenate([train.phi, val.phi]), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(both.outputs, np.concatenate([train.outputs, val.outputs]), rtol=1e-12, atol=1e-14)


def test_plain_function_with_nested_pytree():
    """A hand-written model on a nested pytree (dict of tuple) works and matches brute force."""
    def apply_fn(p, x):
        h = jnp.tanh(x @ p["layers"][0] + p["bias"])
        return h @ p["layers"][1]

    rng = np.random.default_rng(1)
    params = {"layers": (rng.normal(size=(3, 5)), rng.normal(size=(5, 1))), "bias": rng.normal(size=(5,))}
    X = rng.normal(size=(7, 3))
    res = projected_features(apply_fn, params, X, coords_per_layer=100, progress=False)
    assert kernel_relative_error(res.phi, brute_ntk(apply_fn, params, X, X)) < 1e-12
    assert res.projection.leaf_names == ("['bias']", "['layers'][0]", "['layers'][1]")


PLAIN_MLP = textwrap.dedent("""
    import jax.numpy as jnp
    import numpy as np

    def plain_mlp(p, x):
        return jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"]

    def plain_params():
        rng = np.random.default_rng(7)
        return {"W1": rng.normal(size=(4, 16)), "b1": rng.normal(size=(16,)), "W2": rng.normal(size=(16, 2))}
""")


def test_sharded_eight_devices_equals_one(tmp_path):
    """The sample axis sharded over 8 fake CPU devices gives the 1-device result (subprocess, XLA_FLAGS first).

    A plain-JAX model keeps TensorFlow (neural-tangents) out of the subprocess."""
    namespace = {}
    exec(PLAIN_MLP, namespace)
    X = np.random.default_rng(3).normal(size=(N + 1, 4))
    ref = {}
    for method in ("subsample", "countsketch", "gaussian"):
        res = projected_features(namespace["plain_mlp"], namespace["plain_params"](), X, coords_per_layer=10, seed=5,
                                 method=method, batch_size=5, progress=False)
        ref[f"{method}_phi"], ref[f"{method}_out"] = res.phi, res.outputs
    np.savez(tmp_path / "ref.npz", X=X, **ref)
    script = PLAIN_MLP + textwrap.dedent(f"""
        import jax
        jax.config.update("jax_enable_x64", True)
        from ntk_info.features import projected_features
        assert len(jax.devices()) == 8, jax.devices()
        ref = np.load({str(tmp_path / "ref.npz")!r})
        for method in ("subsample", "countsketch", "gaussian"):
            res = projected_features(plain_mlp, plain_params(), ref["X"], coords_per_layer=10, seed=5,
                                     method=method, batch_size=5, progress=False)
            assert res.batch_size == 8, res.batch_size  # padded to a multiple of the device count
            np.testing.assert_allclose(res.phi, ref[method + "_phi"], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(res.outputs, ref[method + "_out"], rtol=1e-12, atol=1e-14)
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_errors(problem):
    apply_fn, params, X, _, _ = problem
    with pytest.raises(ValueError, match=r"apply_fn\(params, inputs\[:1\]\) failed"):
        projected_features(apply_fn, params, np.ones((3, D_IN + 1)), progress=False)
    wrong = init_params(get_model("mlp", K_OUT, width=WIDTH), (D_IN + 2,), seed=0)
    with pytest.raises(ValueError, match="params were made by the init_fn"):
        projected_features(apply_fn, wrong, X, progress=False)
    w = {"W": np.ones((D_IN, 3))}
    with pytest.raises(ValueError, match=r"shape \(batch, k\), got shape \(1,\)"):
        projected_features(lambda p, x: (x @ p["W"]).sum(1), w, X, progress=False)
    with pytest.raises(ValueError, match=r"shape \(batch, k\), got shape \(1, 3, 1\)"):
        projected_features(lambda p, x: (x @ p["W"])[..., None], w, X, progress=False)
    with pytest.raises(ValueError, match="empty data"):
        projected_features(apply_fn, params, np.ones((0, D_IN)), progress=False)
    sqrt_params = {"W": np.ones((D_IN, 1)), "b": np.zeros(1)}
    with pytest.raises(ValueError, match=r"non-finite Jacobian .* leaf\(s\) \['b'\]"):
        projected_features(lambda p, x: x @ p["W"] + jnp.sqrt(p["b"]), sqrt_params, X, progress=False)
    with pytest.raises(ValueError, match="method"):
        projected_features(apply_fn, params, X, method="srht", progress=False)
    with pytest.raises(ValueError, match="coords_per_layer"):
        projected_features(apply_fn, params, X, coords_per_layer=0, progress=False)
    with pytest.raises(ValueError, match="params: expected floating-point"):
        projected_features(lambda p, x: x @ p["W"] * 1.0, {"W": np.ones((D_IN, 1), int)}, X, progress=False)
    with pytest.raises(ValueError, match="kernel: expected shape"):
        kernel_relative_error(np.ones((3, 1, 4)), np.ones((3, 3)).reshape(3, 3, 1, 1)[:2])


def test_exact_ntk_neural_tangents_missing_says_how_to_install(problem, monkeypatch):
    apply_fn, params, X, _, _ = problem
    monkeypatch.setitem(sys.modules, "neural_tangents", None)  # import neural_tangents raises ImportError
    with pytest.raises(ImportError, match=r"nt extra .*implementation=None"):
        exact_ntk(apply_fn, params, X, implementation=1, progress=False)


@pytest.mark.parametrize("name, shape", [("mlp", (5, 5, 1)), ("cnn", (20, 20, 1)), ("resnet", (6, 6, 2))])
def test_factored_dense_kernels_equal_the_jacobian(name, shape):
    """Zoo models project Dense kernels from (input, output-gradient) factors (subsample; kernels kept
    whole under any method): the same Φ as coordinates read off the full per-sample Jacobian."""
    model = get_model(name, 3, width=20) if name == "mlp" else get_model(name, 3)
    params = init_params(model, shape, seed=2)
    X = np.random.default_rng(1).normal(size=(7, *shape))
    leaves = jax.tree_util.tree_leaves(params)
    jac = jax.vmap(jax.jacrev(lambda w, x: model.apply_fn(w, x[None])[0]), in_axes=(None, 0))(params, X)
    jac = [j.reshape(7, 3, -1) for j in jax.tree_util.tree_leaves(jac)]
    for method, coords in (("subsample", 40), ("countsketch", 10**6)):
        feats = projected_features(model.apply_fn, params, X, coords_per_layer=coords, seed=5, method=method,
                                   batch_size=3, progress=False)
        proj = feats.projection
        assert proj.factored
        expected = np.concatenate([j if idx is None else np.asarray(j)[..., np.asarray(idx)] * scale
                                   for j, idx, scale in zip(jac, proj.indices, proj.scales)], axis=-1)
        np.testing.assert_allclose(feats.phi, expected, rtol=1e-12, atol=1e-14 * np.abs(expected).max())
        np.testing.assert_allclose(feats.outputs, model.apply_fn(params, X), rtol=1e-12, atol=1e-14)
        plain = projected_features(lambda w, x: model.apply_fn(w, x), params, X, coords_per_layer=coords, seed=5,
                                   method=method, progress=False)
        assert not plain.projection.factored  # a plain function has no factors: full per-sample Jacobians
        np.testing.assert_allclose(feats.phi, plain.phi, rtol=1e-12, atol=1e-14 * np.abs(expected).max())
    assert len(leaves) == len(proj.layer_sizes)
    sketched = projected_features(model.apply_fn, params, X, coords_per_layer=40, method="countsketch", progress=False)
    assert not sketched.projection.factored  # a sketch of a large kernel needs every coordinate

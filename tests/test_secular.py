"""The secular-equation downdate against a recomputed dense eigendecomposition (float64)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_info import secular

RNG = np.random.default_rng(0)


def _gram_downdate(N, p, k, dual, seed):
    """(s, Z) of removing k rows from J (N × p) with a decaying column scale: dual or primal basis."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((N, p)) * np.logspace(0, -3, p)
    if dual:
        s, V = np.linalg.eigh(J @ J.T)
        keep = s > N * np.finfo(float).eps * s.max()
        return s[keep], np.sqrt(s[keep])[:, None] * V[:k, keep].T
    s, U = np.linalg.eigh(J.T @ J)
    return s, U.T @ J[:k].T


CASES = {
    "random k=1": (np.sort(RNG.uniform(0, 10, 40)), RNG.standard_normal((40, 1)) * 0.5),
    "primal p>N k=1": _gram_downdate(30, 50, 1, dual=False, seed=1),
    "dual p>N k=3": _gram_downdate(30, 50, 3, dual=True, seed=2),
    "primal p<N k=2": _gram_downdate(60, 20, 2, dual=False, seed=3),
    "dual square k=1 (rank drop)": _gram_downdate(40, 40, 1, dual=True, seed=4),
    "equal eigenvalues k=2": (np.array([1.0, 1, 1, 2, 2, 3, 5, 5, 5, 5]), RNG.standard_normal((10, 2)) * 0.3),
    "nearly equal": (np.array([1.0, 1 + 1e-15, 1 + 3e-15, 2, 2 + 1e-13, 3]), RNG.standard_normal((6, 1)) * 0.3),
    "tiny and zero z": (np.array([1.0, 1.5, 2, 3, 4, 6]), np.array([[0.4], [1e-20], [0.3], [0.0], [0.2], [0.5]])),
    "zero eigenvalues": (np.array([0.0, 0, 1e-14, 1, 2]), np.array([[0.0], [0], [0], [0.5], [0.7]])),
    "6 decades": (np.logspace(-6, 0, 30), RNG.standard_normal((30, 1)) * np.sqrt(np.logspace(-6, 0, 30))[:, None] * 0.5),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_downdate_matches_dense_eigh(name):
    s, Z = (jnp.asarray(a) for a in CASES[name])
    dd = jax.jit(secular.downdate)(s, Z)
    ref = secular.downdate_dense(s, Z)
    assert bool(dd.converged) and 0 <= int(dd.iterations) < 2 * secular._MAX_ITERATIONS
    scale = max(float(jnp.max(jnp.abs(s))), float(jnp.sum(Z * Z)), 1e-300)
    np.testing.assert_allclose(np.sort(np.asarray(dd.roots)), np.asarray(ref.roots), rtol=0, atol=1e-13 * scale)
    # Q f(μ) Qᵀ x for a filter with the shape of gradient-flow dynamics, against the dense eigenvectors.
    f = lambda u: -jnp.expm1(-7.0 * u) / jnp.where(u == 0, 1.0, u) * (u != 0) + 7.0 * (u == 0)
    x = jnp.asarray(RNG.standard_normal((s.shape[0], 2)))
    ours = secular.apply(dd, f(dd.roots), x)
    theirs = secular.apply(ref, f(ref.roots), x)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(theirs))))
    # Orthogonality of the never-formed eigenvectors (Löwner recomputation): Q Qᵀ = I.
    r = s.shape[0]
    np.testing.assert_allclose(secular.apply(dd, jnp.ones(r), jnp.eye(r)), np.eye(r), atol=50 * r * 2.2e-16)


def test_transpose_and_basis_apply_compose_to_apply():
    s, Z = (jnp.asarray(a) for a in CASES["dual p>N k=3"])
    dd = secular.downdate(s, Z)
    x = jnp.asarray(RNG.standard_normal((s.shape[0], 3)))
    fvals = jnp.exp(-dd.roots)
    composed = secular.basis_apply(dd, fvals[:, None] * secular.transpose_apply(dd, x))
    np.testing.assert_allclose(composed, secular.apply(dd, fvals, x), rtol=1e-14, atol=1e-14)
    # Qᵀ is the inverse of Q.
    np.testing.assert_allclose(secular.basis_apply(dd, secular.transpose_apply(dd, x)), x, atol=1e-13)


def test_many_right_hand_sides_use_the_same_basis():
    """More columns than the fused limit switch to a matrix product: same numbers."""
    s, Z = (jnp.asarray(a) for a in CASES["random k=1"])
    dd = secular.downdate(s, Z)
    x = jnp.asarray(RNG.standard_normal((s.shape[0], 20)))
    wide = secular.transpose_apply(dd, x)
    narrow = jnp.concatenate([secular.transpose_apply(dd, x[:, i:i + 1]) for i in range(20)], axis=1)
    np.testing.assert_allclose(wide, narrow, rtol=1e-12, atol=1e-13)


def test_vmap_over_samples_equals_loop():
    s = jnp.asarray(np.sort(RNG.uniform(0.1, 5, 25)))
    Zs = jnp.asarray(RNG.standard_normal((4, 25, 2)) * 0.3)
    batched = jax.vmap(lambda Z: secular.downdate(s, Z).roots)(Zs)
    for i in range(4):
        np.testing.assert_allclose(batched[i], secular.downdate(s, Zs[i]).roots, rtol=1e-14, atol=1e-15)


def test_vector_input_keeps_its_shape():
    s, Z = (jnp.asarray(a) for a in CASES["random k=1"])
    dd = secular.downdate(s, Z)
    x = jnp.asarray(RNG.standard_normal(s.shape[0]))
    out = secular.apply(dd, jnp.ones_like(dd.roots), x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, x, atol=1e-13)


@pytest.mark.parametrize("name", ["random k=1", "dual p>N k=3", "6 decades"])
def test_iteration_cap_is_reported(name):
    """A cap too small to converge is reported (converged False), never silent; the default converges."""
    s, Z = (jnp.asarray(a) for a in CASES[name])
    capped = jax.jit(secular.downdate, static_argnums=2)(s, Z, 1)
    assert not bool(capped.converged) and int(capped.iterations) == 2
    full = secular.downdate(s, Z)
    assert bool(full.converged) and int(full.iterations) > 2  # these cases need more than two sweeps

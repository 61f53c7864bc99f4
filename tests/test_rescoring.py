"""SubsetRescorer (one eigh per kept set, the filter's partial fractions fitted once) equals scoring each kept
subset from scratch: ``leave_one_out`` on the sliced kernel, and brute force (refit without the sample)."""
import jax
import numpy as np
import pytest

from ntk_info import leave_one_out
from ntk_info import scores as score_mod
from ntk_info.apps.summarize import SubsetRescorer, iterative_keep_masks

N = 40


def _problem(rank, outputs=3, duplicates=0, seed=5):
    """K = J Jᵀ (N, N) of rank ≤ ``rank`` with a spread spectrum, K_v (4, N), residuals (N, outputs); the last
    ``duplicates`` samples copy the first ones (the kernel is rank-deficient while both copies are kept)."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((N, rank)) * np.logspace(0, -2, rank)
    J[N - duplicates:] = J[:duplicates]
    Jv = rng.standard_normal((4, rank))
    R = rng.standard_normal((N, outputs))
    return J @ J.T, Jv @ J.T, R[:, 0] if outputs == 1 else R


def _nested(sizes, seed=1):
    """Nested kept sets (sorted indices) of the given decreasing sizes, the first the whole set."""
    order = np.random.default_rng(seed).permutation(N)
    return [np.sort(order[:size]) for size in sizes]


def _from_scratch(K, Kv, R, kept, **setting):
    """{by: scores} of ``leave_one_out`` on the kept samples' kernel."""
    loo = leave_one_out(K[np.ix_(kept, kept)], residuals=R[kept], cross_kernel=Kv[:, kept], progress=False, **setting)
    loo_res = np.asarray(loo.fitted_residuals) + np.asarray(loo.self_prediction_change)
    return {"fsi": np.asarray(score_mod.fsi(loo)), "si": np.asarray(score_mod.si_isotropic(loo)),
            "loo_residual": np.linalg.norm(loo_res.reshape(kept.size, -1), axis=1)}


def _filter(u, lr, steps, discrete):
    """g(u) of discrete GD (1 - (1 - ηu)^t)/u, gradient flow (1 - exp(-ηtu))/u, or 1/u at t = ∞; η t at u = 0."""
    u = np.asarray(u, np.float64)
    if np.isinf(steps):
        return 1.0 / u
    safe = np.where(u == 0, 1.0, u)
    g = (1.0 - (1.0 - lr * safe) ** steps) / safe if discrete else -np.expm1(-lr * steps * safe) / safe
    return np.where(u == 0, lr * steps, g)


def _brute_force(K, Kv, R, kept, lr, steps, weight_decay=0.0, discrete=False):
    """{by: scores} from refitting without each sample: a = g(K_S + λI) r_S, a_{-i} likewise without i,
    δ_i = a - pad(a_{-i}); F-SI ||K_v δ_i||²/(2m), SI ½ δ_iᵀ K_S δ_i, LOO residual ||r_i - K_S[i, -i] a_{-i}||."""
    def fit(rows):
        s, V = np.linalg.eigh(K[np.ix_(rows, rows)])
        return V @ (_filter(np.maximum(s, 0.0) + weight_decay, lr, steps, discrete)[:, None] * (V.T @ Rm[rows]))

    Rm = R.reshape(N, -1)
    a = fit(kept)
    out = {"fsi": [], "si": [], "loo_residual": []}
    for pos, i in enumerate(kept):
        rest = np.delete(kept, pos)
        a_rest = fit(rest)
        delta = a.copy()
        delta[np.arange(kept.size) != pos] -= a_rest
        out["fsi"].append(np.sum((Kv[:, kept] @ delta) ** 2) / (2 * Kv.shape[0]))
        out["si"].append(0.5 * np.sum(delta * (K[np.ix_(kept, kept)] @ delta)))
        out["loo_residual"].append(np.linalg.norm(Rm[i] - K[i, rest] @ a_rest))
    return {by: np.array(values) for by, values in out.items()}


def _close(ours, ref, rtol, atol=1e-13):
    """Per entry: |ours - ref| ≤ rtol·|ref| + atol·max|ref|."""
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol * np.abs(ref).max())


# (setting, per-entry tolerance against leave_one_out): at η t λmax ≈ 2e4 the partial fractions' residues (~40)
# amplify the round-off of the two eigendecompositions to ~1e-10 of the largest score
SETTINGS = {
    "gd": (dict(lr=0.02, steps=200, discrete=True), (1e-10, 1e-13)),                   # discrete GD, η t λmax ≈ 2e2
    "gd-long": (dict(lr=0.02, steps=20000, discrete=True), (1e-9, 1e-11)),             # η t λmax ≈ 2e4 (λmax ≈ 48)
    "flow-decay": (dict(lr=0.02, steps=100.0, weight_decay=0.3), (1e-10, 1e-13)),      # gradient flow, λ > 0
    "converged-decay": (dict(lr=0.02, steps=np.inf, weight_decay=0.3), (1e-10, 1e-13)),  # t = ∞, λ > 0: pole -λ
}
BY = ("fsi", "si", "loo_residual")
# full rank with 3 outputs; rank 9 with one output (the kept kernel is rank-deficient until ≤ 9 samples are
# left); 6 duplicated samples with 2 outputs (rank-deficient while both copies of a sample are kept)
PROBLEMS = {"full-rank": (40, 3, 0), "rank-9": (9, 1, 0), "duplicates": (40, 2, 6)}


def _check_sequence(problem, name, sizes, reference):
    """Rescore nested kept sets of ``sizes`` and compare every score with ``reference`` ("leave_one_out" or
    "brute-force"); returns the kept kernels' ranks."""
    setting, (rtol, atol) = SETTINGS[name]
    K, Kv, R = _problem(*PROBLEMS[problem])
    rescorers = {by: SubsetRescorer(K, R, Kv, by=by, **setting) for by in BY}
    assert all(rescore.fast for rescore in rescorers.values())
    ranks = []
    for kept in _nested(sizes):
        if reference == "leave_one_out":
            expected, (rtol, atol) = _from_scratch(K, Kv, R, kept, **setting), (rtol, atol)
        else:  # the refit loses digits to the cancellation in a - a_{-i} (measured ≤ 2e-8 here)
            expected, (rtol, atol) = _brute_force(K, Kv, R, kept, **setting), (1e-7, 1e-13)
        for by, rescore in rescorers.items():
            _close(rescore(kept), expected[by], rtol, atol)
        ranks.append(np.linalg.matrix_rank(K[np.ix_(kept, kept)]))
    return ranks


@pytest.mark.parametrize("problem,sizes", [("full-rank", [40, 32, 24, 16, 8]), ("rank-9", [40, 16, 8])])
def test_nested_subsets_equal_leave_one_out(problem, sizes):
    """Discrete GD; each kept set as leave_one_out on its sliced kernel gives it (the sizes share compilations
    with the other tests of this file)."""
    ranks = _check_sequence(problem, "gd", sizes, "leave_one_out")
    assert ranks == ([40, 32, 24, 16, 8] if problem == "full-rank" else [9, 9, 8])


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_nested_subsets_equal_brute_force(problem, name):
    """A removal sequence 40 → 28 → 17 → 9 → 6 against refitting without each sample."""
    ranks = _check_sequence(problem, name, [40, 28, 17, 9, 6], "brute-force")
    assert ranks[0] == {"full-rank": 40, "rank-9": 9, "duplicates": 34}[problem]
    assert (ranks[1] < 28) == (problem != "full-rank") and ranks[-1] == 6


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_nested_subsets_equal_leave_one_out_all(problem, name):
    """Every setting and problem, 40 → 28 → 17 → 9 → 6, against leave_one_out (a compilation per kept size)."""
    _check_sequence(problem, name, [40, 28, 17, 9, 6], "leave_one_out")


def test_without_fit_from_scratch():
    """t = ∞ with λ = 0 (a pseudo-inverse: no partial fractions): every call runs leave_one_out on the slice."""
    K, Kv, R = _problem(40)
    setting = dict(lr=0.02, steps=np.inf)
    rescore = SubsetRescorer(K, R, Kv, by="fsi", **setting)
    assert not rescore.fast
    for kept in _nested([40, 25]):
        _close(rescore(kept), _brute_force(K, Kv, R, kept, **setting)["fsi"], rtol=1e-7)


def test_chunks_and_x64_flag():
    """Samples processed in chunks of 1 or 3 give the same scores; so does JAX's x64 flag off (float64 anyway)."""
    K, Kv, R = _problem(9)
    setting = SETTINGS["gd"][0]
    kept = _nested([40, 16])[1]
    whole = SubsetRescorer(K, R, Kv, by="fsi", **setting)(kept)
    for chunk_bytes in (1.0, 8 * 3 * (9 + 4) * 3):
        np.testing.assert_allclose(SubsetRescorer(K, R, Kv, by="fsi", chunk_bytes=chunk_bytes, **setting)(kept),
                                   whole, rtol=1e-12)
    for by in ("fsi", "loo_residual"):
        with jax.enable_x64(False):
            ours = SubsetRescorer(K, R, Kv, by=by, **setting)(kept)
        _close(ours, _from_scratch(K, Kv, R, kept, **setting)[by], rtol=1e-10)


def test_iterative_masks_equal():
    K, Kv, R = _problem(40)
    setting = SETTINGS["gd"][0]
    fast = iterative_keep_masks(SubsetRescorer(K, R, Kv, by="fsi", **setting), N, [0.2, 0.6], step=0.2,
                                progress=False)
    slow = iterative_keep_masks(lambda kept: _from_scratch(K, Kv, R, kept, **setting)["fsi"], N, [0.2, 0.6],
                                step=0.2, progress=False)
    np.testing.assert_array_equal(fast, slow)
    assert fast.sum(axis=1).tolist() == [32, 16]


def test_rescorer_rejects():
    K, Kv, R = _problem(40)
    with pytest.raises(ValueError, match="cross_kernel: by='fsi' needs"):
        SubsetRescorer(K, R, lr=0.05, steps=10)
    with pytest.raises(ValueError, match="by: expected"):
        SubsetRescorer(K, R, Kv, lr=0.05, steps=10, by="nope")
    with pytest.raises(ValueError, match="kernel: expected a symmetric"):
        SubsetRescorer(K + np.triu(np.ones_like(K)), R, Kv, lr=0.05, steps=10)
    with pytest.raises(ValueError, match="kernel: expected a positive semi-definite"):
        SubsetRescorer(K - 2 * np.eye(N) * np.linalg.eigvalsh(K)[-1], R, Kv, lr=0.05, steps=10)
    with pytest.raises(ValueError, match="steps, weight_decay: expected one value each"):
        SubsetRescorer(K, R, Kv, lr=0.05, steps=[10, 20])
    rescore = SubsetRescorer(K, R, Kv, lr=0.05, steps=10)
    for kept in ([3, 3, 5], [0, N], [], np.array([0.0, 1.0])):
        with pytest.raises(ValueError, match="kept: expected distinct sample indices"):
            rescore(kept)
    zero_rows = K.copy()
    zero_rows[:5] = zero_rows[:, :5] = 0.0
    with pytest.raises(ValueError, match="kept: the kernel of the 5 kept samples is zero"):
        SubsetRescorer(zero_rows, R, Kv, lr=0.05, steps=10)(np.arange(5))

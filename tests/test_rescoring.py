"""SubsetRescorer (masked, fixed-shape rescoring) equals scoring the kept subset from scratch."""
import numpy as np
import pytest

from ntk_info import leave_one_out
from ntk_info import scores as score_mod
from ntk_info.apps.summarize import SubsetRescorer, iterative_keep_masks


def _problem(rank):
    rng = np.random.default_rng(5)
    n = 40
    J = rng.standard_normal((n, rank)) * np.logspace(0, -2, rank)
    Jv = rng.standard_normal((4, rank))
    return J @ J.T, Jv @ J.T, rng.standard_normal((n, 3))


def _from_scratch(K, Kv, R, kept, by, **setting):
    loo = leave_one_out(K[np.ix_(kept, kept)], residuals=R[kept], cross_kernel=Kv[:, kept], progress=False, **setting)
    if by == "fsi":
        return np.asarray(score_mod.fsi(loo))
    if by == "si":
        return np.asarray(score_mod.si_isotropic(loo))
    return np.linalg.norm(np.asarray(loo.fitted_residuals) + np.asarray(loo.self_prediction_change), axis=1)


@pytest.mark.parametrize("by", ["fsi", "si", "loo_residual"])
@pytest.mark.parametrize("rank,setting", [
    (40, dict(lr=0.02, steps=200, discrete=True)),                    # full rank, discrete GD
    (9, dict(lr=0.05, steps=40.0, weight_decay=0.3)),                 # rank-deficient, flow, λ > 0
    (9, dict(lr=0.05, steps=np.inf, weight_decay=0.3)),               # t = ∞: the from-scratch fallback
])
def test_rescorer_equals_from_scratch(by, rank, setting):
    K, Kv, R = _problem(rank)
    rescore = SubsetRescorer(K, R, Kv, by=by, **setting)
    assert rescore.fast == np.isfinite(setting["steps"])
    rng = np.random.default_rng(1)
    assert rescore.sizes == [40, 32, 24, 16]  # padded sizes: 27 kept -> 32 with 5 masked, 10 -> 16 with 6
    for kept in (np.arange(40), np.sort(rng.choice(40, 27, replace=False)),
                 np.array([0, 3, 4, 8, 13, 21, 22, 30, 31, 39])):
        ours = rescore(kept)
        ref = _from_scratch(K, Kv, R, kept, by, **setting)
        assert ours.shape == (kept.size,)
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def test_iterative_masks_equal():
    K, Kv, R = _problem(40)
    setting = dict(lr=0.02, steps=200, discrete=True)
    fast = iterative_keep_masks(SubsetRescorer(K, R, Kv, by="fsi", **setting), 40, [0.2, 0.6], step=0.2,
                                progress=False)
    slow = iterative_keep_masks(lambda kept: _from_scratch(K, Kv, R, kept, "fsi", **setting), 40, [0.2, 0.6],
                                step=0.2, progress=False)
    np.testing.assert_array_equal(fast, slow)


def test_rescorer_rejects():
    K, Kv, R = _problem(40)
    with pytest.raises(ValueError, match="cross_kernel: by='fsi' needs"):
        SubsetRescorer(K, R, lr=0.05, steps=10)
    with pytest.raises(ValueError, match="by: expected"):
        SubsetRescorer(K, R, Kv, lr=0.05, steps=10, by="nope")

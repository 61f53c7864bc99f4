"""The default solver end to end in the CLI's regime: η·t·λmax = 1e3, 1e4, 1e5, flow and GD, k = 1 and 3.

Every entry is compared with brute-force float64 retraining (tests/reference.py: drop the sample,
recompute the trained weights), with a per-entry tolerance |est - ref| ≤ 1e-6·|ref| + 1e-10·max|ref|,
so that the smallest entries — the samples summarization removes first — count as much as the largest.
"""
import numpy as np
import pytest
from reference import loo_features

from ntk_info.loo import leave_one_out

RATIOS = (1e3, 1e4, 1e5)  # η·t·λmax


def _per_entry(got, want, name, rel=1e-6, floor=1e-10, scale=None):
    """|got - want| ≤ rel·|want| + floor·scale entrywise (scale: max|want| unless given)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = np.max(np.abs(want)) if scale is None else scale
    excess = np.abs(got - want) - (rel * np.abs(want) + floor * scale)
    worst = int(np.argmax(excess))
    assert excess.flat[worst] <= 0, (f"{name}: entry {worst} est {got.flat[worst]!r} ref {want.flat[worst]!r}, "
                                     f"range of |ref| [{np.min(np.abs(want)):.3g}, {np.max(np.abs(want)):.3g}]")


def _problem(layout, seed):
    """Features whose Gram spans ~3 decades (column scales), so every ratio leaves slow directions training."""
    rng = np.random.default_rng(seed)
    n, m = 10, 4
    if layout == "k1_dual":  # p = 16 > n: dual basis
        shape, val_shape, R = (n, 16), (m, 16), rng.normal(size=n)
    else:  # k = 3 outputs, p = 8 < N = 30: primal basis
        shape, val_shape, R = (n, 3, 8), (m, 3, 8), rng.normal(size=(n, 3))
    scales = np.logspace(0, -1.5, shape[-1])
    return rng.normal(size=shape) * scales, R, rng.normal(size=val_shape) * scales


@pytest.mark.parametrize("discrete", [False, True])
@pytest.mark.parametrize("layout", ["k1_dual", "k3_primal"])
def test_default_solver_matches_retraining_per_entry(layout, discrete):
    F, R, Fv = _problem(layout, seed=3 if discrete else 4)
    phi = F.reshape(-1, F.shape[-1])
    lam_max = np.linalg.eigvalsh(phi.T @ phi).max()
    lr = 1.0 / lam_max
    solvers = []
    for ratio in RATIOS:
        steps = ratio if discrete else float(ratio)  # η·t·λmax = ratio with η = 1/λmax
        res = leave_one_out(features=F, residuals=R, lr=lr, steps=steps, discrete=discrete, cross_features=Fv,
                            progress=False)
        solvers.append(res.solver)
        ref = loo_features(F, R, lr=lr, steps=steps, discrete=discrete, cross_features=Fv)
        tag = f"{layout} discrete={discrete} η·t·λmax={ratio:g} solver={res.solver}"
        _per_entry(res.weight_change_sq, ref["weight"], f"{tag} weight_change_sq")
        _per_entry(res.train_prediction_change_sq, ref["train"], f"{tag} train_prediction_change_sq")
        _per_entry(res.prediction_change_sq, ref["val"], f"{tag} prediction_change_sq")
        _per_entry(res.self_prediction_change, ref["self"], f"{tag} self_prediction_change")
        # y - f_t(X) → 0 where the model interpolates: round-off there is measured against the residuals r
        _per_entry(res.fitted_residuals, ref["fitted"], f"{tag} fitted_residuals", scale=np.max(np.abs(R)))
    assert solvers[0] == "rational"  # the default path is exercised, not only the fallback


def test_weight_decay_grid_in_the_regime():
    """One call over a (t, λ) grid at η·t·λmax = 1e3…1e5, λ from 0 to 1e-2·λmax, against retraining."""
    F, R, Fv = _problem("k3_primal", seed=5)
    phi = F.reshape(-1, F.shape[-1])
    lam_max = np.linalg.eigvalsh(phi.T @ phi).max()
    lr = 1.0 / lam_max
    steps, lams = np.array(RATIOS), np.array([0.0, 1e-4, 1e-2]) * lam_max
    res = leave_one_out(features=F, residuals=R, lr=lr, steps=steps, weight_decay=lams, cross_features=Fv,
                        progress=False)
    for a, t in enumerate(steps):
        for b, lam in enumerate(lams):
            ref = loo_features(F, R, lr=lr, steps=t, lam=lam, cross_features=Fv)
            tag = f"grid t={t:g} λ={lam:.3g} solver={res.solver}"
            _per_entry(res.weight_change_sq[a, b], ref["weight"], f"{tag} weight_change_sq")
            _per_entry(res.prediction_change_sq[a, b], ref["val"], f"{tag} prediction_change_sq")
            _per_entry(res.self_prediction_change[a, b], ref["self"], f"{tag} self_prediction_change")

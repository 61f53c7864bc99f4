"""leave_group_out(): every output against brute-force retraining without (and on only) each group (float64)."""
import math

import numpy as np
import pytest
from reference import flat_kernel, run_gd, trained_weights

from ntk_info.group_loo import leave_group_out
from ntk_info.loo import leave_one_out
from ntk_info.mpe import loco_estimate, loco_exact, mpe_from_kernel

INF = math.inf
TOL = 1e-8  # relative to the largest entry of each output


def _close(got, want, tol=TOL, scale=None):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.max(np.abs(want)) if scale is None else scale
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(scale, 1e-300))


def _problem(layout, p, seed=0, n=12, m=5, spread=0.0):
    """Features (singular values over `spread` decades), residuals, cross features, groups of sizes 1..5."""
    rng = np.random.default_rng(seed)
    k = 1 if layout == "k1" else 3
    shape = (n, p) if layout != "full3" else (n, k, p)
    F = rng.normal(size=shape)
    if spread:
        U, _, Vt = np.linalg.svd(F.reshape(-1, p), full_matrices=False)
        F = ((U * np.logspace(0, -spread, U.shape[1])) @ Vt).reshape(shape)
    R = rng.normal(size=(n,) if layout == "k1" else (n, k))
    Fv = rng.normal(size=(m,) + shape[1:])
    groups = np.array(list("abbcccddddde"))[:n]  # sizes 1, 2, 3, 5, 1
    return F, R, Fv, groups


def _brute(F, R, Fv, groups, lr, steps, lam, discrete, gd=False):
    """Retrain on the complement / on only the group with explicit weights (tests/reference.py)."""
    n = F.shape[0]
    kb = F.shape[1] if F.ndim == 3 else 1
    phi, phiv = F.reshape(n * kb, -1), Fv.reshape(-1, F.shape[-1])
    Rm = R.reshape(n * kb, -1)
    fit = (lambda a, b: run_gd(a, b, lr, steps, lam)) if gd else \
        (lambda a, b: trained_weights(a, b, lr, steps, lam, discrete))
    w = fit(phi, Rm)
    out = {"weight": [], "without": [], "only": [], "held_out": np.zeros_like(Rm)}
    row_group = np.repeat(groups, kb)
    for g in np.unique(groups):
        inside = row_group == g
        w_without = fit(phi[~inside], Rm[~inside])
        w_only = fit(phi[inside], Rm[inside])
        out["weight"].append(np.sum((w - w_without) ** 2))
        out["without"].append(phiv @ w_without)
        out["only"].append(phiv @ w_only)
        out["held_out"][inside] = Rm[inside] - phi[inside] @ w_without
    shape = lambda x, count: x.reshape(x.shape[:-2] + (count, -1))[..., 0] if R.ndim == 1 else \
        x.reshape(x.shape[:-2] + (count, -1))
    m = Fv.shape[0]
    return {"weight": np.array(out["weight"]), "without": shape(np.array(out["without"]), m),
            "only": shape(np.array(out["only"]), m), "held_out": shape(out["held_out"], n),
            "fit": shape(phiv @ w, m), "fitted": shape(Rm - phi @ w, n), "scale": np.max(np.abs(R))}


def _check(res, ref, index=()):
    pick = (lambda x: np.asarray(x)[index]) if index else np.asarray
    _close(pick(res.weight_change_sq), ref["weight"])
    _close(pick(res.cross_fit), ref["fit"])
    _close(pick(res.cross_fit_without), ref["without"])
    _close(pick(res.cross_fit_only), ref["only"])
    _close(pick(res.held_out_residuals), ref["held_out"])
    _close(pick(res.fitted_residuals), ref["fitted"], scale=ref["scale"])  # ≈ 0 when interpolating


STEPS = np.array([0.0, 3.0, INF])
LAMS = np.array([0.0, 0.1, 10.0])


@pytest.mark.parametrize("p", [6, 40])  # p < N: primal, rank-deficient kernel; p ≥ N: dual
@pytest.mark.parametrize("layout", ["k1", "full3", "shared3"])
def test_refactor_grid_matches_brute_force(layout, p):
    """k = 1 and k > 1, finite t and t = ∞, λ = 0 and > 0: one call for the grid, every point exact."""
    F, R, Fv, groups = _problem(layout, p, seed=p)
    lmax = np.linalg.eigvalsh(F.reshape(-1, p).T @ F.reshape(-1, p)).max()
    lr = 0.5 / lmax
    res = leave_group_out(features=F, residuals=R, groups=groups, lr=lr, steps=STEPS, weight_decay=LAMS,
                          cross_features=Fv, method="refactor")
    assert set(res.method) == {"refactor"}
    assert res.groups.tolist() == ["a", "b", "c", "d", "e"] and res.sizes.tolist() == [1, 2, 3, 5, 1]
    for i, t in enumerate(STEPS):
        for j, lam in enumerate(LAMS):
            _check(res, _brute(F, R, Fv, groups, lr, t, lam, False), index=(i, j))


@pytest.mark.parametrize("layout, p, discrete", [("k1", 6, False), ("k1", 40, True), ("full3", 6, True),
                                                  ("full3", 40, False), ("shared3", 6, False), ("shared3", 40, True)])
def test_woodbury_matches_brute_force(layout, p, discrete):
    """The partial-fraction / Schur path with blocks of 1..15 rows, ill-conditioned features (4 decades),
    η·t·λmax from 25 to 5e4, and t = ∞ with λ > 0."""
    F, R, Fv, groups = _problem(layout, p, seed=3 + p, spread=2.0)
    lmax = np.linalg.eigvalsh(F.reshape(-1, p).T @ F.reshape(-1, p)).max()
    lr = 0.5 / lmax
    steps, lams = np.array([50.0, 1e5, INF]), np.array([1e-3, 0.5])
    res = leave_group_out(features=F, residuals=R, groups=groups, lr=lr, steps=steps, weight_decay=lams,
                          discrete=discrete, cross_features=Fv, method="woodbury")
    assert set(res.method) == {"woodbury"}
    for i, t in enumerate(steps):
        for j, lam in enumerate(lams):
            _check(res, _brute(F, R, Fv, groups, lr, t, lam, discrete), index=(i, j))


def test_auto_picks_refactor_for_large_groups_and_woodbury_for_small():
    rng = np.random.default_rng(1)
    F, R, Fv = rng.normal(size=(200, 150)), rng.normal(size=(200, 2)), rng.normal(size=(4, 150))
    groups = np.where(np.arange(200) < 3, "small", "large")
    res = leave_group_out(features=F, residuals=R, groups=groups, lr=1e-3, steps=50.0, cross_features=Fv)
    assert dict(zip(res.groups, res.method)) == {"large": "refactor", "small": "woodbury"}
    ref = _brute(F, R, Fv, groups, 1e-3, 50.0, 0.0, False)
    _check(res, ref)


def test_real_gradient_descent_steps():
    """Discrete GD: the closed form equals literally running the GD steps without the group."""
    F, R, Fv, groups = _problem("shared3", 9, seed=7)
    lr = 0.9 / np.linalg.eigvalsh(F.T @ F).max()
    for method in ("refactor", "woodbury"):
        res = leave_group_out(features=F, residuals=R, groups=groups, lr=lr, steps=25, weight_decay=0.05,
                              discrete=True, cross_features=Fv, method=method)
        _check(res, _brute(F, R, Fv, groups, lr, 25, 0.05, True, gd=True))


@pytest.mark.parametrize("method", ["refactor", "woodbury"])
def test_kernel_input_equals_features_input(method):
    """(n, n, k, k) kernel and cross kernel give what the features give (weights via δᵀKδ)."""
    F, R, Fv, groups = _problem("full3", 30, seed=11)
    K = np.einsum("iap,jbp->ijab", F, F)
    Kv = np.einsum("iap,jbp->ijab", Fv, F)
    kw = dict(residuals=R, groups=groups, lr=0.01, steps=np.array([5.0, INF]), weight_decay=0.2, method=method)
    a = leave_group_out(kernel=K, cross_kernel=Kv, **kw)
    b = leave_group_out(features=F, cross_features=Fv, **kw)
    for field in ("weight_change_sq", "cross_fit", "cross_fit_without", "cross_fit_only", "held_out_residuals"):
        _close(getattr(a, field), getattr(b, field))


def test_singleton_groups_equal_leave_one_out():
    F, R, Fv, _ = _problem("full3", 8, seed=5)
    groups = np.arange(F.shape[0])[::-1]  # labels in reverse order: results follow np.unique(groups)
    for steps, lam in ((4.0, 0.0), (INF, 0.3)):
        loo = leave_one_out(features=F, residuals=R, lr=0.02, steps=steps, weight_decay=lam, cross_features=Fv,
                            progress=False)
        for method in ("refactor", "woodbury"):
            res = leave_group_out(features=F, residuals=R, groups=groups, lr=0.02, steps=steps, weight_decay=lam,
                                  cross_features=Fv, method=method)
            order = np.argsort(groups)  # group g is sample order[g]
            _close(res.weight_change_sq, np.asarray(loo.weight_change_sq)[order])
            change = np.asarray(res.cross_fit)[None] - np.asarray(res.cross_fit_without)
            _close(np.sum(change ** 2, axis=(1, 2)), np.asarray(loo.prediction_change_sq)[order])
            held = np.asarray(loo.fitted_residuals) + np.asarray(loo.self_prediction_change)
            _close(res.held_out_residuals, held)


def test_t_infinity_lambda_zero_pseudo_inverse_when_removal_drops_rank():
    """p < N with a group whose removal drops the rank: min-norm least squares on what is left."""
    rng = np.random.default_rng(2)
    F = np.zeros((6, 4))
    F[:5, :3] = rng.normal(size=(5, 3))
    F[5, 3] = 2.0  # only sample 5 spans the 4th direction
    R, Fv = rng.normal(size=6), rng.normal(size=(3, 4))
    groups = np.array([0, 0, 1, 1, 1, 2])
    res = leave_group_out(features=F, residuals=R, groups=groups, lr=0.1, steps=INF, cross_features=Fv)
    _check(res, _brute(F, R, Fv, groups, 0.1, INF, 0.0, False))
    with pytest.raises(ValueError, match="woodbury"):
        leave_group_out(features=F, residuals=R, groups=groups, lr=0.1, steps=INF, method="woodbury")


def test_loco_exact_agrees_and_mpe_estimate_is_reported():
    """t = ∞ kernel ridge: Σ_{i∈C} ½||held-out residual||² equals mpe.loco_exact; MPE eq. 20's cheap
    estimate (each member's own deviation, no cross terms) is another number — printed, not equated."""
    rng = np.random.default_rng(4)
    F = rng.normal(size=(30, 3, 20))
    K = np.einsum("iap,jbp->ijab", F, F)
    R = rng.normal(size=(30, 3))
    groups = rng.integers(0, 3, size=30)
    lam = 2.0
    res = leave_group_out(kernel=K, residuals=R, groups=groups, lr=1.0, steps=INF, weight_decay=lam)
    ours = {g: 0.5 * np.sum(res.held_out_residuals[groups == g] ** 2) for g in res.groups}
    exact = loco_exact(K, R, groups, weight_decay=lam)
    for g in res.groups:
        assert ours[g] == pytest.approx(exact[g.item()], rel=1e-10)
    # MPE at the ridge optimum of the same linear model: outputs f = f0 + K a, targets y, f0 = 0 here.
    Kf = flat_kernel(K)
    fitted = (Kf @ np.linalg.solve(Kf + lam * np.eye(90), R.reshape(-1))).reshape(30, 3)
    mpe = mpe_from_kernel(K, fitted, R, weight_decay=lam)
    est = loco_estimate(mpe, groups, corrected=True)
    print("group: (exact leave-group-out loss, MPE eq. 20 estimate)",
          {g.item(): (round(ours[g], 4), round(est[g.item()], 4)) for g in res.groups})
    # Eq. 20 sums each member's own LOO: exact for singleton groups (Cook's leverage-corrected form).
    single = leave_group_out(kernel=K, residuals=R, groups=np.arange(30), lr=1.0, steps=INF, weight_decay=lam)
    per_sample = loco_estimate(mpe, np.arange(30), corrected=True)
    _close(0.5 * np.sum(single.held_out_residuals ** 2, axis=1), np.array([per_sample[i] for i in range(30)]))


def test_errors_name_the_argument():
    F, R, Fv, groups = _problem("k1", 5)
    with pytest.raises(ValueError, match="groups"):
        leave_group_out(features=F, residuals=R, groups=groups[:-1], lr=0.1, steps=1.0)
    with pytest.raises(ValueError, match="method"):
        leave_group_out(features=F, residuals=R, groups=groups, lr=0.1, steps=1.0, method="schur")
    with pytest.raises(ValueError, match="residuals"):
        leave_group_out(features=F, residuals=R[:-1], groups=groups, lr=0.1, steps=1.0)
    with pytest.raises(ValueError, match="cross_features"):
        leave_group_out(features=F, residuals=R, groups=groups, lr=0.1, steps=1.0, cross_features=Fv[:, :2])
    with pytest.raises(ValueError, match="lr"):
        leave_group_out(features=F, residuals=R, groups=groups, lr=0.0, steps=1.0)

"""leave_one_out(): every output against brute-force retraining without each sample (float64)."""
import math
import warnings

import jax
import numpy as np
import pytest
from reference import kernel_with_spectrum, loo_features, loo_kernel

from ntk_info.loo import leave_one_out

INF = math.inf
TOL = 1e-8  # relative to the largest entry of each output


def _close(got, want, scale=None, tol=TOL):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = np.max(np.abs(want)) if scale is None else scale
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(scale, 1e-300))


def _check(res, ref, residuals, index=(), val=True):
    """Compare every field of res[index] (grid point) with a reference dict."""
    pick = (lambda x: np.asarray(x)[index]) if index else np.asarray
    _close(pick(res.weight_change_sq), ref["weight"])
    _close(pick(res.train_prediction_change_sq), ref["train"])
    _close(pick(res.self_prediction_change), ref["self"])
    _close(pick(res.fitted_residuals), ref["fitted"], scale=np.max(np.abs(residuals)))
    if val:
        _close(pick(res.prediction_change_sq), ref["val"])


def _problem(layout, p, seed=0, n=8, m=4):
    """Features, residuals, validation features for the three output layouts."""
    rng = np.random.default_rng(seed)
    if layout == "k1":
        return rng.normal(size=(n, p)), rng.normal(size=n), rng.normal(size=(m, p))
    if layout == "full3":
        return rng.normal(size=(n, 3, p)), rng.normal(size=(n, 3)), rng.normal(size=(m, 3, p))
    return rng.normal(size=(n, p)), rng.normal(size=(n, 3)), rng.normal(size=(m, p))  # shared3: independent outputs


def _lmax(F):
    phi = F.reshape(-1, F.shape[-1])
    return np.linalg.eigvalsh(phi.T @ phi).max()


# One grid shape (3 steps × 5 weight decays over 6 decades) throughout, so that tests with the same
# (n, rank, outputs) share one compilation of the jitted per-chunk kernel.
STEPS_FLOW = np.array([0.0, 0.5, 3.0])
STEPS_GD = np.array([0, 1, 7])
LAMS = np.array([0.0, 1e-3, 0.1, 10.0, 1e3])
FIELDS = ("weight_change_sq", "train_prediction_change_sq", "self_prediction_change", "prediction_change_sq",
          "fitted_residuals")


@pytest.mark.parametrize("solver", ["rational", "downdate"])
@pytest.mark.parametrize("p", [5, 30])  # p < N (primal, rank-deficient kernel) and p ≥ N (dual)
@pytest.mark.parametrize("layout", ["k1", "full3", "shared3"])
def test_finite_steps_match_retraining(layout, p, solver):
    F, R, Fv = _problem(layout, p)
    for discrete, steps, lr in ((False, STEPS_FLOW, 1.0 / _lmax(F)), (True, STEPS_GD, 1.9 / (_lmax(F) + LAMS.max()))):
        res = leave_one_out(features=F, residuals=R, lr=lr, steps=steps, weight_decay=LAMS, discrete=discrete,
                            cross_features=Fv, solver=solver, progress=False)
        assert res.mode == ("primal" if p < F.reshape(-1, p).shape[0] else "dual")
        assert res.solver == solver
        assert np.shape(res.weight_change_sq) == (len(steps), len(LAMS), 8)
        for a, t in enumerate(steps):
            for b, lam in enumerate(LAMS):
                ref = loo_features(F, R, lr=lr, steps=t, lam=lam, discrete=discrete, cross_features=Fv)
                _check(res, ref, R, (a, b))
        # t = 0: nothing trained, nothing changes
        assert np.all(np.asarray(res.weight_change_sq)[0] == 0)
        assert np.all(np.asarray(res.self_prediction_change)[0] == 0)


@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("p", [5, 30])
@pytest.mark.parametrize("layout", ["k1", "full3", "shared3"])
def test_converged_schur_matches_retraining(layout, p, lam):
    F, R, Fv = _problem(layout, p, seed=1)
    res = leave_one_out(features=F, residuals=R, lr=0.1, steps=INF, weight_decay=lam, cross_features=Fv,
                        progress=False)
    assert res.mode == "schur"
    ref = loo_features(F, R, lr=0.1, steps=INF, lam=lam, cross_features=Fv)
    _check(res, ref, R)


def test_converged_lambda_grid_over_six_decades():
    F, R, Fv = _problem("full3", 30, seed=4)
    res = leave_one_out(features=F, residuals=R, lr=0.1, steps=INF, weight_decay=LAMS, cross_features=Fv,
                        progress=False)
    for b, lam in enumerate(LAMS):
        _check(res, loo_features(F, R, lr=0.1, steps=INF, lam=lam, cross_features=Fv), R, (b,))


@pytest.mark.parametrize("layout", ["full3", "shared3"])
def test_dual_and_primal_agree(layout):
    F, R, Fv = _problem(layout, 5, seed=2)
    kw = dict(features=F, residuals=R, lr=0.02, steps=np.array([4.0, 10.0, INF]), weight_decay=LAMS[1:] + 0.0,
              cross_features=Fv, progress=False)
    kw["weight_decay"] = np.r_[1e-4, LAMS[1:]]
    dual, primal = leave_one_out(mode="dual", **kw), leave_one_out(mode="primal", **kw)
    assert (dual.mode, primal.mode) == ("dual", "primal")
    for field in FIELDS:
        _close(getattr(dual, field), getattr(primal, field))


def _spectrum(kind, N, rng):
    third = N // 3
    if kind == "decay":
        return np.logspace(0, -6, N)
    if kind == "clusters":  # exactly repeated eigenvalues and exact zeros
        return np.r_[np.full(third, 2.0), np.full(third, 1.0), np.zeros(N - 2 * third)]
    if kind == "near_equal":
        return np.r_[1.0 + 1e-13 * np.arange(third), np.full(third, 0.3) + 1e-9 * rng.normal(size=third),
                     np.zeros(N - 2 * third)]
    return np.r_[rng.uniform(0.5, 2, N // 2), np.zeros(N - N // 2)]  # half rank


@pytest.mark.parametrize("solver", ["rational", "downdate"])
@pytest.mark.parametrize("layout, kind", [("full3", "decay"), ("full3", "clusters"), ("full3", "near_equal"),
                                          ("full3", "half_rank"), ("k1", "clusters"), ("shared3", "near_equal")])
def test_kernel_with_designed_spectrum_matches_retraining(layout, kind, solver):
    rng = np.random.default_rng(3)
    n, k = 8, 3
    N = n * k if layout == "full3" else n
    spec = _spectrum(kind, N, rng)
    K, Q, sp = kernel_with_spectrum(rng, spec, N)
    root = Q * np.sqrt(sp)
    Kv = rng.normal(size=(4 * (k if layout == "full3" else 1), N)) @ root @ root.T  # validation rows in the span
    if layout == "full3":
        K_in, Kv_in, R = (K.reshape(n, k, n, k).transpose(0, 2, 1, 3), Kv.reshape(4, k, n, k).transpose(0, 2, 1, 3),
                          rng.normal(size=(n, k)))
    else:
        K_in, Kv_in, R = K, Kv, (rng.normal(size=n) if layout == "k1" else rng.normal(size=(n, k)))
    lr = 1.0 / sp.max()
    res = leave_one_out(K_in, residuals=R, lr=lr, steps=STEPS_FLOW, weight_decay=LAMS, cross_kernel=Kv_in,
                        solver=solver, progress=False)
    assert res.solver == solver
    if kind != "decay":
        assert res.rank == int(np.sum(sp > 0))
    for a, t in enumerate(STEPS_FLOW):
        for b, lam in enumerate(LAMS):
            _check(res, loo_kernel(K_in, R, lr=lr, steps=t, lam=lam, cross_kernel=Kv_in), R, (a, b))


def test_grid_equals_loop_and_mixed_inf_grid():
    F, R, Fv = _problem("shared3", 5, seed=5)
    steps, lams = np.array([1.0, 4.0, INF]), np.r_[0.01, LAMS[1:]]
    kw = dict(features=F, residuals=R, lr=0.05, cross_features=Fv, progress=False)
    grid = leave_one_out(steps=steps, weight_decay=lams, **kw)
    for a, t in enumerate(steps):
        for b, lam in enumerate(lams[:2]):
            single = leave_one_out(steps=t, weight_decay=lam, **kw)
            assert single.mode == ("schur" if np.isinf(t) else "primal")
            for field in FIELDS:
                _close(np.asarray(getattr(grid, field))[a, b], getattr(single, field))


def test_duplicated_samples_match_retraining():
    F, R, Fv = _problem("full3", 5, seed=6)
    F[5] = F[2]  # exact duplicate, different residual
    F[6], R[6] = F[1], R[1]  # exact duplicate, same residual
    lr = 1.0 / _lmax(F)
    res = leave_one_out(features=F, residuals=R, lr=lr, steps=STEPS_FLOW, weight_decay=LAMS, cross_features=Fv,
                        progress=False)
    for a, t in enumerate(STEPS_FLOW):
        for b, lam in enumerate(LAMS):
            _check(res, loo_features(F, R, lr=lr, steps=t, lam=lam, cross_features=Fv), R, (a, b))


def test_gd_steps_literally_run_match():
    F, R, Fv = _problem("full3", 30, seed=7)
    lams = np.array([0.0, 1e-3, 0.1, 0.2, 0.5])
    lr = 1.6 / (_lmax(F) + 0.5)  # η(λmax + λ) > 1 at the top: oscillating but stable GD
    steps = np.array([0, 1, 12])
    res = leave_one_out(features=F, residuals=R, lr=lr, steps=steps, weight_decay=lams, discrete=True,
                        cross_features=Fv, progress=False)
    for a, t in enumerate(steps):
        for b, lam in enumerate(lams):
            _check(res, loo_features(F, R, lr=lr, steps=t, lam=lam, cross_features=Fv, gd=True), R, (a, b))


@pytest.mark.parametrize("steps", [STEPS_FLOW, INF])
def test_removed_label_does_not_affect_loo_prediction(steps):
    """f_{-i}(x_i) = f(x_i) - self change must not depend on y_i, even when y_i is multiplied by 1000."""
    F, R, Fv = _problem("full3", 30, seed=8)
    i = 3
    R2 = R.copy()
    R2[i] *= 1000.0
    kw = dict(features=F, lr=0.01, steps=steps, weight_decay=np.r_[1e-4, LAMS[1:]], cross_features=Fv,
              progress=False)
    a, b = leave_one_out(residuals=R, **kw), leave_one_out(residuals=R2, **kw)
    loo_fit = [np.asarray(x.fitted_residuals)[..., i, :] + np.asarray(x.self_prediction_change)[..., i, :]
               for x in (a, b)]
    # y_i - f_{-i}(x_i) shifts by exactly the change of y_i
    _close(loo_fit[1] - loo_fit[0], np.broadcast_to(R2[i] - R[i], loo_fit[0].shape), scale=np.max(np.abs(R2)))


def _jit_chunk_eager(steps):
    F, R, Fv = _problem("k1", 2, seed=9, n=4)
    kw = dict(features=F, residuals=R, lr=0.05, steps=steps, weight_decay=0.1, cross_features=Fv, progress=False)
    ref = leave_one_out(**kw)
    chunked = leave_one_out(chunk_size=3, **kw)  # 4 = 3 + 1 (padded last chunk)
    with jax.disable_jit():
        eager = leave_one_out(chunk_size=3, **kw)
    for other in (chunked, eager):
        for field in FIELDS:
            _close(getattr(other, field), getattr(ref, field), tol=1e-12)


def test_chunk_size_and_jit_change_nothing_schur():
    _jit_chunk_eager(INF)


@pytest.mark.slow  # eager secular root finding runs op by op (~15 s)
def test_chunk_size_and_jit_change_nothing_downdate():
    _jit_chunk_eager(3.0)


def test_chunk_size_changes_nothing_downdate():
    F, R, Fv = _problem("shared3", 5)
    kw = dict(features=F, residuals=R, lr=0.05, steps=STEPS_FLOW, weight_decay=LAMS, cross_features=Fv,
              progress=False)
    ref, chunked = leave_one_out(**kw), leave_one_out(chunk_size=3, **kw)  # 8 = 3 + 3 + 2 (padded)
    for field in FIELDS:
        _close(getattr(chunked, field), getattr(ref, field), tol=1e-12)


@pytest.mark.parametrize("mode", ["dual", "primal"])
def test_coordinates_are_consistent(mode):
    F, R, _ = _problem("shared3", 5, seed=10)
    res = leave_one_out(features=F, residuals=R, lr=0.05, steps=np.array([0.5, 3.0, INF]),
                        weight_decay=np.r_[1e-4, LAMS[1:]], mode=mode, return_coords=True, progress=False)
    d = np.asarray(res.weight_change_coords)
    assert d.shape == (3, 5, 8, res.rank, 3)
    _close(np.sum(d ** 2, axis=(-2, -1)), res.weight_change_sq)
    T = np.asarray(res.train_coords)
    fitted = R - np.einsum("rn,tlrq->tlnq", T, np.asarray(res.trained_coords))
    _close(fitted, res.fitted_residuals, scale=np.max(np.abs(R)))
    _close(np.sort(np.asarray(res.spectrum)), np.linalg.eigvalsh(F.T @ F))  # rank 5: nonzero spectrum of K


def test_kernel_and_features_inputs_agree():
    F, R, Fv = _problem("full3", 30, seed=11)
    K = np.einsum("nkp,mlp->nmkl", F, F)
    Kv = np.einsum("nkp,mlp->nmkl", Fv, F)
    kw = dict(residuals=R, lr=0.02, steps=STEPS_FLOW, weight_decay=LAMS, progress=False)
    a = leave_one_out(K, cross_kernel=Kv, **kw)
    b = leave_one_out(features=F, cross_features=Fv, **kw)
    for field in FIELDS:
        _close(getattr(a, field), getattr(b, field))
    assert a.n_val == 4


# ------------------------------------------------------------------------------------------------
# Errors: one test per message


def _kw():
    F, R, _ = _problem("k1", 5)
    return dict(features=F, residuals=R, lr=0.1, steps=3.0, progress=False)


def test_error_kernel_and_features_both_or_neither():
    kw = _kw()
    with pytest.raises(ValueError, match="exactly one of kernel"):
        leave_one_out(np.eye(8), **kw)
    kw.pop("features")
    with pytest.raises(ValueError, match="exactly one of kernel"):
        leave_one_out(**kw)


def test_error_residual_shape():
    kw = _kw()
    kw["residuals"] = np.ones(7)
    with pytest.raises(ValueError, match=r"residuals: expected shape \(n,\) or \(n, k\) with n = 8"):
        leave_one_out(**kw)
    with pytest.raises(ValueError, match=r"residuals: expected shape \(n, k\) = \(8, 3\)"):
        leave_one_out(np.ones((8, 8, 3, 3)), residuals=np.ones((8, 2)), lr=0.1, steps=1.0)


def test_error_cross_shape():
    with pytest.raises(ValueError, match="cross_features: expected shape"):
        leave_one_out(cross_features=np.ones((3, 4)), **_kw())
    with pytest.raises(ValueError, match="cross_kernel: expected shape"):
        leave_one_out(np.eye(8), residuals=np.ones(8), lr=0.1, steps=1.0, cross_kernel=np.ones((3, 7)))
    with pytest.raises(ValueError, match="cross_kernel: given with features"):
        leave_one_out(cross_kernel=np.ones((3, 8)), **_kw())


def test_error_nan():
    kw = _kw()
    kw["residuals"] = kw["residuals"].copy()
    kw["residuals"][2] = np.nan
    with pytest.raises(ValueError, match="residuals: expected finite values, got 1 NaN/inf"):
        leave_one_out(**kw)


def test_error_asymmetric_kernel():
    K = np.eye(8)
    K[0, 1] = 0.5
    with pytest.raises(ValueError, match="kernel: expected a symmetric kernel"):
        leave_one_out(K, residuals=np.ones(8), lr=0.1, steps=1.0)


def test_error_not_psd():
    K = np.diag(np.r_[1.0, 1.0, -0.01, np.ones(5)])
    with pytest.raises(ValueError, match=r"positive semi-definite kernel, got min eigenvalue -0.01 = -0.01·λmax"):
        leave_one_out(K, residuals=np.ones(8), lr=0.1, steps=1.0)
    # round-off negatives are clipped, not rejected
    res = leave_one_out(np.diag(np.r_[1.0, -1e-12, np.ones(6)]), residuals=np.ones(8), lr=0.1, steps=INF,
                        weight_decay=0.1, progress=False)
    assert res.rank == 7


@pytest.mark.parametrize("arg, value, message", [
    ("lr", 0.0, "lr: expected a finite learning rate > 0"),
    ("lr", np.array([0.1, 0.2]), "lr: expected one learning rate"),
    ("steps", -1.0, "steps: expected steps ≥ 0"),
    ("weight_decay", -0.1, "weight_decay: expected λ ≥ 0"),
])
def test_error_settings(arg, value, message):
    kw = _kw()
    kw[arg] = value
    with pytest.raises(ValueError, match=message):
        leave_one_out(**kw)


def test_error_non_integer_discrete_steps():
    with pytest.raises(ValueError, match="discrete GD needs an integer number of steps"):
        leave_one_out(discrete=True, **{**_kw(), "steps": 2.5})


def test_error_primal_without_features():
    with pytest.raises(ValueError, match="'primal' needs explicit features"):
        leave_one_out(np.eye(8), residuals=np.ones(8), lr=0.1, steps=1.0, mode="primal")


def test_error_solver_name_and_rational_without_fit():
    F, R, _ = _problem("k1", 5)
    with pytest.raises(ValueError, match="solver: expected"):
        leave_one_out(features=F, residuals=R, lr=0.1, steps=3.0, solver="eig", progress=False)
    with pytest.raises(ValueError, match="no verified partial-fraction"):  # mixed grid: t = ∞ with λ = 0
        leave_one_out(features=F, residuals=R, lr=0.1, steps=np.array([3.0, INF]), weight_decay=np.array([0.0, 0.1]),
                      solver="rational", progress=False)
    res = leave_one_out(features=F, residuals=R, lr=0.1, steps=np.array([3.0, INF]), weight_decay=np.array([0.0, 0.1]),
                        progress=False)
    assert res.solver == "downdate"


def test_error_mode_name():
    with pytest.raises(ValueError, match="mode: expected 'auto', 'dual' or 'primal'"):
        leave_one_out(mode="schur", **_kw())


def test_error_converged_singular_kernel():
    F, R, _ = _problem("k1", 5)
    with pytest.raises(ValueError, match=r"needs a full-rank kernel \(rank 5 < N = 8\): use weight_decay > 0"):
        leave_one_out(features=F, residuals=R, lr=0.1, steps=INF, mode="dual")


def _leverage_one(layout, seed=0, n=8, p=6):
    """Features where only sample 0 spans coordinate 0 (leverage 1), and its residuals."""
    F, R, Fv = _problem(layout, p, seed=seed, n=n)
    F[1:, ..., 0] = 0.0
    return F, R, Fv


@pytest.mark.parametrize("layout", ["k1", "full3", "shared3"])
def test_converged_leverage_one_is_the_gradient_flow_limit(layout):
    """t = ∞, λ = 0, sample 0 alone spans a direction: the model without it stays at w0 there.

    Checked against the min-norm least-squares reference (explicit pseudo-inverse: lstsq), against
    the finite-t path at η·t·λmin large enough that exp(-η t λmin) is negligible, and through the
    downdate's pseudo-inverse filter (mixed t grid). Today's main returned finite wrong values here
    (k = 3: 0.033 against 0.48) and NaN in other draws.
    """
    F, R, Fv = _leverage_one(layout)
    ref = loo_features(F, R, lr=0.1, steps=INF, lam=0.0, cross_features=Fv)
    assert np.all(np.isfinite(ref["weight"])) and ref["weight"][0] > 0
    res = leave_one_out(features=F, residuals=R, lr=0.1, steps=INF, cross_features=Fv, mode="primal",
                        progress=False)
    assert res.mode == "schur"
    _check(res, ref, R)
    # Slowest direction that still trains, over the full model and every model without one sample.
    grams = [G.reshape(-1, G.shape[-1]) for G in [F] + [np.delete(F, i, axis=0) for i in range(len(F))]]
    spectra = [np.linalg.eigvalsh(G.T @ G) for G in grams]
    lmin = min(ev[ev > 1e-9 * ev.max()].min() for ev in spectra)
    lr = 1.0 / spectra[0].max()
    t_long = 60.0 / (lr * lmin)  # exp(-60) ≈ 1e-26 on every direction that trains
    far = leave_one_out(features=F, residuals=R, lr=lr, steps=t_long, cross_features=Fv, mode="primal",
                        progress=False)
    _check(far, ref, R)
    mixed = leave_one_out(features=F, residuals=R, lr=lr, steps=np.array([t_long, INF]), cross_features=Fv,
                          mode="primal", progress=False)
    assert mixed.solver == "downdate"  # t = ∞ with λ = 0: pseudo-inverse filter on the downdated roots
    _check(mixed, ref, R, (0,))
    _check(mixed, ref, R, (1,))


def test_converged_interpolating_features_dual_and_primal():
    """rank = N (every sample alone in some direction): dual Schur and primal agree with the lstsq reference."""
    F, R, Fv = _problem("full3", 30, seed=12)
    ref = loo_features(F, R, lr=0.1, steps=INF, lam=0.0, cross_features=Fv)
    for mode in ("dual", "primal"):
        res = leave_one_out(features=F, residuals=R, lr=0.1, steps=INF, cross_features=Fv, mode=mode,
                            progress=False)
        _check(res, ref, R)


@pytest.mark.parametrize("discrete", [True, False])
def test_warns_above_stability_limit(discrete):
    """GD diverges above 2/(λmax + λ): warn for discrete GD and for gradient flow (the network is trained by GD)."""
    F, R, _ = _problem("k1", 5)
    limit = 2.0 / (_lmax(F) + 0.5)
    with pytest.warns(RuntimeWarning, match=f"at or above the GD stability limit 2/\\(λmax\\+λ\\) = {limit:g} "
                                            f"\\(λmax={_lmax(F):g}, weight_decay=0.5\\).*use lr < {limit:g}"):
        leave_one_out(features=F, residuals=R, lr=1.01 * limit, steps=3, weight_decay=0.5, discrete=discrete,
                      progress=False)
    n = len(R)
    mean_limit = 2.0 / (_lmax(F) / n + 0.5)
    with pytest.warns(RuntimeWarning, match=f"stability limit 2/\\(λmax/n\\+λ\\) = {mean_limit:g}"):
        leave_one_out(features=F, residuals=R, lr=1.01 * mean_limit, steps=3, weight_decay=0.5, discrete=discrete,
                      loss="mean", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        leave_one_out(features=F, residuals=R, lr=0.99 * limit, steps=3, weight_decay=0.5, discrete=discrete,
                      progress=False)
        leave_one_out(features=F, residuals=R, lr=0.99 * mean_limit, steps=3, weight_decay=0.5, discrete=discrete,
                      loss="mean", progress=False)
        # t = ∞: the converged model does not depend on lr
        leave_one_out(features=F, residuals=R, lr=10 * limit, steps=INF, weight_decay=0.5, progress=False)


def test_root_finder_cap_warns_and_marks_samples(monkeypatch):
    """A secular root iteration stopped by its cap is reported (warning + roots_converged), not silent."""
    from ntk_info import secular

    F, R, _ = _problem("k1", 40, seed=13, n=37)  # a shape no other test compiles
    kw = dict(features=F, residuals=R, lr=0.01, steps=5.0, solver="downdate", progress=False)
    ok = leave_one_out(**kw)
    assert ok.roots_converged.shape == (37,) and ok.roots_converged.all()
    monkeypatch.setattr(secular, "_MAX_ITERATIONS", 1)
    jax.clear_caches()
    try:
        with pytest.warns(RuntimeWarning, match=r"secular root finder: \d+ of 37 samples .* iteration cap"):
            capped = leave_one_out(**kw)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    assert not capped.roots_converged.all()
    assert leave_one_out(features=F, residuals=R, lr=0.01, steps=5.0, solver="rational", progress=False) \
        .roots_converged is None


_SHARDED_SCRIPT = """
import sys, numpy as np, jax
jax.config.update("jax_enable_x64", True)
from ntk_info import leave_one_out
assert jax.device_count() == 8, jax.device_count()
data = np.load(sys.argv[1])
res = leave_one_out(kernel=data["K"], residuals=data["r"], cross_kernel=data["Kv"], lr=0.1,
                    steps=np.array([3.0, 40.0]), weight_decay=np.array([0.0, 0.2]), chunk_size=5, progress=False)
one = leave_one_out(kernel=data["K"][:, :, 0, 0], residuals=data["r"][:, 0], cross_kernel=data["Kv"][:, :, 0, 0],
                    lr=0.1, steps=40.0, solver="downdate", progress=False)  # k = 1, secular root finder
np.savez(sys.argv[2], w=res.weight_change_sq, v=res.prediction_change_sq, s=res.self_prediction_change,
         w1=one.weight_change_sq, v1=one.prediction_change_sq, s1=one.self_prediction_change)
"""


def test_eight_devices_equal_one(tmp_path):
    """The sample axis sharded over 8 (fake CPU) devices gives the single-device result (n = 13, padded)."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(7)
    n, k = 13, 2
    J = rng.standard_normal((n * k, 9))
    K = (J @ J.T).reshape(n, k, n, k).transpose(0, 2, 1, 3)
    Kv = (rng.standard_normal((4 * k, 9)) @ J.T).reshape(4, k, n, k).transpose(0, 2, 1, 3)
    r = rng.standard_normal((n, k))
    np.savez(tmp_path / "in.npz", K=K, Kv=Kv, r=r)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                   env=env, check=True, capture_output=True)
    sharded = np.load(tmp_path / "out.npz")
    res = leave_one_out(kernel=K, residuals=r, cross_kernel=Kv, lr=0.1, steps=np.array([3.0, 40.0]),
                        weight_decay=np.array([0.0, 0.2]), chunk_size=5, progress=False)
    one = leave_one_out(kernel=K[:, :, 0, 0], residuals=r[:, 0], cross_kernel=Kv[:, :, 0, 0], lr=0.1, steps=40.0,
                        solver="downdate", progress=False)
    for ours, theirs in [(res.weight_change_sq, sharded["w"]), (res.prediction_change_sq, sharded["v"]),
                         (res.self_prediction_change, sharded["s"]), (one.weight_change_sq, sharded["w1"]),
                         (one.prediction_change_sq, sharded["v1"]), (one.self_prediction_change, sharded["s1"])]:
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-12, atol=1e-14 * np.abs(theirs).max())

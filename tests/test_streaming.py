"""Streamed primal LOO (features in batches, ΦᵀΦ accumulated) equals leave_one_out on the stored features."""
import numpy as np
import pytest

from ntk_info import leave_one_out
from ntk_info.features import projected_features
from ntk_info.models import init_params, mlp
from ntk_info.streaming import streamed_leave_one_out


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    model = mlp(num_outputs=3, width=16)
    params = init_params(model, (6,), seed=1)
    X = rng.standard_normal((37, 6))
    X_val = rng.standard_normal((5, 6))
    Y = rng.standard_normal((37, 3))
    feats = projected_features(model.apply_fn, params, X, coords_per_layer=20, seed=2, progress=False)
    val = feats.projection.features(X_val, progress=False)
    return feats, val, X, X_val, Y


@pytest.mark.parametrize("setting", [
    dict(lr=0.05, steps=30.0, discrete=True),                           # rational
    dict(lr=0.05, steps=30.0, weight_decay=0.1, solver="downdate"),    # secular downdate
    dict(lr=0.05, steps=np.inf, weight_decay=0.2),                      # Schur, t = ∞
])
def test_streamed_equals_in_memory(problem, setting):
    feats, val, X, X_val, Y = problem
    assert feats.p < 37 * 3  # primal basis: p < N
    stages = []
    streamed = streamed_leave_one_out(feats.projection, X, Y, X_val, batch_size=8, progress=False,
                                      on_stage=lambda *args: stages.append(args), **setting)
    assert [name for name, _, _ in stages] == ["gram pass", "eigh", "loo pass"]
    assert all(streamed.seconds[name] == seconds for name, seconds, _ in stages)
    ref = leave_one_out(features=feats.phi, residuals=Y - feats.outputs, cross_features=val.phi, mode="primal",
                        progress=False, **setting)
    assert streamed.solver == ref.solver and streamed.rank == ref.rank
    for ours, theirs in [(streamed.weight_change_sq, ref.weight_change_sq),
                         (streamed.train_prediction_change_sq, ref.train_prediction_change_sq),
                         (streamed.prediction_change_sq, ref.prediction_change_sq),
                         (streamed.self_prediction_change, ref.self_prediction_change),
                         (streamed.fitted_residuals, ref.fitted_residuals)]:
        theirs = np.asarray(theirs)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12 * np.abs(theirs).max())
    np.testing.assert_allclose(streamed.outputs, feats.outputs, rtol=1e-13, atol=1e-13)


def test_streamed_rejects_grids(problem):
    feats, _, X, _, Y = problem
    with pytest.raises(ValueError, match="steps: expected one value"):
        streamed_leave_one_out(feats.projection, X, Y, lr=0.1, steps=np.array([1.0, 2.0]), progress=False)
    with pytest.raises(ValueError, match="Y: expected float targets of shape"):
        streamed_leave_one_out(feats.projection, X, Y[:5], lr=0.1, steps=3.0, progress=False)


def test_score_streamed_equals_full_kernel(problem):
    """score(kernel="streamed") gives score(kernel="full")'s numbers without storing features; "auto"
    streams beyond STREAM_SAMPLES_THRESHOLD samples; settings it cannot honour are refused."""
    from ntk_info import score
    from ntk_info.scorer import STREAM_SAMPLES_THRESHOLD, kernel_for

    feats, val, X, X_val, Y = problem
    model = mlp(num_outputs=3, width=16)
    params = init_params(model, (6,), seed=1)
    common = dict(lr=0.05, steps=40.0, discrete=True, coords_per_layer=20, seed=2, progress=False,
                  trust_samples=0)
    streamed = score(model.apply_fn, params, X, Y, X_val, kernel="streamed", batch_size=8, **common)
    full = score(model.apply_fn, params, X, Y, X_val, kernel="full", mode="primal", **common)
    assert streamed.settings["kernel"] == "streamed" and full.settings["kernel"] == "full"
    for name in ("si", "si_langevin", "fsi", "loo_residuals", "fitted_residuals", "loo_loss", "outputs"):
        ours, theirs = getattr(streamed, name), getattr(full, name)
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12 * np.abs(theirs).max())
    assert streamed.kernel_diagonal_stats == pytest.approx(full.kernel_diagonal_stats, rel=1e-12)
    assert kernel_for(STREAM_SAMPLES_THRESHOLD + 1, 1) == "streamed" and kernel_for(STREAM_SAMPLES_THRESHOLD, 1) == "full"
    with pytest.raises(ValueError, match="kernel='streamed' supports the sum loss"):
        score(model.apply_fn, params, X, Y, X_val, kernel="streamed", loss="mean", **common)

"""Clean, then summarize, in the pipeline: the cleaned training set is what gets scored and rescored, and
iterative rescoring linearizes where the scores do (``--linearize``), checked against scoring from scratch."""
import numpy as np
import pytest

import ntk_info
from ntk_info.apps.clean import clean, flag
from ntk_info.apps.detect import loo_detection_scores
from ntk_info.apps.pipeline import ConfigError, Pipeline, PipelineConfig, base_scores, clean_training_set, load_data
from ntk_info.features import ntk_lambda_max
from ntk_info.linearize import score_at


def _blobs(tmp_path, n=130):
    """Three well-separated Gaussian blobs in 4-D (every planted flip is detectable), as an .npz file."""
    rng = np.random.default_rng(0)
    centers = np.array([[-3.0, 0, 0, 0], [3.0, 0, 0, 0], [0, 4.0, 0, 0]])
    y = np.arange(n) % 3
    X = centers[y] + rng.normal(scale=0.8, size=(n, 4))
    path = tmp_path / "blobs.npz"
    np.savez(path, X=X, y=y)
    return str(path)


def test_cleaned_pipeline_scores_the_cleaned_set(tmp_path):
    """detect (LOO margin at init) -> remove the flags -> the cleaned pipeline's scores, lr and rescoring are
    those of the kept samples with their labels, computed from scratch; the flags are mostly planted flips."""
    config = PipelineConfig(data=_blobs(tmp_path), noise=0.1, width=32, steps=300, coords_per_layer=400,
                            trust_samples=0, val_fraction=0.3).validate()
    data = load_data(config)
    pipe = Pipeline(config, data, progress=False)
    result = pipe.score()
    loo = loo_detection_scores(result, data.labels)
    flagged, rule = flag(loo["loo_margin"])
    is_noisy = data.is_noisy
    assert (flagged & is_noisy).sum() >= 0.75 * is_noisy.sum()  # the planted flips are found...
    assert (flagged & is_noisy).sum() >= 0.6 * flagged.sum()  # ...and are most of what is flagged
    cleaned = clean(data.labels, flagged, rule=rule)
    after = pipe.cleaned(cleaned)

    kept = np.flatnonzero(cleaned.keep)
    np.testing.assert_array_equal(after.X, data.X[kept])
    np.testing.assert_array_equal(after.data.labels, data.labels[kept])
    np.testing.assert_array_equal(after.data.rows_train, data.rows_train[kept])
    np.testing.assert_array_equal(after.data.is_noisy, is_noisy[kept])
    assert after.data.is_noisy.sum() <= 0.25 * is_noisy.sum()
    assert pipe.X.shape[0] == data.X.shape[0]  # the original pipeline is untouched
    lam = ntk_lambda_max(pipe.model.apply_fn, pipe.params0, data.X[kept], seed=config.seed)
    assert after.lr == pytest.approx(1.0 / lam, rel=1e-12)

    res = after.score()
    scratch = ntk_info.score(pipe.model.apply_fn, pipe.params0, data.X[kept], pipe.Y[kept], data.X_val, lr=after.lr,
                             steps=config.steps, discrete=True, coords_per_layer=config.coords_per_layer,
                             seed=config.seed, trust_samples=0, progress=False)
    for by in ("fsi", "si", "loo_residual"):
        np.testing.assert_allclose(base_scores(res, (by,))[by], base_scores(scratch, (by,))[by], rtol=1e-9)
    np.testing.assert_allclose(after.rescorer("fsi")(np.arange(kept.size)), res.fsi, rtol=1e-8)
    settings = after.settings()
    assert settings["n_train"] == kept.size and settings["lr"] == after.lr

    relabelled = clean(data.labels, flagged, action="relabel", suggested=loo["suggested_label"], rule=rule)
    fixed = clean_training_set(data, relabelled)
    assert fixed.X.shape == data.X.shape and fixed.is_noisy.sum() == np.sum(relabelled.labels != data.true_labels)
    with pytest.raises(ValueError, match="keep and labels of shape"):
        clean_training_set(data, clean(data.labels[:5], flagged[:5]))


@pytest.mark.parametrize("linearize, kernel", [("trained", "full"), ("trained-head", "trace")])
def test_rescoring_linearizes_where_the_scores_do(tmp_path, linearize, kernel):
    """With --linearize trained / trained-head the kept subsets are rescored at that point with the λ the full
    scores chose (t = ∞): equal to score_at on the kept samples from scratch, and not the init's scores."""
    config = PipelineConfig(data=_blobs(tmp_path, n=90), noise=0.1, width=16, coords_per_layer=200, trust_samples=0,
                            linearize=linearize, kernel=kernel).validate()
    data = load_data(config)
    pipe = Pipeline(config, data, progress=False)
    with pytest.raises(ValueError, match=r"call Pipeline.score\(\) first"):
        pipe.rescorer("fsi")
    result = pipe.score()
    lam = pipe.settings()["linearize_weight_decay"]
    n = data.X.shape[0]
    np.testing.assert_allclose(pipe.rescorer("fsi")(np.arange(n)), result.fsi, rtol=1e-8)
    kept = np.sort(np.random.default_rng(1).choice(n, size=40, replace=False))
    point = pipe.linearization().params
    scratch = score_at(pipe.model.apply_fn, point, data.X[kept], pipe.Y[kept], data.X_val, weight_decay=lam,
                       kernel=kernel, coords_per_layer=config.coords_per_layer, seed=config.seed)
    for by in ("fsi", "loo_residual"):
        np.testing.assert_allclose(pipe.rescorer(by)(kept), base_scores(scratch, (by,))[by], rtol=1e-8)
    at_init = ntk_info.score(pipe.model.apply_fn, pipe.params0, data.X[kept], pipe.Y[kept], data.X_val, lr=pipe.lr,
                             steps=config.steps, discrete=True, coords_per_layer=config.coords_per_layer,
                             seed=config.seed, kernel=kernel, trust_samples=0, progress=False)
    assert not np.allclose(pipe.rescorer("fsi")(kept), at_init.fsi, rtol=1e-2)


def test_rescoring_refuses_segments(tmp_path):
    config = PipelineConfig(data=_blobs(tmp_path, n=60), width=8, steps=20, coords_per_layer=50, trust_samples=0,
                            segments=2).validate()
    pipe = Pipeline(config, load_data(config), progress=False)
    with pytest.raises(ConfigError, match="segments: iterative rescoring .* Drop --iterative, or drop --segments"):
        pipe.rescorer("fsi")

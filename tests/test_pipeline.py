"""ntk_info.apps.pipeline: every decision the CLI used to make, checked against an independent computation."""
import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import ntk_info
from ntk_info.apps.pipeline import (ConfigError, DegenerateData, Pipeline, PipelineConfig, UnstableLearningRate,
                                    base_scores, check_lr_stability, choose_lr, influence_damping, load_data,
                                    split_rows)
from ntk_info.data import fgsm, load_dataset
from ntk_info.evidence import VERDICTS
from ntk_info.features import ntk_lambda_max
from ntk_info.models import get_model, init_params
from ntk_info.scorer import (STREAM_SAMPLES_THRESHOLD, TRACE_ROWS_THRESHOLD, kernel_for, score, score_features,
                             trace_features)

SMALL = dict(n_train=40, width=16, steps=20, coords_per_layer=100, trust_samples=0)


def _exact_lambda_max(apply_fn, params, X):
    flat, unravel = ravel_pytree(params)
    J = jax.jacrev(lambda w: apply_fn(unravel(w), jnp.asarray(X)).reshape(-1))(flat)
    return np.linalg.eigvalsh(np.asarray(J @ J.T))[-1]


@pytest.mark.parametrize("k", [1, 3])
def test_lambda_max_equals_the_top_eigenvalue_of_the_exact_ntk(k):
    model = get_model("mlp", k, width=12)
    params = init_params(model, (5,), seed=1)
    X = np.random.default_rng(0).normal(size=(15, 5))
    exact = _exact_lambda_max(model.apply_fn, params, X)
    assert ntk_lambda_max(model.apply_fn, params, X, iterations=500, rtol=1e-12) == pytest.approx(exact, rel=1e-8)
    assert ntk_lambda_max(model.apply_fn, params, X) == pytest.approx(exact, rel=1e-3)
    assert np.isnan(ntk_lambda_max(model.apply_fn, params, X * 1e300))


def test_learning_rate_rule_and_stability_limit():
    assert choose_lr(None, 4.0, 1.0) == (0.2, "1/(lambda_max + weight_decay), NTK at init")
    assert choose_lr(0.3, 4.0)[0] == 0.3
    assert check_lr_stability(0.39, 4.0, 1.0) == []  # limit 2/(4 + 1) = 0.4
    with pytest.raises(UnstableLearningRate, match=r"limit 2/\(lambda_max \+ weight_decay\) = 0\.4 "):
        check_lr_stability(0.4, 4.0, 1.0)
    (warning,) = check_lr_stability(0.5, 4.0, 1.0, allow=True)
    assert "0.5 is at or above the GD stability limit" in warning


def test_damping_counts_weight_decay_once():
    # influence/MPE regularizer δ = weight_decay + damping: λ when λ > 0, else 1/(η t)
    assert 0.3 + influence_damping(0.1, 50, 0.3) == 0.3
    assert 0.0 + influence_damping(0.1, 50, 0.0) == pytest.approx(1 / 5)


def test_trace_kernel_decision_and_features():
    assert kernel_for(TRACE_ROWS_THRESHOLD // 2, 2) == "full"
    assert kernel_for(TRACE_ROWS_THRESHOLD // 2 + 1, 2) == "trace"
    assert kernel_for(STREAM_SAMPLES_THRESHOLD, 1) == "full"  # one output: no trace kernel, ...
    assert kernel_for(STREAM_SAMPLES_THRESHOLD + 1, 1) == "streamed"  # ... and features streamed beyond the limit
    assert kernel_for(STREAM_SAMPLES_THRESHOLD + 1, 3) == "streamed"
    assert kernel_for(10, 3, "trace") == "trace"
    with pytest.raises(ValueError, match="kernel: expected one of"):
        kernel_for(10, 3, "diag")
    phi = np.random.default_rng(0).normal(size=(6, 3, 4))
    flat = trace_features(phi)
    np.testing.assert_allclose(flat @ flat.T, np.einsum("iap,jap->ij", phi, phi) / 3, rtol=1e-13)


def _data(name="digits", **overrides):
    config = PipelineConfig(data=name, **{**SMALL, **overrides})
    return config, load_data(config)


def test_score_features_is_score():
    model = get_model("mlp", 3, width=8)
    params = init_params(model, (4,), seed=0)
    rng = np.random.default_rng(2)
    X, X_val, Y = rng.normal(size=(12, 4)), rng.normal(size=(5, 4)), rng.normal(size=(12, 3))
    opts = dict(lr=0.05, steps=30, weight_decay=0.1, discrete=True)
    for kernel in ("full", "trace"):
        ref = score(model.apply_fn, params, X, Y, X_val, coords_per_layer=50, kernel=kernel, trust_samples=0,
                    progress=False, **opts)
        feats = ntk_info.projected_features(model.apply_fn, params, X, coords_per_layer=50, progress=False)
        phi_val = feats.projection.features(X_val, progress=False).phi
        res = score_features(feats.phi, feats.outputs, Y, phi_val, kernel=kernel, progress=False, **opts)
        for name in ("fsi", "si", "si_langevin", "loo_residuals", "weight_change_sq"):
            np.testing.assert_allclose(getattr(res, name), getattr(ref, name), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kernel", ["full", "trace"])
def test_rescoring_a_kept_subset_equals_scoring_it_from_scratch(kernel):
    config, data = _data(classes=("3", "5", "8"), kernel=kernel)
    pipe = Pipeline(config, data, progress=False)
    kept = np.sort(np.random.default_rng(0).choice(40, size=25, replace=False))
    for by in ("fsi", "si", "loo_residual"):
        rescored = pipe.rescorer(by)(kept)
        scratch = score(pipe.model.apply_fn, pipe.params0, data.X[kept], pipe.Y[kept], data.X_val, lr=pipe.lr,
                        steps=config.steps, discrete=True, coords_per_layer=config.coords_per_layer,
                        seed=config.seed, kernel=kernel, trust_samples=0, progress=False)
        np.testing.assert_allclose(rescored, base_scores(scratch, (by,))[by], rtol=1e-8)
    np.testing.assert_allclose(pipe.rescorer("fsi")(np.arange(40)), pipe.score().fsi, rtol=1e-8)


def test_pipeline_settings_record_what_is_used():
    config, data = _data(weight_decay=0.2)
    pipe = Pipeline(config, data, progress=False)
    s = pipe.settings()
    exact = _exact_lambda_max(pipe.model.apply_fn, pipe.params0, data.X)
    assert s["lambda_max_ntk_init"] == pytest.approx(exact, rel=1e-3)
    assert s["lr"] == pytest.approx(1 / (exact + 0.2), rel=1e-3)
    assert s["influence/MPE regularizer (weight_decay + damping)"] == 0.2
    assert s["kernel"] == "full" and s["kernel_requested"] == "auto"  # 40 samples x 10 outputs <= 4000
    assert pipe.score().settings["kernel"] == "full"


def test_pipeline_records_the_trust_evidence():
    config, data = _data(trust_samples=4)
    pipe = Pipeline(config, data, progress=False)
    assert "trust" not in pipe.settings()
    result = pipe.score()
    trust = pipe.settings()["trust"]
    assert trust is result.trust and trust["verdict"] in VERDICTS
    assert trust["settings"]["lr"] == pipe.lr and trust["settings"]["steps"] == config.steps
    assert trust["spot_check"]["samples"] == 4 and trust["accuracy"]["real"]["val"] is not None
    assert pipe.settings()["trust_samples"] == 4
    with pytest.raises(ConfigError, match="trust_samples"):
        PipelineConfig(trust_samples=-1).validate()


def test_unstable_lr_is_refused_unless_allowed():
    config, data = _data(lr=10.0)
    with pytest.raises(UnstableLearningRate, match="--allow-unstable-lr"):
        Pipeline(config, data, progress=False)
    config = PipelineConfig(data="digits", lr=10.0, allow_unstable_lr=True, **SMALL)
    pipe = Pipeline(config, data, progress=False)
    assert len(pipe.settings()["warnings"]) == 1 and "stability limit" in pipe.settings()["warnings"][0]


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "expected an integer >= 1, got 0"), ("lr", 0.0, r"expected a finite number in \(0, inf\)"),
    ("width", 0, ">= 1"), ("coords_per_layer", 0, ">= 1"), ("seed", -1, ">= 0"), ("noise", 1.0, r"\[0, 1\)"),
    ("val_fraction", 1.0, r"\(0, 1\)"), ("classes", ("4",), "two distinct"), ("kernel", "diag", "one of"),
    ("projection", "svd", "one of"), ("data", "", "dataset name"), ("linearize", "after", "one of"),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message) as info:
        PipelineConfig(**{field: value}).validate()
    assert info.value.field == field and str(info.value).startswith(f"{field}: ")


def test_noise_that_flips_nothing_and_constant_inputs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="flips no sample of the 40 training samples"):
        _data(noise=0.01)
    path = tmp_path / "const.npz"
    np.savez(path, X=np.ones((30, 3)), y=np.arange(30) % 2)
    with pytest.raises(DegenerateData, match="every input feature is constant"):
        load_data(PipelineConfig(data=str(path)))


def test_huge_image_inputs_give_a_message_about_the_data(tmp_path):
    path = tmp_path / "huge.npz"
    rng = np.random.default_rng(0)
    np.savez(path, X=rng.uniform(size=(30, 4, 4, 1)) * 1e300, y=np.arange(30) % 2)
    config = PipelineConfig(data=str(path), width=8, steps=5)
    with pytest.raises(DegenerateData, match=r"NTK of the mlp at init is degenerate.*rescale X"):
        Pipeline(config, load_data(config), progress=False)


def test_split_rows_map_back_to_the_users_csv(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.csv"
    labels = rng.choice(["cat", "dog", "emu"], size=50)
    X = rng.normal(size=(50, 3))
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["a", "b", "c", "label"])
        for x, lab in zip(X, labels):
            w.writerow([*(repr(float(v)) for v in x), lab])
    config = PipelineConfig(data=str(path), classes=("cat", "dog"), n_train=20, seed=3)
    data = load_data(config)
    rows = data.rows_train
    assert rows.size == 20 and set(labels[rows]) <= {"cat", "dog"}
    np.testing.assert_array_equal(data.label_text(data.labels), labels[rows])  # labels as written, row by row
    raw = X[rows]
    np.testing.assert_allclose(data.X, (raw - raw.mean(0)) / raw.std(0), rtol=1e-10)  # the same rows, scaled
    split = split_rows(data)
    by_split = {s: [r["row"] for r in split if r["split"] == s] for s in ("train", "validation", "test")}
    assert by_split["train"] == rows.tolist()
    used = sum(by_split.values(), [])
    assert len(used) == len(set(used))  # every row in at most one split
    np.testing.assert_array_equal(labels[by_split["validation"]], data.label_text(data.y_val))
    np.testing.assert_array_equal(labels[by_split["test"]], data.label_text(data.y_test))


def test_fgsm_on_standardized_tabular_data_stays_in_the_datas_range():
    ds = load_dataset("breast-cancer", n_train=120, seed=0)
    assert ds.X.min() < -1 and ds.X.max() > 2  # standardized: far outside [0, 1]
    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.normal(size=(ds.X.shape[1], 2)) * 0.3)
    apply_fn = lambda w, x: x @ w  # noqa: E731
    y = np.asarray(jnp.argmax(ds.X @ W, axis=1))
    res = fgsm(apply_fn, W, ds.X, y, num_classes=2, eps=0.05, fraction=0.1, seed=0)
    adv = res.is_adversarial
    assert adv.sum() == 12 and res.clip == (ds.X.min(), ds.X.max())
    assert res.step == pytest.approx(0.05 * np.ptp(ds.X))
    moved = res.X[adv] - ds.X[adv]
    # every coordinate moved by the full step unless the data's own bound stopped it; none clipped to [0, 1]
    at_bound = np.isclose(res.X[adv], ds.X.min()) | np.isclose(res.X[adv], ds.X.max())
    assert np.all(np.isclose(np.abs(moved), res.step) | at_bound)
    assert (res.X[adv] < 0).any() and (res.X[adv] > 1).any()


def test_fgsm_is_scale_free_for_images_stored_times_1e6():
    rng = np.random.default_rng(1)
    X = rng.uniform(size=(60, 3, 3, 1))
    W = jnp.asarray(rng.normal(size=(9, 3)))
    y = np.asarray(jnp.argmax(X.reshape(60, -1) @ W, axis=1))
    apply_fn = lambda w, x: x.reshape(x.shape[0], -1) @ w  # noqa: E731
    unit = fgsm(apply_fn, W, X, y, num_classes=3, eps=0.1, fraction=0.2, seed=0)
    big = fgsm(apply_fn, W / 1e6, X * 1e6, y, num_classes=3, eps=0.1, fraction=0.2, seed=0)
    assert unit.is_adversarial.sum() > 0
    np.testing.assert_array_equal(big.is_adversarial, unit.is_adversarial)
    np.testing.assert_allclose(big.X / 1e6, unit.X, rtol=1e-9)


def test_streamed_kernel_scores_and_refuses_iterative_rescoring():
    """kernel="streamed" through the pipeline gives the full kernel's scores; iterative rescoring, which keeps
    features in memory, is refused naming the option instead of failing deep inside."""
    config, data = _data(classes=("3", "5", "8"), kernel="streamed", projection="subsample")
    pipe = Pipeline(config, data, progress=False)
    streamed = pipe.score()
    full = Pipeline(PipelineConfig(data="digits", **{**SMALL, "classes": ("3", "5", "8"), "kernel": "full",
                                                     "projection": "subsample"}), data, progress=False).score()
    assert streamed.settings["kernel"] == "streamed"
    assert "streamed" in pipe.settings()["kernel_meaning"]  # what the CLI prints and writes to settings.json
    np.testing.assert_allclose(streamed.fsi, full.fsi, rtol=1e-7)
    with pytest.raises(ConfigError, match="drop --iterative"):
        pipe.rescorer("fsi")

"""``ntk-info`` end to end on tiny data (every subcommand), its numbers against the library's, and error messages."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sklearn.metrics import roc_auc_score

import ntk_info
from ntk_info.apps.detect import suspicion_from_columns
from ntk_info.cli import main
from ntk_info.data import load_dataset
from ntk_info.models import get_model, init_params
from ntk_info.report import read_csv
from ntk_info.training import targets

TINY = ["--n-train", "60", "--width", "16", "--steps", "20", "--coords-per-layer", "200", "--no-progress"]


def _run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _check_report(out_dir):
    html = open(os.path.join(out_dir, "report.html")).read()
    figures = os.listdir(os.path.join(out_dir, "figures"))
    assert figures
    for name in figures:
        assert os.path.getsize(os.path.join(out_dir, "figures", name)) > 1000
    assert html.count("data:image/png;base64,") == len(figures)
    return html, figures


def test_help_names_every_subcommand():
    exe = os.path.join(os.path.dirname(sys.executable), "ntk-info")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "score", "detect", "summarize", "sources", "compare", "report"):
        assert command in proc.stdout
    assert proc.stderr == ""


def test_demo_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "demo")
    status, stdout, err = _run(capsys, "demo", "--out", out, *TINY, "--fractions", "0.1", "--retrain-width", "8",
                               "--retrain-steps", "10")
    assert status == 0, err
    assert f"report: {os.path.abspath(out)}/report.html" in stdout
    assert "timing (s):" in err and "total" in err and "Traceback" not in err
    trust = json.load(open(os.path.join(out, "settings.json")))["trust"]
    assert f"trust: {trust['verdict'].upper()} (spot check F-SI Pearson" in stdout and "on 12 retrainings" in stdout
    assert "trust check (12 retrainings)" in err
    detection = read_csv(os.path.join(out, "detection.csv"))
    assert {r["method"] for r in detection} == {"fsi", "si", "loo_residual", "loo_margin", "loo_prob", "crossfit",
                                                "pooled", "influence", "mpe", "train_loss", "cleanlab"}
    scores = read_csv(os.path.join(out, "scores.csv"))
    assert len(scores) == 60 and sum(r["is_noisy"] for r in scores) == 6
    is_noisy = np.array([r["is_noisy"] for r in scores])
    columns = {name: np.array([s[name] for s in scores]) for name in scores[0]}
    # pooled = mean of the trained, trained-head and cross-fitted points' LOO log-probabilities of the given label
    np.testing.assert_allclose(columns["pooled_log_prob_given"],
                               (columns["trained_log_prob_given"] + columns["trained_head_log_prob_given"]
                                + columns["crossfit_log_prob_given"]) / 3, rtol=1e-9, atol=1e-12)
    settings = json.load(open(os.path.join(out, "settings.json")))
    assert settings["crossfit"]["folds"] == len(set(columns["crossfit_fold"])) >= 2
    assert settings["pooled"]["weight_decay_trained"] > 0
    for r in detection:  # detection.csv is the AUROC of the scores.csv column against the flipped labels
        column = suspicion_from_columns(columns, r["method"])
        assert r["auroc"] == pytest.approx(roc_auc_score(is_noisy, column), abs=1e-12)
    # detect -> clean (remove LOO margin < 0) -> summarize the cleaned set, in that order
    flagged = sorted(int(r["index"]) for r in scores if r["loo_margin"] < 0)
    clean_rows = read_csv(os.path.join(out, "clean.csv"))
    assert sorted(int(r["index"]) for r in clean_rows) == flagged and {r["action"] for r in clean_rows} == {"remove"}
    assert settings["clean"]["n_flagged"] == len(flagged) and settings["clean"]["n_kept"] == 60 - len(flagged)
    assert settings["clean"]["wrong_labels_after"] == sum(r["is_noisy"] for r in scores if r["loo_margin"] >= 0)
    assert settings["summarize_on"]["n_train"] == 60 - len(flagged)
    assert settings["summarize_on"]["wrong_labels"] == settings["clean"]["wrong_labels_after"]
    summary = read_csv(os.path.join(out, "summarize.csv"))
    assert {r["strategy"] for r in summary} == {"full data", "bottom", "top", "random", "bottom-iterative"}
    assert [r["n_kept"] for r in summary if r["strategy"] == "full data"] == [60 - len(flagged)]
    kept = 60 - len(flagged)
    assert [r["n_kept"] for r in summary if r["strategy"] == "bottom"] == [kept - round(0.1 * kept)]
    assert stdout.index("detect (is_noisy, 6 of 60") < stdout.index("clean (remove") < stdout.index(
        f"summarize ({60 - len(flagged)} training samples after cleaning")
    html, figures = _check_report(out)
    assert html.index(">Detection of mislabeled samples<") < html.index(">Cleaning<") < html.index(
        ">Dataset summarization of the cleaned data<")
    assert f"Cleaning: {len(flagged)} samples flagged" in html
    assert {"roc.png", "summarization.png", "hist_fsi_noise.png", "grid_most_informative.png"} <= set(figures)
    # `report` re-renders the same folder
    status, stdout, _ = _run(capsys, "report", out)
    assert status == 0 and "report.html" in stdout


def test_score_detect_adversarial_and_sources(tmp_path, capsys):
    status, stdout, err = _run(capsys, "score", "--out", str(tmp_path / "s"), *TINY, "--trust-samples", "0")
    assert status == 0, err
    assert "trust:" not in stdout and "trust" not in json.load(open(tmp_path / "s" / "settings.json"))
    assert len(read_csv(tmp_path / "s" / "scores.csv")) == 60
    _check_report(tmp_path / "s")

    status, stdout, err = _run(capsys, "detect", "--out", str(tmp_path / "a"), *TINY, "--noise", "0",
                               "--adversarial", "0.1", "--eps", "0.3", "--methods", "fsi,loo_residual,train_loss")
    assert status == 0, err
    rows = read_csv(tmp_path / "a" / "detection.csv")
    assert {r["bad"] for r in rows} == {"is_adversarial"} and len(rows) == 3
    assert "roc.png" in _check_report(tmp_path / "a")[1]

    rng = np.random.default_rng(0)
    path = tmp_path / "src.npz"
    np.savez(path, X=rng.normal(size=(80, 5)), y=np.arange(80) % 2, source=np.array(["mnist", "svhn"] * 40))
    status, stdout, err = _run(capsys, "sources", "--data", str(path), "--out", str(tmp_path / "src"), *TINY)
    assert status == 0, err
    rows = read_csv(tmp_path / "src" / "sources.csv")
    assert {r["group"] for r in rows} == {"mnist", "svhn", "(all)"}
    assert "mnist" in stdout


def test_summarize_with_another_architecture(tmp_path, capsys):
    out = tmp_path / "sum"
    status, _, err = _run(capsys, "summarize", "--out", str(out), *TINY, "--fractions", "0.2,0.4",
                          "--retrain-model", "mlp", "--retrain-width", "8", "--retrain-steps", "10", "--by", "si")
    assert status == 0, err
    rows = read_csv(out / "summarize.csv")
    assert [r["n_kept"] for r in rows if r["strategy"] == "bottom"] == [48, 36]
    assert "summarization.png" in _check_report(out)[1]


def test_compare(tmp_path, capsys):
    out = tmp_path / "cmp"
    status, _, err = _run(capsys, "compare", "--out", str(out), "--n-train", "20", "--width", "8", "--steps", "5",
                          "--coords-per-layer", "50", "--no-progress", "--subset-size", "2",
                          "--compare-methods", "linearization,influence_exact")
    assert status == 0, err
    rows = read_csv(out / "compare.csv")
    assert [r["method"] for r in rows] == ["linearization", "influence_exact", "brute force (retraining)"]
    settings = json.loads((out / "settings.json").read_text())
    # compare validates the estimator the scores use: same kernel, projection and damping
    assert settings["compare"]["kernel"] == settings["kernel"]
    assert settings["compare"]["projection"] == settings["projection"]
    assert settings["compare"]["damping"] == settings["influence/MPE damping added to weight_decay"]


@pytest.mark.parametrize("kernel", ["full", "trace"])
def test_scores_csv_equals_ntk_info_score_and_projection_changes_the_features(tmp_path, capsys, kernel):
    """scores.csv against ntk_info.score on the same inputs, built here from the documented defaults."""
    digits = __import__("sklearn.datasets", fromlist=["load_digits"]).load_digits()
    ds = load_dataset("digits", n_train=40, seed=0)
    model = get_model("mlp", 10, width=16)
    params = init_params(model, ds.X.shape[1:], seed=0)
    fsi = {}
    for projection in ("countsketch", "subsample"):
        out = tmp_path / projection
        status, _, err = _run(capsys, "score", "--out", str(out), "--n-train", "40", "--width", "16", "--steps",
                              "20", "--coords-per-layer", "100", "--projection", projection, "--kernel", kernel,
                              "--no-progress")
        assert status == 0, err
        rows = read_csv(out / "scores.csv")
        settings = json.loads((out / "settings.json").read_text())
        assert settings["kernel"] == kernel and settings["projection"] == projection
        assert ("scores use the output-averaged (trace) NTK" in err) == (kernel == "trace")
        ref = ntk_info.score(model.apply_fn, params, ds.X, targets(ds.y, 10), ds.X_val[::2], lr=settings["lr"],
                             steps=20, discrete=True, coords_per_layer=100, seed=0, method=projection, kernel=kernel,
                             progress=False)
        for name, values in (("fsi", ref.fsi), ("si", ref.si),
                             ("loo_residual", np.linalg.norm(ref.loo_residuals, axis=1))):
            np.testing.assert_allclose([r[name] for r in rows], values, rtol=1e-10)
        # every row maps back to the user's data: `row` is the sample's row in digits, `label` its label there
        row = np.array([r["row"] for r in rows], int)
        np.testing.assert_allclose(ds.X.reshape(40, -1), digits.data[row] / 16.0)
        np.testing.assert_array_equal([r["label"] for r in rows], digits.target[row])
        fsi[projection] = ref.fsi
    assert np.max(np.abs(fsi["countsketch"] - fsi["subsample"]) / fsi["subsample"]) > 1e-3


def test_detection_of_planted_label_noise_beats_chance(tmp_path, capsys):
    out = tmp_path / "det"
    status, _, err = _run(capsys, "detect", "--out", str(out), "--n-train", "150", "--width", "64", "--steps", "100",
                          "--coords-per-layer", "300", "--noise", "0.1", "--methods", "fsi,loo_residual",
                          "--no-progress")
    assert status == 0, err
    auroc = {r["method"]: r["auroc"] for r in read_csv(out / "detection.csv")}
    # measured 0.95 (loo_residual) and 0.82 (fsi) at n = 200; chance is 0.5
    assert auroc["loo_residual"] > 0.8 and auroc["fsi"] > 0.65, auroc


def _npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("make_argv, message", [
    (lambda p: ["--data", "mnist"], "unknown dataset 'mnist'.*valid names: digits, breast-cancer, iris, wine"),
    (lambda p: ["--model", "transformer"], "unknown model 'transformer'; valid names: cnn, mlp, resnet"),
    (lambda p: ["--model", "nosuchpkg.mod:make"], "cannot load factory"),
    (lambda p: ["--data", _npz(p, X=np.zeros((4, 2)))], "missing array 'y'"),
    (lambda p: ["--data", _npz(p, X=np.zeros((4, 2)), y=np.array([0, 1, 1]))], "'y' has 3 entries but X has 4"),
    (lambda p: ["--data", _npz(p, X=np.array([[np.nan, 0]] * 4), y=np.array([0, 1] * 2))], "'X' contains NaN"),
    (lambda p: ["--data", _npz(p, X=np.zeros((4, 2)), y=np.ones(4))], "single class"),
    (lambda p: ["--noise", "1.0"], r"--noise: expected a finite number in \[0, 1\)"),
    (lambda p: ["--noise", "-0.2"], r"--noise: expected a finite number in \[0, 1\)"),
])
def test_errors_are_one_clean_line(tmp_path, capsys, make_argv, message):
    import re

    status, out, err = _run(capsys, "score", "--out", str(tmp_path / "o"), "--n-train", "20",
                            *make_argv(tmp_path))
    assert status == 2
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("ntk-info: error: "), err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    status, _, err = _run(capsys, "score", "--out", str(out), *TINY)
    assert status == 2 and f"output directory '{out}' exists and has files; pass --force" in err
    assert sorted(os.listdir(out)) == ["keep.txt"]
    status, _, err = _run(capsys, "score", "--out", str(out), "--force", *TINY)  # results go next to keep.txt
    assert status == 0, err
    assert (out / "keep.txt").read_text() == "mine" and (out / "scores.csv").exists()
    status, _, err = _run(capsys, "report", str(tmp_path))
    assert status == 2 and "manifest.json: missing" in err


def test_detect_needs_something_to_detect(tmp_path, capsys):
    status, _, err = _run(capsys, "detect", "--out", str(tmp_path / "d"), *TINY, "--noise", "0")
    assert status == 2 and "nothing to detect" in err
    status, _, err = _run(capsys, "detect", "--out", str(tmp_path / "e"), *TINY, "--methods", "fsi,magic")
    assert status == 2 and "--methods: unknown ['magic']" in err


def test_sources_needs_sources(tmp_path, capsys):
    status, _, err = _run(capsys, "sources", "--out", str(tmp_path / "s"), *TINY)
    assert status == 2 and "has no source or group" in err


def test_detect_with_the_streamed_kernel_refuses_or_skips_the_in_memory_detectors(tmp_path, capsys):
    status, _, err = _run(capsys, "detect", "--out", str(tmp_path / "a"), *TINY, "--trust-samples", "0",
                          "--kernel", "streamed", "--methods", "loo_margin,pooled")
    assert status == 2 and "--methods pooled: the cross-fitted and trained points keep their features" in err
    assert not os.path.exists(tmp_path / "a")
    status, _, err = _run(capsys, "detect", "--out", str(tmp_path / "b"), *TINY, "--trust-samples", "0",
                          "--kernel", "streamed")
    assert status == 0, err
    assert "crossfit and pooled skipped: the streamed kernel (60 samples)" in err
    methods = {r["method"] for r in read_csv(os.path.join(tmp_path / "b", "detection.csv"))}
    assert "loo_margin" in methods and not methods & {"crossfit", "pooled"}

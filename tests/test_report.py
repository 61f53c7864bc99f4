"""The HTML report from a synthetic results folder: every section's figure exists, is a PNG and is embedded."""
import json
import os
import re

import numpy as np
import pytest

from ntk_info.report import build_report, read_csv, write_csv


def _results(tmp_path, images=True):
    rng = np.random.default_rng(0)
    n = 40
    noisy = np.zeros(n, int)
    noisy[:5] = 1
    fsi = rng.exponential(size=n) + 3 * noisy
    rows = [{"index": i, "label": i % 3, "true_label": i % 3, "is_noisy": int(noisy[i]), "source": "ab"[i % 2],
             "fsi": float(fsi[i]), "si": float(fsi[i] * 2), "loo_residual": float(fsi[i] + 1),
             "cleanlab": float(rng.uniform())} for i in range(n)]
    write_csv(tmp_path / "scores.csv", rows)
    write_csv(tmp_path / "detection.csv", [
        {"method": m, "auroc": 0.9, "ap": 0.5, "found_top10": 0.4, "found_top20": 0.8, "bad": "is_noisy"}
        for m in ("fsi", "loo_residual", "cleanlab")])
    write_csv(tmp_path / "summarize.csv", [
        {"strategy": s, "fraction": q, "n_kept": int(n * (1 - q)), "accuracy": 0.9 - q / 2}
        for s in ("bottom", "top") for q in (0.1, 0.5)])
    write_csv(tmp_path / "sources.csv", [{"by": "source", "group": "a", "count": 20, "mean": 1.0}])
    (tmp_path / "settings.json").write_text(json.dumps({"lr": 0.1, "timings": {"scores": 1.5},
                                                        "trust": {"verdict": "fine", "gap": 0.01}}))
    if images:
        np.savez(tmp_path / "inputs.npz", X=rng.uniform(size=(n, 4, 4, 1)), image_shape=np.array([4, 4, 1]))
    return tmp_path


def test_report_has_every_figure_embedded_and_on_disk(tmp_path):
    path = build_report(str(_results(tmp_path)), title="test")
    html = open(path).read()
    figures = sorted(os.listdir(tmp_path / "figures"))
    assert figures == sorted(["hist_fsi_noise.png", "hist_fsi_source.png", "hist_loo_residual_noise.png",
                              "grid_most_informative.png",
                              "grid_least_informative.png", "roc.png", "summarization.png"])
    for name in figures:
        data = (tmp_path / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(embedded) == len(figures) and all(len(e) > 2000 for e in embedded)
    for text in ("Detection of mislabeled", "Dataset summarization", "Sources and groups", "Settings", "Timings",
                 "fine", "loo_residual"):
        assert text in html


def test_report_without_images_or_optional_files(tmp_path):
    _results(tmp_path, images=False)
    for name in ("detection.csv", "summarize.csv", "sources.csv", "settings.json"):
        os.remove(tmp_path / name)
    build_report(str(tmp_path))
    assert sorted(os.listdir(tmp_path / "figures")) == ["hist_fsi_noise.png", "hist_fsi_source.png",
                                                        "hist_loo_residual_noise.png"]


def test_report_refuses_an_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no results to report"):
        build_report(str(tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        build_report(str(tmp_path / "missing"))


def test_csv_round_trip(tmp_path):
    rows = [{"a": 1.5, "b": "x"}, {"a": -2.0, "b": "y"}]
    write_csv(tmp_path / "t.csv", rows)
    assert read_csv(tmp_path / "t.csv") == rows


def test_check_results_names_the_damaged_file(tmp_path):
    from ntk_info.report import check_results

    _results(tmp_path, images=False)
    check_results(str(tmp_path), require_manifest=False)
    scores = (tmp_path / "scores.csv").read_bytes()
    for damaged, message in ((scores[:-7], r"scores.csv: the last line has no line end, so the file was cut mid-row"),
                             (scores.split(b"\n")[0] + b"\n", r"scores.csv: header only, no data rows"),
                             (b"", r"scores.csv: empty"),
                             (scores + b"1,2\n", r"scores.csv: line 42 has 2 fields, the header has 9")):
        (tmp_path / "scores.csv").write_bytes(damaged)
        with pytest.raises(ValueError, match=message):
            check_results(str(tmp_path), require_manifest=False)
        with pytest.raises(ValueError, match=message):  # build_report refuses it too
            build_report(str(tmp_path))
    (tmp_path / "scores.csv").write_bytes(scores)
    (tmp_path / "settings.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"settings.json: expected a JSON object of settings, got a list"):
        check_results(str(tmp_path), require_manifest=False)
    (tmp_path / "settings.json").write_text("{}")
    with pytest.raises(ValueError, match=r"manifest.json: missing, so .* is not a finished ntk-info run"):
        check_results(str(tmp_path))


def test_check_results_against_the_manifest(tmp_path):
    from ntk_info.cli import write_manifest
    from ntk_info.report import INCOMPLETE_MARKER, check_results

    _results(tmp_path, images=False)
    write_manifest(str(tmp_path), ["scores.csv", "detection.csv", "settings.json"], "score")
    check_results(str(tmp_path))
    (tmp_path / "detection.csv").write_text((tmp_path / "detection.csv").read_text().replace("0.9", "0.8"))
    with pytest.raises(ValueError, match=r"detection.csv: changed since the run wrote it"):
        check_results(str(tmp_path))
    (tmp_path / "detection.csv").unlink()
    with pytest.raises(ValueError, match=r"detection.csv: listed in manifest.json but missing"):
        check_results(str(tmp_path))
    (tmp_path / INCOMPLETE_MARKER).write_text("")
    with pytest.raises(ValueError, match="this run did not finish"):
        check_results(str(tmp_path))


TRUST = {  # as ntk_info.trust returns it (abridged spot-check lists)
    "verdict": "not trusted",
    "reasons": ["edge of stability: lr·(λ_max(trained) + λ)/2 = 0.97 ≥ 0.9 (the kernel sharpened until GD barely "
                "stays stable)"],
    "advice": ["lower the learning rate: lr·(λ_max(trained) + λ)/2 = 0.97; keep it below 0.75, i.e. lr ≤ 0.0185",
               "start from pretrained weights (pretrain on related data, fresh head): the kernel then moves little "
               "during fine-tuning"],
    "linearization_gap": 0.734, "gap_inputs": "validation", "linearization_gap_train": 0.52,
    "accuracy": {"real": {"train": 1.0, "val": 0.912}, "linearized": {"train": 0.975, "val": 0.857}},
    "kernel_drift": 1.87, "kernel_drift_rows": 40, "lambda_max_init": 20.3, "lambda_max_trained": 79.1,
    "lambda_max_ratio": 3.9, "stability_margin": 0.974, "stability_margin_init": 0.25, "lr_for_margin": 0.0123,
    "diverged": False, "edge_of_stability": True,
    "spot_check": {"samples": 8, "indices": [0, 3, 5, 9, 14, 20, 31, 39], "ranked_by": "fsi",
                   "ranked_by_measure": "predictions",
                   "predictions": {"pearson": 0.113, "pearson_interval": [-0.52, 0.81], "spearman": 0.19,
                                   "spearman_interval": [-0.6, 0.9]},
                   "weights": {"pearson": 0.402, "pearson_interval": [-0.1, 0.95], "spearman": 0.33,
                               "spearman_interval": [-0.4, 0.9]}},
    "seconds": {"features": 1.2, "linearized": 0.3, "train_and_retrain": 41.7, "trained_features_and_drift": 2.0,
                "total": 45.2},
}


@pytest.mark.parametrize("verdict,css", [("not trusted", "trust-not-trusted"), ("caution", "trust-caution"),
                                         ("trusted", "trust-trusted")])
def test_trust_box_at_the_top_with_colour_figures_and_advice(tmp_path, verdict, css):
    _results(tmp_path, images=False)
    (tmp_path / "settings.json").write_text(json.dumps({"lr": 0.1, "trust": {**TRUST, "verdict": verdict}}))
    html = open(build_report(str(tmp_path), title="t")).read()
    start = html.index(f"<div class='trust {css}'>")
    assert start < html.index("Key findings") and html.index("<h1>") < start
    box = html[start:html.index("</div>", start)]
    for text in ("0.113 [-0.52, 0.81]", "0.402 [-0.10, 0.95]", "0.734", "1.87", "3.9", "0.25 → 0.974",
                 "edge of stability", "1.000 / 0.975", "0.912 / 0.857", "45.2", "lower the learning rate",
                 "start from pretrained weights", "8 samples spread over the F-SI ranking"):
        assert text in box, text
    assert html.count("class='trust ") == 1

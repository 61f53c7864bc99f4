"""Source values (ntk_info.apps.sources): the planted clean-vs-noisy case, the table's columns, formatting."""
import numpy as np
import pytest
from reference import trained_weights
from sklearn.datasets import load_digits

from ntk_info.apps.sources import classification_metrics, format_table, source_table
from ntk_info.data import add_label_noise
from ntk_info.loo import leave_one_out


@pytest.fixture(scope="module")
def planted():
    """1,200 digits in two sources of 600: 'clean', and 'noisy' with 30 % of its labels flipped; a
    random-ReLU-feature model (p = 500) trained by 300 GD steps; 300 validation and 297 test digits."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    tr, va, te = order[:1200], order[1200:1500], order[1500:]
    labels = y[tr].copy()
    labels[600:], _, _ = add_label_noise(labels[600:], 0.3, 10, seed=1)
    W = rng.normal(size=(64, 500)) * np.sqrt(2 / 64)
    feat = lambda A: np.maximum(A / 16.0 @ W, 0) / np.sqrt(500)  # noqa: E731
    F = feat(X[tr])
    lr = 1.0 / np.linalg.eigvalsh(F.T @ F).max()
    return dict(F=F, Fv=feat(X[va]), Ft=feat(X[te]), labels=labels, y_val=y[va], y_test=y[te],
                source=np.repeat(["clean", "noisy"], 600), lr=lr, steps=300)


def _table(d, scores=None, method="auto"):
    return source_table(features=d["F"], residuals=np.eye(10)[d["labels"]], labels=d["labels"], groups=d["source"],
                        lr=d["lr"], steps=d["steps"], discrete=True, val_features=d["Fv"],
                        val_outputs0=np.zeros((len(d["y_val"]), 10)), val_labels=d["y_val"],
                        test_features=d["Ft"], test_outputs0=np.zeros((len(d["y_test"]), 10)),
                        test_labels=d["y_test"], scores=scores, method=method)


def test_planted_clean_source_is_worth_more(planted):
    """Issue 13's acceptance case: without the clean source the model is worse than without the noisy one —
    while the per-sample scores (surprise) are higher on the noisy source, and detection flags it."""
    d = planted
    loo = leave_one_out(features=d["F"], residuals=np.eye(10)[d["labels"]], lr=d["lr"], steps=d["steps"],
                        discrete=True, cross_features=d["Fv"], progress=False)
    scores = {"fsi": np.asarray(loo.prediction_change_sq) / (2 * len(d["y_val"])),
              "loo_residual": np.linalg.norm(np.asarray(loo.fitted_residuals)
                                             + np.asarray(loo.self_prediction_change), axis=1)}
    rows = {r["group"]: r for r in _table(d, scores)}
    clean, noisy, full = rows["clean"], rows["noisy"], rows["(all)"]
    print(format_table(list(rows.values()), list(clean)))
    assert clean["val_accuracy_without"] < noisy["val_accuracy_without"]
    assert clean["val_loss_without"] > noisy["val_loss_without"]
    assert clean["val_accuracy_only"] > noisy["val_accuracy_only"]
    assert clean["delta_val_accuracy_without"] < 0
    assert clean["heldout_accuracy"] > noisy["heldout_accuracy"]
    assert noisy["fsi_mean"] > clean["fsi_mean"] and noisy["loo_residual_mean"] > clean["loo_residual_mean"]
    assert noisy["flagged_share"] > clean["flagged_share"]
    assert full["count"] == 1200 and full["val_loss_without"] == ""
    assert clean["delta_val_loss_without"] == pytest.approx(clean["val_loss_without"] - full["val_loss_only"])


def test_table_values_equal_brute_force_retraining(planted):
    """Every loss/accuracy column against retraining the linearized model without / on only each source."""
    d = planted
    rows = {r["group"]: r for r in _table(d, method="refactor")}
    Y = np.eye(10)[d["labels"]]
    for name in ("clean", "noisy"):
        inside = d["source"] == name
        for kind, keep in (("without", ~inside), ("only", inside)):
            w = trained_weights(d["F"][keep], Y[keep], d["lr"], d["steps"], 0.0, True)
            loss, acc = classification_metrics(d["Fv"] @ w, d["y_val"])
            assert rows[name][f"val_loss_{kind}"] == pytest.approx(loss, rel=1e-9)
            assert rows[name][f"val_accuracy_{kind}"] == acc
            assert rows[name][f"test_accuracy_{kind}"] == classification_metrics(d["Ft"] @ w, d["y_test"])[1]


def test_classification_metrics_one_and_many_outputs():
    loss, acc = classification_metrics(np.array([[0.9, 0.1], [0.2, 0.4]]), np.array([0, 0]))
    assert loss == pytest.approx(0.5 * ((0.01 + 0.01) + (0.64 + 0.16)) / 2) and acc == 0.5
    loss, acc = classification_metrics(np.array([[0.3], [-0.2], [0.1]]), np.array([1, 0, 0]))
    assert acc == pytest.approx(2 / 3) and loss == pytest.approx(0.5 * (0.49 + 0.04 + 0.01) / 3)


def test_format_table_keeps_significant_digits():
    text = format_table([{"group": "a", "mean": 5.6e-5}, {"group": "b", "mean": 4.1e-5}], ["group", "mean"])
    assert "5.6e-05" in text and "4.1e-05" in text and "0.0000" not in text


def test_errors_name_the_argument(planted):
    d = planted
    with pytest.raises(ValueError, match="val_features"):
        source_table(features=d["F"], residuals=np.eye(10)[d["labels"]], labels=d["labels"], groups=d["source"],
                     lr=d["lr"], steps=3, val_features=d["Fv"][:, :4], val_outputs0=np.zeros((300, 10)),
                     val_labels=d["y_val"])
    with pytest.raises(ValueError, match="flag_score"):
        source_table(features=d["F"], residuals=np.eye(10)[d["labels"]], labels=d["labels"], groups=d["source"],
                     lr=d["lr"], steps=3, val_features=d["Fv"], val_outputs0=np.zeros((300, 10)),
                     val_labels=d["y_val"], scores={"fsi": np.ones(1200)})


def test_report_draws_source_value_and_score_distributions(tmp_path):
    from ntk_info.apps.sources import add_retrained_columns
    from ntk_info.report import build_report, write_csv

    rows = [{"by": "source", "group": g, "count": 3, "val_loss_without": lw, "val_accuracy_without": aw,
             "delta_val_loss_without": lw - 0.1, "delta_val_accuracy_without": aw - 0.9, "val_loss_only": lo,
             "val_accuracy_only": ao, "delta_val_loss_only": lo - 0.1, "delta_val_accuracy_only": ao - 0.9,
             "fsi_mean": 1e-5, "loo_residual_mean": 0.5, "flagged_share": 0.1}
            for g, lw, aw, lo, ao in (("clean", 0.2, 0.85, 0.12, 0.89), ("noisy", 0.12, 0.89, 0.2, 0.85))]
    total = {k: "" for k in rows[0]}
    total.update(by="source", group="(all)", count=6, val_loss_only=0.1, val_accuracy_only=0.9)
    rows = add_retrained_columns(rows + [total], {"full": 0.91, "without": {"clean": 0.8, "noisy": 0.9},
                                                  "only": {"clean": 0.9, "noisy": 0.8}})
    assert rows[0]["delta_val_accuracy_without_retrained"] == pytest.approx(0.8 - 0.91)
    write_csv(tmp_path / "sources.csv", rows)
    write_csv(tmp_path / "scores.csv", [{"index": i, "label": i % 2, "source": ["clean", "noisy"][i // 3],
                                         "fsi": 1e-5 * (i + 1), "loo_residual": 0.1 * (i + 1)} for i in range(6)])
    html = open(build_report(str(tmp_path))).read()
    for name in ("source_value_source", "source_scores_source"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000
    assert "wrong labels are surprising" in html and "network retrained" in html
    assert "0.0000" not in html and "1e-05" in html


def test_retrained_source_accuracy_equals_training_on_the_subset():
    """The real network without / with only each source equals training it on those rows directly."""
    import jax.numpy as jnp

    from ntk_info.apps.sources import retrained_source_accuracy
    from ntk_info.models import get_model, init_params
    from ntk_info.training import train

    rng = np.random.default_rng(0)
    X, labels = rng.normal(size=(24, 5)), rng.integers(0, 3, size=24)
    Xv, yv = rng.normal(size=(15, 5)), rng.integers(0, 3, size=15)
    groups = np.array(["a", "b", "c"] * 8)
    model = get_model("mlp", 3, width=16)
    params0 = init_params(model, (5,), seed=0)
    Y = np.eye(3)[labels]
    got = retrained_source_accuracy(model.apply_fn, params0, X, Y, groups, Xv, yv, lr=0.05, steps=20, progress=False)

    def accuracy(keep):
        params = train(model.apply_fn, params0, jnp.asarray(X[keep]), jnp.asarray(Y[keep]), lr=0.05, steps=20)
        return float(np.mean(np.argmax(np.asarray(model.apply_fn(params, jnp.asarray(Xv))), axis=1) == yv))

    same = lambda a, b: a == pytest.approx(b, abs=1e-6)  # noqa: E731  (float32 means; steps of 1/15)
    assert same(got["full"], accuracy(np.ones(24, bool)))
    for g in "abc":
        assert same(got["without"][g], accuracy(groups != g)) and same(got["only"][g], accuracy(groups == g))


@pytest.mark.slow
def test_cli_sources_planted_ranks_the_clean_source_first(tmp_path, capsys):
    """`ntk-info sources --retrain` on 400 digits in two sources of 200 (one with 30 % flipped labels):
    the sources.csv columns and the real network both say the clean source is worth more."""
    from ntk_info.cli import main
    from ntk_info.report import read_csv

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    tr, va = order[:400], order[1200:]
    labels = d.target[tr].copy()
    labels[200:], _, _ = add_label_noise(labels[200:], 0.3, 10, seed=1)
    path = tmp_path / "planted.npz"
    np.savez(path, X=d.images[tr] / 16.0, y=labels, source=np.repeat(["clean", "noisy"], 200),
             X_val=d.images[va] / 16.0, y_val=d.target[va])
    out = tmp_path / "out"
    status = main(["sources", "--data", str(path), "--out", str(out), "--width", "64", "--steps", "300",
                   "--coords-per-layer", "200", "--no-progress", "--retrain", "--trust-samples", "0"])
    stdout, err = capsys.readouterr()
    assert status == 0, err
    rows = {r["group"]: r for r in read_csv(out / "sources.csv")}
    assert set(rows) == {"clean", "noisy", "(all)"} and {r["by"] for r in rows.values()} == {"source"}
    clean, noisy = rows["clean"], rows["noisy"]
    assert clean["val_accuracy_without"] < noisy["val_accuracy_without"]
    assert clean["val_loss_without"] > noisy["val_loss_without"]
    assert clean["val_accuracy_only"] > noisy["val_accuracy_only"]
    assert clean["val_accuracy_without_retrained"] < noisy["val_accuracy_without_retrained"]
    assert noisy["flagged_share"] > clean["flagged_share"]
    assert "clean" in stdout and "0.0000" not in stdout
    assert (out / "figures" / "source_value_source.png").exists()

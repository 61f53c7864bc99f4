"""compare(): the table of estimates against brute-force retraining; linearization vs retraining on an MLP."""
import numpy as np
import pytest

from ntk_info.comparison import compare, correlations
from ntk_info.models import init_params, mlp
from ntk_info.training import targets


@pytest.fixture(scope="module")
def mlp_table():
    """MLP with weight decay, 40 samples, 300 GD steps: the regime where the linearization is accurate."""
    rng = np.random.default_rng(0)
    n, m, d = 40, 15, 6
    X, X_val = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    labels = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    Y, Y_val = targets(labels, kind="pm1"), targets((X_val[:, 0] > 0).astype(int), kind="pm1")
    model = mlp(num_outputs=1, width=256)
    p0 = init_params(model, (d,), seed=0)
    return compare(model.apply_fn, p0, X, Y, X_val, Y_val, lr=0.02, steps=300, weight_decay=1.0, subset_size=20,
                   methods=("linearization", "influence_exact", "mpe"), coords_per_layer=10 ** 6, progress=False)


def test_compare_returns_a_row_per_method(mlp_table):
    assert [r.method for r in mlp_table.rows] == ["linearization", "influence_exact", "mpe"]
    assert mlp_table.brute.indices.size == 20
    md = mlp_table.to_markdown()
    assert md.count("\n") == 2 + 3  # header, rule, three methods, brute force
    assert "linearization" in md and "brute force (20 removals)" in md
    assert mlp_table.row("mpe").pearson["weights"] is None  # MPE gives no weight-change estimate
    assert mlp_table.row("mpe").pearson["self"] is not None
    assert mlp_table.settings["kernel"] == "full" and mlp_table.settings["projection"] == "countsketch"


def test_linearization_row_is_the_scores_estimator():
    """compare(kernel=...) validates exactly what ntk_info.score reports with that kernel (the CLI's)."""
    import ntk_info

    model = mlp(3, width=8)
    p0 = init_params(model, (4,), seed=0)
    rng = np.random.default_rng(0)
    X, X_val = rng.normal(size=(12, 4)), rng.normal(size=(5, 4))
    Y, Y_val = np.eye(3)[np.arange(12) % 3], np.eye(3)[np.arange(5) % 3]
    table = compare(model.apply_fn, p0, X, Y, X_val, Y_val, lr=0.05, steps=20, subset_size=4, seed=1,
                    methods=("linearization",), coords_per_layer=30, kernel="trace", method="subsample",
                    progress=False)
    res = ntk_info.score(model.apply_fn, p0, X, Y, X_val, lr=0.05, steps=20, discrete=True, coords_per_layer=30,
                         seed=1, kernel="trace", method="subsample", trust_samples=0, progress=False)
    est, subset = table.row("linearization").estimates, table.brute.indices
    np.testing.assert_allclose(est["weights"], res.weight_change_sq[subset], rtol=1e-12)
    np.testing.assert_allclose(est["predictions"], res.prediction_change_sq[subset], rtol=1e-12)


def test_linearization_correlates_with_retraining_on_mlp_with_weight_decay(mlp_table):
    row = mlp_table.row("linearization")
    assert row.pearson["weights"] >= 0.95, row.pearson
    assert row.pearson["predictions"] >= 0.95, row.pearson
    assert row.pearson["self"] >= 0.95, row.pearson


def test_correlations_against_scipy_free_reference():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=30), rng.normal(size=30)
    p, s = correlations(a, b)
    ac, bc = a - a.mean(), b - b.mean()
    assert p == pytest.approx(ac @ bc / np.sqrt((ac @ ac) * (bc @ bc)), abs=1e-12)
    ra, rb = np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float)
    assert s == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-12)
    assert correlations(None, b) == (None, None)
    assert correlations(np.ones(30), b) == (None, None)


def test_compare_validates_methods():
    with pytest.raises(ValueError, match="methods"):
        compare(lambda w, x: x @ w, np.zeros((2, 1)), np.eye(2), np.ones((2, 1)), np.eye(2), np.ones((2, 1)),
                lr=0.1, steps=1, methods=("oracle",))

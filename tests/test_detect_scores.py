"""Detection scores from LOO predictions: hand-computed cases, and cleanlab on the same probabilities."""
import numpy as np
import pytest

from ntk_info import scores as S

OUT = np.array([[0.9, 0.2, 0.1],     # label 0: margin 0.7
                [0.3, 0.4, 0.5],     # label 0: margin 0.3 - 0.5 = -0.2, suggested 2
                [0.1, 0.8, 0.8],     # label 2: margin 0 (tie with class 1)
                [-1.0, 2.0, 0.5]])   # label 1: margin 1.5
LABELS = np.array([0, 0, 2, 1])


def test_loo_margin_by_hand():
    np.testing.assert_allclose(S.loo_margin(OUT, LABELS), [0.7, -0.2, 0.0, 1.5], atol=1e-15)


def test_suggested_label_by_hand():
    assert S.suggested_label(OUT).tolist() == [0, 2, 1, 1]


def test_probabilities_and_given_by_hand():
    T = 0.5
    probs = S.loo_probabilities(OUT, temperature=T)
    e = np.exp(np.array([0.3, 0.4, 0.5]) / T)
    np.testing.assert_allclose(probs[1], e / e.sum(), rtol=1e-14)
    np.testing.assert_allclose(S.loo_prob_given(probs, LABELS)[1], e[0] / e.sum(), rtol=1e-14)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-14)


def test_temperature_minimizes_loo_nll():
    rng = np.random.default_rng(0)
    out = rng.normal(size=(200, 4))
    labels = np.argmax(out + rng.normal(scale=0.7, size=out.shape), axis=1)
    T = S.loo_temperature(out, labels)

    def nll(t):
        p = S.loo_probabilities(out, temperature=t)
        return -np.mean(np.log(p[np.arange(200), labels]))

    grid = T * np.array([0.8, 0.9, 0.99, 1.01, 1.1, 1.25])
    assert all(nll(T) <= nll(t) + 1e-12 for t in grid)


def test_class_thresholds_and_confident_joint_by_hand():
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.45, 0.55]])
    labels = np.array([0, 0, 1, 1, 1])
    # t_0 = mean(0.8, 0.6) = 0.7; t_1 = mean(0.7, 0.1, 0.55) = 0.45
    np.testing.assert_allclose(S.class_thresholds(probs, labels), [0.7, 0.45], rtol=1e-14)
    # sample 1 (label 0): p_1 = 0.4 < 0.45 and p_0 = 0.6 < 0.7: not above any threshold -> not flagged
    # sample 3 (label 1): p_0 = 0.9 >= 0.7 -> flagged; sample 4: p_1 = 0.55 >= 0.45 is its own label
    assert S.confident_joint_flags(probs, labels).tolist() == [False, False, False, True, False]


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="labels"):
        S.loo_margin(OUT, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="loo_outputs"):
        S.loo_margin(OUT[:, 0], LABELS)
    with pytest.raises(ValueError, match="temperature"):
        S.loo_probabilities(OUT)


def test_same_ranking_as_cleanlab_self_confidence():
    """cleanlab's self_confidence label quality on our LOO probabilities is p(y_i): the same numbers."""
    from cleanlab.rank import get_label_quality_scores

    rng = np.random.default_rng(1)
    out = rng.normal(size=(50, 3))
    labels = rng.integers(0, 3, size=50)
    probs = S.loo_probabilities(out, labels)
    ours = S.loo_prob_given(probs, labels)
    theirs = get_label_quality_scores(labels, probs, method="self_confidence")
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_saturated_temperature_warns_and_log_probability_keeps_the_order():
    """Memorized-like LOO outputs (every left-out prediction right) give no interior optimum of T: a
    warning. At such a small T the probabilities of wrong labels all round to 0, their logarithm still
    orders them by how confidently they are wrong."""
    from ntk_info import scores

    labels = np.array([0, 1, 0, 1, 0, 1])
    out = np.zeros((6, 2))
    out[np.arange(6), labels] = np.arange(1.0, 7.0)
    with pytest.warns(RuntimeWarning, match="no interior optimum"):
        T = scores.loo_temperature(out, labels)
    wrong = np.zeros((3, 2))
    wrong[:, 1] = [1.0, 2.0, 3.0]                      # label 0, predicted 1 by growing margins
    given = np.zeros(3, dtype=int)
    probs = scores.loo_probabilities(wrong, temperature=T)
    assert np.all(probs[:, 0] == 0.0)                  # the probability has lost the order ...
    logp = scores.loo_log_prob_given(wrong, given, T)
    assert np.all(np.diff(logp) < 0)                   # ... the log-probability keeps it


def test_pooled_loo_log_prob_is_the_mean_over_points():
    """Log-linear pooling over linearization points: the mean of each point's LOO log-probability of the
    given label (each with its own LOO temperature); one point alone is that point's log-probability."""
    from types import SimpleNamespace

    from ntk_info.apps.detect import loo_detection_scores, pooled_loo_log_prob

    rng = np.random.default_rng(0)
    true = np.arange(20) % 3
    labels = true.copy()
    labels[[1, 7, 12]] = [2, 0, 1]  # three wrong labels: the LOO likelihood has an interior temperature
    Y = np.eye(3)[labels]
    points = [SimpleNamespace(loo_residuals=Y - (np.eye(3)[true] + rng.normal(scale=s, size=Y.shape)))
              for s in (0.3, 0.6, 1.0)]
    each = [loo_detection_scores(p, labels)["loo_log_prob_given"] for p in points]
    for p, e in zip(points, each):  # by hand: log softmax(f_{-i}/T)[y_i] with the point's own T
        out = Y - p.loo_residuals
        T = S.loo_temperature(out, labels)
        z = out / T
        np.testing.assert_allclose(e, z[np.arange(20), labels] - np.log(np.exp(z).sum(axis=1)), rtol=1e-12)
    np.testing.assert_allclose(pooled_loo_log_prob(points, labels), (each[0] + each[1] + each[2]) / 3, rtol=1e-12)
    np.testing.assert_allclose(pooled_loo_log_prob(points[:1], labels), each[0], rtol=1e-12)
    with pytest.raises(ValueError, match="at least one"):
        pooled_loo_log_prob([], labels)

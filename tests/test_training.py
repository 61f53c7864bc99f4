"""train(): GD/SGD on the sum-MSE loss with weight decay toward w0, against float64 closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_info.models import init_params, mlp
from ntk_info.training import pretrain_then_finetune, reinit_head, targets, train


def _linear_problem(seed, n=7, p=5, k=2):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    Y = rng.normal(size=(n, k))
    b = rng.normal(size=(k,))
    w0 = rng.normal(size=(p, k))

    def apply_fn(w, x):
        return x @ w + b

    return apply_fn, X, Y, b, w0


def _closed_form_gd(X, Y, b, w0, lr, steps, lam):
    """ω_t = (ΦᵀΦ + λI)⁻¹ (I - (I - η(ΦᵀΦ + λI))^t) Φᵀ r, r = Y - f0(X): discrete GD (SI paper App. F)."""
    H = X.T @ X + lam * np.eye(X.shape[1])
    s, U = np.linalg.eigh(H)
    r = Y - (X @ w0 + b)
    filt = (1.0 - (1.0 - lr * s) ** steps) / s
    return w0 + U @ (filt[:, None] * (U.T @ (X.T @ r)))


@pytest.mark.parametrize("lam", [0.0, 0.3, 30.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_gd_matches_closed_form_discrete_dynamics(seed, lam):
    apply_fn, X, Y, b, w0 = _linear_problem(seed)
    lmax = np.linalg.eigvalsh(X.T @ X).max() + lam
    lr, steps = 1.5 / lmax, 37
    w = train(apply_fn, jnp.asarray(w0), X, Y, lr=lr, steps=steps, weight_decay=lam)
    ref = _closed_form_gd(X, Y, b, w0, lr, steps, lam)
    np.testing.assert_allclose(np.asarray(w), ref, rtol=0, atol=1e-10 * max(1.0, np.abs(ref).max()))


def test_gd_matches_kernel_form_with_pm1_targets():
    """w_t - w0 = Φᵀ g(K + λI) r with g(u) = (1 - (1 - ηu)^t)/u, the dual (kernel) form."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6, 9))  # n < p: K is full rank, ΦᵀΦ is not
    Y = targets(np.array([4, 9, 9, 4, 4, 9]), kind="pm1")
    w0 = rng.normal(size=(9, 1))
    lam, steps = 0.7, 25
    K = X @ X.T
    lr = 1.0 / (np.linalg.eigvalsh(K).max() + lam)
    s, V = np.linalg.eigh(K + lam * np.eye(6))
    r = Y - X @ w0
    a = V @ (((1 - (1 - lr * s) ** steps) / s)[:, None] * (V.T @ r))
    w = train(lambda w, x: x @ w, jnp.asarray(w0), X, Y, lr=lr, steps=steps, weight_decay=lam)
    np.testing.assert_allclose(np.asarray(w), w0 + X.T @ a, rtol=0, atol=1e-10)


def test_sgd_with_full_batch_equals_gd():
    apply_fn, X, Y, _, w0 = _linear_problem(4)
    kw = dict(lr=0.02, steps=15, weight_decay=0.5)
    gd = train(apply_fn, jnp.asarray(w0), X, Y, **kw)
    sgd = train(apply_fn, jnp.asarray(w0), X, Y, batch_size=X.shape[0], seed=3, **kw)
    np.testing.assert_allclose(np.asarray(sgd), np.asarray(gd), rtol=0, atol=1e-12)


def test_sgd_step_is_unbiased_for_the_full_gradient():
    """One SGD step from w0 with b < n, averaged over seeds, is the GD step (data gradient rescaled by n/b)."""
    apply_fn, X, Y, _, w0 = _linear_problem(5, n=6)
    kw = dict(lr=0.05, steps=1, weight_decay=0.0)
    start = jnp.asarray(w0 + 0.1)
    gd = np.asarray(train(apply_fn, jnp.asarray(w0), X, Y, start_params=start, **kw))
    steps = np.stack([np.asarray(train(apply_fn, jnp.asarray(w0), X, Y, start_params=start, batch_size=2,
                                       seed=s, **kw)) for s in range(400)])
    mean, se = steps.mean(0), steps.std(0) / np.sqrt(len(steps))
    assert np.all(np.abs(mean - gd) < 5 * se + 1e-12)
    assert np.max(np.abs(steps[0] - gd)) > 1e-6  # a real minibatch, not the full batch


def test_weight_decay_pulls_toward_init_not_zero():
    """With every sample weight 0 only the decay acts: w_t - w0 = (1 - ηλ)^t (w_start - w0)."""
    apply_fn, X, Y, _, w0 = _linear_problem(6)
    start = w0 + np.random.default_rng(0).normal(size=w0.shape)
    lr, lam, steps = 0.01, 3.0, 20
    w = train(apply_fn, jnp.asarray(w0), X, Y, lr=lr, steps=steps, weight_decay=lam,
              sample_weights=np.zeros(X.shape[0]), start_params=jnp.asarray(start))
    np.testing.assert_allclose(np.asarray(w), w0 + (1 - lr * lam) ** steps * (start - w0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("batch_size", [None, 8])
def test_zero_sample_weight_equals_removal(batch_size):
    """m_i = 0 trains exactly as without sample i, even with the removed target multiplied by 1000."""
    apply_fn, X, Y, _, w0 = _linear_problem(7, n=8)
    i = 3
    Y_big = Y.copy()
    Y_big[i] *= 1000.0
    mask = np.ones(8)
    mask[i] = 0.0
    kw = dict(lr=0.02, steps=12, weight_decay=0.1)
    masked = train(apply_fn, jnp.asarray(w0), X, Y_big, sample_weights=mask, batch_size=batch_size, **kw)
    keep = np.arange(8) != i
    removed = train(apply_fn, jnp.asarray(w0), X[keep], Y[keep], **kw)
    np.testing.assert_allclose(np.asarray(masked), np.asarray(removed), rtol=0, atol=1e-12)


def test_real_mlp_gd_decreases_loss_and_matches_a_python_loop():
    model = mlp(num_outputs=2, width=16)
    X = np.random.default_rng(0).normal(size=(10, 4))
    Y = targets(np.arange(10) % 2, 2)
    p0 = init_params(model, (4,), seed=0)
    p = train(model.apply_fn, p0, X, Y, lr=0.05, steps=30, weight_decay=0.1)
    loss = lambda q: 0.5 * np.sum((np.asarray(model.apply_fn(q, X)) - Y) ** 2)
    assert loss(p) < 0.5 * loss(p0)
    # reference: 30 explicit GD steps in a Python loop (one jitted gradient per step)
    grad = jax.jit(jax.grad(lambda q: 0.5 * jnp.sum((model.apply_fn(q, X) - Y) ** 2)
                    + 0.05 * sum(jnp.sum((a - b) ** 2) for a, b in
                                 zip(jax.tree_util.tree_leaves(q), jax.tree_util.tree_leaves(p0)))))
    q = p0
    for _ in range(30):
        q = jax.tree_util.tree_map(lambda a, g: a - 0.05 * g, q, grad(q))
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(q)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12)


def test_targets():
    np.testing.assert_array_equal(targets(np.array([0, 2, 1]), 3), np.eye(3)[[0, 2, 1]])
    np.testing.assert_array_equal(targets(np.array([4, 9, 4]), kind="pm1"), [[-1.0], [1.0], [-1.0]])
    with pytest.raises(ValueError, match="labels"):
        targets(np.array([0, 5]), 3)
    with pytest.raises(ValueError, match="kind"):
        targets(np.array([0, 1]), kind="soft")


def test_reinit_head_and_pretrain_keep_the_body():
    pre, fine = mlp(num_outputs=3, width=8), mlp(num_outputs=1, width=8)
    X = np.random.default_rng(1).normal(size=(9, 5))
    Y = targets(np.arange(9) % 3, 3)
    p = pretrain_then_finetune(pre, fine, X, Y, lr=0.05, steps=5, seed=2)
    p_pre = train(pre.apply_fn, init_params(pre, (5,), seed=2), X, Y, lr=0.05, steps=5)
    np.testing.assert_allclose(np.asarray(p[1][0]), np.asarray(p_pre[1][0]), atol=0)  # body: trained
    fresh = init_params(fine, (5,), seed=3)
    np.testing.assert_allclose(np.asarray(p[3][0]), np.asarray(fresh[3][0]), atol=0)  # head: fresh
    assert fine.apply_fn(p, X).shape == (9, 1)
    assert reinit_head(fine, fresh, seed=3, input_shape=(5,))[3][0].shape == (8, 1)


def test_input_validation_names_the_argument():
    apply_fn, X, Y, _, w0 = _linear_problem(8)
    with pytest.raises(ValueError, match="Y"):
        train(apply_fn, jnp.asarray(w0), X, Y[:-1], lr=0.1, steps=1)
    with pytest.raises(ValueError, match="lr"):
        train(apply_fn, jnp.asarray(w0), X, Y, lr=-1.0, steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        train(apply_fn, jnp.asarray(w0), X, Y, lr=0.1, steps=1, batch_size=100)
    with pytest.raises(ValueError, match="sample_weights"):
        train(apply_fn, jnp.asarray(w0), X, Y, lr=0.1, steps=1, sample_weights=np.ones(3))
    with pytest.raises(ValueError, match="weight_decay"):
        train(apply_fn, jnp.asarray(w0), X, Y, lr=0.1, steps=1, weight_decay=-1.0)

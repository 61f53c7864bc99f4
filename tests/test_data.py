"""Loaders (bundled, npz, csv, idx, idx.gz), label noise and FGSM, on small files written here."""
import gzip
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from ntk_info.data import DATASET_NAMES, add_label_noise, fgsm, load_dataset, read_idx


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_bundled_sets_split_and_scale(name):
    data = load_dataset(name, val_fraction=0.25, seed=1)
    n_total = data.X.shape[0] + data.X_val.shape[0]
    assert abs(data.X_val.shape[0] - 0.25 * n_total) <= 1
    assert set(np.unique(data.y)) == set(range(data.num_classes))
    if name == "digits":
        assert data.image_shape == (8, 8, 1) and data.X.shape[1:] == (8, 8, 1)
        assert data.X.min() >= 0 and data.X.max() <= 1
    else:
        assert data.image_shape is None
        np.testing.assert_allclose(data.X.mean(axis=0), 0, atol=1e-10)


def test_digits_classes_and_n_train():
    data = load_dataset("digits", classes=[4, 9], n_train=100, seed=0)
    assert data.X.shape[0] == 100 and data.class_names == ("4", "9")
    assert np.bincount(data.y).tolist() == [50, 50]


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="digits, breast-cancer, iris, wine"):
        load_dataset("mnist-please")


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


def test_npz_images_with_validation_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(12, 5, 4)).astype(np.uint8)
    y = np.array(["cat", "dog"] * 6)
    src = np.array(["a", "b", "c"] * 4)
    path = _npz(tmp_path, X=X, y=y, X_val=X[:4], y_val=y[:4], source=src, group=src)
    data = load_dataset(path)
    assert data.image_shape == (5, 4, 1) and data.class_names == ("cat", "dog")
    np.testing.assert_allclose(data.X[..., 0], X / 255.0)
    np.testing.assert_array_equal(data.y, (y == "dog").astype(int))
    np.testing.assert_array_equal(data.source, src)
    assert data.X_val.shape == (4, 5, 4, 1)


@pytest.mark.parametrize("arrays, message", [
    ({"X": np.zeros((4, 2))}, "missing array 'y'"),
    ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 0])}, "'y' has 3 entries but X has 4"),
    ({"X": np.array([[0.0], [np.nan], [1.0], [2.0]]), "y": np.array([0, 1, 0, 1])}, "'X' contains NaN.*sample 1"),
    ({"X": np.zeros((4, 2)), "y": np.zeros(4)}, "single class"),
    ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "source": np.array(["a"])}, "'source' has 1 entries"),
    ({"X": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "extra": np.zeros(2)}, "unexpected arrays"),
])
def test_npz_errors_name_the_array(tmp_path, arrays, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(_npz(tmp_path, **arrays))


def test_corrupt_npz(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset(str(path))


def _csv(tmp_path, text):
    path = tmp_path / "d.csv"
    path.write_text(text)
    return str(path)


def test_csv_with_label_source_and_group(tmp_path):
    lines = ["f1,f2,y,src,grp"] + [f"{i},{2 * i % 5},{i % 2},s{i % 3},g{i % 2}" for i in range(20)]
    data = load_dataset(_csv(tmp_path, "\n".join(lines)), label_column="y", source_column="src",
                        group_column="grp", val_fraction=0.2)
    assert data.X.shape == (16, 2) and data.X_val.shape == (4, 2)
    assert set(data.source) <= {"s0", "s1", "s2"} and set(data.group) <= {"g0", "g1"}
    np.testing.assert_allclose(data.X.std(axis=0), 1)


def test_csv_errors(tmp_path):
    good = "a,label\n1,0\n2,1\n3,0\n4,1\n"
    with pytest.raises(ValueError, match="no column 'target'.*label_column"):
        load_dataset(_csv(tmp_path, good), label_column="target")
    with pytest.raises(ValueError, match="column 'a', line 3: 'x' is not a number"):
        load_dataset(_csv(tmp_path, "a,label\n1,0\nx,1\n3,0\n4,1\n"))
    with pytest.raises(ValueError, match="line 3 has 3 fields"):
        load_dataset(_csv(tmp_path, "a,label\n1,0\n2,1,5\n"))


def _idx_bytes(arr):
    code = {np.uint8: 0x08}[arr.dtype.type]
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_images_and_labels(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 6, 6)).astype(np.uint8)
    labels = np.array([3, 7] * 10, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    opener = gzip.open if gz else open
    img_path, lab_path = tmp_path / f"train-images-idx3-ubyte{suffix}", tmp_path / f"train-labels-idx1-ubyte{suffix}"
    with opener(img_path, "wb") as f:
        f.write(_idx_bytes(images))
    with opener(lab_path, "wb") as f:
        f.write(_idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(str(img_path)), images)
    data = load_dataset(str(img_path), val_fraction=0.5)  # label file found as the sibling
    assert data.image_shape == (6, 6, 1) and data.class_names == ("3", "7")
    assert data.X.shape[0] + data.X_val.shape[0] == 20 and data.X.max() <= 1


def test_idx_errors(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad magic number"):
        read_idx(str(bad))
    short = tmp_path / "s-idx3-ubyte"
    short.write_bytes(_idx_bytes(np.zeros((2, 3, 3), np.uint8))[:-1])
    with pytest.raises(ValueError, match="has 17 bytes.*need 18"):
        read_idx(str(short))
    with pytest.raises(ValueError, match="label file"):
        load_dataset(str(short))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_noise_flips_exactly_rate_n_to_other_classes(seed):
    y = np.arange(500) % 5
    noisy, is_noisy, true = add_label_noise(y, 0.1, 5, seed=seed)
    assert is_noisy.sum() == 50
    np.testing.assert_array_equal(true, y)
    assert (noisy[is_noisy] != y[is_noisy]).all() and (noisy[~is_noisy] == y[~is_noisy]).all()
    assert len(set(((noisy - y) % 5)[is_noisy])) == 4  # every other class is reachable


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_label_noise_rate_refused(rate):
    with pytest.raises(ValueError, match=r"noise rate: expected a number in \[0, 1\)"):
        add_label_noise(np.array([0, 1, 0, 1]), rate, 2)


def test_fgsm_matches_the_formula_and_keeps_only_successes():
    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.normal(size=(4, 3)))
    X = rng.uniform(size=(40, 4))
    y = np.asarray(jnp.argmax(X @ W, axis=1))  # the model is right everywhere before the attack
    apply_fn = lambda w, x: x.reshape(x.shape[0], -1) @ w  # noqa: E731
    res = fgsm(apply_fn, W, X, y, num_classes=3, eps=0.2, fraction=0.25, seed=0)
    # brute force: grad_x ½||xW - e_y||² = W (xW - e_y)
    grad = (X @ np.asarray(W) - np.eye(3)[y]) @ np.asarray(W).T
    x_adv = np.clip(X + 0.2 * np.ptp(X) * np.sign(grad), X.min(), X.max())  # ε is a fraction of X's range
    success = np.argmax(x_adv @ np.asarray(W), axis=1) != y
    adv = res.is_adversarial
    assert 0 < adv.sum() <= 10 and success[adv].all()
    np.testing.assert_allclose(res.X[adv], x_adv[adv])
    np.testing.assert_array_equal(res.X[~adv], X[~adv])
    assert 0 < res.success_rate <= 1 and res.attempted >= adv.sum()
    if adv.sum() < 10:  # fewer successes than wanted: every sample was tried
        assert res.attempted == 40 and np.isclose(res.success_rate, success.mean())

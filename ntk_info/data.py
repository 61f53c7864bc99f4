"""Datasets for scoring: scikit-learn's bundled sets, ``.npz``, ``.csv`` and MNIST idx files; label noise; FGSM.

Every loader returns a :class:`Dataset` with integer labels ``0..C-1`` and a held-out validation split.
Images are NHWC floats in [0, 1] and keep ``image_shape`` (H, W, C) so the report can draw them;
tabular features are standardized with the training split's mean and standard deviation.
Nothing here is downloaded: MNIST (idx) and other sets are read from files a user already has.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import os
from typing import Any, Callable

import numpy as np

__all__ = ["Dataset", "load_dataset", "DATASET_NAMES", "CSV_DELIMITERS", "read_idx", "add_label_noise", "fgsm",
           "AdversarialResult"]

DATASET_NAMES = ("digits", "breast-cancer", "iris", "wine")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Training and validation arrays plus per-sample metadata.

    X (n, ...) float inputs; y (n,) int labels in [0, C); X_val, y_val the validation split;
    source, group (n,) string arrays or None (where each sample comes from; e.g. a subclass);
    class_names (C,) strings; image_shape (H, W, C) when inputs are images, else None.
    Bookkeeping back to the user's data: ``rows`` (n,) / ``rows_val`` 0-based rows of X / X_val in the
    user's arrays (for a CSV: data rows, header not counted); ``val_array`` names the array that
    ``rows_val`` index ("X" when the validation split was held out of X, "X_val" when the file has
    one); ``label_values`` (C,) every class as the user wrote it (``y`` code c is ``label_values[c]``).
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    class_names: tuple
    image_shape: tuple | None = None
    source: np.ndarray | None = None
    group: np.ndarray | None = None
    rows: np.ndarray | None = None
    rows_val: np.ndarray | None = None
    val_array: str = "X"
    label_values: tuple | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------- validation


def _check_arrays(where, X, y, source=None, group=None, X_val=None, y_val=None):
    """Refuse mismatched lengths, non-finite inputs and single-class labels, naming the array at fault."""
    n = X.shape[0]
    for name, arr in (("y", y), ("source", source), ("group", group)):
        if arr is not None and arr.shape[:1] != (n,):
            raise ValueError(f"{where}: '{name}' has {arr.shape[0] if arr.ndim else 0} entries but X has {n} "
                             "samples; every per-sample array needs one entry per row of X")
    if (X_val is None) != (y_val is None):
        raise ValueError(f"{where}: give both 'X_val' and 'y_val' or neither")
    if X_val is not None:
        if X_val.shape[0] != y_val.shape[0]:
            raise ValueError(f"{where}: 'y_val' has {y_val.shape[0]} entries but 'X_val' has {X_val.shape[0]}")
        if X_val.shape[1:] != X.shape[1:]:
            raise ValueError(f"{where}: 'X_val' samples have shape {X_val.shape[1:]}, 'X' samples {X.shape[1:]}")
    for name, arr in (("X", X), ("X_val", X_val)):
        if arr is None:
            continue
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{where}: '{name}' must be numeric, got dtype {arr.dtype}")
        if not np.isfinite(np.sum(arr, dtype=np.float64)):
            bad = np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)))[0]
            raise ValueError(f"{where}: '{name}' contains NaN or infinite values (first at sample {bad[0]}, "
                             f"feature {bad[1]}); drop or impute them first")
    if np.unique(y).size < 2:
        raise ValueError(f"{where}: 'y' has a single class ({np.unique(y)}); classification needs at least two")


def _encode_labels(y, y_val=None):
    """Map arbitrary label values to 0..C-1 (sorted); return (codes, codes_val, class_names)."""
    classes = np.unique(y if y_val is None else np.concatenate([y, y_val]))
    codes = np.searchsorted(classes, y)
    codes_val = None if y_val is None else np.searchsorted(classes, y_val)
    return codes.astype(np.int64), codes_val, tuple(str(c) for c in classes)


def _split(n, val_fraction, seed, y):
    """Stratified train/validation index split."""
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction}")
    return train_test_split(np.arange(n), test_size=val_fraction, random_state=seed, stratify=y)


def _finish(name, X, y, X_val, y_val, source, group, image_shape, *, val_fraction, seed, n_train, classes):
    """Common tail of every loader: validate, encode labels, keep classes, split, subsample, scale."""
    X = np.asarray(X)
    y = np.asarray(y)
    X_val = None if X_val is None else np.asarray(X_val)
    y_val = None if y_val is None else np.asarray(y_val)
    source = None if source is None else np.asarray(source).astype(str)
    group = None if group is None else np.asarray(group).astype(str)
    _check_arrays(name, X, y, source, group, X_val, y_val)
    rows = np.arange(X.shape[0])
    rows_val, val_array = (None, "X") if X_val is None else (np.arange(X_val.shape[0]), "X_val")
    if classes is not None:
        keep_values = [type(y.flat[0])(c) if y.dtype.kind in "iuf" else str(c) for c in classes]
        missing = [c for c in keep_values if c not in set(y.tolist())]
        if missing:
            raise ValueError(f"classes: {missing} not among the labels {sorted(set(y.tolist()))}")
        keep = np.isin(y, keep_values)
        X, y, rows = X[keep], y[keep], rows[keep]
        source = None if source is None else source[keep]
        group = None if group is None else group[keep]
        if X_val is not None:
            keep_val = np.isin(y_val, keep_values)
            X_val, y_val, rows_val = X_val[keep_val], y_val[keep_val], rows_val[keep_val]
        _check_arrays(name, X, y)
    if X_val is None:
        train_idx, val_idx = _split(X.shape[0], val_fraction, seed, y)
        X_val, y_val, rows_val = X[val_idx], y[val_idx], rows[val_idx]
        X, y, rows = X[train_idx], y[train_idx], rows[train_idx]
        source = None if source is None else source[train_idx]
        group = None if group is None else group[train_idx]
    y, y_val, class_names = _encode_labels(y, y_val)
    if n_train is not None:
        if not (isinstance(n_train, (int, np.integer)) and len(class_names) <= n_train):
            raise ValueError(f"n_train: expected an integer >= the number of classes ({len(class_names)}), "
                             f"got {n_train!r}")
        if n_train < X.shape[0]:
            from sklearn.model_selection import train_test_split

            idx, _ = train_test_split(np.arange(X.shape[0]), train_size=int(n_train), random_state=seed, stratify=y)
            idx = np.sort(idx)
            X, y, rows = X[idx], y[idx], rows[idx]
            source = None if source is None else source[idx]
            group = None if group is None else group[idx]
    X = X.astype(np.float64)
    X_val = X_val.astype(np.float64)
    if image_shape is None:
        mean, std = X.mean(axis=0), X.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        X, X_val = (X - mean) / std, (X_val - mean) / std
    return Dataset(name, X, y, X_val, y_val, class_names, image_shape, source, group, rows=rows, rows_val=rows_val,
                   val_array=val_array, label_values=class_names)


def _as_images(X):
    """(n, H, W) -> (n, H, W, 1); (n, H, W, C) stays; anything else is not an image batch."""
    if X.ndim == 3:
        X = X[..., None]
    return X, (tuple(X.shape[1:]) if X.ndim == 4 else None)


# ----------------------------------------------------------------------------- loaders


def _load_sklearn(name):
    from sklearn import datasets

    if name == "digits":
        d = datasets.load_digits()
        return d.images / 16.0, d.target, tuple(str(c) for c in d.target_names)
    loader = {"breast-cancer": datasets.load_breast_cancer, "iris": datasets.load_iris,
              "wine": datasets.load_wine}[name]
    d = loader()
    return d.data, d.target, tuple(str(c) for c in d.target_names)


_NPZ_ARRAYS = ("X", "y", "X_val", "y_val", "source", "group")


def _npz_array(path, f, name):
    """One array of an open .npz, refusing what would be silently wrong downstream (named in the message)."""
    try:
        arr = f[name]
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise ValueError(f"{path}: array '{name}' cannot be read ({err})") from err
        raise ValueError(f"{path}: array '{name}' holds Python objects (dtype=object), which are not loaded "
                         "(unpickling runs code); save numbers as a numeric array (np.asarray(a, dtype=float)) and "
                         "names as strings (np.asarray(a, dtype=str))") from None
    if arr.size == 0:
        raise ValueError(f"{path}: array '{name}' is empty (shape {arr.shape}); every array needs at least one sample")
    if name in ("X", "X_val"):
        if np.iscomplexobj(arr):
            raise ValueError(f"{path}: array '{name}' is complex ({arr.dtype}); the model needs real inputs: keep "
                             "np.real(X), or stack the real and imaginary parts as features "
                             "(np.concatenate([X.real, X.imag], axis=1))")
        if arr.ndim == 1:
            raise ValueError(f"{path}: array '{name}' is 1-D (shape {arr.shape}); it needs one row per sample: "
                             f"{name}[:, None] for one feature per sample, or {name}.reshape(n, -1)")
    if name in ("y", "y_val"):
        if arr.ndim != 1:
            raise ValueError(f"{path}: array '{name}' must be 1-D class labels, got shape {arr.shape}")
        if arr.dtype.kind == "c":
            raise ValueError(f"{path}: array '{name}' is complex ({arr.dtype}); labels are classes (integers or names)")
        if arr.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
            if bad.size:
                example = arr[bad[0]].item()
                raise ValueError(f"{path}: array '{name}' has {bad.size} non-integer values (e.g. {example!r} at "
                                 f"index {bad[0]}); labels are classes: store integers (or names) — regression "
                                 "targets are not supported")
            arr = arr.astype(np.int64)  # 1.0 and 1 are one class
    return arr


def _load_npz(path):
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for a corrupt archive
        raise ValueError(f"{path}: not a readable .npz archive ({err})") from err
    with f:
        for required in ("X", "y"):
            if required not in f.files:
                raise ValueError(f"{path}: missing array '{required}' (found {sorted(f.files)}); an .npz dataset needs "
                                 "'X' (n, ...) and 'y' (n,), optionally 'X_val', 'y_val', 'source', 'group'")
        unknown = set(f.files) - set(_NPZ_ARRAYS)
        if unknown:
            raise ValueError(f"{path}: unexpected arrays {sorted(unknown)}; allowed: {', '.join(_NPZ_ARRAYS)}")
        return {name: _npz_array(path, f, name) for name in f.files}


CSV_DELIMITERS = (",", ";", "\t", "|")


def _read_text(path):
    """The file as text: UTF-8, a byte-order mark stripped; other encodings are refused with the position."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise ValueError(f"{path}: cannot read the file ({err.strerror})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(f"{path}: the file is UTF-16 text; save it as UTF-8 (e.g. `iconv -f utf-16 -t utf-8`)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); save the file as "
                         "UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv` for a Latin-1 file") from None


def _detect_delimiter(lines):
    """The delimiter of ``CSV_DELIMITERS`` that splits the first lines into equally many (> 1) fields, most
    fields first; ',' when none does (the field-count check then names the line)."""
    best, most = ",", 1
    for delimiter in CSV_DELIMITERS:
        counts = {len(row) for row in csv.reader(lines[:50], delimiter=delimiter)}
        if len(counts) == 1 and max(counts) > most:
            best, most = delimiter, max(counts)
    return best


def _csv_labels(path, column, values):
    """Class labels of a CSV column: integers when every value is a whole number ("1" and "1.0" are one
    class), else names; non-integer numbers, empty and missing labels are refused."""
    for r, value in enumerate(values):
        if value == "":
            raise ValueError(f"{path}: column '{column}', line {r + 2}: empty label; every row needs a class")
    try:
        numbers = np.array([float(v) for v in values])
    except ValueError:
        numbers = None
    if numbers is not None:
        bad = np.flatnonzero(~np.isfinite(numbers) | (numbers != np.round(numbers)))
        if bad.size:
            raise ValueError(f"{path}: column '{column}', line {bad[0] + 2}: label {values[bad[0]]!r} is not a whole "
                             "number; labels are classes: write integers or names (regression targets are not "
                             "supported)")
        return numbers.astype(np.int64)
    spellings = {}
    for value in set(values):
        try:
            spellings.setdefault(float(value), set()).add(value)
        except ValueError:
            pass
    clash = next((sorted(v) for v in spellings.values() if len(v) > 1), None)
    if clash:
        raise ValueError(f"{path}: column '{column}': labels {clash} are one number written differently and would "
                         "be different classes; write each class one way")
    return np.array(values)


def _load_csv(path, label_column, source_column, group_column, delimiter=None):
    if delimiter is not None and not (isinstance(delimiter, str) and len(delimiter) == 1):
        raise ValueError(f"delimiter: expected one character (e.g. ',', ';' or a tab), got {delimiter!r}")
    lines = _read_text(path).splitlines()
    delimiter = delimiter or _detect_delimiter([line for line in lines if line.strip()])
    rows = list(csv.reader(lines, delimiter=delimiter))
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header row and at least one data row, got {len(rows)} rows")
    header = [h.strip() for h in rows[0]]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        where = {h: [j + 1 for j, x in enumerate(header) if x == h] for h in repeated}
        raise ValueError(f"{path}: duplicate column names {', '.join(f'{h!r} (columns {where[h]})' for h in repeated)}"
                         "; rename them so that every column has its own name")
    for option, column in (("label_column", label_column), ("source_column", source_column),
                           ("group_column", group_column)):
        if column is not None and column not in header:
            raise ValueError(f"{path}: no column '{column}' (given as {option}); columns are {header} "
                             f"(delimiter {delimiter!r})")
    data = rows[1:]
    for r, row in enumerate(data, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}: line {r} has {len(row)} fields, the header has {len(header)} "
                             f"(delimiter {delimiter!r}; pass delimiter= / --delimiter if it is another one)")
    columns = {h: [row[j].strip() for row in data] for j, h in enumerate(header)}
    special = {label_column, source_column, group_column} - {None}
    feature_names = [h for h in header if h not in special]
    if not feature_names:
        raise ValueError(f"{path}: no feature columns besides {sorted(special)}")
    X = np.empty((len(data), len(feature_names)))
    for j, h in enumerate(feature_names):
        for r, value in enumerate(columns[h]):
            try:
                X[r, j] = float(value)
            except ValueError:
                raise ValueError(f"{path}: column '{h}', line {r + 2}: {value!r} is not a number; non-numeric "
                                 "columns must be named with --label-column/--source-column/--group-column "
                                 "or removed") from None
    labels = _csv_labels(path, label_column, columns[label_column])
    source = None if source_column is None else np.array(columns[source_column])
    group = None if group_column is None else np.array(columns[group_column])
    return X, labels, source, group


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an MNIST-style idx file (``.gz`` allowed): magic 0 0 <dtype> <ndim>, big-endian int32 dims, data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read idx file ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number {raw[:4].hex() or 'empty'}; expected "
                         "00 00 <dtype 08-0e> <ndim>)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: idx header truncated (needs {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], ">i4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: idx data has {len(raw) - header} bytes, dimensions {dims} need {expected}")
    return np.frombuffer(raw[header:], dtype).reshape(dims)


def _idx_labels_path(path):
    """Sibling label file of an idx image file: 'images' -> 'labels' and 'idx3' -> 'idx1' in the name."""
    head, base = os.path.split(path)
    guess = base.replace("images", "labels").replace("idx3", "idx1")
    return os.path.join(head, guess) if guess != base else None


def load_dataset(name_or_path: str, *, labels: str | None = None, val_fraction: float = 0.3, seed: int = 0,
                 n_train: int | None = None, classes=None, label_column: str = "label",
                 source_column: str | None = None, group_column: str | None = None,
                 delimiter: str | None = None) -> Dataset:
    """Load a dataset by name (``digits``, ``breast-cancer``, ``iris``, ``wine``) or from a file.

    Files: ``.npz`` with arrays X, y (optional X_val, y_val, source, group); ``.csv`` with a header, a
    ``label_column`` and optional ``source_column``/``group_column`` (every other column a numeric
    feature; UTF-8, a byte-order mark is skipped; ``delimiter`` one of ``CSV_DELIMITERS`` detected from
    the first lines unless given; labels that are all whole numbers are integers, so "1" and "1.0" are
    one class); MNIST idx images (``*-idx3-ubyte``, optionally ``.gz``) with ``labels`` the idx1 label file
    (default: the sibling whose name has 'labels'/'idx1' for 'images'/'idx3'). Without a validation
    split in the file, a stratified ``val_fraction`` of the samples is held out (``seed``). ``classes``
    keeps only those labels (e.g. ``[4, 9]``); ``n_train`` subsamples the training split (stratified).
    Images are scaled to [0, 1] (idx bytes / 255, digits / 16); tabular features are standardized.
    """
    opts = dict(val_fraction=val_fraction, seed=seed, n_train=n_train, classes=classes)
    if name_or_path in DATASET_NAMES:
        X, y, names = _load_sklearn(name_or_path)
        X, image_shape = _as_images(X) if X.ndim == 3 else (X, None)
        data = _finish(name_or_path, X, y, None, None, None, None, image_shape, **opts)
        if classes is None:
            data = dataclasses.replace(data, class_names=names)
        return data
    path = str(name_or_path)
    if not os.path.exists(path):
        raise ValueError(f"unknown dataset {path!r} (no such file); valid names: {', '.join(DATASET_NAMES)}, "
                         "or a path to an .npz, .csv or idx file")
    base = os.path.basename(path)
    if base.endswith(".npz"):
        a = _load_npz(path)
        X, image_shape = _as_images(a["X"]) if a["X"].ndim in (3, 4) else (a["X"], None)
        X_val = a.get("X_val")
        if X_val is not None and image_shape is not None:
            X_val, _ = _as_images(X_val)
        if image_shape is not None and X.dtype == np.uint8:
            X, X_val = X / 255.0, (None if X_val is None else X_val / 255.0)
        return _finish(path, X, a["y"], X_val, a.get("y_val"), a.get("source"), a.get("group"), image_shape, **opts)
    if base.endswith(".csv"):
        X, y, source, group = _load_csv(path, label_column, source_column, group_column, delimiter)
        return _finish(path, X, y, None, None, source, group, None, **opts)
    if "idx" in base:
        labels = labels or _idx_labels_path(path)
        if labels is None or not os.path.exists(labels):
            raise ValueError(f"{path}: idx images need a label file; pass labels= (CLI: --labels) with the "
                             f"idx1-ubyte labels (looked for {labels!r})")
        images, y = read_idx(path), read_idx(labels)
        if images.ndim != 3:
            raise ValueError(f"{path}: idx images must have 3 dimensions (n, H, W), got {images.shape}")
        if y.ndim != 1:
            raise ValueError(f"{labels}: idx labels must have 1 dimension, got {y.shape}")
        X, image_shape = _as_images(images.astype(np.float64) / 255.0)
        return _finish(path, X, y.astype(np.int64), None, None, None, None, image_shape, **opts)
    raise ValueError(f"dataset {path!r}: unknown file type; expected .npz, .csv or an idx file "
                     "(name containing 'idx', optionally .gz)")


# ----------------------------------------------------------------------------- corruption


def add_label_noise(y, rate: float, num_classes: int, seed: int = 0):
    """Uniform label noise: round(rate·n) samples get a label drawn uniformly from the *other* classes.

    Returns (noisy_y, is_noisy, true_y); every flagged sample really is wrong (SI paper §6: 10 % noise).
    """
    y = np.asarray(y)
    if not (isinstance(rate, (int, float, np.floating)) and 0 <= rate < 1):
        raise ValueError(f"noise rate: expected a number in [0, 1), got {rate!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes: label noise needs at least 2 classes, got {num_classes}")
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise ValueError(f"y: expected 1-D labels in [0, {num_classes}), got shape {y.shape}")
    rng = np.random.default_rng(seed)
    flip = rng.choice(y.size, size=int(round(rate * y.size)), replace=False)
    noisy = y.copy()
    shift = rng.integers(1, num_classes, size=flip.size)
    noisy[flip] = (y[flip] + shift) % num_classes
    is_noisy = np.zeros(y.size, bool)
    is_noisy[flip] = True
    return noisy, is_noisy, y.copy()


@dataclasses.dataclass(frozen=True)
class AdversarialResult:
    """X with the successful adversarial versions in place; is_adversarial marks them.

    success_rate = successes / attempted (the paper kept only successful ones); step = ε·(range of X)
    the size of the signed-gradient step in X's units; clip the (low, high) box used, or None.
    """

    X: np.ndarray
    is_adversarial: np.ndarray
    attempted: int
    success_rate: float
    eps: float
    step: float
    clip: tuple | None


def fgsm(apply_fn: Callable, params: Any, X, y, *, num_classes: int, eps: float = 0.01, fraction: float = 0.1,
         seed: int = 0, clip="data", batch_size: int = 256) -> AdversarialResult:
    """FGSM (Goodfellow et al. 2015): x_adv = clip(x + ε·R·sign(∇_x ½||f(x) - e_y||²)) for a random fraction.

    R = max(X) - min(X) is the range of the data, so ε is a fraction of it: on [0, 1] images R = 1 and
    this is the SI paper's attack (§6, ε = 0.01); images stored as 0..255 or x1e6, and standardized
    tabular data, get the same relative step. ``clip``: "data" (default) keeps x_adv inside the data's
    own range [min(X), max(X)]; a (low, high) pair clips to that box; None does not clip.
    Samples are attacked in a random order (``seed``) until ``fraction``·n successes (the prediction
    argmax differs from ``y``) or every sample was tried; only successes replace their input.
    """
    import jax
    import jax.numpy as jnp

    X = np.asarray(X)
    y = np.asarray(y)
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a finite ε > 0, got {eps}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"y: expected {X.shape[0]} labels, got shape {y.shape}")
    low, high = float(X.min()), float(X.max())
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ValueError(f"X: FGSM needs finite inputs that vary (range [{low}, {high}])")
    if isinstance(clip, str) and clip == "data":
        clip = (low, high)
    elif clip is not None:
        clip = (float(clip[0]), float(clip[1]))
    step = eps * (high - low)

    def loss(x, target):
        return 0.5 * jnp.sum((apply_fn(params, x[None])[0] - target) ** 2)

    @jax.jit
    def attack(xb, yb):
        targets = jax.nn.one_hot(yb, num_classes, dtype=xb.dtype)
        grads = jax.vmap(jax.grad(loss))(xb, targets)
        x_adv = xb + step * jnp.sign(grads)
        if clip is not None:
            x_adv = jnp.clip(x_adv, clip[0], clip[1])
        pred = jnp.argmax(apply_fn(params, x_adv).reshape(xb.shape[0], -1), axis=1)
        return x_adv, pred != yb

    order = np.random.default_rng(seed).permutation(X.shape[0])
    wanted = int(round(fraction * X.shape[0]))
    X_out, is_adv, attempted = X.copy(), np.zeros(X.shape[0], bool), 0
    for start in range(0, X.shape[0], batch_size):
        idx = order[start:start + batch_size]
        x_adv, ok = attack(jnp.asarray(X[idx]), jnp.asarray(y[idx]))
        x_adv, ok = np.asarray(x_adv), np.asarray(ok)
        need = wanted - int(is_adv.sum())
        chosen = np.flatnonzero(ok)[:need]
        # count attempts up to the last success that was needed (the rest of the batch was not needed)
        attempted += int(chosen[-1]) + 1 if chosen.size == need and need > 0 else idx.size
        X_out[idx[chosen]] = x_adv[chosen]
        is_adv[idx[chosen]] = True
        if is_adv.sum() >= wanted:
            break
    return AdversarialResult(X_out, is_adv, attempted, float(is_adv.sum() / max(attempted, 1)), float(eps),
                             float(step), clip)

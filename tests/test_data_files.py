"""File readers (issue 9 §4): CSV encodings, delimiters, duplicate columns, label spellings; npz arrays that
would be silently wrong. One test per case, on files written here."""
import numpy as np
import pytest

from ntk_info.data import load_dataset


def _rows(n=20, delimiter=","):
    rng = np.random.default_rng(0)
    lines = [delimiter.join(["f0", "f1", "label"])]
    for i in range(n):
        lines.append(delimiter.join([f"{rng.normal():.3f}", f"{rng.normal():.3f}", str(i % 2)]))
    return lines


def _write(tmp_path, text, encoding="utf-8", name="d.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_csv_utf8_bom_is_stripped(tmp_path):
    lines = ["label,f0,f1"] + [f"{i % 2},{i},{-i}" for i in range(20)]  # the BOM sits before 'label'
    path = _write(tmp_path, "\ufeff" + "\n".join(lines) + "\n")
    data = load_dataset(path)
    assert data.num_classes == 2 and data.X.shape[1] == 2


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_csv_delimiter_is_detected(tmp_path, delimiter):
    path = _write(tmp_path, "\n".join(_rows(delimiter=delimiter)) + "\n")
    data = load_dataset(path)
    assert data.X.shape[1] == 2 and data.num_classes == 2


def test_csv_delimiter_can_be_given(tmp_path):
    path = _write(tmp_path, "\n".join(_rows(delimiter=";")) + "\n")
    assert load_dataset(path, delimiter=";").X.shape[1] == 2
    with pytest.raises(ValueError, match=r"no column 'label'.*\(delimiter '\|'\)"):
        load_dataset(path, delimiter="|")
    with pytest.raises(ValueError, match="delimiter: expected one character"):
        load_dataset(path, delimiter=";;")


def test_csv_duplicate_column_names_are_refused(tmp_path):
    lines = ["f0,f0,label"] + [f"{i},{-i},{i % 2}" for i in range(20)]
    with pytest.raises(ValueError, match=r"d\.csv: duplicate column names 'f0' \(columns \[1, 2\]\)"):
        load_dataset(_write(tmp_path, "\n".join(lines)))


def test_csv_labels_one_and_one_point_zero_are_one_class(tmp_path):
    lines = ["f0,label"] + [f"{i},{['0', '1', '1.0', '0.0'][i % 4]}" for i in range(24)]
    data = load_dataset(_write(tmp_path, "\n".join(lines)))
    assert data.num_classes == 2 and data.class_names == ("0", "1")


def test_csv_non_integer_and_mixed_spelling_labels_are_refused(tmp_path):
    lines = ["f0,label"] + [f"{i},{['0', '0.5'][i % 2]}" for i in range(20)]
    with pytest.raises(ValueError, match="line 3: label '0.5' is not a whole number"):
        load_dataset(_write(tmp_path, "\n".join(lines)))
    lines = ["f0,label"] + [f"{i},{['cat', '1', '1.0'][i % 3]}" for i in range(21)]
    with pytest.raises(ValueError, match=r"labels \['1', '1.0'\] are one number written differently"):
        load_dataset(_write(tmp_path, "\n".join(lines), name="e.csv"))


def test_csv_not_utf8_names_the_file_and_the_encoding(tmp_path):
    lines = ["f0,label,source"] + [f"{i},{i % 2},{['café', 'bar'][i % 2]}" for i in range(20)]
    path = _write(tmp_path, "\n".join(lines), encoding="latin-1")
    with pytest.raises(ValueError, match=r"d\.csv: not UTF-8 text \(byte 0xe9 on line 2\)"):
        load_dataset(path, source_column="source")
    utf16 = _write(tmp_path, "\n".join(lines), encoding="utf-16", name="u.csv")
    with pytest.raises(ValueError, match=r"u\.csv: the file is UTF-16"):
        load_dataset(utf16)


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


def _xy(n=20):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)), np.arange(n) % 2


def test_npz_object_array_is_named(tmp_path):
    X, y = _xy()
    path = _npz(tmp_path, X=X, y=y, source=np.array(["a", 1] * 10, dtype=object))
    with pytest.raises(ValueError, match=r"array 'source' holds Python objects \(dtype=object\)"):
        load_dataset(path)


@pytest.mark.parametrize("name", ["X", "y"])
def test_npz_empty_array_is_named(tmp_path, name):
    X, y = _xy()
    arrays = {"X": X, "y": y, name: np.zeros((0,) + ((3,) if name == "X" else ()))}
    with pytest.raises(ValueError, match=f"array '{name}' is empty"):
        load_dataset(_npz(tmp_path, **arrays))


def test_npz_one_dimensional_X_is_refused(tmp_path):
    X, y = _xy()
    with pytest.raises(ValueError, match=r"array 'X' is 1-D \(shape \(20,\)\).*X\[:, None\]"):
        load_dataset(_npz(tmp_path, X=X[:, 0], y=y))


def test_npz_complex_X_is_refused(tmp_path):
    X, y = _xy()
    with pytest.raises(ValueError, match=r"array 'X' is complex \(complex128\).*np.real"):
        load_dataset(_npz(tmp_path, X=X + 1j, y=y))


def test_npz_float_labels(tmp_path):
    X, y = _xy()
    with pytest.raises(ValueError, match=r"array 'y' has 10 non-integer values \(e.g. 0.5 at index 1\)"):
        load_dataset(_npz(tmp_path, X=X, y=y * 0.5))
    data = load_dataset(_npz(tmp_path, X=X, y=y.astype(float)))  # whole numbers stored as floats: fine
    assert data.class_names == ("0", "1")


def test_pipeline_config_carries_the_delimiter(tmp_path):
    from ntk_info.apps.pipeline import ConfigError, PipelineConfig, load_data

    path = _write(tmp_path, "\n".join(_rows(n=40, delimiter="|")) + "\n")
    assert load_data(PipelineConfig(data=path, delimiter="|")).X.shape[1] == 2
    with pytest.raises(ConfigError, match="expected one character"):
        load_data(PipelineConfig(data=path, delimiter="||"))

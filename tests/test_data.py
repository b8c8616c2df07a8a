import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from s2e_jax import data
from s2e_jax.config import ConfigError


def _check_layout(ds, n_train, n_val, n_test, hwc):
    for x, n in [(ds.x_train, n_train), (ds.x_val, n_val), (ds.x_test, n_test)]:
        assert x.shape == (n, *hwc) and x.dtype == np.uint8
    for y, n in [(ds.y_train, n_train), (ds.y_train_clean, n_train), (ds.y_val, n_val),
                 (ds.y_test, n_test)]:
        assert y.shape == (n,) and y.dtype == np.int32
    np.testing.assert_array_equal(ds.y_train, ds.y_train_clean)


# --- digits ---------------------------------------------------------------------------------------

def test_digits_shapes_and_stratification():
    ds = data.load_dataset("digits")
    _check_layout(ds, 1078, 359, 360, (8, 8, 1))
    assert ds.num_classes == 10 and ds.name == "digits"
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert set(np.unique(y)) == set(range(10))
    # Stratified: class proportions of each split within 1% of the training split.
    p_train = np.bincount(ds.y_train, minlength=10) / len(ds.y_train)
    for y in (ds.y_val, ds.y_test):
        np.testing.assert_allclose(np.bincount(y, minlength=10) / len(y), p_train, atol=0.01)


def _sorted_rows(x, y):
    """(image, label) rows in lexicographic order."""
    rows = np.concatenate([x.reshape(len(x), -1), y[:, None]], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def test_digits_deterministic_and_partition():
    a, b = data.load_dataset("digits"), data.load_dataset("digits")
    for f in dataclasses.fields(data.Dataset):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name))
    # The three splits are a partition of the 1,797 digits: same multiset of (image, label) rows.
    d = load_digits()
    original = _sorted_rows((d.images * 255 // 16).astype(np.uint8), d.target.astype(np.uint8))
    splits = _sorted_rows(np.concatenate([a.x_train, a.x_val, a.x_test]),
                          np.concatenate([a.y_train, a.y_val, a.y_test]).astype(np.uint8))
    np.testing.assert_array_equal(splits, original)


# --- .npz -----------------------------------------------------------------------------------------

def _write_npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.integers(0, 256, (12, 5, 4), dtype=np.uint8),
        y_train=rng.integers(0, 3, 12),
        x_test=rng.integers(0, 256, (7, 5, 4), dtype=np.uint8),
        y_test=np.array([0, 1, 2, 3, 0, 1, 2]),
    )
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def test_npz_round_trip(tmp_path):
    path = tmp_path / "tiny.npz"
    a = _write_npz(path, y_train=np.arange(12) % 4)
    ds = data.load_dataset(str(path))
    _check_layout(ds, 12, 3, 4, (5, 4, 1))
    np.testing.assert_array_equal(ds.x_train[..., 0], a["x_train"])
    np.testing.assert_array_equal(ds.y_train, a["y_train"])
    np.testing.assert_array_equal(ds.x_val[..., 0], a["x_test"][:3])
    np.testing.assert_array_equal(ds.x_test[..., 0], a["x_test"][3:])
    np.testing.assert_array_equal(ds.y_val, [0, 1, 2])
    np.testing.assert_array_equal(ds.y_test, [3, 0, 1, 2])
    assert ds.num_classes == 4  # max label over all splits + 1


def test_npz_nhwc_and_integer_valued_float(tmp_path):
    path = tmp_path / "rgb.npz"
    x_train = np.arange(4 * 2 * 2 * 3, dtype=np.float32).reshape(4, 2, 2, 3)
    _write_npz(path, x_train=x_train, x_test=np.zeros((2, 2, 2, 3), np.int64),
               y_train=np.array([0.0, 1.0, 1.0, 0.0]), y_test=np.array([1, 0]))
    ds = data.load_dataset(path)
    _check_layout(ds, 4, 1, 1, (2, 2, 3))
    np.testing.assert_array_equal(ds.x_train, x_train.astype(np.uint8))
    assert ds.num_classes == 2


@pytest.mark.parametrize("overrides,match", [
    (dict(x_test=None, y_test=None), "dataset: .* missing x_test, y_test"),
    (dict(y_train=np.zeros(10, int)), "y_train: length 10 does not match x_train length 12"),
    (dict(y_test=np.zeros(6, int)), "y_test: length 6 does not match x_test length 7"),
    (dict(y_train=-np.ones(12, int)), "y_train: values must be >= 0"),
    (dict(y_train=np.full(12, 0.5)), "y_train: values must be integers"),
    (dict(y_train=np.zeros((12, 1), int)), "y_train: expected a 1-D array"),
    (dict(x_train=np.full((12, 5, 4), np.nan)), "x_train: contains NaN"),
    (dict(x_train=np.full((12, 5, 4), 256)), r"x_train: values must be \[0, 255\]"),
    (dict(x_train=np.zeros((12, 20), np.uint8)), r"x_train: expected shape \(N, H, W\)"),
    (dict(x_test=np.zeros((7, 5, 5), np.uint8)), "x_test: image shape"),
    (dict(x_test=np.zeros((1, 5, 4), np.uint8), y_test=np.zeros(1, int)), "x_test: needs at least 2"),
    (dict(x_test=np.zeros((0, 5, 4), np.uint8), y_test=np.zeros(0, int)), "x_test: needs at least 2"),
    (dict(x_train=np.zeros((12, 3, 8, 8), np.uint8), x_test=np.zeros((7, 3, 8, 8), np.uint8)),
     r"x_train: shape \(12, 3, 8, 8\) looks channels-first .* x.transpose\(0, 2, 3, 1\)"),
    (dict(x_train=np.zeros((0, 5, 4), np.uint8), y_train=np.zeros(0, int)), "x_train: is empty"),
    (dict(y_train=np.array(["a"] * 12)), "y_train: expected numeric data"),
])
def test_npz_bad_inputs(tmp_path, overrides, match):
    path = tmp_path / "bad.npz"
    _write_npz(path, **overrides)
    with pytest.raises(ConfigError, match=match):
        data.load_dataset(str(path))


def test_npz_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="dataset: file not found: .*missing.npz"):
        data.load_dataset(str(tmp_path / "missing.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match="dataset: cannot read"):
        data.load_dataset(str(junk))
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ConfigError, match="dataset: .* single .npy array"):
        data.load_dataset(str(npy))
    cut = tmp_path / "cut.npz"  # a download broken off half-way
    _write_npz(cut, x_train=np.arange(12 * 64 * 64).reshape(12, 64, 64) % 251)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.raises(ConfigError, match="dataset: cannot read"):
        data.load_dataset(str(cut))
    obj = tmp_path / "obj.npz"
    _write_npz(obj, y_train=np.array([None] * 12, dtype=object))
    with pytest.raises(ConfigError, match="dataset: cannot read arrays"):
        data.load_dataset(str(obj))


def test_npz_classes_without_training_examples_warn(tmp_path):
    """num_classes is the largest label + 1: labels numbered from 1 leave class 0 empty (and noise
    would flip labels into it), which is said, with a hint; every class present: no warning."""
    path = tmp_path / "one_based.npz"
    _write_npz(path, y_train=np.arange(12) % 3 + 1, y_test=np.array([1, 2, 3, 1, 2, 3, 1]))
    with pytest.warns(UserWarning, match=r"classes \[0\] of 0 \.\. 3 .* no training example \(labels numbered from 1"):
        assert data.load_dataset(str(path)).num_classes == 4
    ok = tmp_path / "ok.npz"
    _write_npz(ok, y_train=np.arange(12) % 4)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_dataset(str(ok))


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="dataset: unknown data set 'foo' \\(expected digits"):
        data.load_dataset("foo")


# --- label file and noise -------------------------------------------------------------------------

def test_label_file_replaces_training_labels(tmp_path):
    ds = data.load_dataset("digits")
    labels = (ds.y_train + 1) % 10
    path = tmp_path / "labels.npy"
    np.save(path, labels.astype(np.int64))
    noisy = data.apply_label_file(ds, path)
    np.testing.assert_array_equal(noisy.y_train, labels)
    assert noisy.y_train.dtype == np.int32
    np.testing.assert_array_equal(noisy.y_train_clean, ds.y_train_clean)
    np.testing.assert_array_equal(noisy.y_val, ds.y_val)


@pytest.mark.parametrize("labels,match", [
    (np.zeros(5, int), "label_file: has 5 labels, expected 1078"),
    (np.full(1078, 10), r"label_file: labels must be in \[0, 10\)"),
    (np.full(1078, -1), r"label_file: labels must be in \[0, 10\)"),
    (np.full(1078, 0.5), "label_file: labels must be integers"),
    (np.zeros((1078, 2), int), "label_file: expected a 1-D array"),
])
def test_label_file_errors(tmp_path, labels, match):
    ds = data.load_dataset("digits")
    path = tmp_path / "labels.npy"
    np.save(path, labels)
    with pytest.raises(ConfigError, match=match):
        data.apply_label_file(ds, path)


def test_label_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="label_file: file not found"):
        data.apply_label_file(data.load_dataset("digits"), tmp_path / "nope.npy")


def test_apply_noise_only_touches_training_labels():
    ds = data.load_dataset("digits")
    noisy, is_clean = data.apply_noise(ds, "pair", 0.45, seed=0)
    np.testing.assert_array_equal(is_clean, noisy.y_train == ds.y_train_clean)
    assert abs((1 - is_clean.mean()) - 0.45) < 0.05
    np.testing.assert_array_equal(noisy.y_train_clean, ds.y_train_clean)
    np.testing.assert_array_equal(noisy.y_val, ds.y_val)
    np.testing.assert_array_equal(noisy.y_test, ds.y_test)
    flipped = ~is_clean
    np.testing.assert_array_equal(noisy.y_train[flipped], (ds.y_train_clean[flipped] + 1) % 10)
    again, _ = data.apply_noise(ds, "pair", 0.45, seed=0)
    np.testing.assert_array_equal(again.y_train, noisy.y_train)


# --- tensorflow-datasets (mocked; no TensorFlow needed) -------------------------------------------

@pytest.mark.parametrize("name,hwc,num_classes", [
    ("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100)])
def test_tfds_mocked(tmp_path, name, hwc, num_classes):
    tfds = pytest.importorskip("tensorflow_datasets")
    # USE_CODE builds random examples from the builder's feature spec; tfds.data_source then serves
    # them through a mocked ArrayRecordDataSource, without TensorFlow or prepared files.
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load_dataset(name, data_dir=str(tmp_path))
        test_source = tfds.data_source(name, split="test", data_dir=str(tmp_path))
        test_labels = [int(test_source[i]["label"]) for i in range(20)]
        test_images = np.stack([test_source[i]["image"] for i in range(20)])
    _check_layout(ds, 20, 10, 10, hwc)
    assert ds.num_classes == num_classes and ds.name == name
    np.testing.assert_array_equal(ds.y_val, test_labels[:10])
    np.testing.assert_array_equal(ds.y_test, test_labels[10:])
    np.testing.assert_array_equal(ds.x_val, test_images[:10])
    np.testing.assert_array_equal(ds.x_test, test_images[10:])


def test_tfds_not_prepared(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ConfigError, match="dataset: 'mnist' is not prepared.*tfds build mnist"):
        data.load_dataset("mnist", data_dir=str(tmp_path))


def test_tfds_asking_for_tensorflow_is_the_same_clear_error(tmp_path, monkeypatch):
    """Older tfds (seen: 4.9.4, 4.9.7) import TensorFlow when the prepared data is missing; any
    other missing module is a broken install, said as such."""
    tfds = pytest.importorskip("tensorflow_datasets")
    missing = ["tensorflow"]

    def source(*args, **kwargs):
        raise ModuleNotFoundError(f"No module named '{missing[0]}'", name=missing[0])

    monkeypatch.setattr(tfds, "data_source", source)
    with pytest.raises(ConfigError, match=r"dataset: 'cifar10' is not prepared.*ModuleNotFoundError: No module named"):
        data.load_dataset("cifar10", data_dir=str(tmp_path))

    def wrapped(*args, **kwargs):  # tfds 4.9.3: the error re-raised with the data set's name, no .name
        raise ModuleNotFoundError("Failed to construct dataset cifar10: No module named 'tensorflow'")

    monkeypatch.setattr(tfds, "data_source", wrapped)
    with pytest.raises(ConfigError, match=r"dataset: 'cifar10' is not prepared"):
        data.load_dataset("cifar10", data_dir=str(tmp_path))
    monkeypatch.setattr(tfds, "data_source", source)
    missing[0] = "array_record"
    with pytest.raises(ConfigError, match=r"dataset: reading 'cifar10' with tensorflow-datasets failed: "
                                          r"No module named 'array_record'"):
        data.load_dataset("cifar10", data_dir=str(tmp_path))


# --- real MNIST (present on development machines only) --------------------------------------------

def _mnist_npz():
    env = os.environ.get("S2E_MNIST_NPZ")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist.npz"


@pytest.mark.skipif(not _mnist_npz().is_file(), reason="real MNIST .npz not available")
def test_real_mnist_npz():
    ds = data.load_dataset(str(_mnist_npz()))
    _check_layout(ds, 60000, 5000, 5000, (28, 28, 1))
    assert ds.num_classes == 10
    np.testing.assert_array_equal(ds.y_train[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(ds.y_val[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])

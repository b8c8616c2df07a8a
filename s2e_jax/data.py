"""Data sets as host-side numpy arrays, split as in the paper's Table 3.

Sources:

* ``digits``: scikit-learn's 8x8 digits (ships with scikit-learn, no download); a fixed stratified
  60/20/20 split of its 1,797 images: 1,078 train, 359 validation, 360 test.
* ``mnist``, ``cifar10``, ``cifar100``: tensorflow-datasets, read with ``tfds.data_source`` (random
  access to the ``array_record`` files; TensorFlow is not needed). The data must already be prepared
  in ``data_dir`` in ``array_record`` format, e.g. ``tfds build mnist --file_format=array_record``.
* a path to an ``.npz`` file with arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``.

Splits (Table 3): the whole train split is used for training; the test split (10,000 images for
MNIST/CIFAR) is halved in its stored order: the first half (5,000) is the clean validation set, the
second half (5,000) the clean test set. With an odd number of test examples the test half gets the
extra one. "Stored order" is the source's: an ``.npz`` as given (``mnist.npz`` of the original
files: the torchvision order the paper's code used); tensorflow-datasets stores the examples of a
split in its own (key-hashed) order unless a builder disables shuffling, so its halves are clean,
disjoint and fixed, but not the same 5,000 images as torchvision's.

Images are uint8 NHWC; labels int32. Everything stays in numpy; the trainer moves it to the device.
"""

import dataclasses
import os
import warnings
import zipfile

import numpy as np

from s2e_jax import noise
from s2e_jax.config import ConfigError

TFDS_NUM_CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A data set split into train / validation / test (see module docstring)."""

    name: str
    x_train: np.ndarray  # uint8 (N, H, W, C)
    y_train: np.ndarray  # int32 (N,): labels used for training (noisy once noise is applied)
    y_train_clean: np.ndarray  # int32 (N,): the clean labels
    x_val: np.ndarray  # clean validation (first half of the test split)
    y_val: np.ndarray
    x_test: np.ndarray  # clean test (second half of the test split)
    y_test: np.ndarray
    num_classes: int


def _check_halves(x_test):
    if len(x_test) < 2:
        raise ConfigError(
            f"x_test: needs at least 2 examples to form validation and test halves, got {len(x_test)}")


def _halve_test(name, x_train, y_train, x_test, y_test, num_classes):
    """Build a clean ``Dataset``: first half of the test split = validation, second half = test."""
    _check_halves(x_test)
    h = len(x_test) // 2
    y_train = y_train.astype(np.int32)
    return Dataset(
        name=name, x_train=x_train, y_train=y_train, y_train_clean=y_train.copy(),
        x_val=x_test[:h], y_val=y_test[:h].astype(np.int32),
        x_test=x_test[h:], y_test=y_test[h:].astype(np.int32), num_classes=int(num_classes))


def load_digits(seed=0):
    """scikit-learn's digits: 1,797 images (N, 8, 8, 1) uint8, 10 classes.

    Pixel values 0..16 are scaled to 0..255 as ``x * 255 // 16``. The split is stratified and fixed
    by ``seed`` (keep it fixed across runs): 60% train (1,078), 20% validation (359), 20% test (360).
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    x = (digits.images.astype(np.int32) * 255 // 16).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int32)
    idx_train, idx_rest = train_test_split(
        np.arange(len(y)), test_size=0.4, stratify=y, random_state=seed)
    idx_val, idx_test = train_test_split(
        idx_rest, test_size=0.5, stratify=y[idx_rest], random_state=seed)
    return Dataset(
        name="digits", x_train=x[idx_train], y_train=y[idx_train], y_train_clean=y[idx_train].copy(),
        x_val=x[idx_val], y_val=y[idx_val], x_test=x[idx_test], y_test=y[idx_test],
        num_classes=10)


def _tfds_split_arrays(source):
    """Read every example of a tfds data source into (images uint8 NHWC, labels int32)."""
    examples = [source[i] for i in range(len(source))]
    x = np.stack([ex["image"] for ex in examples]).astype(np.uint8)
    y = np.asarray([ex["label"] for ex in examples], dtype=np.int32)
    return x, y


def _not_prepared(name, data_dir, err) -> ConfigError:
    where = data_dir if data_dir is not None else "the default tfds data_dir"
    return ConfigError(
        f"dataset: '{name}' is not prepared in array_record format in {where}; run "
        f"`tfds build {name} --file_format=array_record"
        f"{'' if data_dir is None else f' --data_dir {data_dir}'}` where TensorFlow and "
        f"network access are available, or pass a path to an .npz file with "
        f"x_train, y_train, x_test, y_test ({type(err).__name__}: {err})")


def load_tfds(name, data_dir=None):
    """MNIST / CIFAR-10 / CIFAR-100 from tensorflow-datasets without TensorFlow.

    Uses ``tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)``,
    which needs the data prepared in ``array_record`` format (``data_dir=None`` means tfds' default,
    ``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``). Preparing it needs network access and
    TensorFlow: ``tfds build <name> --file_format=array_record [--data_dir DIR]``.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ConfigError(
            f"dataset: '{name}' needs tensorflow-datasets (pip install tensorflow-datasets), "
            "or pass a path to an .npz file") from None
    try:
        train, test = tfds.data_source(
            name, split=["train", "test"], data_dir=data_dir, download=False)
    except ImportError as err:
        # (tfds 4.9.3 re-raises it as "Failed to construct dataset …: No module named 'tensorflow'")
        if err.name != "tensorflow" and "No module named 'tensorflow'" not in str(err):  # a broken install
            raise ConfigError(f"dataset: reading '{name}' with tensorflow-datasets failed: {err}") from err
        # older tfds (seen: 4.9.4, 4.9.7) import TensorFlow when the prepared data is missing
        raise _not_prepared(name, data_dir, err) from err
    except (AssertionError, KeyError, RuntimeError, OSError, ValueError) as err:
        raise _not_prepared(name, data_dir, err) from err
    x_train, y_train = _tfds_split_arrays(train)
    x_test, y_test = _tfds_split_arrays(test)
    return _halve_test(name, x_train, y_train, x_test, y_test, TFDS_NUM_CLASSES[name])


def _integer_array(a, field, low, high=None):
    """Check that ``a`` holds finite integer values in [low, high] (high optional); return int64."""
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ConfigError(f"{field}: expected numeric data, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ConfigError(f"{field}: contains NaN or infinite values")
        if np.any(a != np.round(a)):
            raise ConfigError(f"{field}: values must be integers")
    if a.size and (a.min() < low or (high is not None and a.max() > high)):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{field}: values must be {bound}, got range [{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def _npz_images(x, field):
    """Validate an image array: (N, H, W) or (N, H, W, C), integer values in [0, 255]; uint8 NHWC."""
    if x.ndim not in (3, 4):
        raise ConfigError(f"{field}: expected shape (N, H, W) or (N, H, W, C), got {x.shape}")
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3, 4):
        raise ConfigError(f"{field}: shape {x.shape} looks channels-first (N, C, H, W, as PyTorch stores "
                          f"images); store (N, H, W, C), e.g. x.transpose(0, 2, 3, 1)")
    if x.dtype != np.uint8:
        x = _integer_array(x, field, 0, 255).astype(np.uint8)
    return x[..., None] if x.ndim == 3 else x


def _npz_labels(y, field, n, x_field):
    """Validate a label array: 1-D, same length as its images, non-negative integers."""
    if y.ndim != 1:
        raise ConfigError(f"{field}: expected a 1-D array of labels, got shape {y.shape}")
    if len(y) != n:
        raise ConfigError(f"{field}: length {len(y)} does not match {x_field} length {n}")
    return _integer_array(y, field, 0).astype(np.int32)


def load_npz(path):
    """A data set from an ``.npz`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test``.

    Images are (N, H, W) or (N, H, W, C), uint8 or integer-valued in [0, 255]; labels are
    non-negative integers. The test split is halved (first half validation, second half test);
    ``num_classes`` is the largest label over all splits plus one.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"dataset: file not found: {path}")
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, ImportError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"dataset: cannot read {path} as an .npz file: {err}") from err
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ConfigError(f"dataset: {path} is a single .npy array, expected an .npz archive")
    with f:
        missing = [k for k in NPZ_KEYS if k not in f.files]
        if missing:
            raise ConfigError(
                f"dataset: {path} is missing {', '.join(missing)} "
                f"(expected keys {', '.join(NPZ_KEYS)})")
        try:
            arrays = {k: f[k] for k in NPZ_KEYS}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # object arrays (pickle), damage
            raise ConfigError(f"dataset: cannot read arrays of {path}: {err}") from err
    x_train = _npz_images(arrays["x_train"], "x_train")
    x_test = _npz_images(arrays["x_test"], "x_test")
    if len(x_train) == 0:
        raise ConfigError("x_train: is empty")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ConfigError(
            f"x_test: image shape {x_test.shape[1:]} does not match x_train image shape "
            f"{x_train.shape[1:]}")
    y_train = _npz_labels(arrays["y_train"], "y_train", len(x_train), "x_train")
    y_test = _npz_labels(arrays["y_test"], "y_test", len(x_test), "x_test")
    _check_halves(x_test)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    absent = np.setdiff1d(np.arange(num_classes), y_train)
    if absent.size:
        hint = " (labels numbered from 1? use 0 .. C-1)" if absent[0] == 0 and 0 not in y_test else ""
        warnings.warn(f"dataset: {path}: classes {absent.tolist()[:10]}{' ...' if absent.size > 10 else ''} of "
                      f"0 .. {num_classes - 1} (the largest label + 1) have no training example{hint}; "
                      f"symmetric noise flips labels into them too", stacklevel=2)
    return _halve_test(path, x_train, y_train, x_test, y_test, num_classes)


def load_dataset(name, data_dir=None, seed=0):
    """Load a clean data set (``y_train == y_train_clean``).

    Args:
      name: ``"digits"``, ``"mnist"``, ``"cifar10"``, ``"cifar100"`` or a path to an ``.npz`` file.
      data_dir: tensorflow-datasets data directory (tfds sets only; ``None`` = tfds' default).
      seed: seed of the digits split only (fixed splits elsewhere); keep it fixed across runs.
    """
    name = os.fspath(name)
    if name == "digits":
        return load_digits(seed)
    if name in TFDS_NUM_CLASSES:
        return load_tfds(name, data_dir)
    if name.lower().endswith(".npz"):
        return load_npz(name)
    raise ConfigError(
        f"dataset: unknown data set '{name}' "
        "(expected digits, mnist, cifar10, cifar100 or a path to an .npz file)")


def apply_label_file(ds, path):
    """Replace the training labels by a user's ``.npy`` file (e.g. real-world noise like CIFAR-10N).

    The file holds one integer label in [0, C) per training example, in training order;
    ``y_train_clean`` is kept, so ``y_train != y_train_clean`` marks the noisy examples.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"label_file: file not found: {path}")
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, ImportError) as err:
        raise ConfigError(f"label_file: cannot read {path} as an .npy file: {err}") from err
    if not isinstance(labels, np.ndarray):
        raise ConfigError(f"label_file: {path} is an .npz archive, expected a single .npy array")
    if labels.ndim == 1 and len(labels) != len(ds.y_train):
        raise ConfigError(
            f"label_file: has {len(labels)} labels, expected {len(ds.y_train)} "
            "(one per training example)")
    y = noise.check_labels(labels, ds.num_classes, field="label_file")
    return dataclasses.replace(ds, y_train=y)


def apply_noise(ds, kind, rate, seed, matrix=None):
    """Corrupt the training labels with transition-matrix noise (see ``noise.transition_matrix``).

    Only ``y_train`` changes. Returns ``(noisy_dataset, is_clean)`` where ``is_clean`` is a bool array
    ``y_train_noisy == y_train_clean``.
    """
    t = noise.transition_matrix(kind, rate, ds.num_classes, matrix)
    y_noisy, _ = noise.corrupt_labels(ds.y_train, t, seed)
    return dataclasses.replace(ds, y_train=y_noisy), y_noisy == ds.y_train_clean

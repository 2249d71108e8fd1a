"""Datasets in the model's input units: pixels in [0, 1], channels last.

- `load_digits`: scikit-learn's bundled 8x8 digits (1797 images, no download), upscaled
  with `tf.image.resize` and repeated over channels, split deterministically. Runs offline;
  the demo and the tests use it.
- `load_tfds`: TensorFlow Datasets images (cifar10, cifar100, mnist, svhn_cropped, ...)
  scaled to [0, 1]. TFDS needs a prepared dataset (`data_dir`) when there is no internet.

The noise of Algorithm 1 is added in these units (see `larq_l1inf.noise`); normalisation,
if any, belongs inside the model.
"""

import logging
import os

import numpy as np

from larq_l1inf._keras import tf

log = logging.getLogger(__name__)

__all__ = ["DatasetUnavailableError", "load_digits", "load_tfds", "DIGITS_CLASSES"]

DIGITS_CLASSES = 10


class DatasetUnavailableError(FileNotFoundError):
    """A TFDS dataset is not prepared locally and cannot be downloaded."""


def _check_fraction(value, name):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number in (0, 1), got {value!r}.") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"`{name}` must be in (0, 1), got {value}.")
    return value


def _check_positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _resize(images, size, channels):
    """(n, h, w) or (n, h, w, c) float images -> (n, size, size, channels), bilinear."""
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[1:3] != (size, size):
        # Bilinear interpolation of values in [0, 1] stays in [0, 1] (no antialias overshoot).
        images = tf.image.resize(images, (size, size), method="bilinear").numpy()
    if images.shape[-1] == 1 and channels != 1:
        images = np.repeat(images, channels, axis=-1)
    elif images.shape[-1] != channels:
        raise ValueError(
            f"Cannot turn {images.shape[-1]}-channel images into {channels} channels; "
            "use channels=1 or the dataset's own channel count."
        )
    return np.ascontiguousarray(images, dtype=np.float32)


def _as_dataset(x, y, batch_size, shuffle, seed):
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if batch_size:
        dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


def load_digits(size=32, channels=3, test_fraction=0.2, seed=0, as_dataset=False,
                batch_size=None):
    """scikit-learn's 8x8 handwritten digits as an image classification task.

    The 1797 grey images (pixel values 0..16) are scaled to [0, 1], resized to
    `size x size` with bilinear `tf.image.resize` and repeated over `channels`. The split is
    stratified by class and fixed by `seed`.

    !!! example
        ```python
        (x_train, y_train), (x_test, y_test) = load_digits(size=32, channels=3)
        x_train.shape  # (1437, 32, 32, 3)
        ```

    # Arguments
    size: output height and width (>= 3, so Algorithm 1 noise has an interior).
    channels: number of output channels (the grey value repeated).
    test_fraction: fraction of the images held out for testing, in (0, 1).
    seed: seed of the split (and of the training set's shuffle with `as_dataset=True`).
    as_dataset: return `tf.data.Dataset`s of `(image, label)` instead of NumPy arrays; the
        training set is shuffled every epoch.
    batch_size: batch the datasets (only with `as_dataset=True`).

    # Returns
    `((x_train, y_train), (x_test, y_test))`: float32 images `(n, size, size, channels)`
    in [0, 1] and int32 labels 0..9; or `(train_dataset, test_dataset)`.

    # Raises
    ValueError: for a size below 3, a non-positive channel count or a fraction outside (0, 1).
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    size = _check_positive_int(size, "size", minimum=3)
    channels = _check_positive_int(channels, "channels")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if batch_size is not None and not as_dataset:
        raise ValueError("`batch_size` applies only with as_dataset=True.")
    digits = sklearn_digits()
    images = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    x_train = _resize(x_train, size, channels)
    x_test = _resize(x_test, size, channels)
    if as_dataset:
        return (
            _as_dataset(x_train, y_train, batch_size, shuffle=True, seed=seed),
            _as_dataset(x_test, y_test, batch_size, shuffle=False, seed=seed),
        )
    return (x_train, y_train), (x_test, y_test)


def _prepared(builder):
    return tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def load_tfds(name, split="train", data_dir=None, download=False, size=None,
              batch_size=None, shuffle=False, seed=0, as_numpy=False):
    """An image classification dataset of TensorFlow Datasets, pixels in [0, 1].

    Images are cast to float32 and divided by 255 (8-bit datasets such as cifar10,
    cifar100, mnist, fashion_mnist, svhn_cropped); `size` optionally resizes them
    (bilinear). Labels stay integers.

    This machine has no internet: TFDS cannot download, so pass `data_dir` pointing at a
    dataset prepared elsewhere (`tfds.builder(name, data_dir=...).download_and_prepare()`,
    then copy the directory), or use `load_digits`.

    # Arguments
    name: TFDS name, e.g. `"cifar10"`.
    split: TFDS split, e.g. `"train"`, `"test"`, `"train[:90%]"`.
    data_dir: directory holding prepared TFDS datasets (TFDS' default when None).
    download: let TFDS download and prepare the dataset if it is missing.
    size: resize images to `size x size` (None keeps their size).
    batch_size: batch the dataset.
    shuffle: shuffle (with `seed`) before batching.
    seed: shuffle seed.
    as_numpy: return `(x, y)` NumPy arrays (the whole split in memory) instead.

    # Returns
    A `tf.data.Dataset` of `(image, label)`, or `(x, y)` arrays with `as_numpy=True`.

    # Raises
    DatasetUnavailableError: when the dataset is not prepared in `data_dir` and
        `download=False`, or the download fails.
    ValueError: for a name TFDS does not know.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"TFDS does not know a dataset named {name!r}; use a TFDS name such as 'cifar10', "
            "'cifar100', 'mnist' or 'svhn_cropped'."
        ) from error
    where = data_dir or "TFDS' default data_dir (~/tensorflow_datasets)"
    if not _prepared(builder):
        if not download:
            raise DatasetUnavailableError(
                f"TFDS dataset {name!r} is not prepared in {where} (looked for "
                f"{builder.data_dir}) and download=False. This machine cannot download: pass "
                "data_dir= with a dataset prepared elsewhere (tfds.builder(name).download_and_"
                "prepare(), then copy the directory), or use larq_l1inf.data.load_digits() "
                "for an offline dataset."
            )
        try:
            builder.download_and_prepare()
        except Exception as error:  # noqa: BLE001 - re-raised with what to do
            raise DatasetUnavailableError(
                f"Downloading TFDS dataset {name!r} failed ({type(error).__name__}: {error}). "
                "Without internet, pass data_dir= with a prepared copy, or use "
                "larq_l1inf.data.load_digits()."
            ) from error
    dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)

    def scale(image, label):
        image = tf.cast(image, tf.float32) / 255.0
        if size is not None:
            image = tf.image.resize(image, (size, size), method="bilinear")
        return image, label

    dataset = dataset.map(scale, num_parallel_calls=tf.data.AUTOTUNE)
    if as_numpy:
        xs, ys = [], []
        for image, label in tfds.as_numpy(dataset.batch(1024)):
            xs.append(image)
            ys.append(label)
        return np.concatenate(xs), np.concatenate(ys)
    if shuffle:
        dataset = dataset.shuffle(10_000, seed=seed)
    if batch_size:
        dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)

"""Datasets in the model's input units: pixels in [0, 1] channels last, signals (time, channels).

`load(name, ...)` returns a `Data`: arrays and seeded `tf.data` pipelines of one dataset,
its input shape, classes and its default Algorithm 1 noise range `epsilon`. Sources:

- `digits`: scikit-learn's bundled 8x8 digits (offline; the demo and the tests use it).
- `fashion_mnist`, `mnist`: the standard IDX files (`train-images-idx3-ubyte[.gz]`, ...);
  Fashion-MNIST is found where Debian's `dataset-fashion-mnist` package installs it.
- `mnist1d`: MNIST-1D signals generated offline by the `mnist1d` package.
- `wisdm`: a windowed accelerometer CSV (WISDM layout), split by subject.
- `image_folder`: one sub-folder per class (e.g. the Brain Tumor MRI images), split 7:2:1.
- TFDS: `cifar10`, `cifar100`, `svhn_cropped`, `imagenet2012` (prepared; no download here).

The noise of Algorithm 1 is added in these units (see `larq_l1inf.noise`); normalisation,
if any, belongs inside the model.
"""

import csv
import gzip
import inspect
import logging
import math
import os
import random
import warnings

import numpy as np

from larq_l1inf._keras import tf
from larq_l1inf.noise import NOISE_RANGES

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "Data",
    "DatasetUnavailableError",
    "DIGITS_CLASSES",
    "load",
    "load_digits",
    "load_tfds",
    "pad_crop_flip",
    "read_idx",
]

DIGITS_CLASSES = 10

TFDS_DATASETS = ("cifar10", "cifar100", "svhn_cropped", "imagenet2012")

#: Every name `load` accepts.
DATASETS = ("digits", "fashion_mnist", "mnist", "mnist1d", "wisdm", "image_folder") + TFDS_DATASETS

#: Where `load` looks for IDX files when no `data_dir` is given (Debian's dataset packages
#: and Keras' download cache use these names).
IDX_DIRS = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist", "~/.keras/datasets/fashion-mnist"),
    "mnist": ("/usr/share/datasets/mnist", "~/.keras/datasets/mnist"),
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]

#: Activity codes of the WISDM 2019 smartphone/smartwatch dataset (Weiss, 2019).
WISDM_2019_ACTIVITIES = {
    "A": "walking", "B": "jogging", "C": "stairs", "D": "sitting", "E": "standing",
    "F": "typing", "G": "teeth", "H": "soup", "I": "chips", "J": "pasta", "K": "drinking",
    "L": "sandwich", "M": "kicking", "O": "catch", "P": "dribbling", "Q": "writing",
    "R": "clapping", "S": "folding",
}

WISDM_COLUMNS = ("user", "activity", "timestamp", "x", "y", "z")
WISDM_ALIASES = {"user_id": "user", "subject": "user", "subject_id": "user",
                 "activity_code": "activity", "label": "activity",
                 "x-axis": "x", "y-axis": "y", "z-axis": "z",
                 "x_axis": "x", "y_axis": "y", "z_axis": "z"}

IMAGENET_ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")

# Paper ranges where it gives one (method.md); otherwise decided here (docs/readme/data.md).
EPSILON = {
    "digits": NOISE_RANGES["mri"],  # grey images in [0, 1]: the paper's grey-image (MRI) range
    "fashion_mnist": NOISE_RANGES["mri"],  # paper silent: its grey-image (MRI) range
    "mnist": NOISE_RANGES["mri"],  # paper silent: its grey-image (MRI) range
    # Paper silent: [0.4, 0.8] is ~0.1-0.2 of an accelerometer axis' std; MNIST-1D's std is 1.
    "mnist1d": (0.1, 0.2),
    "wisdm": NOISE_RANGES["accelerometer"],
    "image_folder": NOISE_RANGES["mri"],
    "cifar10": NOISE_RANGES["cifar10"],
    "cifar100": NOISE_RANGES["cifar100"],
    "svhn_cropped": NOISE_RANGES["cifar10"],  # paper silent: 8-bit RGB like CIFAR
    "imagenet2012": NOISE_RANGES["imagenet"],
}


class DatasetUnavailableError(FileNotFoundError):
    """A dataset's files are not on this machine (and cannot be downloaded); the message
    names the files expected and how to get them."""


# --------------------------------------------------------------------------- checks


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


def _check_size(value, name, minimum=1):
    return None if value is None else _check_positive_int(value, name, minimum)


# --------------------------------------------------------------------------- arrays


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


def _stratified_indices(y, size, seed, what):
    """Sorted indices of a seeded, stratified subsample of `size` of the labels `y`."""
    from sklearn.model_selection import train_test_split

    n = len(y)
    if size > n:
        raise ValueError(f"{what} = {size} exceeds the {n} examples of that split; pass at "
                         f"most {n}, or None for all.")
    if size == n:
        return np.arange(n)
    try:
        keep, _ = train_test_split(np.arange(n), train_size=size, random_state=seed, stratify=y)
    except ValueError as error:
        classes = len(np.unique(y))
        raise ValueError(f"Cannot draw a stratified subsample of {size} from {n} examples of "
                         f"{classes} classes ({error}); pass {what} >= {classes} (at least one "
                         "example per class).") from error
    return np.sort(keep)


def _split_by_fractions(y, fractions, seed):
    """Seeded stratified split of `arange(len(y))` into len(fractions) parts."""
    from sklearn.model_selection import train_test_split

    rest = np.arange(len(y))
    parts = []
    remaining = 1.0
    for fraction in fractions[:-1]:
        share = fraction / remaining
        take, rest = train_test_split(rest, train_size=share, random_state=seed,
                                      stratify=y[rest])
        parts.append(np.sort(take))
        remaining -= fraction
    parts.append(np.sort(rest))
    return parts


# --------------------------------------------------------------------------- Data


class Data:
    """One dataset in the model's input units: arrays, seeded `tf.data` pipelines, metadata.

    Made by `load`; not meant to be built by hand. Inputs are float32 in the model's units
    (pixels in [0, 1] channels last, signals `(time, channels)`), labels int64.

    !!! example
        ```python
        from larq_l1inf import data
        d = data.load("digits", size=16, train_size=200)
        x, y = d.arrays("train")  # (200, 16, 16, 3) float32, int64
        batches = d.dataset("train", 32, shuffle=True, seed=1)
        d.epsilon  # (0.05, 0.1): the default Algorithm 1 noise range
        ```

    # Attributes
    name: the dataset's name in `DATASETS`.
    input_shape: a model input's shape (tuple, no batch axis).
    num_classes: number of classes.
    class_names: list of str, index = label.
    epsilon: `(lo, hi)`, the dataset's default Algorithm 1 noise range in input units.
    splits: dict split name -> number of examples.
    config: plain values that reproduce the load: `data.load(**d.config)`.
    source: where the data came from (a path, a package), for logs.
    """

    def __init__(self, name, *, input_shape, class_names, epsilon, config, arrays=None,
                 streams=None, augmentation=None, source=None):
        self.name = name
        self.input_shape = tuple(int(d) for d in input_shape)
        self.class_names = [str(c) for c in class_names]
        self.epsilon = (float(epsilon[0]), float(epsilon[1]))
        self.config = dict(config)
        self.source = source
        # split -> (x, y, divisor): x stored compactly (uint8 pixels), scaled on the way out.
        self._arrays = dict(arrays or {})
        # split -> (callable returning an unscaled tf.data.Dataset, count, divisor).
        self._streams = dict(streams or {})
        self._augmentation = augmentation

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def splits(self):
        counts = {split: len(y) for split, (_, y, _) in self._arrays.items()}
        counts.update({split: count for split, (_, count, _) in self._streams.items()})
        return counts

    def __repr__(self):
        splits = ", ".join(f"{k}={v}" for k, v in self.splits.items())
        return (f"Data({self.name!r}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes}, {splits}, epsilon={self.epsilon})")

    def _check_split(self, split):
        if split not in self._arrays and split not in self._streams:
            raise ValueError(f"{self.name} has no split {split!r}; its splits are "
                             f"{sorted(self.splits)}.")

    def arrays(self, split):
        """The whole split as NumPy arrays.

        # Arguments
        split: a key of `splits`, e.g. `"train"`, `"validation"`, `"test"`.

        # Returns
        `(x, y)`: float32 inputs in the model's units, int64 labels.

        # Raises
        ValueError: for a split the dataset does not have, or one too large for memory
            (imagenet2012): use `dataset()` then.
        """
        self._check_split(split)
        if split in self._streams:
            raise ValueError(f"The {split!r} split of {self.name} ({self.splits[split]} "
                             "images) does not fit in memory as one array; iterate "
                             f"data.dataset({split!r}, batch_size) instead.")
        x, y, divisor = self._arrays[split]
        x = x.astype(np.float32)
        if divisor != 1:
            x /= np.float32(divisor)
        return x, y.astype(np.int64)

    def dataset(self, split, batch_size, *, shuffle=False, seed=0, augment=False,
                drop_remainder=False):
        """A batched `tf.data.Dataset` of `(x, y)` of one split.

        With `shuffle`, each iteration (epoch) visits the examples in a new order, and the
        sequence of orders is fixed by `seed`: two datasets made with the same arguments
        give the same batches epoch by epoch (paired runs rely on it). TensorFlow's global
        seed (`tf.random.set_seed`), if set, is part of that seed, as for every `tf.data`
        shuffle.

        # Arguments
        split: a key of `splits`.
        batch_size: examples per batch.
        shuffle: reshuffle every epoch (buffer = the whole split, or 10,000 for streams).
        seed: seed of the shuffle and of the augmentation.
        augment: apply the dataset's training augmentation (random crop of the image
            zero-padded by 4 pixels and horizontal flip for cifar10/100 and imagenet2012);
            datasets without one log a warning and are returned unchanged.
        drop_remainder: drop a last, smaller batch.

        # Returns
        A `tf.data.Dataset` of `(float32 inputs, int64 labels)` batches.

        # Raises
        ValueError: for an unknown split or a batch size below 1.
        """
        self._check_split(split)
        batch_size = _check_positive_int(batch_size, "batch_size")
        if split in self._arrays:
            x, y, divisor = self._arrays[split]
            dataset = tf.data.Dataset.from_tensor_slices((x, y))
            buffer = len(y)
        else:
            make, count, divisor = self._streams[split]
            dataset = make()
            buffer = min(count, 10_000)
        if shuffle:
            dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)

        def scale(x, y):
            x = tf.cast(x, tf.float32)
            if divisor != 1:
                x = x / divisor
            return x, tf.cast(y, tf.int64)

        dataset = dataset.map(scale, num_parallel_calls=tf.data.AUTOTUNE)
        if augment:
            if self._augmentation is None:
                log.warning("%s has no training augmentation; augment=True leaves the data "
                            "unchanged.", self.name)
            else:
                # One stateless seed pair per example, re-drawn every epoch, fixed by `seed`.
                seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
                dataset = tf.data.Dataset.zip((dataset, seeds.batch(2)))
                augmentation = self._augmentation
                dataset = dataset.map(lambda xy, s: (augmentation(xy[0], s), xy[1]),
                                      num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        return dataset.prefetch(tf.data.AUTOTUNE)


def pad_crop_flip(image, seed, padding=4):
    """CIFAR's training augmentation: zero-pad by `padding`, random crop back, random
    horizontal flip; stateless, so `seed` (shape [2]) fixes the result.

    # Arguments
    image: a `(h, w, c)` float tensor.
    seed: an int tensor of shape [2].
    padding: pixels of zeros added on each side before the crop.

    # Returns
    A tensor of the image's shape.

    # References
    - He et al., Deep Residual Learning for Image Recognition, CVPR 2016, section 4.2.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


# --------------------------------------------------------------------------- loaders
# Each returns dict(arrays=..., class_names=..., input_shape=..., [streams, augmentation,
# source]); `load` subsamples, resolves the config and builds the Data.


def _load_digits_source(data_dir, seed, size=32, channels=3, test_fraction=0.2):
    if data_dir is not None:
        raise ValueError("digits is bundled with scikit-learn; it takes no data_dir.")
    (x_train, y_train), (x_test, y_test) = load_digits(
        size=size, channels=channels, test_fraction=test_fraction, seed=seed
    )
    return dict(
        arrays={"train": (x_train, y_train, 1), "test": (x_test, y_test, 1)},
        class_names=[str(i) for i in range(DIGITS_CLASSES)],
        input_shape=x_train.shape[1:],
        source="sklearn.datasets.load_digits",
    )


def read_idx(path):
    """Read an IDX file (the MNIST format), gzipped or not, into a NumPy array.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C
    int32, 0x0D float32, 0x0E float64), the number of dimensions and each dimension as a
    big-endian uint32; the data follow in big-endian C order.

    !!! example
        ```python
        from larq_l1inf.data import read_idx
        x = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
        x.shape, x.dtype  # (10000, 28, 28), uint8
        ```

    # Arguments
    path: the file; a name ending in `.gz` is decompressed.

    # Returns
    An array of the file's shape, in native byte order.

    # Raises
    ValueError: when the file is not IDX (bad magic number) or its size does not match the
        dimensions in its header (truncated download).
    """
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"Cannot read IDX file {path} ({error}); download it again.") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in dtypes:
        raise ValueError(f"{path} is not an IDX file (magic number {raw[:4].hex() or 'empty'}, "
                         "expected 0000 + type + ndim); download it again.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated inside its header; download it again.")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(dtypes[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path} has {len(raw)} bytes but its header {dims} needs {expected}; "
                         "the file is truncated or corrupt: download it again.")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx_dir(name, data_dir):
    """The directory holding the four IDX files: data_dir if given, else a known location."""

    def files_in(directory):
        found = {}
        for split, bases in IDX_FILES.items():
            for base in bases:
                for candidate in (base, base + ".gz"):
                    path = os.path.join(directory, candidate)
                    if os.path.isfile(path):
                        found[base] = path
                        break
        return found

    expected = [b for bases in IDX_FILES.values() for b in bases]
    how = (f"put the four IDX files ({', '.join(f'{b}[.gz]' for b in expected)}) into one "
           "directory and pass data_dir=DIR (CLI: --data-dir DIR)")
    if name == "fashion_mnist":
        how = ("install Debian/Ubuntu's package: `apt-get install dataset-fashion-mnist` "
               "(files in /usr/share/datasets/fashion-mnist), or download them from "
               "https://github.com/zalandoresearch/fashion-mnist and " + how)
    else:
        how = "download them from http://yann.lecun.com/exdb/mnist/ and " + how
    candidates = [data_dir] if data_dir is not None else [
        os.path.expanduser(d) for d in IDX_DIRS[name]
    ]
    for directory in candidates:
        found = files_in(directory)
        if len(found) == len(expected):
            return directory, found
        if data_dir is not None:
            missing = [b for b in expected if b not in found]
            raise DatasetUnavailableError(
                f"{name}: {data_dir} lacks {', '.join(m + '[.gz]' for m in missing)}. To get "
                f"them, {how}."
            )
    raise DatasetUnavailableError(
        f"{name}: no IDX files found (looked in {', '.join(candidates)}). To get them, {how}."
    )


def _load_idx_source(name, data_dir, size=None, channels=1):
    size = _check_size(size, "size", minimum=3)
    channels = _check_positive_int(channels, "channels")
    directory, paths = _find_idx_dir(name, data_dir)
    arrays = {}
    for split, (images_base, labels_base) in IDX_FILES.items():
        images, labels = read_idx(paths[images_base]), read_idx(paths[labels_base])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{name}: {paths[images_base]} {images.shape} and {paths[labels_base]} "
                f"{labels.shape} are not (n, h, w) images with n labels; check the files."
            )
        if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
            raise ValueError(f"{name}: labels in {paths[labels_base]} are outside 0..9.")
        if images.dtype != np.uint8:
            raise ValueError(f"{name}: {paths[images_base]} holds {images.dtype}, not 8-bit "
                             "pixels; check the file.")
        if size is None and channels == 1:
            arrays[split] = (images[..., None], labels.astype(np.int64), 255)
        else:
            x = _resize(images.astype(np.float32) / 255.0, size or images.shape[1], channels)
            arrays[split] = (x, labels.astype(np.int64), 1)
    names = FASHION_MNIST_CLASSES if name == "fashion_mnist" else [str(i) for i in range(10)]
    return dict(arrays=arrays, class_names=names, input_shape=arrays["train"][0].shape[1:],
                source=directory)


def _load_fashion_mnist_source(data_dir, seed, size=None, channels=1):
    return _load_idx_source("fashion_mnist", data_dir, size=size, channels=channels)


def _load_mnist_source(data_dir, seed, size=None, channels=1):
    return _load_idx_source("mnist", data_dir, size=size, channels=channels)


def _mnist1d_defaults():
    return {"train_size": 10_000, "test_size": 10_000}


def _load_mnist1d_source(data_dir, seed, train_size, test_size):
    """MNIST-1D: train_size + test_size signals from one seeded generation, one normalisation
    (the package's), split stratified."""
    from mnist1d.data import get_dataset_args, make_dataset

    if data_dir is not None:
        raise ValueError("mnist1d is generated by the mnist1d package; it takes no data_dir.")
    for what, size in (("train_size", train_size), ("test_size", test_size)):
        if size < 10:
            raise ValueError(f"mnist1d: {what} = {size}; pass >= 10 (one signal per class).")
    # make_dataset makes num_samples // 10 signals per class.
    total = 10 * math.ceil((train_size + test_size) / 10)
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = total, 1.0, int(seed)
    state, py_state = np.random.get_state(), random.getstate()
    try:  # make_dataset seeds the global generators; leave the caller's streams alone.
        generated = make_dataset(args)
    finally:
        np.random.set_state(state)
        random.setstate(py_state)
    x = generated["x"].astype(np.float32)[..., None]
    y = generated["y"].astype(np.int64)
    train, rest = _split_by_fractions(y, (train_size / total, 1 - train_size / total), seed)
    test = rest[_stratified_indices(y[rest], test_size, seed, "test_size")]
    return dict(
        arrays={"train": (x[train], y[train], 1), "test": (x[test], y[test], 1)},
        class_names=[str(i) for i in range(10)],
        input_shape=x.shape[1:],
        source="mnist1d.data.make_dataset",
    )


def _wisdm_files(data_dir):
    if data_dir is None:
        raise DatasetUnavailableError(
            "wisdm needs data_dir: a CSV file (columns user, activity, timestamp, x, y, z) or "
            "a directory of WISDM raw files (e.g. wisdm-dataset/raw/watch/accel from "
            "https://archive.ics.uci.edu/dataset/507)."
        )
    if os.path.isfile(data_dir):
        return [data_dir]
    if os.path.isdir(data_dir):
        files = sorted(os.path.join(data_dir, f) for f in os.listdir(data_dir)
                       if f.lower().endswith((".csv", ".txt")))
        if files:
            return files
    raise DatasetUnavailableError(
        f"wisdm: {data_dir} is neither a CSV file nor a directory holding .csv/.txt files. "
        "Pass a CSV with columns user, activity, timestamp, x, y, z, or WISDM's raw "
        "accelerometer files (e.g. data_1600_accel_watch.txt)."
    )


def _read_wisdm(path):
    """Rows (user, activity, timestamp, x, y, z) of a headed CSV or a WISDM raw file."""
    with open(path, newline="") as handle:
        text = handle.read()
    # WISDM's raw files end every record with ';' (v1.1 sometimes puts two on one line).
    lines = [line.strip().rstrip(";").strip() for line in text.replace(";", ";\n").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"wisdm: {path} is empty.")
    first = next(csv.reader([lines[0]]))
    try:
        float(first[-1])
        header = None
    except (ValueError, IndexError):
        header = [c.strip().lower() for c in first]
        lines = lines[1:]
    if header is None:
        columns = list(range(len(WISDM_COLUMNS)))
        if len(first) < len(WISDM_COLUMNS):
            raise ValueError(f"wisdm: {path} has no header and {len(first)} columns; a raw "
                             f"WISDM file has 6 ({', '.join(WISDM_COLUMNS)}).")
    else:
        # Other spellings seen in accelerometer CSVs (WISDM v1.1's x-axis, subject ids, ...).
        header = [WISDM_ALIASES.get(c, c) for c in header]
        required = ("user", "activity", "x", "y", "z")
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(
                f"wisdm: {path} lacks the column(s) {missing} (header {header}); a CSV needs "
                "the columns user, activity, x, y, z (and optionally timestamp), in any order."
            )
        columns = [header.index(c) if c in header else None for c in WISDM_COLUMNS]
    rows, bad = [], 0
    for fields in csv.reader(lines):
        try:
            user, activity = fields[columns[0]].strip(), fields[columns[1]].strip()
            xyz = [float(fields[columns[k]]) for k in (3, 4, 5)]
        except (ValueError, IndexError):
            bad += 1
            continue
        if not user or not activity or not all(math.isfinite(v) for v in xyz):
            bad += 1
            continue
        rows.append((user, activity, *xyz))
    if bad:
        log.warning("wisdm: skipped %d malformed row(s) of %s (missing or non-numeric "
                    "values).", bad, path)
    return rows


def _load_wisdm_source(data_dir, seed, window=80, stride=40, test_fraction=0.2, test_users=None):
    window = _check_positive_int(window, "window", minimum=3)
    stride = _check_positive_int(stride, "stride")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    rows = []
    for path in _wisdm_files(data_dir):
        rows.extend(_read_wisdm(path))
    if not rows:
        raise ValueError(f"wisdm: no valid rows in {data_dir}.")
    # A recording = consecutive rows of one user and one activity, in file order.
    recordings, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i][:2] != rows[start][:2]:
            recordings.append((rows[start][0], rows[start][1], start, i))
            start = i
    values = np.asarray([r[2:] for r in rows], dtype=np.float32)
    activities = sorted({r[1] for r in rows})
    label_of = {a: k for k, a in enumerate(activities)}
    longest = max(stop - begin for _, _, begin, stop in recordings)
    if window > longest:
        raise ValueError(f"wisdm: window={window} is longer than every recording (the longest "
                         f"has {longest} samples); pass window <= {longest}.")
    short = sum(stop - begin < window for _, _, begin, stop in recordings)
    if short:
        log.warning("wisdm: %d of %d recordings are shorter than window=%d and give no window.",
                    short, len(recordings), window)
    xs, ys, users = [], [], []
    for user, activity, begin, stop in recordings:
        for s in range(begin, stop - window + 1, stride):
            xs.append(values[s:s + window])
            ys.append(label_of[activity])
            users.append(user)
    x, y, users = np.stack(xs), np.asarray(ys, np.int64), np.asarray(users)
    all_users = sorted(set(users.tolist()))
    if test_users is None:
        if len(all_users) < 2:
            raise ValueError(f"wisdm: only {len(all_users)} user(s); a split by user needs >= 2.")
        n_test = min(len(all_users) - 1, max(1, round(test_fraction * len(all_users))))
        rng = np.random.default_rng(seed)
        test_users = sorted(rng.choice(all_users, n_test, replace=False).tolist())
    else:
        test_users = sorted(str(u) for u in test_users)
        unknown = [u for u in test_users if u not in all_users]
        if unknown or len(test_users) >= len(all_users):
            raise ValueError(f"wisdm: test_users must be some, not all, of the users "
                             f"{all_users}; unknown: {unknown}.")
    in_test = np.isin(users, test_users)
    names = [WISDM_2019_ACTIVITIES.get(a, a) for a in activities] if set(activities) <= set(
        WISDM_2019_ACTIVITIES) else activities
    return dict(
        arrays={"train": (x[~in_test], y[~in_test], 1), "test": (x[in_test], y[in_test], 1)},
        class_names=names,
        input_shape=x.shape[1:],
        source=data_dir,
        test_users=test_users,
    )


def _image_files(root):
    """class name -> image paths; pools a top level of split folders (Training/, Testing/)."""

    def subdirs(path):
        return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                      and not d.startswith("."))

    def images(path):
        return sorted(os.path.join(path, f) for f in os.listdir(path)
                      if f.lower().endswith(IMAGE_EXTENSIONS))

    if root is None or not os.path.isdir(root):
        raise DatasetUnavailableError(
            f"image_folder needs data_dir: a directory with one sub-folder of images per class "
            f"(got {root!r}), e.g. the Brain Tumor MRI dataset's Training/ or its root."
        )
    top = subdirs(root)
    # Kaggle's Brain Tumor MRI layout: root/{Training,Testing}/<class>/*.jpg. The paper pools
    # the images and splits them 7:2:1, so pool split folders that hold only class folders.
    nested = bool(top) and all(subdirs(os.path.join(root, d)) and not images(os.path.join(root, d))
                               for d in top)
    groups = [os.path.join(root, d) for d in top] if nested else [root]
    classes = {}
    for group in groups:
        for name in subdirs(group):
            classes.setdefault(name, []).extend(images(os.path.join(group, name)))
    empty = [c for c, files in classes.items() if not files]
    if len(classes) < 2 or empty:
        raise DatasetUnavailableError(
            f"image_folder: {root} needs >= 2 class sub-folders each holding images "
            f"({', '.join(IMAGE_EXTENSIONS)}); found classes {sorted(classes)}"
            + (f", empty: {empty}" if empty else "") + "."
        )
    return classes


def _load_image_folder_source(data_dir, seed, size=64, channels=1,
                              fractions=(0.7, 0.2, 0.1)):
    from PIL import Image

    size = _check_positive_int(size, "size", minimum=3)
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"`fractions` must be three positive train/validation/test fractions "
                         f"summing to 1, e.g. (0.7, 0.2, 0.1); got {fractions}.")
    classes = _image_files(data_dir)
    names = sorted(classes)
    x = np.empty((sum(len(f) for f in classes.values()), size, size, channels), np.uint8)
    y = np.empty(len(x), np.int64)
    i = 0
    for label, name in enumerate(names):
        for path in classes[name]:
            try:
                with Image.open(path) as image:
                    image = image.convert("L" if channels == 1 else "RGB")
                    image = image.resize((size, size), Image.BILINEAR)
                    pixels = np.asarray(image, np.uint8)
            except OSError as error:
                raise ValueError(f"image_folder: cannot read {path} ({error}); remove or "
                                 "replace the file.") from error
            x[i] = pixels.reshape(size, size, channels)
            y[i] = label
            i += 1
    smallest = int(np.bincount(y).min())
    if smallest * min(fractions) < 1:
        raise ValueError(f"image_folder: a class has only {smallest} image(s), too few to "
                         f"split {fractions}; add images or merge small classes.")
    train, validation, test = _split_by_fractions(y, fractions, seed)
    return dict(
        arrays={split: (x[idx], y[idx], 255) for split, idx in
                (("train", train), ("validation", validation), ("test", test))},
        class_names=names,
        input_shape=x.shape[1:],
        source=data_dir,
    )


def _prepared(builder):
    return tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))


def _tfds_builder(name, data_dir, manual_dir=None, download=False):
    """A prepared TFDS builder, or DatasetUnavailableError saying how to prepare it."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"TFDS does not know a dataset named {name!r}; use a TFDS name such as 'cifar10', "
            "'cifar100', 'mnist' or 'svhn_cropped'."
        ) from error
    if _prepared(builder):
        return builder
    where = data_dir or "TFDS' default data_dir (~/tensorflow_datasets)"
    if not download and manual_dir is None:
        raise DatasetUnavailableError(
            f"TFDS dataset {name!r} is not prepared in {where} (looked for "
            f"{builder.data_dir}) and download=False. This machine cannot download: pass "
            "data_dir= with a dataset prepared elsewhere (tfds.builder(name).download_and_"
            "prepare(), then copy the directory), manual_dir= with the archives for "
            "imagenet2012, or use larq_l1inf.data.load_digits() for an offline dataset."
        )
    if manual_dir is not None:
        manual_dir = os.fspath(manual_dir)
        archives = IMAGENET_ARCHIVES if name == "imagenet2012" else ()
        missing = [a for a in archives if not os.path.isfile(os.path.join(manual_dir, a))]
        if missing or not os.path.isdir(manual_dir):
            raise DatasetUnavailableError(
                f"TFDS dataset {name!r}: manual_dir {manual_dir} lacks {missing or 'files'}; "
                "download them from https://image-net.org (account needed) into manual_dir."
            )
    try:
        config = None
        if manual_dir is not None:
            config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        builder.download_and_prepare(download_config=config)
    except Exception as error:  # noqa: BLE001 - re-raised with what to do
        raise DatasetUnavailableError(
            f"Preparing TFDS dataset {name!r} failed ({type(error).__name__}: {error}). "
            "Without internet, pass data_dir= with a prepared copy (or manual_dir= with "
            "ImageNet's archives), or use larq_l1inf.data.load_digits()."
        ) from error
    return builder


def _num_examples(builder, split):
    return builder.info.splits[split].num_examples


def _tfds_source(name, data_dir, size=None, manual_dir=None, download=False):
    import tensorflow_datasets as tfds

    size = _check_size(size, "size")
    builder = _tfds_builder(name, data_dir, manual_dir=manual_dir, download=download)
    info = builder.info
    class_names = list(info.features["label"].names)
    tfds_splits = {"train": "train", "test": "validation" if name == "imagenet2012" else "test"}

    def resized(image, label):
        image = tf.image.resize(image, (size, size), method="bilinear")
        return image, label

    if name == "imagenet2012":
        streams = {}
        for split, tfds_split in tfds_splits.items():
            def make(tfds_split=tfds_split):
                ds = builder.as_dataset(split=tfds_split, as_supervised=True,
                                        shuffle_files=False)
                # Resizing the 8-bit pixels is linear, so scaling by 1/255 afterwards commutes.
                return ds.map(resized, num_parallel_calls=tf.data.AUTOTUNE)
            streams[split] = (make, _num_examples(builder, tfds_split), 255)
        return dict(streams=streams, arrays={}, class_names=class_names,
                    input_shape=(size, size, 3), augmentation=pad_crop_flip,
                    source=builder.data_dir)
    arrays = {}
    for split, tfds_split in tfds_splits.items():
        ds = builder.as_dataset(split=tfds_split, as_supervised=True, shuffle_files=False)
        xs, ys = [], []
        for images, labels in tfds.as_numpy(ds.batch(4096)):
            xs.append(images)
            ys.append(labels)
        x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int64)
        if size is not None and x.shape[1:3] != (size, size):
            arrays[split] = (_resize(x.astype(np.float32) / 255.0, size, x.shape[-1]), y, 1)
        else:
            arrays[split] = (x, y, 255)
    augmentation = pad_crop_flip if name in ("cifar10", "cifar100") else None
    return dict(arrays=arrays, class_names=class_names, input_shape=arrays["train"][0].shape[1:],
                augmentation=augmentation, source=builder.data_dir)


def _imagenet_source(data_dir, seed, size=224, manual_dir=None, download=False):
    return _tfds_source("imagenet2012", data_dir, size=size, manual_dir=manual_dir,
                        download=download)


def _tfds_loader(name):
    def loader(data_dir, seed, size=None, download=False):
        return _tfds_source(name, data_dir, size=size, download=download)
    return loader


LOADERS = {
    "digits": _load_digits_source,
    "fashion_mnist": _load_fashion_mnist_source,
    "mnist": _load_mnist_source,
    "mnist1d": _load_mnist1d_source,
    "wisdm": _load_wisdm_source,
    "image_folder": _load_image_folder_source,
    "cifar10": _tfds_loader("cifar10"),
    "cifar100": _tfds_loader("cifar100"),
    "svhn_cropped": _tfds_loader("svhn_cropped"),
    "imagenet2012": _imagenet_source,
}


def _hold_out_validation(name, source, size, seed):
    """Move a seeded, stratified `size` examples of the training split into "validation"."""
    arrays = source["arrays"]
    if "validation" in arrays:
        raise ValueError(f"{name} has its own validation split; drop validation_size (for "
                         "image_folder, set its size with fractions=).")
    if "train" not in arrays:
        raise ValueError(f"{name}'s train split is streamed; validation_size cannot split it.")
    x, y, divisor = arrays["train"]
    held = _stratified_indices(y, size, seed, "validation_size")
    if len(held) == len(y):
        raise ValueError(f"validation_size = {size} leaves no training data; pass less than "
                         f"{len(y)}.")
    rest = np.setdiff1d(np.arange(len(y)), held)
    test = arrays.pop("test")
    arrays["train"] = (x[rest], y[rest], divisor)
    arrays["validation"] = (x[held], y[held], divisor)
    arrays["test"] = test


def _options_of(loader):
    return {name: p.default for name, p in inspect.signature(loader).parameters.items()
            if name not in ("data_dir", "seed") and p.default is not inspect.Parameter.empty}


def load(name, *, data_dir=None, seed=0, train_size=None, test_size=None,
         validation_size=None, **options):
    """Load a dataset in the model's input units, with its default noise range.

    | name | source | input | epsilon |
    | --- | --- | --- | --- |
    | `digits` | scikit-learn, bundled | `(size, size, channels)`, [0, 1] | [0.05, 0.1] |
    | `fashion_mnist`, `mnist` | IDX files | `(28, 28, 1)`, [0, 1] | [0.05, 0.1] |
    | `mnist1d` | generated by `mnist1d` | `(40, 1)`, std 1 | [0.1, 0.2] |
    | `wisdm` | accelerometer CSV | `(window, 3)`, m/s^2 | [0.4, 0.8] |
    | `image_folder` | a folder per class | `(size, size, channels)`, [0, 1] | [0.05, 0.1] |
    | `cifar10`, `cifar100`, `svhn_cropped`, `imagenet2012` | TFDS | [0, 1] | [1/255, 4/255] |

    Options per dataset (defaults in brackets):

    - `digits`: `size` [32], `channels` [3], `test_fraction` [0.2].
    - `fashion_mnist`, `mnist`: `size` [None: 28], `channels` [1]. Without `data_dir` the
      IDX files are looked for in `IDX_DIRS` (Debian's `dataset-fashion-mnist` installs
      Fashion-MNIST in /usr/share/datasets/fashion-mnist).
    - `mnist1d`: `train_size` [10,000] and `test_size` [10,000] are the numbers of signals
      generated (one seeded generation, normalised by the package, split stratified).
    - `wisdm`: `data_dir` = a CSV with a header naming the columns `user, activity, x, y, z`
      (`timestamp` optional; any order; also `subject`, `label`, `x-axis`, ...), or a WISDM raw file / directory of raw files
      (no header, `user,activity,timestamp,x,y,z;`); `window` [80] and `stride` [40]
      samples; the split is by user: `test_fraction` [0.2] of the users, or `test_users`.
    - `image_folder`: `data_dir` = a folder with one sub-folder per class (a first level of
      split folders such as `Training/`, `Testing/` is pooled); `size` [64], `channels`
      [1 grey or 3 RGB], `fractions` [(0.7, 0.2, 0.1)] train/validation/test, stratified.
    - TFDS names: `data_dir` (TFDS' data dir), `size` [None], `download` [False];
      `imagenet2012` also `manual_dir` (the archives; prepared on first use) and `size` [224].

    !!! example
        ```python
        from larq_l1inf import data
        d = data.load("digits", size=16, seed=1, test_size=100)
        x, y = d.arrays("test")
        x.shape, d.epsilon  # (100, 16, 16, 3), (0.05, 0.1)
        same = data.load(**d.config)
        ```

    # Arguments
    name: one of `DATASETS`.
    data_dir: where the files are (see above); None for bundled/generated datasets and the
        known locations.
    seed: seed of the split(s), the subsamples and generated data.
    train_size: a seeded, stratified subsample of the training split (None: all).
    test_size: the same for the test split.
    validation_size: hold out a seeded, stratified `validation` split of this many examples
        from the training split (before `train_size` subsamples the rest), for datasets
        without one of their own (all but `image_folder`).
    **options: the dataset's options (see above).

    # Returns
    A `Data`.

    # Raises
    ValueError: for an unknown name (the message lists `DATASETS`), unknown options, bad
        sizes or fractions, a CSV without the needed columns or a window longer than every
        recording.
    DatasetUnavailableError: when the files are not found; the message says how to get them.
    """
    if name not in LOADERS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    loader = LOADERS[name]
    defaults = dict(_mnist1d_defaults()) if name == "mnist1d" else {}
    defaults.update(_options_of(loader))
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"{name} does not take the option(s) {unknown}; its options are "
                        f"{sorted(k for k in defaults if k not in ('train_size', 'test_size'))}.")
    train_size = _check_size(train_size, "train_size")
    test_size = _check_size(test_size, "test_size")
    validation_size = _check_size(validation_size, "validation_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int, got {seed!r}.")
    seed = int(seed)
    resolved = {k: v for k, v in defaults.items() if k not in ("train_size", "test_size")}
    resolved.update(options)
    if name == "mnist1d":
        train_size = defaults["train_size"] if train_size is None else train_size
        test_size = defaults["test_size"] if test_size is None else test_size
        source = loader(data_dir, seed, train_size=train_size, test_size=test_size)
    else:
        source = loader(data_dir, seed, **resolved)
    if validation_size is not None:
        _hold_out_validation(name, source, validation_size, seed)
    if name != "mnist1d":
        for split, size in (("train", train_size), ("test", test_size)):
            if size is None:
                continue
            if split not in source["arrays"]:
                raise ValueError(f"{name}'s {split} split is streamed; {split}_size cannot "
                                 "subsample it. Use TFDS split slicing or another dataset.")
            x, y, divisor = source["arrays"][split]
            keep = _stratified_indices(y, size, seed, f"{split}_size")
            source["arrays"][split] = (x[keep], y[keep], divisor)
    config = {"name": name, "data_dir": None if data_dir is None else os.fspath(data_dir),
              "seed": seed, "train_size": train_size, "test_size": test_size,
              "validation_size": validation_size,
              **{k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}}
    data = Data(name, input_shape=source["input_shape"], class_names=source["class_names"],
                epsilon=EPSILON[name], config=config, arrays=source.get("arrays"),
                streams=source.get("streams"), augmentation=source.get("augmentation"),
                source=source.get("source"))
    if "test_users" in source:
        data.test_users = list(source["test_users"])
    for split, count in data.splits.items():
        if count == 0:
            raise ValueError(f"{name}: the {split} split is empty; use more data or other "
                             "split options.")
    log.info("Loaded %r from %s", data, data.source)
    return data


# --------------------------------------------------------------------------- 0.1.0 API


def load_digits(size=32, channels=3, test_fraction=0.2, seed=0, as_dataset=False,
                batch_size=None):
    """scikit-learn's 8x8 handwritten digits as an image classification task.

    The 1797 grey images (pixel values 0..16) are scaled to [0, 1], resized to
    `size x size` with bilinear `tf.image.resize` and repeated over `channels`. The split is
    stratified by class and fixed by `seed`. `load("digits", ...)` gives the same split as
    a `Data`.

    !!! example
        ```python
        from larq_l1inf.data import load_digits
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


def _as_dataset(x, y, batch_size, shuffle, seed):
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if batch_size:
        dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


def load_tfds(name, split="train", data_dir=None, download=False, size=None,
              batch_size=None, shuffle=False, seed=0, as_dataset=True, as_numpy=None):
    """One split of a TensorFlow Datasets image dataset, pixels in [0, 1].

    Images are cast to float32 and divided by 255 (8-bit datasets such as cifar10,
    cifar100, mnist, fashion_mnist, svhn_cropped); `size` optionally resizes them
    (bilinear). Labels stay integers. `load(name, ...)` is the registry's way to the same
    data; this function takes any TFDS name and split string.

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
    as_dataset: return a `tf.data.Dataset` (True) or `(x, y)` NumPy arrays, the whole split
        in memory (False).
    as_numpy: deprecated spelling of `as_dataset=False`.

    # Returns
    A `tf.data.Dataset` of `(image, label)`, or `(x, y)` arrays with `as_dataset=False`.

    # Raises
    DatasetUnavailableError: when the dataset is not prepared in `data_dir` and
        `download=False`, or the download fails.
    ValueError: for a name TFDS does not know.
    """
    import tensorflow_datasets as tfds

    if as_numpy is not None:
        warnings.warn("load_tfds(as_numpy=...) is deprecated; use as_dataset=False.",
                      DeprecationWarning, stacklevel=2)
        as_dataset = not as_numpy
    builder = _tfds_builder(name, data_dir, download=download)
    dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)

    def scale(image, label):
        image = tf.cast(image, tf.float32) / 255.0
        if size is not None:
            image = tf.image.resize(image, (size, size), method="bilinear")
        return image, label

    dataset = dataset.map(scale, num_parallel_calls=tf.data.AUTOTUNE)
    if not as_dataset:
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

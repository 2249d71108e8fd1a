"""Datasets: the `load` registry and its sources, on files the tests write themselves."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits

from larq_l1inf import data
from larq_l1inf._keras import tf


def bilinear_half_pixel(image, size):
    """Independent bilinear resize (TF's half-pixel centres, edge clamping) with loops."""
    h, w = image.shape
    out = np.zeros((size, size), dtype=np.float64)
    for i in range(size):
        for j in range(size):
            y = (i + 0.5) * h / size - 0.5
            x = (j + 0.5) * w / size - 0.5
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            dy, dx = y - y0, x - x0
            value = 0.0
            for yy, wy in ((y0, 1 - dy), (y0 + 1, dy)):
                for xx, wx in ((x0, 1 - dx), (x0 + 1, dx)):
                    value += wy * wx * image[min(max(yy, 0), h - 1), min(max(xx, 0), w - 1)]
            out[i, j] = value
    return out


class TestDigits:
    def test_shapes_dtypes_range(self):
        (x_train, y_train), (x_test, y_test) = data.load_digits(size=16, channels=3)
        assert x_train.shape == (1437, 16, 16, 3) and x_test.shape == (360, 16, 16, 3)
        assert x_train.dtype == np.float32 and y_train.dtype == np.int32
        assert 0.0 <= x_train.min() and x_train.max() <= 1.0
        assert set(np.unique(y_test)) == set(range(10))
        np.testing.assert_array_equal(x_train[..., 0], x_train[..., 2])

    def test_size_8_is_the_raw_pixels_over_16(self):
        (x_train, y_train), (x_test, y_test) = data.load_digits(size=8, channels=1)
        digits = sklearn_digits()
        raw = digits.images.astype(np.float32) / 16.0
        # Every returned image is one of the originals with its label; together they are all.
        x_all = np.concatenate([x_train, x_test])[..., 0].reshape(len(raw), -1)
        y_all = np.concatenate([y_train, y_test])
        order = np.lexsort(x_all.T[::-1])
        ref_order = np.lexsort(raw.reshape(len(raw), -1).T[::-1])
        np.testing.assert_array_equal(x_all[order], raw.reshape(len(raw), -1)[ref_order])
        np.testing.assert_array_equal(y_all[order], digits.target[ref_order])

    def test_upscaling_is_bilinear(self):
        (x_train, _), _ = data.load_digits(size=8, channels=1, seed=3)
        (x_big, _), _ = data.load_digits(size=20, channels=1, seed=3)
        for k in range(3):
            expected = bilinear_half_pixel(x_train[k, ..., 0], 20)
            np.testing.assert_allclose(x_big[k, ..., 0], expected, atol=1e-5)

    def test_split_is_deterministic_and_stratified(self):
        (a, ya), _ = data.load_digits(size=8, seed=1)
        (b, yb), _ = data.load_digits(size=8, seed=1)
        (c, _), _ = data.load_digits(size=8, seed=2)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)
        assert not np.array_equal(a, c)
        _, (_, y_test) = data.load_digits(size=8, test_fraction=0.5)
        per_class = np.bincount(sklearn_digits().target, minlength=10)
        counts = np.bincount(y_test, minlength=10)
        assert np.all(np.abs(counts - per_class / 2) <= 1)  # stratified: half of every class

    def test_as_dataset(self):
        train, test = data.load_digits(size=8, channels=2, as_dataset=True, batch_size=32)
        images, labels = next(iter(test))
        assert images.shape == (32, 8, 8, 2) and labels.dtype == tf.int32
        assert sum(int(b[1].shape[0]) for b in train) == 1437

    BAD_ARGS = [
        dict(size=2),
        dict(size=8.5),
        dict(channels=0),
        dict(test_fraction=1.0),
        dict(test_fraction=0),
        dict(batch_size=8),  # without as_dataset
    ]

    @pytest.mark.parametrize("kwargs", BAD_ARGS)
    def test_bad_arguments(self, kwargs):
        with pytest.raises((ValueError, TypeError)):
            data.load_digits(**kwargs)


class TestTFDS:
    def test_missing_dataset_says_what_to_do(self, tmp_path):
        with pytest.raises(data.DatasetUnavailableError) as info:
            data.load_tfds("cifar10", split="test", data_dir=str(tmp_path))
        message = str(info.value)
        assert "data_dir" in message and "load_digits" in message and str(tmp_path) in message
        assert isinstance(info.value, FileNotFoundError)

    def test_failed_download_says_what_to_do(self, tmp_path, monkeypatch):
        import tensorflow_datasets as tfds

        def no_network(self, *args, **kwargs):
            raise ConnectionError("no route to host")

        monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
        with pytest.raises(data.DatasetUnavailableError, match="no route to host.*data_dir"):
            data.load_tfds("cifar10", data_dir=str(tmp_path), download=True)

    def test_unknown_name(self):
        with pytest.raises(ValueError, match="does not know a dataset named 'not_a_dataset'"):
            data.load_tfds("not_a_dataset")

    def test_pixels_scaled_to_unit_range(self, monkeypatch):
        """A prepared 8-bit dataset (faked: no TFDS files here) comes out in [0, 1]."""
        import tensorflow_datasets as tfds

        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
        images[0, 0, 0, 0] = 255
        labels = rng.integers(0, 10, 6)

        def as_dataset(self, split, as_supervised, shuffle_files):
            assert as_supervised and split == "test"
            return tf.data.Dataset.from_tensor_slices((images, labels))

        monkeypatch.setattr(data, "_prepared", lambda builder: True)
        monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", as_dataset)
        x, y = data.load_tfds("cifar10", split="test", as_dataset=False)
        np.testing.assert_allclose(x, images / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y, labels)
        small = data.load_tfds("cifar10", split="test", batch_size=4, size=8)
        batch, _ = next(iter(small))
        assert batch.shape == (4, 8, 8, 3) and batch.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(batch)) and float(tf.reduce_max(batch)) <= 1.0
        with pytest.warns(DeprecationWarning, match="as_dataset=False"):
            x_old, _ = data.load_tfds("cifar10", split="test", as_numpy=True)
        np.testing.assert_array_equal(x_old, x)


class TestRegistry:
    def test_digits_data_interface(self):
        d = data.load("digits", size=8, channels=1, seed=2, train_size=100)
        assert d.name == "digits" and d.input_shape == (8, 8, 1) and d.num_classes == 10
        assert d.class_names == [str(i) for i in range(10)]
        assert d.splits == {"train": 100, "test": 360}
        assert d.epsilon == (0.05, 0.1)
        x, y = d.arrays("train")
        assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (100, 8, 8, 1)
        np.testing.assert_array_equal(np.bincount(y), np.full(10, 10))  # stratified
        # The subsample is drawn from load_digits' own training split.
        (x_full, _), (x_test, y_test) = data.load_digits(size=8, channels=1, seed=2)
        assert all(np.any(np.all(x_full == row, axis=(1, 2, 3))) for row in x[:10])
        np.testing.assert_array_equal(d.arrays("test")[1], y_test)

    def test_config_reproduces_the_load(self):
        d = data.load("digits", size=8, seed=3, train_size=50, test_size=30)
        again = data.load(**d.config)
        for split in ("train", "test"):
            for a, b in zip(d.arrays(split), again.arrays(split)):
                np.testing.assert_array_equal(a, b)
        other = data.load("digits", size=8, seed=4, train_size=50, test_size=30)
        assert not np.array_equal(other.arrays("train")[0], d.arrays("train")[0])
        assert all(isinstance(v, (str, int, float, list, type(None))) for v in d.config.values())

    def test_dataset_shuffle_is_fixed_by_seed(self):
        d = data.load("digits", size=8, channels=1, train_size=64)

        def epochs(dataset, n=2):
            return [np.concatenate([y.numpy() for _, y in dataset]) for _ in range(n)]

        first = epochs(d.dataset("train", 16, shuffle=True, seed=5))
        tf.random.uniform((3,))  # other random ops in between must not matter
        np.random.rand(3)
        second = epochs(d.dataset("train", 16, shuffle=True, seed=5))
        other = epochs(d.dataset("train", 16, shuffle=True, seed=6))
        for a, b in zip(first, second):
            np.testing.assert_array_equal(a, b)
        assert not np.array_equal(first[0], first[1])  # reshuffled every epoch
        assert not np.array_equal(first[0], other[0])
        ordered = np.concatenate([y.numpy() for _, y in d.dataset("train", 16)])
        np.testing.assert_array_equal(ordered, d.arrays("train")[1])
        np.testing.assert_array_equal(np.sort(first[0]), np.sort(ordered))

    def test_dataset_batches(self):
        d = data.load("digits", size=8, train_size=50)
        batches = list(d.dataset("train", 16, drop_remainder=True))
        assert len(batches) == 3 and batches[0][0].shape == (16, 8, 8, 3)
        assert batches[0][0].dtype == tf.float32 and batches[0][1].dtype == tf.int64
        assert len(list(d.dataset("train", 16))) == 4

    def test_errors(self):
        with pytest.raises(ValueError, match="Unknown dataset 'nope'.*fashion_mnist.*mnist1d"):
            data.load("nope")
        with pytest.raises(TypeError, match="does not take.*'colour'.*channels"):
            data.load("digits", colour=3)
        with pytest.raises(ValueError, match="train_size = 5000 exceeds the 1437"):
            data.load("digits", size=8, train_size=5000)
        with pytest.raises(ValueError, match="train_size >= 10"):
            data.load("digits", size=8, train_size=5)
        with pytest.raises(ValueError, match="train_size"):
            data.load("digits", size=8, train_size=0)
        with pytest.raises(ValueError, match="test_fraction"):
            data.load("digits", test_fraction=1.5)
        d = data.load("digits", size=8, train_size=20)
        with pytest.raises(ValueError, match="no split 'validation'.*test.*train"):
            d.arrays("validation")
        with pytest.raises(ValueError, match="batch_size"):
            d.dataset("train", 0)

    def test_augment_without_augmentation_warns(self, caplog):
        d = data.load("digits", size=8, train_size=20)
        with caplog.at_level("WARNING", logger="larq_l1inf.data"):
            x = np.concatenate([b.numpy() for b, _ in d.dataset("train", 8, augment=True)])
        assert "no training augmentation" in caplog.text
        np.testing.assert_array_equal(x, d.arrays("train")[0])

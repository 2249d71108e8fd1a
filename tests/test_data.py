"""Datasets: the `load` registry and its sources, on files the tests write themselves."""

import gzip
import os

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

    def test_validation_size_holds_out_part_of_train(self):
        full = data.load("digits", size=8, channels=1)
        d = data.load("digits", size=8, channels=1, validation_size=100, train_size=500)
        assert list(d.splits) == ["train", "validation", "test"]
        assert d.splits == {"train": 500, "validation": 100, "test": 360}
        np.testing.assert_array_equal(np.bincount(d.arrays("validation")[1]), np.full(10, 10))
        x_full = full.arrays("train")[0].reshape(1437, -1)
        rows = {r.tobytes() for r in x_full}
        train = {r.tobytes() for r in d.arrays("train")[0].reshape(500, -1)}
        held = {r.tobytes() for r in d.arrays("validation")[0].reshape(100, -1)}
        assert train <= rows and held <= rows and not train & held
        assert data.load(**d.config).splits == d.splits
        with pytest.raises(ValueError, match="leaves no training data"):
            data.load("digits", size=8, validation_size=1437)

    def test_augment_without_augmentation_warns(self, caplog):
        d = data.load("digits", size=8, train_size=20)
        with caplog.at_level("WARNING", logger="larq_l1inf.data"):
            x = np.concatenate([b.numpy() for b, _ in d.dataset("train", 8, augment=True)])
        assert "no training augmentation" in caplog.text
        np.testing.assert_array_equal(x, d.arrays("train")[0])


# --------------------------------------------------------------------------- IDX files


def write_idx(path, array, type_code=0x08):
    """An IDX file written by hand: 0, 0, type, ndim, big-endian uint32 dims, big-endian data."""
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + np.asarray(array, dtype).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(raw)


def write_mnist_like(directory, n_train=40, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 6, 5), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        suffix = ".gz" if gz else ""
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        out[prefix] = (images, labels)
    return out


class TestIDX:
    @pytest.mark.parametrize("type_code", [0x08, 0x0B, 0x0D])
    @pytest.mark.parametrize("gz", [True, False])
    def test_read_idx_round_trip(self, tmp_path, type_code, gz):
        array = (np.arange(24).reshape(2, 3, 4) * 3 - 20).astype(np.float32)
        if type_code == 0x08:
            array = np.abs(array).astype(np.uint8)
        path = tmp_path / ("a.idx.gz" if gz else "a.idx")
        write_idx(path, array, type_code)
        read = data.read_idx(path)
        assert read.shape == (2, 3, 4) and read.dtype.isnative
        np.testing.assert_array_equal(read, array)

    def test_bad_files(self, tmp_path):
        (tmp_path / "junk").write_bytes(b"PK\x03\x04 not idx")
        with pytest.raises(ValueError, match="not an IDX file.*download it again"):
            data.read_idx(tmp_path / "junk")
        write_idx(tmp_path / "ok", np.zeros((4, 3), np.uint8))
        (tmp_path / "cut").write_bytes((tmp_path / "ok").read_bytes()[:-2])
        with pytest.raises(ValueError, match=r"header \(4, 3\) needs.*truncated"):
            data.read_idx(tmp_path / "cut")
        (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
        with pytest.raises(ValueError, match="Cannot read IDX file.*bad.gz"):
            data.read_idx(tmp_path / "bad.gz")

    @pytest.mark.parametrize("gz", [True, False])
    def test_load_from_data_dir(self, tmp_path, gz):
        files = write_mnist_like(tmp_path / "idx", gz=gz)
        d = data.load("mnist", data_dir=str(tmp_path / "idx"))
        assert d.splits == {"train": 40, "test": 20} and d.input_shape == (6, 5, 1)
        x, y = d.arrays("test")
        np.testing.assert_allclose(x[..., 0], files["t10k"][0] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y, files["t10k"][1])
        assert x.dtype == np.float32 and y.dtype == np.int64
        batches = list(d.dataset("test", 7))  # same values through tf.data as through arrays
        np.testing.assert_array_equal(np.concatenate([b.numpy() for b, _ in batches]), x)
        np.testing.assert_array_equal(np.concatenate([t.numpy() for _, t in batches]), y)
        f = data.load("fashion_mnist", data_dir=tmp_path / "idx", size=8, channels=3,
                      train_size=20)
        assert f.class_names[0] == "T-shirt/top" and f.input_shape == (8, 8, 3)
        assert f.splits["train"] == 20 and f.epsilon == (0.05, 0.1)
        assert 0 <= f.arrays("train")[0].min() and f.arrays("train")[0].max() <= 1

    def test_missing_files_say_how_to_get_them(self, tmp_path, monkeypatch):
        write_mnist_like(tmp_path / "idx")
        (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").unlink()
        with pytest.raises(data.DatasetUnavailableError,
                           match="lacks t10k-labels-idx1-ubyte.*data_dir") as info:
            data.load("fashion_mnist", data_dir=tmp_path / "idx")
        assert "apt-get install dataset-fashion-mnist" in str(info.value)
        assert isinstance(info.value, FileNotFoundError)
        monkeypatch.setitem(data.IDX_DIRS, "fashion_mnist", (str(tmp_path / "nowhere"),))
        with pytest.raises(data.DatasetUnavailableError,
                           match="no IDX files found.*nowhere.*apt-get install"):
            data.load("fashion_mnist")

    def test_finds_the_known_location(self, tmp_path, monkeypatch):
        write_mnist_like(tmp_path / "b")
        monkeypatch.setitem(data.IDX_DIRS, "mnist", (str(tmp_path / "a"), str(tmp_path / "b")))
        d = data.load("mnist")
        assert d.source == str(tmp_path / "b") and d.config["data_dir"] is None

    def test_inconsistent_files(self, tmp_path):
        write_mnist_like(tmp_path)
        write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
        with pytest.raises(ValueError, match="are not \\(n, h, w\\) images with n labels"):
            data.load("mnist", data_dir=tmp_path)

    @pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                        reason="real Fashion-MNIST not installed (apt-get install "
                               "dataset-fashion-mnist)")
    def test_real_fashion_mnist(self):
        d = data.load("fashion_mnist")
        assert d.splits == {"train": 60000, "test": 10000} and d.input_shape == (28, 28, 1)
        x, y = d.arrays("test")
        np.testing.assert_array_equal(np.bincount(y), np.full(10, 1000))
        assert x.min() == 0.0 and x.max() == 1.0 and 0.2 < x.mean() < 0.4


# --------------------------------------------------------------------------- image folders


def write_image_folder(root, classes=("glioma", "meningioma", "notumor"), per_class=10,
                       mode="L", seed=0):
    """Tiny constant-colour PNGs of varying sizes; returns class -> grey value."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    values = {}
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        values[name] = 40 + 60 * k
        for i in range(per_class):
            h, w = rng.integers(5, 12, 2)
            colour = values[name] if mode == "L" else (values[name], 0, 255)
            Image.new(mode, (int(w), int(h)), colour).save(root / name / f"{i}.png")
    return values


class TestImageFolder:
    def test_grey_split_7_2_1(self, tmp_path):
        values = write_image_folder(tmp_path)
        d = data.load("image_folder", data_dir=str(tmp_path), size=4, seed=1)
        assert d.class_names == ["glioma", "meningioma", "notumor"]
        assert d.splits == {"train": 21, "validation": 6, "test": 3}
        assert d.input_shape == (4, 4, 1) and d.epsilon == (0.05, 0.1)
        for split in d.splits:
            x, y = d.arrays(split)
            # stratified: 7, 2, 1 of each class's 10 images
            assert np.all(np.bincount(y, minlength=3) == d.splits[split] // 3)
            for image, label in zip(x, y):  # constant images survive the resize
                np.testing.assert_allclose(image, values[d.class_names[label]] / 255.0,
                                           atol=1e-6)
        again = data.load(**d.config)
        np.testing.assert_array_equal(again.arrays("validation")[0], d.arrays("validation")[0])

    def test_split_depends_on_seed_and_never_overlaps(self, tmp_path):
        from PIL import Image

        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        for i in range(20):  # every image distinct: grey value i (class a) or 100 + i (b)
            Image.new("L", (3, 3), i).save(tmp_path / "a" / f"{i}.png")
            Image.new("L", (3, 3), 100 + i).save(tmp_path / "b" / f"{i}.png")

        def ids(d, split):
            return set(np.round(d.arrays(split)[0][:, 0, 0, 0] * 255).astype(int).tolist())

        d1 = data.load("image_folder", data_dir=tmp_path, size=3, seed=1)
        d2 = data.load("image_folder", data_dir=tmp_path, size=3, seed=2)
        splits = [ids(d1, s) for s in ("train", "validation", "test")]
        assert sum(len(s) for s in splits) == 40 and len(set().union(*splits)) == 40
        assert ids(d1, "test") != ids(d2, "test")

    def test_rgb_and_nested_training_testing_layout(self, tmp_path):
        write_image_folder(tmp_path / "Training", mode="RGB", per_class=7)
        write_image_folder(tmp_path / "Testing", mode="RGB", per_class=3)
        d = data.load("image_folder", data_dir=tmp_path, size=5, channels=3, train_size=12)
        assert d.input_shape == (5, 5, 3) and len(d.class_names) == 3
        assert d.splits == {"train": 12, "validation": 6, "test": 3}
        x, _ = d.arrays("train")
        np.testing.assert_allclose(x[..., 1], 0.0)
        np.testing.assert_allclose(x[..., 2], 1.0)

    def test_errors(self, tmp_path):
        with pytest.raises(data.DatasetUnavailableError, match="one sub-folder of images"):
            data.load("image_folder", data_dir=tmp_path / "missing")
        (tmp_path / "only").mkdir()
        write_image_folder(tmp_path / "only", classes=("a",))
        with pytest.raises(data.DatasetUnavailableError, match=">= 2 class sub-folders"):
            data.load("image_folder", data_dir=tmp_path / "only")
        write_image_folder(tmp_path / "bad", per_class=10)
        (tmp_path / "bad" / "glioma" / "broken.png").write_bytes(b"not a png")
        with pytest.raises(ValueError, match="cannot read .*broken.png.*remove or replace"):
            data.load("image_folder", data_dir=tmp_path / "bad", size=4)
        write_image_folder(tmp_path / "ok", per_class=10)
        with pytest.raises(ValueError, match="fractions"):
            data.load("image_folder", data_dir=tmp_path / "ok", fractions=(0.5, 0.5, 0.5))
        with pytest.raises(ValueError, match="its own validation split"):
            data.load("image_folder", data_dir=tmp_path / "ok", validation_size=3)
        with pytest.raises(ValueError, match="channels"):
            data.load("image_folder", data_dir=tmp_path / "ok", channels=2)
        write_image_folder(tmp_path / "few", per_class=3)
        with pytest.raises(ValueError, match="only 3 image"):
            data.load("image_folder", data_dir=tmp_path / "few")


# --------------------------------------------------------------------------- WISDM CSV


def wisdm_rows(users=("1600", "1601", "1602", "1603", "1604"), activities=("A", "B"),
               length=10):
    """Rows whose values encode (user, activity, position): x = user*1000 + act*100 + i."""
    rows = []
    for u in users:
        for a_index, a in enumerate(activities):
            for i in range(length):
                rows.append((u, a, 1000 * i, int(u) * 1000 + a_index * 100 + i, -i, 0.5))
    return rows


def expected_windows(rows, window, stride):
    """Windows of consecutive same-(user, activity) rows, by explicit loops."""
    out = []
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j][:2] == rows[i][:2]:
            j += 1
        for s in range(i, j - window + 1, stride):
            out.append((rows[i][0], rows[i][1], [r[3:] for r in rows[s:s + window]]))
        i = j
    return out


class TestWISDM:
    def write_csv(self, path, rows, header="user,activity,timestamp,x,y,z"):
        lines = [header] if header else []
        lines += [",".join(str(v) for v in r) for r in rows]
        path.write_text("\n".join(lines) + "\n")
        return path

    def test_headed_csv_windows_and_user_split(self, tmp_path):
        rows = wisdm_rows()
        csv = self.write_csv(tmp_path / "acc.csv", rows)
        d = data.load("wisdm", data_dir=csv, window=4, stride=3, seed=0)
        assert d.input_shape == (4, 3) and d.class_names == ["walking", "jogging"]
        assert d.epsilon == (0.4, 0.8)
        expected = expected_windows(rows, 4, 3)  # 3 windows per recording of 10
        assert sum(d.splits.values()) == len(expected) == 30
        x_train, y_train = d.arrays("train")
        x_test, y_test = d.arrays("test")
        # Values identify the user: no user is in both splits; test holds 1 of 5 users.
        train_users = set((x_train[:, 0, 0] // 1000).astype(int).tolist())
        test_users = set((x_test[:, 0, 0] // 1000).astype(int).tolist())
        assert not train_users & test_users and len(test_users) == 1
        assert [str(u) for u in test_users] == d.test_users
        got = sorted(map(tuple, np.concatenate([x_train, x_test]).reshape(30, -1).tolist()))
        want = sorted(tuple(np.asarray(w, np.float32).ravel().tolist()) for _, _, w in expected)
        assert got == want
        labels = (np.concatenate([x_train, x_test])[:, 0, 0] % 1000) // 100
        np.testing.assert_array_equal(labels, np.concatenate([y_train, y_test]))

    def test_raw_wisdm_files_and_explicit_test_users(self, tmp_path, caplog):
        rows = wisdm_rows(users=("1600", "1601", "1602"), activities=("x-walk", "y-sit"))
        raw = "\n".join(",".join(str(v) for v in r) + ";" for r in rows)
        (tmp_path / "raw").mkdir()
        (tmp_path / "raw" / "data_a.txt").write_text(raw + "\n1600,x-walk,5,1.0,;\n")
        with caplog.at_level("WARNING", logger="larq_l1inf.data"):
            d = data.load("wisdm", data_dir=tmp_path / "raw", window=5, stride=5,
                          test_users=["1602"])
        assert "skipped 1 malformed row" in caplog.text
        assert d.class_names == ["x-walk", "y-sit"] and d.splits == {"train": 8, "test": 4}
        x_test, _ = d.arrays("test")
        np.testing.assert_array_equal(x_test[:, 0, 0] // 1000, 1602)
        assert data.load(**d.config).splits == d.splits

    def test_column_order_and_aliases(self, tmp_path):
        rows = wisdm_rows()
        plain = data.load("wisdm", data_dir=self.write_csv(tmp_path / "a.csv", rows), window=4)
        shuffled = [(r[5], r[3], r[1], r[0], r[4]) for r in rows]  # z, x, activity, user, y
        other = data.load("wisdm", window=4, data_dir=self.write_csv(
            tmp_path / "b.csv", shuffled, header="Z-axis,x-axis,label,subject_id,y-axis"))
        for split in ("train", "test"):
            np.testing.assert_array_equal(plain.arrays(split)[0], other.arrays(split)[0])

    def test_errors(self, tmp_path, caplog):
        rows = wisdm_rows(length=6)
        with pytest.raises(ValueError, match=r"lacks the column\(s\) \['z'\].*user, activity"):
            data.load("wisdm", data_dir=self.write_csv(tmp_path / "a.csv", rows,
                                                       header="user,activity,timestamp,x,y,q"))
        csv = self.write_csv(tmp_path / "b.csv", rows)
        with pytest.raises(ValueError, match="window=7 is longer than every recording.*<= 6"):
            data.load("wisdm", data_dir=csv, window=7)
        with pytest.raises(data.DatasetUnavailableError, match="needs data_dir"):
            data.load("wisdm")
        with pytest.raises(ValueError, match="test_users must be some"):
            data.load("wisdm", data_dir=csv, window=3, test_users=["42"])
        with pytest.raises(ValueError, match="stride"):
            data.load("wisdm", data_dir=csv, window=3, stride=0)
        short = rows[:6] + wisdm_rows(users=("1700",), activities=("C",), length=3)
        with caplog.at_level("WARNING", logger="larq_l1inf.data"):
            with pytest.raises(ValueError, match="only 1 user"):
                data.load("wisdm", data_dir=self.write_csv(tmp_path / "c.csv", short), window=5)
        assert "1 of 2 recordings are shorter than window=5" in caplog.text


# --------------------------------------------------------------------------- MNIST-1D


class TestMNIST1D:
    def test_generated_signals(self):
        from mnist1d.data import get_dataset_args, make_dataset

        state = np.random.get_state()
        d = data.load("mnist1d", train_size=100, test_size=50, seed=3)
        assert np.random.get_state()[1].tolist() == state[1].tolist()  # global RNG untouched
        assert d.input_shape == (40, 1) and d.splits == {"train": 100, "test": 50}
        assert d.epsilon == (0.1, 0.2)
        x, y = d.arrays("train")
        assert x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(y), np.full(10, 10))
        np.testing.assert_array_equal(np.bincount(d.arrays("test")[1]), np.full(10, 5))
        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = 150, 1.0, 3
        reference = make_dataset(args)
        both = np.concatenate([x, d.arrays("test")[0]])[..., 0]
        ref = {tuple(np.float32(r).tolist()): int(c)
               for r, c in zip(reference["x"], reference["y"])}
        labels = np.concatenate([y, d.arrays("test")[1]])
        assert len({tuple(r.tolist()) for r in both}) == 150
        assert all(ref[tuple(r.tolist())] == c for r, c in zip(both, labels))
        again = data.load(**d.config)
        np.testing.assert_array_equal(again.arrays("test")[0], d.arrays("test")[0])

    def test_default_sizes_and_errors(self):
        assert data.load("digits").config["train_size"] is None
        with pytest.raises(ValueError, match="takes no data_dir"):
            data.load("mnist1d", data_dir="/tmp", train_size=10, test_size=10)
        with pytest.raises(ValueError, match="test_size"):
            data.load("mnist1d", train_size=10, test_size=-1)
        with pytest.raises(ValueError, match="train_size = 5; pass >= 10"):
            data.load("mnist1d", train_size=5, test_size=10)


# --------------------------------------------------------------------------- TFDS


def fake_tfds(monkeypatch, splits):
    """Make TFDS' cifar10 builder look prepared and serve `splits` (name -> (images, labels))."""
    import tensorflow_datasets as tfds

    def as_dataset(self, split, as_supervised, shuffle_files):
        assert as_supervised
        return tf.data.Dataset.from_tensor_slices(splits[split])

    monkeypatch.setattr(data, "_prepared", lambda builder: True)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", as_dataset)


def all_pad_crops(image, padding=4):
    """Every crop of the zero-padded image and its mirror, by explicit loops."""
    h, w, _ = image.shape
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    out = []
    for i in range(2 * padding + 1):
        for j in range(2 * padding + 1):
            crop = padded[i:i + h, j:j + w]
            out += [crop, crop[:, ::-1]]
    return out


class TestTFDSRegistry:
    def setup_splits(self, monkeypatch, n=12):
        rng = np.random.default_rng(0)
        splits = {s: (rng.integers(0, 256, (n, 10, 10, 3), dtype=np.uint8),
                      np.arange(n) % 10) for s in ("train", "test")}
        fake_tfds(monkeypatch, splits)
        return splits

    def test_cifar10_scaled(self, monkeypatch):
        splits = self.setup_splits(monkeypatch)
        d = data.load("cifar10")
        assert d.num_classes == 10 and d.splits == {"train": 12, "test": 12}
        assert d.epsilon == pytest.approx((1 / 255, 4 / 255))
        x, y = d.arrays("test")
        np.testing.assert_allclose(x, splits["test"][0] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y, splits["test"][1])
        assert data.load("cifar10", size=6).input_shape == (6, 6, 3)

    def test_augment_is_pad_crop_flip_and_seeded(self, monkeypatch):
        self.setup_splits(monkeypatch)
        d = data.load("cifar10")
        x, _ = d.arrays("train")

        def epochs(dataset):
            return [np.concatenate([b.numpy() for b, _ in dataset]) for _ in range(2)]

        a = epochs(d.dataset("train", 5, augment=True, seed=1))
        b = epochs(d.dataset("train", 5, augment=True, seed=1))
        c = epochs(d.dataset("train", 5, augment=True, seed=2))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[0], c[0])
        for k in range(len(x)):
            assert any(np.array_equal(a[0][k], crop) for crop in all_pad_crops(x[k]))
        assert not np.array_equal(a[0], x)

    def test_not_prepared(self, tmp_path):
        with pytest.raises(data.DatasetUnavailableError, match="not prepared.*manual_dir"):
            data.load("cifar100", data_dir=str(tmp_path))
        with pytest.raises(data.DatasetUnavailableError, match="lacks.*ILSVRC2012_img_val.tar"):
            data.load("imagenet2012", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path))
        assert not (tmp_path / "tfds").exists()  # nothing half-written
        with pytest.raises(TypeError, match="manual_dir"):
            data.load("cifar10", data_dir=str(tmp_path), manual_dir=str(tmp_path))

    def test_imagenet_streams(self, monkeypatch):
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (h, 9, 3), dtype=np.uint8) for h in (7, 12, 9)]
        labels = np.array([3, 1, 999])

        def ragged():
            return tf.data.Dataset.from_generator(
                lambda: zip(images, labels),
                output_signature=(tf.TensorSpec((None, None, 3), tf.uint8),
                                  tf.TensorSpec((), tf.int64)))

        fake_tfds(monkeypatch, {})
        import tensorflow_datasets as tfds

        monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset",
                            lambda self, split, as_supervised, shuffle_files: ragged())
        monkeypatch.setattr(data, "_num_examples", lambda builder, split: 3)
        d = data.load("imagenet2012", size=8)
        assert d.splits == {"train": 3, "test": 3} and d.input_shape == (8, 8, 3)
        assert d.num_classes == 1000
        with pytest.raises(ValueError, match="does not fit in memory.*dataset"):
            d.arrays("train")
        with pytest.raises(ValueError, match="streamed; train_size"):
            data.load("imagenet2012", size=8, train_size=2)
        x, y = next(iter(d.dataset("test", 3, shuffle=True, augment=True)))
        assert x.shape == (3, 8, 8, 3) and x.dtype == tf.float32
        assert sorted(y.numpy().tolist()) == [1, 3, 999]
        assert 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1
        x, _ = next(iter(d.dataset("test", 3)))
        expected = tf.image.resize(images[0][None].astype(np.float32), (8, 8)) / 255.0
        np.testing.assert_allclose(x[0], expected[0], atol=1e-6)

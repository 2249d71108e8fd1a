"""Figures: training curves, first-binary-conv feature maps and latent weight histograms."""

import larq as lq
import numpy as np
import pytest
from helpers import BINARY, toy_bnn, trained_like_batchnorm, uniform_inputs
from PIL import Image

from larq_l1inf import plots
from larq_l1inf._keras import tf

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_colours=20):
    """A valid PNG with real content: many colours, not a blank canvas."""
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours >= min_colours, f"{path}: only {colours} colours"
    assert (pixels < 250).any(axis=-1).mean() > 0.02  # more than a few stray pixels drawn


HISTORY = {
    "loss": [2.1, 1.5, 1.2, 1.0],
    "accuracy": [0.3, 0.5, 0.6, 0.65],
    "val_loss": [2.0, 1.7, 1.4, 1.3],
    "val_accuracy": [0.35, 0.45, 0.55, 0.6],
    "l1inf_penalty": [120.0, 90.0, 80.0, 75.0],
}


class TestTrainingCurves:
    def test_dict_and_csv_logger(self, tmp_path):
        path = plots.training_curves(HISTORY, tmp_path / "curves.png")
        assert path == str(tmp_path / "curves.png")
        assert_png(path)
        # The same run through Keras' own CSVLogger (the file a run directory holds), driven
        # by hand: a real fit() costs tens of seconds here and adds nothing to the plot.
        csv_path = tmp_path / "log.csv"
        logger = tf.keras.callbacks.CSVLogger(str(csv_path))
        logger.set_model(tf.keras.Sequential([tf.keras.layers.Dense(1)]))
        logger.on_train_begin()
        for epoch in range(4):
            logger.on_epoch_end(epoch, {k: v[epoch] for k, v in HISTORY.items()})
        logger.on_train_end()
        metrics = plots.read_history(str(csv_path))
        assert set(metrics) == set(HISTORY)
        for key, values in HISTORY.items():
            np.testing.assert_allclose(metrics[key], values)
        assert_png(plots.training_curves(str(csv_path), tmp_path / "sub" / "from_csv.png"))
        history = tf.keras.callbacks.History()
        history.history = {"loss": [1.0, 0.5], "sparse_categorical_accuracy": [0.2, 0.6]}
        assert_png(plots.training_curves(history, tmp_path / "from_history.png"))

    def test_bad_history(self, tmp_path):
        with pytest.raises(ValueError, match="empty"):
            plots.training_curves({}, tmp_path / "a.png")
        with pytest.raises(ValueError, match="empty"):
            plots.training_curves({"loss": []}, tmp_path / "a.png")
        (tmp_path / "empty.csv").write_text("epoch,loss\n")
        with pytest.raises(ValueError, match="no epochs"):
            plots.training_curves(str(tmp_path / "empty.csv"), tmp_path / "a.png")
        with pytest.raises(ValueError, match="different lengths"):
            plots.training_curves({"loss": [1, 2], "val_loss": [1]}, tmp_path / "a.png")
        with pytest.raises(TypeError, match="History"):
            plots.training_curves([1, 2, 3], tmp_path / "a.png")
        assert not list(tmp_path.glob("*.png"))  # nothing half-written


def float_then_binary(input_shape=(16, 16, 3)):
    """A float conv, a binary dense-free conv stack: the first binary conv is the 2nd conv."""
    inputs = tf.keras.Input(input_shape)
    x = tf.keras.layers.Conv2D(4, 3, padding="same", name="float_stem")(inputs)
    x = lq.layers.QuantConv2D(6, 3, padding="same", name="first_binary", **BINARY)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(6, 3, name="second_binary", **BINARY)(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inputs, lq.layers.QuantDense(3, kernel_quantizer="ste_sign")(x))


class TestFeatureMaps:
    def test_first_binary_conv_is_found_as_larq_decides(self):
        model = float_then_binary()
        assert plots.first_binary_conv(model).name == "first_binary"
        assert [l.name for l in plots.binary_layers(model)][:2] == ["first_binary",
                                                                    "second_binary"]
        # A quantized but not binary kernel (precision 2) is not "binary".
        inputs = tf.keras.Input((8, 8, 1))
        y = lq.layers.QuantConv2D(2, 3, kernel_quantizer=lq.quantizers.DoReFa(k_bit=2),
                                  name="two_bit")(inputs)
        y = lq.layers.QuantConv2D(2, 3, kernel_quantizer="ste_sign", name="one_bit")(y)
        assert plots.first_binary_conv(tf.keras.Model(inputs, y)).name == "one_bit"

    def test_outputs_are_the_binary_convolution(self):
        """The maps are sign(x) * sign(W) summed over the window: a NumPy loop agrees."""
        model = float_then_binary((6, 6, 2))
        stem, layer = model.get_layer("float_stem"), model.get_layer("first_binary")
        x = uniform_inputs((2, 6, 6, 2)) - 0.5
        found, maps = plots.first_binary_conv_outputs(model, x)
        assert found is layer and maps.shape == (2, 6, 6, 6)
        h = stem(x).numpy()  # the float stem feeds the binary conv
        w = np.sign(layer.kernel.latent_variable.numpy())
        w[w == 0] = 1
        s = np.sign(h)
        s[s == 0] = 1
        padded = np.pad(s, ((0, 0), (1, 1), (1, 1), (0, 0)))  # larq pads with pad_values=0
        expected = np.zeros_like(maps)
        for n in range(2):
            for i in range(6):
                for j in range(6):
                    for o in range(6):
                        expected[n, i, j, o] = np.sum(padded[n, i:i + 3, j:j + 3] * w[..., o])
        np.testing.assert_allclose(maps, expected, atol=1e-4)

    def test_multi_bit_convolution(self, tmp_path):
        """An MBN conv is the first binary conv; its maps are its combined output (the sum of
        its base-pair convolutions), and the figure is drawn."""
        from larq_l1inf.mbn import MBNConv2D, MBNDense

        inputs = tf.keras.Input((6, 6, 3))
        x = tf.keras.layers.Conv2D(3, 3, padding="same", name="float_stem")(inputs)
        x = MBNConv2D(4, 3, weight_bases=2, activation_bases=2, name="mbn_conv")(x)
        x = tf.keras.layers.GlobalAveragePooling2D()(x)
        model = tf.keras.Model(inputs, MBNDense(3, name="mbn_head")(x))
        layer = model.get_layer("mbn_conv")
        assert [l.name for l in plots.binary_layers(model)] == ["mbn_conv", "mbn_head"]
        assert plots.first_binary_conv(model) is layer
        x = uniform_inputs((2, 6, 6, 3))
        found, maps = plots.first_binary_conv_outputs(model, x)
        h = model.get_layer("float_stem")(x)
        base_pairs = []  # alpha_m beta_n conv(sign(h + v_n), sign(W_m)), padded with +1
        for n in range(2):
            a = np.where(h.numpy() + layer.activation_shift.numpy()[n] >= 0, 1.0, -1.0)
            a = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1.0)
            for m, w in enumerate(layer.weight_bases_tensors()):
                y = tf.nn.convolution(a.astype("float32"), w, padding="VALID").numpy()
                base_pairs.append(layer.weight_scale.numpy()[m]
                                  * layer.activation_scale.numpy()[n] * y)
        assert found is layer and maps.shape == (2, 6, 6, 4)
        np.testing.assert_allclose(maps, np.sum(base_pairs, axis=0), atol=1e-5)
        assert_png(plots.feature_maps(model, x[0], x[1], tmp_path / "mbn.png", channels=2))
        dense_only = tf.keras.Sequential([tf.keras.Input((4,)), MBNDense(2)])
        with pytest.raises(ValueError, match="no binary convolution"):
            plots.first_binary_conv(dense_only)

    def test_writes_png_for_several_models(self, tmp_path):
        baseline = trained_like_batchnorm(float_then_binary())
        tf.keras.utils.set_random_seed(1)
        other = trained_like_batchnorm(float_then_binary())
        x = uniform_inputs((16, 16, 3))
        noisy = x + np.float32(0.1) * (np.random.default_rng(0).random(x.shape) > 0.5)
        path = plots.feature_maps({"baseline": baseline, "l1inf": other}, x, noisy,
                                  tmp_path / "fmaps.png", channels=3)
        assert_png(path, min_colours=100)

    def test_one_dimensional_signals(self, tmp_path):
        inputs = tf.keras.Input((40, 1))
        y = lq.layers.QuantConv1D(4, 5, kernel_quantizer="ste_sign", name="conv1d")(inputs)
        model = tf.keras.Model(inputs, y)
        x = np.sin(np.linspace(0, 6, 40, dtype=np.float32))[:, None]
        assert_png(plots.feature_maps(model, x, x + 0.2, tmp_path / "signal.png", channels=[0, 3]))

    def test_bad_input(self, tmp_path):
        inputs = tf.keras.Input((8, 8, 1))
        float_model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(2, 3)(inputs))
        x = uniform_inputs((8, 8, 1))
        with pytest.raises(ValueError, match="no binary convolution"):
            plots.feature_maps({"float": float_model}, x, x, tmp_path / "a.png")
        model = float_then_binary((8, 8, 1))
        with pytest.raises(ValueError, match=r"shape \(8, 8, 1\).*got \(1, 8, 8, 3\)"):
            plots.feature_maps({"m": model}, x, uniform_inputs((8, 8, 3)), tmp_path / "a.png")
        with pytest.raises(ValueError, match="channels"):
            plots.feature_maps({"m": model}, x, x, tmp_path / "a.png", channels=[7])
        with pytest.raises(ValueError, match="empty"):
            plots.feature_maps({}, x, x, tmp_path / "a.png")
        assert not list(tmp_path.iterdir())


class TestWeightHistograms:
    def test_histograms_of_latent_weights(self, tmp_path):
        model = toy_bnn(input_shape=(8, 8, 3), width=8)
        assert [l.name for l in plots.binary_layers(model)] == [
            l.name for l in model.layers if isinstance(l, lq.layers.QuantConv2D)]
        assert_png(plots.weight_histograms(model, tmp_path / "w.png"))

    def test_model_without_binary_layers(self, tmp_path):
        inputs = tf.keras.Input((4,))
        model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(inputs))
        with pytest.raises(ValueError, match="no binary layer"):
            plots.weight_histograms(model, tmp_path / "w.png")
        assert not (tmp_path / "w.png").exists()

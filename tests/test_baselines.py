"""Baseline penalties (L1, spectral, Absum) against independent NumPy loop implementations."""

import larq_l1inf  # noqa: F401,I001  (first: sets TF_USE_LEGACY_KERAS before larq imports TF)
import larq as lq
import numpy as np
import pytest

from larq_l1inf._keras import tf
from larq_l1inf.baselines import (
    BASELINE_REGULARIZERS,
    AbsumRegularizer,
    L1Regularizer,
    SpectralNormRegularizer,
    spectral_norm,
)

BASELINES = list(BASELINE_REGULARIZERS.values())  # a new baseline gets every test below
ALPHAS = ["auto", "layer", "channel", "none"]
REDUCTIONS = ["sum", "log"]


def np_sign(w):
    return np.where(w >= 0, 1.0, -1.0)


def np_alpha(latent, mode, per_channel_scale=False):
    """alpha per method.md from a latent kernel with output channels last (non-depthwise);
    `"auto"` is per channel only for a quantizer with a per-channel scale."""
    c_out = latent.shape[-1]
    if mode == "none":
        return np.ones(c_out)
    if mode == "layer" or (mode == "auto" and not per_channel_scale):
        return np.full(c_out, np.abs(latent).mean())
    return np.array([np.abs(latent[..., o]).mean() for o in range(c_out)])


def np_l1(w_b, alpha):
    total = 0.0
    for o in range(w_b.shape[-1]):
        for idx in np.ndindex(w_b.shape[:-1]):
            total += alpha[o] * abs(w_b[idx + (o,)])
    return total


def np_spectral(w_b, alpha):
    c_out = w_b.shape[-1]
    rows = np.stack([alpha[o] * w_b[..., o].reshape(-1) for o in range(c_out)])
    return np.linalg.norm(rows, ord=2)


def np_absum(w_b, alpha):
    """sum_o sum_c alpha_o |sum_{spatial} w[..., c, o]|; a Dense kernel has no spatial axes."""
    total = 0.0
    if w_b.ndim == 2:
        for c in range(w_b.shape[0]):
            for o in range(w_b.shape[1]):
                total += alpha[o] * abs(w_b[c, o])
        return total
    for o in range(w_b.shape[-1]):
        for c in range(w_b.shape[-2]):
            s = 0.0
            for idx in np.ndindex(w_b.shape[:-2]):
                s += w_b[idx + (c, o)]
            total += alpha[o] * abs(s)
    return total


NUMPY_TERMS = {
    L1Regularizer: np_l1,
    SpectralNormRegularizer: np_spectral,
    AbsumRegularizer: np_absum,
}

LAYERS = [
    ("conv2d", lambda reg: lq.layers.QuantConv2D(
        5, 3, kernel_quantizer="ste_sign", input_quantizer="ste_sign",
        kernel_constraint="weight_clip", use_bias=False, kernel_regularizer=reg), (6, 6, 3)),
    ("conv1d", lambda reg: lq.layers.QuantConv1D(
        4, 3, kernel_quantizer="ste_sign", input_quantizer="ste_sign",
        kernel_constraint="weight_clip", use_bias=False, kernel_regularizer=reg), (8, 3)),
    ("dense", lambda reg: lq.layers.QuantDense(
        6, kernel_quantizer="ste_sign", input_quantizer="ste_sign",
        kernel_constraint="weight_clip", kernel_regularizer=reg), (7,)),
    ("float_conv2d", lambda reg: lq.layers.QuantConv2D(
        3, 2, kernel_regularizer=reg, use_bias=False), (5, 5, 2)),
    ("xnor_conv2d", lambda reg: lq.layers.QuantConv2D(
        4, 3, kernel_quantizer="magnitude_aware_sign", input_quantizer="ste_sign",
        kernel_constraint="weight_clip", use_bias=False, kernel_regularizer=reg), (6, 6, 3)),
]


def build(layer_fn, input_shape, reg, seed=0):
    tf.keras.utils.set_random_seed(seed)
    layer = layer_fn(reg)
    model = tf.keras.Sequential([tf.keras.Input(input_shape), layer])
    return model, layer


class TestAgainstNumpy:
    @pytest.mark.parametrize("cls", BASELINES)
    @pytest.mark.parametrize("alpha", ALPHAS)
    @pytest.mark.parametrize("name,layer_fn,shape", LAYERS)
    def test_layer_loss(self, cls, alpha, name, layer_fn, shape):
        self.check(cls, alpha, name, layer_fn, shape, "sum")

    @pytest.mark.parametrize("cls", BASELINES)
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    def test_reduction(self, cls, reduction):
        self.check(cls, "channel", *LAYERS[0], reduction)

    def check(self, cls, alpha, name, layer_fn, shape, reduction):
        delta = 3e-3
        reg = cls(delta, reduction=reduction, alpha=alpha)
        if cls is SpectralNormRegularizer:
            reg = cls(delta, reduction=reduction, alpha=alpha, power_iterations=100)
        model, layer = build(layer_fn, shape, reg)
        latent = layer.kernel.latent_variable.numpy() if hasattr(layer.kernel, "latent_variable") \
            else layer.kernel.numpy()
        quantized = name != "float_conv2d"
        w_b = np_sign(latent) if quantized else latent
        a = np_alpha(latent, alpha if quantized else "none", name == "xnor_conv2d")
        term = NUMPY_TERMS[cls](w_b, a)
        expected = delta * (term if reduction == "sum" else np.log(term))
        (got,) = [float(v) for v in model.losses]
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(float(larq_l1inf.penalty(model)), expected, rtol=2e-5, atol=1e-7)

    def test_absum_is_not_l1_on_conv(self):
        """Absum sums inside each 2-D filter before the absolute value: smaller than L1."""
        model, layer = build(LAYERS[0][1], LAYERS[0][2], AbsumRegularizer(1.0, alpha="none"))
        w_b = np_sign(layer.kernel.latent_variable.numpy())
        assert float(model.losses[0]) < np_l1(w_b, np.ones(w_b.shape[-1]))

    def test_depthwise_absum_one_filter_per_row(self):
        reg = AbsumRegularizer(1.0, alpha="none")
        layer = lq.layers.QuantDepthwiseConv2D(
            3, depth_multiplier=2, depthwise_quantizer="ste_sign", input_quantizer="ste_sign",
            depthwise_constraint="weight_clip", depthwise_regularizer=reg, use_bias=False)
        tf.keras.utils.set_random_seed(1)
        model = tf.keras.Sequential([tf.keras.Input((6, 6, 2)), layer])
        w_b = np_sign(layer.depthwise_kernel.latent_variable.numpy())  # (3, 3, c_in, m)
        expected = sum(abs(w_b[:, :, c, m].sum()) for c in range(2) for m in range(2))
        np.testing.assert_allclose(float(model.losses[0]), expected)


class TestSpectralNorm:
    @pytest.mark.parametrize("shape", [(4, 9), (9, 4), (16, 27), (1, 5)])
    def test_converges_to_numpy(self, shape):
        a = np.random.RandomState(sum(shape)).randn(*shape)
        exact = np.linalg.norm(a, ord=2)
        errors = [exact - float(spectral_norm(a, it)) for it in (1, 2, 5, 20, 200)]
        # A lower bound that does not get worse with more steps, and converges.
        assert all(e >= -1e-4 * exact for e in errors)
        assert all(later <= earlier + 1e-4 * exact for earlier, later in zip(errors, errors[1:]))
        assert errors[-1] <= 1e-4 * exact

    def test_sign_matrix(self):
        a = np_sign(np.random.RandomState(3).randn(8, 36))
        np.testing.assert_allclose(float(spectral_norm(a, 300)), np.linalg.norm(a, 2), rtol=1e-4)

    def test_gradient_is_uv(self):
        """At convergence d sigma / dA = u v^T (top singular vectors)."""
        a = np.random.RandomState(5).randn(5, 7).astype(np.float32)
        var = tf.Variable(a)
        with tf.GradientTape() as tape:
            s = spectral_norm(var, 300)
        grad = tape.gradient(s, var).numpy()
        u, _, vt = np.linalg.svd(a)
        expected = np.outer(u[:, 0], vt[0])
        if np.sum(grad * expected) < 0:
            expected = -expected
        np.testing.assert_allclose(grad, expected, atol=1e-4)

    @pytest.mark.parametrize("bad", [np.ones(3), np.ones((2, 2, 2))])
    def test_rejects_non_matrix(self, bad):
        with pytest.raises(ValueError, match="2-D"):
            spectral_norm(bad)

    def test_rejects_zero_iterations(self):
        with pytest.raises(ValueError, match="iterations"):
            spectral_norm(np.ones((2, 2)), 0)
        with pytest.raises(ValueError, match="power_iterations"):
            SpectralNormRegularizer(power_iterations=0)


class TestInterface:
    @pytest.mark.parametrize("cls", BASELINES)
    def test_serialization_roundtrip(self, cls):
        reg = cls(2e-3, reduction="log", alpha="channel", normalize=True)
        restored = tf.keras.regularizers.deserialize(tf.keras.regularizers.serialize(reg))
        assert type(restored) is cls
        assert restored.get_config() == reg.get_config()

    @pytest.mark.parametrize("cls", BASELINES)
    def test_model_save_load(self, cls, tmp_path):
        model, _ = build(LAYERS[0][1], LAYERS[0][2], cls(1e-2))
        path = str(tmp_path / "m.h5")
        model.save(path)
        loaded = tf.keras.models.load_model(path)
        np.testing.assert_allclose(
            [float(v) for v in loaded.losses], [float(v) for v in model.losses], rtol=1e-5)

    @pytest.mark.parametrize("cls", BASELINES)
    def test_bad_arguments(self, cls):
        with pytest.raises(ValueError, match="reduction"):
            cls(reduction="product")
        with pytest.raises(ValueError, match="delta"):
            cls(-1.0)

    @pytest.mark.parametrize("cls", BASELINES)
    def test_gradient_reaches_latent_weights(self, cls):
        model, layer = build(LAYERS[0][1], LAYERS[0][2], cls(1e-1))
        with tf.GradientTape() as tape:
            loss = tf.add_n(model.losses)
        grad = tape.gradient(loss, layer.kernel.latent_variable)
        assert grad is not None and np.all(np.isfinite(grad.numpy()))
        assert np.abs(grad.numpy()).sum() > 0

    @pytest.mark.parametrize("cls", BASELINES)
    def test_one_fit_step(self, cls):
        model, _ = build(LAYERS[0][1], LAYERS[0][2], cls(1e-2))
        model = tf.keras.Sequential(
            [model, tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(3)])
        model.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        hist = model.fit(np.random.rand(4, 6, 6, 3), np.array([0, 1, 2, 0]), verbose=0)
        assert np.isfinite(hist.history["loss"][0])

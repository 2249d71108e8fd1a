"""Tests of larq_l1inf.variants (each method's formula, against NumPy) and larq_l1inf.backbones."""

import math

import larq as lq
import numpy as np
import pytest
from tensorflow.python.autograph.core import ag_ctx  # test speed only, see _model

from larq_l1inf import L1InfRegularizer, deploy, penalty
from larq_l1inf._keras import tf
from larq_l1inf.backbones import BACKBONES
from larq_l1inf.regularizers import binary_kernel
from larq_l1inf import variants as V

VARIANT_NAMES = list(V.VARIANTS)
#: (backbone, builder kwargs, input shape): the smallest inputs that leave the last stage at
#: 2x2 (ResNets: /32 with the ImageNet stem, /8 or /4 with the CIFAR one). A 1x1 last stage
#: with batch 2 makes training-mode BatchNormalization average two numbers per channel; on
#: deep binary nets its 1/sqrt(var + eps) gain then overflows the backward pass to inf/NaN
#: (seen on ResNet-34 at 16x16 with the ImageNet stem), a property of that input, not a bug.
BACKBONE_CASES = [
    ("resnet18", {"stem": "imagenet"}, (64, 64, 3)),
    ("resnet34", {"stem": "cifar"}, (16, 16, 3)),
    ("resnet20", {}, (8, 8, 3)),
    ("vgg_small", {}, (8, 8, 3)),
    ("conv1d", {}, (16, 3)),
]


def _kernel(shape=(3, 3, 4, 5), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _rows(w):
    """(c_out, fan_in) rows of a kernel, by a loop over output channels."""
    return np.stack([w[..., c].ravel() for c in range(w.shape[-1])])


def _from_rows(rows, shape):
    out = np.zeros(shape, np.float32)
    for c in range(shape[-1]):
        out[..., c] = rows[c].reshape(shape[:-1])
    return out


def _sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def _grad(fn, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tape.gradient(y, x).numpy(), y.numpy()


def _build_layer(layer, shape):
    layer.build(shape)
    return layer


class TestFormulas:
    def test_xnor_sign_per_channel_alpha(self):
        w = _kernel()
        ref = _from_rows(np.stack([np.mean(np.abs(r)) * _sign(r) for r in _rows(w)]), w.shape)
        np.testing.assert_allclose(V.XnorSign()(w).numpy(), ref, rtol=1e-6)

    def test_xnor_gradient_eq7_and_stopped_scale(self):
        w = _kernel((2, 2, 2, 3)) * 0.5
        g_full, _ = _grad(lambda x: tf.reduce_sum(V.XnorSign()(x)), w)
        g_stop, _ = _grad(lambda x: tf.reduce_sum(V.XnorSign(scale_gradient=False)(x)), w)
        n = w[..., 0].size
        for c in range(w.shape[-1]):
            r = w[..., c]
            alpha = np.mean(np.abs(r))
            ste = (np.abs(r) <= 1.0).astype(np.float32)
            np.testing.assert_allclose(g_stop[..., c], alpha * ste, rtol=1e-5)
            # eq. 7 with d(alpha)/dw = sign(w)/n and sum of sign(w) over the filter.
            expected = alpha * ste + _sign(r) / n * np.sum(_sign(r))
            np.testing.assert_allclose(g_full[..., c], expected, rtol=1e-5, atol=1e-6)

    def test_dorefa_weight_one_bit(self):
        w = _kernel()
        np.testing.assert_allclose(V.DoReFaWeight(1)(w).numpy(), np.mean(np.abs(w)) * _sign(w), rtol=1e-6)

    @pytest.mark.parametrize("k", [2, 3])
    def test_dorefa_weight_k_bit_eq9(self, k):
        w = _kernel()
        n = 2**k - 1
        t = np.tanh(w)
        ref = 2 * np.round((t / (2 * np.max(np.abs(t))) + 0.5) * n) / n - 1
        np.testing.assert_allclose(V.DoReFaWeight(k)(w).numpy(), ref, atol=1e-6)
        assert len(np.unique(V.DoReFaWeight(k)(w).numpy())) <= 2**k

    def test_dorefa_activation_eq11(self):
        x = np.linspace(-0.5, 1.5, 41).astype(np.float32)
        ref = np.round(np.clip(x, 0, 1) * 3) / 3
        np.testing.assert_allclose(V.DoReFaActivation(2)(x).numpy(), ref, atol=1e-6)

    def test_libra_pb(self):
        w = _kernel() * 0.3 + 0.1
        rows = []
        for r in _rows(w):
            z = (r - r.mean()) / r.std()
            rows.append(2.0 ** np.round(np.log2(np.mean(np.abs(z)))) * _sign(z))
        np.testing.assert_allclose(V.LibraPBSign()(w).numpy(), _from_rows(np.stack(rows), w.shape), rtol=1e-5)

    @pytest.mark.parametrize("t", [0.1, 1.0, 10.0])
    def test_ede_gradient(self, t):
        k = max(1 / t, 1.0)
        x = np.linspace(-3, 3, 13).astype(np.float32)
        quantizer = V.EDESign(t=t, k=k)
        g, y = _grad(lambda v: tf.reduce_sum(quantizer(v)), x)
        np.testing.assert_array_equal(y, np.sum(_sign(x)))
        np.testing.assert_allclose(g, k * t * (1 - np.tanh(t * x) ** 2), rtol=1e-3, atol=1e-5)

    def test_ede_schedule(self):
        epochs = 5
        for epoch in range(epochs + 1):
            t, k = V.ede_parameters(epoch, epochs)
            assert t == pytest.approx(0.1 * 10 ** (epoch / epochs * math.log10(100)))
            assert k == pytest.approx(max(1 / t, 1))
        assert V.ede_parameters(epochs, epochs)[0] == pytest.approx(10.0)

    def test_ede_schedule_callback_assigns(self):
        model = BACKBONES["vgg_small"]("irnet", num_classes=2, input_shape=(8, 8, 3), width=2)
        callback = V.EDESchedule(epochs=4)
        callback.set_model(model)
        callback.on_epoch_begin(2)
        quantizers = [l.kernel_quantizer for l in model.layers if isinstance(l, lq.layers.QuantConv2D)]
        assert quantizers and all(q.t.numpy() == pytest.approx(1.0) for q in quantizers)

    def test_rsign_and_rprelu(self):
        x = np.random.default_rng(1).normal(size=(2, 3, 3, 4)).astype(np.float32)
        rsign = _build_layer(V.RSign(), x.shape)
        alpha = np.array([0.5, -0.5, 0.0, 1.0], np.float32)
        rsign.alpha.assign(alpha)
        np.testing.assert_array_equal(rsign(x).numpy(), _sign(x - alpha))
        rprelu = _build_layer(V.RPReLU(), x.shape)
        gamma, zeta, beta = (np.array(v, np.float32) for v in ([0.1, 0, -0.2, 0.3], [0.5, 0, 0, -1], [0.25, 0.1, 0.5, 1]))
        rprelu.gamma.assign(gamma), rprelu.zeta.assign(zeta), rprelu.beta.assign(beta)
        ref = np.where(x > gamma, x - gamma + zeta, beta * (x - gamma) + zeta)
        np.testing.assert_allclose(rprelu(x).numpy(), ref, rtol=1e-6)

    @pytest.mark.parametrize("m", [1, 3])
    def test_abc_weight_bases_least_squares(self, m):
        w = _kernel()
        u = [0.0] if m == 1 else [-1 + i * 2 / (m - 1) for i in range(m)]
        bases = np.stack([_sign(w - w.mean() + ui * w.std()).ravel() for ui in u], axis=1)
        alpha = np.linalg.lstsq(bases, w.ravel(), rcond=None)[0]
        ref = (bases @ alpha).reshape(w.shape)
        np.testing.assert_allclose(V.ABCWeight(m)(w).numpy(), ref, atol=1e-4)

    def test_abc_activation_bases(self):
        x = np.linspace(-2, 2, 21).astype(np.float32).reshape(1, 21, 1)
        layer = _build_layer(V.ABCActivation(3), x.shape)
        v, beta = layer.shift.numpy(), layer.scale.numpy()
        ref = sum(beta[i] * (2.0 * (np.clip(x + v[i], 0, 1) >= 0.5) - 1) for i in range(3))
        np.testing.assert_allclose(layer(x).numpy(), ref, rtol=1e-6)
        assert len(np.unique(layer(x).numpy())) == 4  # N = 3 bases give N + 1 levels

    def test_adabin_weight(self):
        w = _kernel() + 0.2
        rows = []
        for r in _rows(w):
            beta = r.mean()
            alpha = np.sqrt(np.mean((r - beta) ** 2))
            rows.append(alpha * _sign(r - beta) + beta)
        np.testing.assert_allclose(V.AdaBinWeight()(w).numpy(), _from_rows(np.stack(rows), w.shape), rtol=1e-5)

    def test_adabin_activation_and_maxout(self):
        x = np.random.default_rng(2).normal(size=(2, 4, 3)).astype(np.float32)
        act = _build_layer(V.AdaBinActivation(), x.shape)
        act.distance.assign(0.7), act.center.assign(0.2)
        np.testing.assert_allclose(act(x).numpy(), 0.7 * _sign((x - 0.2) / 0.7) + 0.2, rtol=1e-6)
        maxout = _build_layer(V.Maxout(), x.shape)
        maxout.pos_scale.assign([1.0, 2.0, 0.5]), maxout.neg_scale.assign([0.25, 0.0, 1.0])
        pos, neg = np.array([1.0, 2.0, 0.5]), np.array([0.25, 0.0, 1.0])
        np.testing.assert_allclose(maxout(x).numpy(), pos * np.maximum(x, 0) - neg * np.maximum(-x, 0), rtol=1e-6)

    @pytest.mark.parametrize("bits", [0, 1, 2, 4])
    def test_cyclic_sign(self, bits):
        w = _kernel()
        quantizer = V.CyclicSign("weights", bits=bits)
        if bits == 0:
            ref = _sign(w)
        else:
            rows = []
            for r in _rows(w):
                step = (r.max() - r.min()) / (2**bits - 1)
                rows.append(_sign(np.round((r - r.min()) / step) * step + r.min()))
            ref = _from_rows(np.stack(rows), w.shape)
        np.testing.assert_array_equal(quantizer(w).numpy(), ref)

    def test_cyclic_bits_schedule(self):
        period, low, high = 10, 2, 8
        values = [V.cyclic_bits(i, period, low, high) for i in range(25)]
        for i, b in enumerate(values):
            phase = (i % period) / period
            assert b == np.rint(low + 0.5 * (high - low) * (1 + np.cos(np.pi * phase + np.pi)))
        assert values[0] == low and max(values) <= high and values[10] == low

    def test_cyclic_schedule_callback_and_final_bits(self):
        model = BACKBONES["conv1d"]("cyclebnn", num_classes=2, input_shape=(8, 3), width=2)
        callback = V.CyclicPrecisionSchedule(total_steps=10, cycles=1, bits=(2, 8), grad_bits=(4, 8))
        callback.set_model(model)
        for _ in range(6):
            callback.on_train_batch_begin(0)
        signs = [l.kernel_quantizer for l in model.layers if isinstance(l, lq.layers.QuantConv1D)]
        grads = [l for l in model.layers if isinstance(l, V.GradientQuantizer)]
        assert signs[0].bits.numpy() == V.cyclic_bits(5, 10, 2, 8)
        assert grads[0].bits.numpy() == V.cyclic_bits(5, 10, 4, 8)
        callback.on_train_end()
        assert signs[0].bits.numpy() == 0 and grads[0].bits.numpy() == 0

    def test_gradient_quantizer_levels(self):
        layer = V.GradientQuantizer(bits=2)
        x = tf.constant(np.random.default_rng(3).normal(size=(2, 50)).astype(np.float32))
        weights = tf.constant(np.random.default_rng(4).normal(size=(2, 50)).astype(np.float32))
        g, y = _grad(lambda v: tf.reduce_sum(layer(v) * weights), x)
        np.testing.assert_allclose(y, np.sum(x.numpy() * weights.numpy()), rtol=1e-5)
        for sample in range(2):
            assert len(np.unique(np.round(g[sample], 5))) <= 4


QUANTIZERS = [
    V.XnorSign(), V.MagnitudeSign(scale_gradient=False), V.DoReFaWeight(2), V.DoReFaActivation(3),
    V.EDESign(t=0.5, k=2.0), V.LibraPBSign(), V.ABCWeight(2), V.AdaBinWeight(),
    V.CyclicSign("activations", bits=3),
]
LAYERS = [V.RSign(), V.RPReLU(), V.ABCActivation(2), V.AdaBinActivation(), V.Maxout(), V.GradientQuantizer(3)]


class TestSerialization:
    @pytest.mark.parametrize("obj", QUANTIZERS + LAYERS, ids=lambda o: type(o).__name__)
    def test_round_trip_without_custom_objects(self, obj):
        config = tf.keras.utils.serialize_keras_object(obj)
        clone = tf.keras.utils.deserialize_keras_object(config)
        assert type(clone) is type(obj)
        assert clone.get_config() == obj.get_config()

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="k_bit"):
            V.DoReFaWeight(0)
        with pytest.raises(ValueError, match="bases"):
            V.ABCWeight(0)
        with pytest.raises(ValueError, match="mode"):
            V.CyclicSign("bias")
        with pytest.raises(ValueError, match="Unknown BNN variant"):
            V.get_variant("nope")
        with pytest.raises(ValueError, match="epochs"):
            V.get_variant("irnet").callbacks()
        with pytest.raises(ValueError, match="stem"):
            BACKBONES["resnet18"]("bnn", input_shape=(8, 8, 3), stem="mnist", width=2)
        with pytest.raises(ValueError, match="input_shape"):
            BACKBONES["conv1d"]("bnn", input_shape=(8, 8, 3), width=2)


# ------------------------------------------------------------------------------------------
# W_b for the penalty: the unscaled binary part, so alpha is applied once
# ------------------------------------------------------------------------------------------


def _np_abc_unscaled(w, m):
    u = [0.0] if m == 1 else [-1 + i * 2 / (m - 1) for i in range(m)]
    bases = np.stack([_sign(w - w.mean() + ui * w.std()).ravel() for ui in u], axis=1)
    alpha = np.linalg.lstsq(bases, w.ravel(), rcond=None)[0]
    return (bases @ (alpha / np.sum(np.abs(alpha)))).reshape(w.shape)


def _np_per_filter(w, fn):
    return _from_rows(np.stack([fn(r) for r in _rows(w)]), w.shape)


def _np_dorefa_levels(w, k):
    n = 2**k - 1
    t = np.tanh(w)
    return 2 * np.round((t / (2 * np.max(np.abs(t))) + 0.5) * n) / n - 1


#: (quantizer whose output carries a scale, NumPy unscaled binary part of a kernel).
SCALED_QUANTIZERS = [
    (V.XnorSign(), _sign),
    (V.MagnitudeSign(scale_gradient=False), _sign),
    (V.DoReFaWeight(1), _sign),
    (V.DoReFaWeight(2), lambda w: _np_dorefa_levels(w, 2)),
    (V.LibraPBSign(), lambda w: _np_per_filter(w, lambda r: _sign((r - r.mean()) / r.std()))),
    (V.ABCWeight(1), lambda w: _np_abc_unscaled(w, 1)),
    (V.ABCWeight(3), lambda w: _np_abc_unscaled(w, 3)),
    (V.AdaBinWeight(), lambda w: _np_per_filter(w, lambda r: _sign(r - r.mean()))),
]


def _np_l1inf(w):
    """max over output channels of the L1 norm of the filter, by a loop."""
    return max(float(np.sum(np.abs(w[..., c]))) for c in range(w.shape[-1]))


def _quant_layer(quantizer, reg=None, shape=(3, 3, 4, 5), seed=0):
    layer = lq.layers.QuantConv2D(shape[-1], shape[:2], kernel_quantizer=quantizer, kernel_regularizer=reg)
    layer.build((None, 6, 6, shape[2]))
    layer.kernel.latent_variable.assign(_kernel(shape, seed) * 0.4 + 0.1)  # off-centre, inside the STE
    return layer


class TestBinaryKernel:
    @pytest.mark.parametrize("quantizer,reference", SCALED_QUANTIZERS, ids=lambda o: getattr(o, "name", None) or type(o).__name__)
    def test_term_is_l1inf_of_unscaled_binary_part(self, quantizer, reference):
        layer = _quant_layer(quantizer)
        latent = layer.kernel.latent_variable.numpy()
        expected = reference(latent)
        np.testing.assert_allclose(binary_kernel(layer.kernel).numpy(), expected, atol=1e-5)
        term = L1InfRegularizer(1.0, normalize=False, alpha="none").term(layer.kernel)
        assert float(term) == pytest.approx(_np_l1inf(expected), rel=1e-5)
        assert np.max(np.abs(expected)) <= 1.0 + 1e-6  # unscaled: no alpha inside W_b

    @pytest.mark.parametrize("quantizer,reference", SCALED_QUANTIZERS, ids=lambda o: getattr(o, "name", None) or type(o).__name__)
    def test_alpha_applied_once_and_gradient_reaches_latent(self, quantizer, reference):
        layer = _quant_layer(quantizer)
        latent = layer.kernel.latent_variable.numpy()
        alpha = np.mean(np.abs(latent))
        reg = L1InfRegularizer(1.0, normalize=False, alpha="layer")
        with tf.GradientTape() as tape:
            term = reg.term(layer.kernel)
        grad = tape.gradient(term, layer.kernel.latent_variable)
        assert float(term) == pytest.approx(alpha * _np_l1inf(reference(latent)), rel=1e-5)
        assert grad is not None and np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)

    @pytest.mark.parametrize("variant", VARIANT_NAMES)
    @pytest.mark.parametrize("kernel", ["random", "zeros", "constant"])
    def test_no_nan_or_negative_term(self, variant, kernel):
        x = tf.keras.Input((6, 6, 4))
        conv = V.get_variant(variant).binary_conv(x, 3, 3, kernel_regularizer=L1InfRegularizer(5e-3))
        layer = [l for l in tf.keras.Model(x, conv).layers if isinstance(l, lq.layers.QuantConv2D)][0]
        values = {"random": _kernel((3, 3, 4, 3)), "zeros": np.zeros((3, 3, 4, 3), np.float32),
                  "constant": np.full((3, 3, 4, 3), 0.3, np.float32)}[kernel]
        layer.kernel.latent_variable.assign(values)
        for alpha in ("layer", "channel", "none"):
            for reduction in ("sum", "log"):
                reg = L1InfRegularizer(5e-3, reduction=reduction, alpha=alpha)
                with tf.GradientTape() as tape:
                    term = reg.term(layer.kernel)
                    loss = reg(layer.kernel)
                grad = tape.gradient(loss, layer.kernel.latent_variable)
                assert np.isfinite(float(term)) and float(term) >= 0, (alpha, reduction, float(term))
                assert np.isfinite(float(loss))
                assert grad is None or np.all(np.isfinite(grad.numpy()))


# ------------------------------------------------------------------------------------------
# Every variant x backbone: build, one training step with the penalty
# ------------------------------------------------------------------------------------------

#: (variant, backbone) -> model, shared by the matrix and the save/load tests of this module.
_MODELS = {}


def _model(variant, backbone):
    key = (variant, backbone)
    if key not in _MODELS:
        _, kwargs, shape = next(c for c in BACKBONE_CASES if c[0] == backbone)
        # Keras autograph-converts every layer call while building a functional model (a third
        # of the build time here). The variants' calls have no tensor-dependent Python control
        # flow, so the graph is the same without it (and such flow would fail here, not pass).
        with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
            _MODELS[key] = BACKBONES[backbone](variant, num_classes=2, input_shape=shape, width=2,
                                               kernel_regularizer=L1InfRegularizer(5e-3), **kwargs)
    return _MODELS[key]


@pytest.fixture(scope="module", autouse=True)
def _drop_models():
    yield
    _MODELS.clear()


def _train_step(model, x, y):
    """One eager SGD step (a traced `train_on_batch` costs 10-40 s per model here, eager < 1 s)."""
    optimizer = tf.keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        ce = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, out))
        loss = ce + tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None])
    return float(loss), grads


def _binary_layers(model):
    return [l for l in model.layers if isinstance(l, (lq.layers.QuantConv2D, lq.layers.QuantConv1D))]


class TestMatrix:
    @pytest.mark.parametrize("backbone", [c[0] for c in BACKBONE_CASES])
    @pytest.mark.parametrize("variant", VARIANT_NAMES)
    def test_build_and_train_step(self, variant, backbone):
        model = _model(variant, backbone)
        binary = _binary_layers(model)
        assert binary and len(model.losses) == len(binary)
        x = np.random.default_rng(0).random((2, *model.input_shape[1:]), dtype=np.float32)
        before = [l.kernel.latent_variable.numpy().copy() for l in binary]
        loss, grads = _train_step(model, x, np.array([0, 1]))
        assert np.isfinite(loss) and np.isfinite(float(penalty(model)))
        assert all(g is None or np.all(np.isfinite(g.numpy())) for g in grads)
        moved = [not np.array_equal(b, l.kernel.latent_variable.numpy()) for b, l in zip(before, binary)]
        assert all(moved), "every binary kernel gets a gradient (cross-entropy + penalty)"

    @pytest.mark.parametrize("variant", VARIANT_NAMES)
    def test_save_load(self, variant, tmp_path):
        model = _model(variant, "vgg_small")
        x = np.random.default_rng(1).random((2, 8, 8, 3), dtype=np.float32)
        path = str(tmp_path / "model.keras")
        model.save(path)
        loaded = tf.keras.models.load_model(path)  # no custom_objects: everything registered
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
        assert len(loaded.losses) == len(model.losses)
        assert float(penalty(loaded)) == pytest.approx(float(penalty(model)), rel=1e-5)


def _trained_like_batchnorm(model, seed=1):
    """Give every BatchNormalization off-zero statistics, as after training.

    Freshly initialised BN (mean 0, beta 0) puts the next sign's threshold exactly at 0, where
    a binary conv's exact integer result often lands; Keras' float conv of a +-alpha kernel
    misses 0 by ~1e-8 there and flips the tie, LCE's popcount does not (docs/conversion_table.md).
    """
    rng = np.random.default_rng(seed)
    for layer in model.submodules:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            shapes = [w.shape for w in layer.get_weights()]
            layer.set_weights([rng.uniform(0.5, 1.5, shapes[0]).astype(np.float32),
                               (0.1 * rng.normal(size=shapes[1])).astype(np.float32),
                               (0.1 * rng.normal(size=shapes[2])).astype(np.float32),
                               rng.uniform(0.5, 2.0, shapes[3]).astype(np.float32)])


def _convert(model, tmp_path):
    """LCE flatbuffer of `model(x, training=False)` at batch 1, exported without Keras.

    `lce.convert_keras_model` (hence `deploy.convert`) first writes a Keras SavedModel, whose
    per-layer call tracing took 15-30 s per small model here (85% of the conversion); this
    exports the same inference function as a plain SavedModel and runs the same LCE MLIR
    converter on it (~3 s). `deploy.convert` itself is tested in tests/test_deploy.py and
    on a zoo model in the slow tests.
    """
    import larq_compute_engine as lce

    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    function = tf.function(lambda x: model(x, training=False), input_signature=[spec], autograph=False)
    concrete = function.get_concrete_function()
    module = tf.Module()
    module.function = function
    module.captured = list(concrete.graph.variables)  # incl. quantizer state (CyclicSign bits)
    # Inference only: the custom gradients (STE, EDE) need not be saved.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(module, str(tmp_path), signatures=concrete, options=options)
    return lce.convert_saved_model(str(tmp_path))


def _mini_net(variant, inputs):
    """Stem, two binary convs (conv -> max-pool -> BN, as VGG-small), GAP, logits."""
    v = V.get_variant(variant)
    x = tf.keras.layers.BatchNormalization()(tf.keras.layers.Conv2D(4, 3, padding="same")(inputs))
    x = v.binary_conv(x, 4, 3, kernel_regularizer=L1InfRegularizer(5e-3))
    x = v.activation(tf.keras.layers.BatchNormalization()(tf.keras.layers.MaxPooling2D(2)(x)))
    x = v.binary_conv(x, 4, 3, kernel_regularizer=L1InfRegularizer(5e-3))
    x = v.activation(tf.keras.layers.BatchNormalization()(x))
    return tf.keras.layers.Dense(2)(tf.keras.layers.GlobalAveragePooling2D()(x))


def _check_combined(combined, per_variant_bconvs, tmp_path):
    _trained_like_batchnorm(combined)
    flatbuffer = _convert(combined, tmp_path)
    counts = deploy.op_counts(flatbuffer)
    expected = sum(n for v, n in zip(VARIANT_NAMES, per_variant_bconvs) if V.get_variant(v).lce_binary)
    assert counts.get("LceBconv2d", 0) == expected, counts
    x = np.random.default_rng(0).random((4, *combined.input_shape[1:]), dtype=np.float32)
    keras_out = combined.predict(x, verbose=0)
    lce_out = deploy.TFLiteModel(flatbuffer).predict(x)
    for i, variant in enumerate(VARIANT_NAMES):
        k, t = keras_out[:, 2 * i:2 * i + 2], lce_out[:, 2 * i:2 * i + 2]
        np.testing.assert_allclose(t, k, atol=1e-4, rtol=1e-4, err_msg=f"{variant}: LCE vs Keras logits")


class TestConversion:
    def test_every_variant_converts_and_matches_keras(self, tmp_path):
        """All variants in one flatbuffer (one converter run): LceBconv2d count and logits."""
        inputs = tf.keras.Input((8, 8, 3))
        combined = tf.keras.Model(inputs, tf.keras.layers.Concatenate()([_mini_net(v, inputs) for v in VARIANT_NAMES]))
        _check_combined(combined, [2] * len(VARIANT_NAMES), tmp_path)

    @pytest.mark.slow
    def test_every_variant_vgg_small_converts_and_matches_keras(self, tmp_path):
        """The same on the full VGG-small of every variant (~60 s)."""
        inputs = tf.keras.Input((8, 8, 3))
        branches = [BACKBONES["vgg_small"](v, num_classes=2, input_shape=(8, 8, 3), width=2, logits=True,
                                           kernel_regularizer=L1InfRegularizer(5e-3)) for v in VARIANT_NAMES]
        combined = tf.keras.Model(inputs, tf.keras.layers.Concatenate()([b(inputs) for b in branches]))
        _check_combined(combined, [len(_binary_layers(b)) for b in branches], tmp_path)

"""Tests of larq_l1inf.variants (the registry): every variant's binary conv with the penalty,
every variant x backbone (build + one training step), save/load and LCE conversion.

The quantizers' and layers' formulas are tested in test_quantizers.py and test_layers.py."""

import warnings

import larq as lq
import numpy as np
import pytest
from helpers import numpy_l1inf, trained_like_batchnorm
from test_quantizers import SCALED as QUANTIZER_SCALES
from tensorflow.python.autograph.core import ag_ctx  # test speed only, see _model

from larq_l1inf import L1InfRegularizer, deploy, kernels, penalty
from larq_l1inf import callbacks as C
from larq_l1inf import quantizers as Q
from larq_l1inf import variants as V
from larq_l1inf._keras import tf
from larq_l1inf.backbones import BACKBONES
from larq_l1inf.regularizers import binary_kernel, kernel_contribution, kernel_term, penalized_layers

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


def _quantized_kernels(model):
    """The variant's quantized kernels, found through `larq_l1inf.kernels` (not by layer
    class: a multi-bit `mbn` conv is no `QuantConv2D`)."""
    return [entry for entry in kernels.model_kernels(model) if entry.quantizer is not None]


def _latent(weight):
    return getattr(weight, "latent_variable", weight)


def _kernel(shape=(3, 3, 4, 5), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _sign(x):
    return np.where(x >= 0, 1.0, -1.0)


class TestRegistry:
    @pytest.mark.parametrize("variant", VARIANT_NAMES)
    def test_builds_without_deprecated_objects(self, variant):
        x = tf.keras.Input((6, 6, 4))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = V.get_variant(variant).binary_conv(x, 3, 3)
        ours = [str(w.message) for w in caught if w.category is DeprecationWarning
                and any(word in str(w.message) for word in ("larq_l1inf", "scale_gradient", "DoReFa"))]
        assert not ours, ours
        [entry] = _quantized_kernels(tf.keras.Model(x, y))
        assert entry.quantizer.precision >= 1
        assert tuple(entry.weight.shape) == (3, 3, 4, 3)

    def test_names_and_aliases(self):
        assert V.get_variant("XNOR-Net").name == "xnor"
        assert V.get_variant("dorefa", w_bits=2)._kernel_quantizer().k_bit == 2
        variant = V.get_variant("bnn")
        assert V.get_variant(variant) is variant

    def test_callbacks(self):
        assert [type(c) for c in V.get_variant("irnet").callbacks(epochs=3)] == [C.EDESchedule]
        [cyclic] = V.get_variant("cyclebnn").callbacks(epochs=2, steps_per_epoch=5)
        assert isinstance(cyclic, C.CyclicPrecisionSchedule) and cyclic.total_steps == 10
        assert V.get_variant("bnn").callbacks() == []

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="Unknown BNN variant"):
            V.get_variant("nope")
        with pytest.raises(ValueError, match="epochs"):
            V.get_variant("irnet").callbacks()
        with pytest.raises(ValueError, match="steps_per_epoch"):
            V.get_variant("cyclebnn").callbacks(epochs=2)
        with pytest.raises(ValueError, match="1-D or 2-D"):
            V.get_variant("bnn").binary_conv(tf.keras.Input((4, 4, 4, 2)), 2, 3)
        with pytest.raises(ValueError, match="stem"):
            BACKBONES["resnet18"]("bnn", input_shape=(8, 8, 3), stem="mnist", width=2)
        with pytest.raises(ValueError, match="input_shape"):
            BACKBONES["conv1d"]("bnn", input_shape=(8, 8, 3), width=2)


# ------------------------------------------------------------------------------------------
# W_b for the penalty: the unscaled binary part, so alpha is applied once
# ------------------------------------------------------------------------------------------


#: (quantizer whose output carries a scale, NumPy unscaled binary part of a kernel); the
#: NumPy references of the quantizers themselves live in test_quantizers.py.
SCALED_QUANTIZERS = [(make(), lambda w, ref=ref: ref(w)[1]) for _, make, ref in QUANTIZER_SCALES]
_np_l1inf = numpy_l1inf


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
        [entry] = penalized_layers(tf.keras.Model(x, conv))
        values = {"random": _kernel((3, 3, 4, 3)), "zeros": np.zeros((3, 3, 4, 3), np.float32),
                  "constant": np.full((3, 3, 4, 3), 0.3, np.float32)}[kernel]
        latent = _latent(entry.weight)
        latent.assign(values)
        for alpha in ("layer", "channel", "none"):
            for reduction in ("sum", "log"):
                reg = L1InfRegularizer(5e-3, reduction=reduction, alpha=alpha)
                with tf.GradientTape() as tape:
                    term = kernel_term(entry, reg)
                    loss = kernel_contribution(entry, reg)
                grad = tape.gradient(loss, latent)
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
    """The layers of the variant's quantized kernels (one kernel each), in model order."""
    return [entry.layer for entry in _quantized_kernels(model)]


class TestMatrix:
    # ResNet-34 repeats ResNet-18's blocks (the slowest column, ~1/3 of the matrix): @slow.
    @pytest.mark.parametrize("backbone", [pytest.param(c[0], marks=pytest.mark.slow) if c[0] == "resnet34" else c[0]
                                          for c in BACKBONE_CASES])
    @pytest.mark.parametrize("variant", VARIANT_NAMES)
    def test_build_and_train_step(self, variant, backbone):
        model = _model(variant, backbone)
        binary = _binary_layers(model)
        assert binary and len(model.losses) == len(binary)
        x = np.random.default_rng(0).random((2, *model.input_shape[1:]), dtype=np.float32)
        before = [_latent(l.kernel).numpy().copy() for l in binary]
        loss, grads = _train_step(model, x, np.array([0, 1]))
        assert np.isfinite(loss) and np.isfinite(float(penalty(model)))
        assert all(g is None or np.all(np.isfinite(g.numpy())) for g in grads)
        moved = [not np.array_equal(b, _latent(l.kernel).numpy()) for b, l in zip(before, binary)]
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
    # Off-zero BN statistics, as after training: fresh BN leaves sign ties (docs/conversion_table.md).
    trained_like_batchnorm(combined)
    C.set_cyclic_bits(combined, 0)  # CycleBNN's deployed state (CyclicSign.deployment_issue)
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
        _check_combined(combined, [2 * V.get_variant(v).lce_convs for v in VARIANT_NAMES], tmp_path)

    @pytest.mark.slow
    def test_every_variant_vgg_small_converts_and_matches_keras(self, tmp_path):
        """The same on the full VGG-small of every variant (~60 s)."""
        inputs = tf.keras.Input((8, 8, 3))
        branches = [BACKBONES["vgg_small"](v, num_classes=2, input_shape=(8, 8, 3), width=2, logits=True,
                                           kernel_regularizer=L1InfRegularizer(5e-3)) for v in VARIANT_NAMES]
        combined = tf.keras.Model(inputs, tf.keras.layers.Concatenate()([b(inputs) for b in branches]))
        _check_combined(combined, [len(_binary_layers(b)) * V.get_variant(v).lce_convs
                                   for b, v in zip(branches, VARIANT_NAMES)], tmp_path)


@pytest.mark.slow
def test_cyclebnn_training_state_disagrees_deployed_state_agrees(tmp_path):
    """CycleBNN at 8 bits: Keras and LCE break min-max rounding ties differently (resnet20
    max abs diff ~1 before); at bits = 0, the deployed state, they agree."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "scripts" / "conversion_table.py"
    spec = importlib.util.spec_from_file_location("conversion_table", path)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    # The table's set-up (random BN gamma/beta too): with trained-like moving statistics only
    # (helpers.trained_like_batchnorm) no tie happened to straddle 0 in this model.
    model = table.build("cyclebnn", "resnet20", width=4, image_size=16, signal_length=32, num_classes=4)
    table.trained_like_batchnorm(model)
    x = np.random.default_rng(0).random((16, 16, 16, 3), dtype=np.float32)
    issues = [q.deployment_issue() for q in C.model_quantizers(model) if isinstance(q, Q.CyclicSign)]
    assert issues and all(issues)
    disagree = deploy.compare_outputs(model, _convert(model, tmp_path / "eight"), x)
    C.set_cyclic_bits(model, 0)
    agree = deploy.compare_outputs(model, _convert(model, tmp_path / "zero"), x)
    assert agree["max_abs_diff"] < 1e-4 and agree["argmax_agreement"] == 1.0
    assert disagree["max_abs_diff"] > 1e-2


def test_module_example_runs():
    import re
    import textwrap

    [block] = re.findall(r"```python\n(.*?)```", V.__doc__, re.S)
    namespace = {}
    exec(textwrap.dedent(block), namespace)
    assert [type(c).__name__ for c in namespace["callbacks"]] == ["EDESchedule"]

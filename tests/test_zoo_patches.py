"""Tests of zoo_patches: every larq-zoo model gets the penalty, weights and outputs unchanged."""

import logging
import os

import larq as lq
import larq_zoo
import numpy as np
import pytest
from helpers import BINARY, toy_bnn, uniform_inputs

import zoo_patches
from larq_l1inf import L1InfRegularizer, deploy, penalty
from larq_l1inf._keras import tf
from larq_l1inf.regularizers import penalized_layers

#: Smallest input each architecture accepts (its downsampling needs the rest; XNORNet's
#: valid 6x6 conv after three 3x3/2 valid max-pools needs >= 217 pixels).
INPUT_SIZE = {"literature.BinaryAlexNet": 64, "literature.DoReFaNet": 64, "literature.XNORNet": 224}
ZOO_NAMES = list(zoo_patches.ZOO_MODELS)


def _factory(name):
    group, model = name.split(".")
    return getattr(getattr(larq_zoo, group), model)


def _build(name):
    size = INPUT_SIZE.get(name, 32)
    return _factory(name)(input_shape=(size, size, 3), num_classes=2, weights=None), size


def _step(model, x, variables):
    """One eager SGD step on `variables` (a traced train_on_batch costs 10-40 s per zoo model)."""
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy([1], pred)) + tf.add_n(model.losses)
    grads = tape.gradient(loss, variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    tf.keras.optimizers.SGD(0.1).apply_gradients(zip(grads, variables))
    return float(loss)


class TestPatchEveryZooModel:
    @pytest.mark.parametrize("name", ZOO_NAMES)
    def test_same_weights_outputs_penalty_and_step(self, name):
        model, size = _build(name)
        x = uniform_inputs((1, size, size, 3), seed=0)
        weights = model.get_weights()
        out = model(x, training=False).numpy()
        binary = zoo_patches.binary_layers(model)
        assert binary, f"{name} has binary layers"
        own = sum(getattr(layer, attr) is not None for layer, _, attr in binary)  # XNORNet has L2
        n_losses = len(model.losses)

        reg = L1InfRegularizer(5e-3)
        if own:  # a layer loss cannot be removed in place: the wrapper rebuilds
            with pytest.raises(ValueError, match="clone=True"):
                zoo_patches.patch_model(model, reg)
            patched = zoo_patches.patch_model(model, reg, clone=True)
            assert not penalized_layers(model)  # the original stays unpenalized
            assert len(patched.losses) == n_losses - own + len(binary)
        else:
            patched = zoo_patches.patch_model(model, reg)
            assert patched is model and len(model.losses) == n_losses + len(binary)
        binary = zoo_patches.binary_layers(patched)
        for a, b in zip(weights, patched.get_weights()):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(patched(x, training=False).numpy(), out, rtol=1e-5, atol=1e-6)
        assert len(penalized_layers(patched)) == len(binary)
        value = float(penalty(patched))
        assert np.isfinite(value) and value > 0
        assert all(layer.get_config()[attr]["class_name"].endswith("L1InfRegularizer") for layer, _, attr in binary)

        # One step on the binary kernels (XNORNet's full step on 58M weights took 16 s).
        kernels = [getattr(layer, attr).latent_variable for layer, attr, _ in binary]
        before = [k.numpy().copy() for k in kernels]
        assert np.isfinite(_step(patched, x, kernels))
        assert all(not np.array_equal(b, k.numpy()) for b, k in zip(before, kernels))


class TestPatchModel:
    def test_clone_keeps_original_and_weights(self):
        model = toy_bnn()
        x = uniform_inputs((2, 8, 8, 3))
        clone = zoo_patches.patch_model(model, L1InfRegularizer(5e-3), clone=True)
        assert clone is not model and not penalized_layers(model) and len(penalized_layers(clone)) == 2
        for a, b in zip(model.get_weights(), clone.get_weights()):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(clone(x).numpy(), model(x).numpy())

    def test_errors(self):
        with pytest.raises(TypeError, match="tf.keras.Model"):
            zoo_patches.patch_model("model", L1InfRegularizer())
        model = toy_bnn()
        with pytest.raises(TypeError, match="regularizer"):
            zoo_patches.patch_model(model, 3)
        zoo_patches.patch_model(model, L1InfRegularizer(1e-3))
        with pytest.raises(ValueError, match="clone=True"):
            zoo_patches.patch_model(model, L1InfRegularizer(5e-3))
        replaced = zoo_patches.patch_model(model, L1InfRegularizer(5e-3), clone=True)
        assert {layer.kernel_regularizer.delta for layer, _, _ in zoo_patches.binary_layers(replaced)} == {5e-3}
        with pytest.raises(ValueError, match="not built"):
            zoo_patches.patch_model(tf.keras.Sequential([tf.keras.layers.Dense(2)]), L1InfRegularizer())

    def test_wrapper_save_load(self, tmp_path):
        model = zoo_patches.literature.BinaryResNetE18(
            input_shape=(32, 32, 3), num_classes=2, weights=None, kernel_regularizer=L1InfRegularizer(5e-3),
        )
        n = len(zoo_patches.binary_layers(model))
        assert len(model.losses) == n == len(penalized_layers(model))
        path = str(tmp_path / "model.h5")
        model.save(path)
        loaded = tf.keras.models.load_model(path, compile=False)  # no custom_objects
        assert len(loaded.losses) == n
        x = uniform_inputs((1, 32, 32, 3), seed=0)
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
        assert float(penalty(loaded)) == pytest.approx(float(penalty(model)), rel=1e-5)

    @pytest.mark.slow
    def test_wrapper_converts_in_subprocess(self):
        """deploy.convert (subprocess) of a patched zoo model: the regularizer does not block LCE."""
        model = zoo_patches.sota.QuickNetSmall(
            input_shape=(32, 32, 3), num_classes=2, weights=None, kernel_regularizer=L1InfRegularizer(5e-3),
        )
        flatbuffer = deploy.convert(model, on_failure="ignore")
        assert deploy.op_counts(flatbuffer).get("LceBconv2d", 0) == len(zoo_patches.binary_layers(model))


@lq.utils.register_keras_custom_object
def box_initializer(shape, dtype=None):
    """A registered plain-function initializer, as larq-zoo's `blurpool_initializer` is."""
    return tf.ones(shape, dtype=dtype) / float(shape[0] * shape[1])


def blur_model(initializer=box_initializer):
    """QuickNet's pattern at toy size: a frozen depthwise blur with a function initializer."""
    inputs = tf.keras.Input((8, 8, 2))
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, trainable=False,
                                        depthwise_initializer=initializer)(inputs)
    x = lq.layers.QuantConv2D(4, 3, padding="same", pad_values=1.0, **BINARY)(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.BatchNormalization()(x))
    return tf.keras.Model(inputs, tf.keras.layers.Dense(2)(x))


#: Every format tf_keras 2.16 saves: legacy h5, SavedModel directory, and the .keras zip.
FORMATS = ["model.h5", "saved_model", "model.keras"]


class TestSaveFormats:
    def test_function_initializer_breaks_h5_unpatched(self, tmp_path):
        path = str(tmp_path / "model.h5")
        blur_model().save(path)
        with pytest.raises(TypeError, match="Unknown initializer"):
            tf.keras.models.load_model(path, compile=False)

    @pytest.mark.parametrize("name", FORMATS)
    def test_patched_model_loads_from_every_format(self, tmp_path, name):
        model = zoo_patches.patch_model(blur_model(), L1InfRegularizer(5e-3))
        assert isinstance(model.layers[1].depthwise_initializer, zoo_patches.FunctionInitializer)
        x = uniform_inputs((2, 8, 8, 2))
        path = os.path.join(str(tmp_path), name)
        model.save(path)
        loaded = tf.keras.models.load_model(path, compile=False)  # no custom_objects
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
        assert len(penalized_layers(loaded)) == 1
        assert float(penalty(loaded)) == pytest.approx(float(penalty(model)), rel=1e-5)

    def test_initializer_gives_the_same_values(self):
        wrapped = zoo_patches.FunctionInitializer("box_initializer")
        np.testing.assert_array_equal(wrapped((3, 3, 2, 1)).numpy(),
                                      box_initializer((3, 3, 2, 1), "float32").numpy())
        rebuilt = tf.keras.Model.from_config(zoo_patches.patch_model(
            blur_model(), L1InfRegularizer()).get_config())
        np.testing.assert_array_equal(rebuilt.layers[1].depthwise_kernel.numpy(),
                                      box_initializer((3, 3, 2, 1), "float32").numpy())
        with pytest.raises(ValueError, match="registered"):
            zoo_patches.FunctionInitializer("not_registered")((3, 3, 2, 1))

    def test_unregistered_function_initializer_warns(self, caplog):
        def local_initializer(shape, dtype=None):
            return tf.ones(shape, dtype=dtype)

        with caplog.at_level(logging.WARNING, logger="zoo_patches"):
            zoo_patches.patch_model(blur_model(local_initializer), L1InfRegularizer())
        assert "local_initializer" in caplog.text and ".keras" in caplog.text

    def test_quicknet_loads_from_h5(self, tmp_path):
        """larq-zoo's own blur pool: QuickNetSmall (weights=None) through the wrapper."""
        model = zoo_patches.sota.QuickNetSmall(
            input_shape=(32, 32, 3), num_classes=2, weights=None,
            kernel_regularizer=L1InfRegularizer(5e-3),
        )
        path = str(tmp_path / "quicknet.h5")
        model.save(path)
        loaded = tf.keras.models.load_model(path, compile=False)
        x = uniform_inputs((1, 32, 32, 3))
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
        assert len(loaded.losses) == len(zoo_patches.binary_layers(model))

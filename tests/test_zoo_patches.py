"""Tests of zoo_patches: every larq-zoo model gets the penalty, weights and outputs unchanged."""

import os
import sys

import numpy as np
import pytest

# zoo_patches is a top-level package next to larq_l1inf; an editable install made before it
# existed does not map it, so make the checkout importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import larq_zoo  # noqa: E402

import zoo_patches  # noqa: E402
from larq_l1inf import L1InfRegularizer, deploy, penalty  # noqa: E402
from larq_l1inf._keras import tf  # noqa: E402
from larq_l1inf.regularizers import penalized_layers  # noqa: E402

#: Smallest input each architecture accepts (its downsampling needs the rest).
INPUT_SIZE = {"literature.BinaryAlexNet": 64, "literature.DoReFaNet": 64, "literature.XNORNet": 224}
ZOO_NAMES = list(zoo_patches.ZOO_MODELS)


def _factory(name):
    group, model = name.split(".")
    return getattr(getattr(larq_zoo, group), model)


def _build(name):
    size = INPUT_SIZE.get(name, 32)
    return _factory(name)(input_shape=(size, size, 3), num_classes=3, weights=None), size


class TestPatchEveryZooModel:
    @pytest.mark.parametrize("name", ZOO_NAMES)
    def test_same_weights_outputs_penalty_and_step(self, name):
        model, size = _build(name)
        x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
        weights = [w.copy() for w in model.get_weights()]
        out = model(x, training=False).numpy()
        binary = zoo_patches.binary_layers(model)
        assert binary, f"{name} has binary layers"
        own = sum(getattr(layer, attr) is not None for layer, _, attr in binary)  # XNORNet has L2
        n_losses = len(model.losses)

        reg = L1InfRegularizer(5e-3)
        clone = zoo_patches.patch_model(model, reg, clone=True)
        for a, b in zip(weights, clone.get_weights()):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(clone(x, training=False).numpy(), out, rtol=1e-5, atol=1e-6)
        assert len(penalized_layers(clone)) == len(binary)
        assert len(clone.losses) == n_losses - own + len(binary)
        assert not penalized_layers(model)  # the original stays unpenalized
        if own:
            with pytest.raises(ValueError, match="clone=True"):
                zoo_patches.patch_model(model, reg)
            model = clone
        else:
            del clone
            patched = zoo_patches.patch_model(model, reg)
            assert patched is model and len(model.losses) == n_losses + len(binary)
        binary = zoo_patches.binary_layers(model)
        for a, b in zip(weights, model.get_weights()):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(model(x, training=False).numpy(), out)
        assert np.isfinite(float(penalty(model)))
        assert all(layer.get_config()[attr]["class_name"].endswith("L1InfRegularizer") for layer, _, attr in binary)

        kernel = getattr(binary[0][0], binary[0][1])
        before = kernel.latent_variable.numpy().copy()
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy([1], pred)) + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        tf.keras.optimizers.SGD(0.1).apply_gradients(
            [(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None]
        )
        assert np.isfinite(float(loss))
        assert not np.array_equal(before, kernel.latent_variable.numpy())


class TestPatchedModelLifecycle:
    def test_wrapper_save_load_convert(self, tmp_path):
        model = zoo_patches.sota.QuickNetSmall(
            input_shape=(32, 32, 3), num_classes=3, weights=None,
            kernel_regularizer=L1InfRegularizer(5e-3),
        )
        n = len(zoo_patches.binary_layers(model))
        assert len(model.losses) == n
        model.compile("sgd", "sparse_categorical_crossentropy")
        x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
        history = model.fit(x, np.array([0, 2]), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        path = str(tmp_path / "quicknet.h5")
        model.save(path)
        loaded = tf.keras.models.load_model(path, compile=False)
        assert len(loaded.losses) == n
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
        flatbuffer = deploy.convert(loaded, binarized="ignore")  # subprocess: a crash is an error
        assert deploy.op_counts(flatbuffer).get("LceBconv2d", 0) == n

    def test_errors(self):
        with pytest.raises(TypeError, match="tf.keras.Model"):
            zoo_patches.patch_model("model", L1InfRegularizer())
        model = larq_zoo.sota.QuickNetSmall(input_shape=(32, 32, 3), num_classes=3, weights=None)
        with pytest.raises(TypeError, match="regularizer"):
            zoo_patches.patch_model(model, 3)
        zoo_patches.patch_model(model, L1InfRegularizer(1e-3))
        with pytest.raises(ValueError, match="clone=True"):
            zoo_patches.patch_model(model, L1InfRegularizer(5e-3))
        replaced = zoo_patches.patch_model(model, L1InfRegularizer(5e-3), clone=True)
        assert {layer.kernel_regularizer.delta for layer, _, _ in zoo_patches.binary_layers(replaced)} == {5e-3}

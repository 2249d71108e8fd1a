"""L1InfCallback: per-epoch logs into History and TensorBoard, attach, linear warm-up of delta."""

import glob

import larq as lq
import numpy as np
import pytest

from larq_l1inf import L1InfCallback, L1InfRegularizer, l1inf_norm, penalty
from larq_l1inf._keras import tf


def model_and_data(reduction="log", delta=0.05, lr=0.05):
    conv = dict(padding="same", pad_values=1.0, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                kernel_constraint="weight_clip", use_bias=False)
    model = tf.keras.Sequential([
        tf.keras.Input((6, 6, 2)),
        lq.layers.QuantConv2D(4, 3, name="bconv1", kernel_regularizer=L1InfRegularizer(delta, reduction=reduction), **conv),
        lq.layers.QuantConv2D(4, 3, name="bconv2", kernel_regularizer=L1InfRegularizer(delta, reduction=reduction), **conv),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(2),
    ])
    model.compile(tf.keras.optimizers.SGD(lr), tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    return model, rng.random((8, 6, 6, 2)).astype("float32"), rng.integers(0, 2, 8)


class TestLogging:
    def test_history_gets_penalty_norms_and_alphas(self):
        model, x, y = model_and_data()
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[L1InfCallback()])
        logs = history.history
        assert logs["l1inf_penalty"][-1] == pytest.approx(float(penalty(model)), rel=1e-6)
        for name in ("bconv1", "bconv2"):
            layer = model.get_layer(name)
            latent = layer.kernel.latent_variable.numpy()
            w_b = np.where(latent >= 0, 1.0, -1.0)
            assert logs[f"l1inf_norm/{name}"][-1] == pytest.approx(float(l1inf_norm(w_b)))
            assert logs[f"l1inf_alpha/{name}"][-1] == pytest.approx(np.abs(latent).mean(), rel=1e-5)
        assert len(logs["l1inf_penalty"]) == 2
        # the data-free Theorem 4.2 terms: log10 of the product of the binary layers' norms
        expected = sum(np.log10(logs[f"l1inf_norm/{n}"][-1]) for n in ("bconv1", "bconv2"))
        assert logs["bound/log10_l1inf"][-1] == pytest.approx(expected, rel=1e-5)
        assert np.isfinite(logs["bound/log10_data_free"][-1])

    def test_tensorboard_listed_after_gets_the_scalars(self, tmp_path):
        model, x, y = model_and_data()
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[L1InfCallback(), tf.keras.callbacks.TensorBoard(str(tmp_path))])
        tags = set()
        for path in glob.glob(str(tmp_path / "train" / "events*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                tags.update(v.tag for v in event.summary.value)
        assert "epoch_l1inf_penalty" in tags and "epoch_l1inf_norm/bconv1" in tags

    def test_product_reduction_is_attached_by_the_callback(self):
        model, x, y = model_and_data(reduction="product", delta=1e-3)
        history = model.fit(x, y, epochs=1, verbose=0, callbacks=[L1InfCallback()])
        assert np.isfinite(history.history["loss"][0])
        assert history.history["l1inf_penalty"][0] == pytest.approx(float(penalty(model)), rel=1e-6)

    def test_logs_come_from_one_graph_traced_once_per_warmup_factor(self, monkeypatch):
        from larq_l1inf import callbacks

        traces = []
        compute = callbacks._epoch_values
        monkeypatch.setattr(callbacks, "_epoch_values",
                            lambda *args: traces.append(1) or compute(*args))
        model, x, y = model_and_data()
        callback = L1InfCallback(warmup_epochs=2, bounds=False)
        history = model.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[callback])
        assert len(traces) == 3  # warm-up factors 0, 0.5, 1: not one trace per epoch
        # The graph reads the variables: after fit (lr 0.05 moved them) it logs the new values.
        values = callback.logged_values()
        assert len(traces) == 3
        latent = model.get_layer("bconv2").kernel.latent_variable.numpy()
        assert values["l1inf_alpha/bconv2"] == pytest.approx(np.abs(latent).mean(), rel=1e-6)
        assert values["l1inf_penalty"] == pytest.approx(float(penalty(model)), rel=1e-6)
        assert values["l1inf_penalty"] == pytest.approx(history.history["l1inf_penalty"][-1], rel=1e-6)

    def test_model_without_penalty_warns(self, caplog):
        model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.fit(np.zeros((2, 2)), np.zeros((2, 1)), verbose=0, callbacks=[L1InfCallback()])
        assert "no layer" in caplog.text


def test_logged_alpha_and_term_are_the_penalty_s_per_channel_alpha():
    """With magnitude_aware_sign, alpha="auto" is per output channel: the callback logs its
    mean and max and the term the penalty used, all against loops."""
    reg = L1InfRegularizer(0.05, normalize=False)
    model = tf.keras.Sequential([
        tf.keras.Input((6, 6, 2)),
        lq.layers.QuantConv2D(4, 3, name="xnor", input_quantizer="ste_sign",
                              kernel_quantizer="magnitude_aware_sign", kernel_constraint="weight_clip",
                              kernel_regularizer=reg),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(2),
    ])
    model.compile(tf.keras.optimizers.SGD(0.05),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    logs = model.fit(rng.random((8, 6, 6, 2)), rng.integers(0, 2, 8), epochs=1, verbose=0,
                     callbacks=[L1InfCallback(bounds=False)]).history
    latent = model.get_layer("xnor").kernel.latent_variable.numpy().astype(np.float64)
    alpha = [np.abs(latent[..., o]).mean() for o in range(latent.shape[-1])]
    fan_in = latent[..., 0].size
    assert logs["l1inf_alpha/xnor"][-1] == pytest.approx(np.mean(alpha), rel=1e-5)
    assert logs["l1inf_alpha_max/xnor"][-1] == pytest.approx(max(alpha), rel=1e-5)
    assert logs["l1inf_term/xnor"][-1] == pytest.approx(max(alpha) * fan_in, rel=1e-5)
    assert logs["l1inf_penalty"][-1] == pytest.approx(0.05 * max(alpha) * fan_in, rel=1e-5)


class TestWarmup:
    def test_factor_schedule(self):
        callback = L1InfCallback(warmup_epochs=4)
        assert [callback.factor(e) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
        assert L1InfCallback().factor(0) == 1.0

    def test_loss_carries_the_warmed_up_penalty(self):
        # lr = 0: weights and cross-entropy stay fixed, so the loss moves only with the factor.
        model, x, y = model_and_data(delta=0.5, lr=0.0)
        full = float(penalty(model))
        history = model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[L1InfCallback(warmup_epochs=2)])
        loss = np.array(history.history["loss"])
        np.testing.assert_allclose(loss - loss[0], [0.0, 0.5 * full, full, full], rtol=1e-4, atol=1e-5)
        assert history.history["l1inf_warmup"] == [0.0, 0.5, 1.0, 1.0]
        # after fit the regularizers are back at full strength and the model still saves
        assert sum(float(v) for v in model.losses) == pytest.approx(full, rel=1e-6)

    def test_savedmodel_checkpoint_during_warmup(self, tmp_path):
        model, x, y = model_and_data()
        checkpoint = tf.keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt"), save_weights_only=False)
        model.fit(x, y, epochs=1, verbose=0, callbacks=[L1InfCallback(warmup_epochs=2), checkpoint])
        loaded = tf.keras.models.load_model(str(tmp_path / "ckpt"))
        assert float(penalty(loaded)) == pytest.approx(float(penalty(model)), rel=1e-6)

    def test_bad_warmup(self):
        with pytest.raises(ValueError, match="warmup_epochs"):
            L1InfCallback(warmup_epochs=-1)

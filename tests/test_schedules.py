"""Tests of the variants' schedules in larq_l1inf.callbacks: IR-Net's EDE and CycleBNN's
cyclic precision, as formulas and as Keras callbacks in a real fit."""

import logging
import math

import larq as lq
import numpy as np
import pytest

from larq_l1inf import callbacks as C
from larq_l1inf import layers as L
from larq_l1inf import quantizers as Q
from larq_l1inf._keras import tf


def _net(kernel_quantizer, input_quantizer, post=None):
    inputs = tf.keras.Input((6, 6, 2))
    x = lq.layers.QuantConv2D(2, 3, kernel_quantizer=kernel_quantizer, input_quantizer=input_quantizer)(inputs)
    if post is not None:
        x = post(x)
    outputs = tf.keras.layers.Dense(2)(tf.keras.layers.GlobalAveragePooling2D()(x))
    model = tf.keras.Model(inputs, outputs)
    model.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data(n=8):
    rng = np.random.default_rng(0)
    return rng.random((n, 6, 6, 2), dtype=np.float32), rng.integers(0, 2, n)


class TestEDE:
    def test_parameters(self):
        epochs = 5
        for epoch in range(epochs + 1):
            t, k = C.ede_parameters(epoch, epochs)
            assert t == pytest.approx(0.1 * 10 ** (epoch / epochs * math.log10(100)))
            assert k == pytest.approx(max(1 / t, 1))
        assert C.ede_parameters(epochs, epochs)[0] == pytest.approx(10.0)

    def test_schedule_in_fit(self):
        model = _net(Q.LibraPBSign(), Q.EDESign())
        x, y = _data()
        history = model.fit(x, y, epochs=3, batch_size=4, verbose=0, callbacks=[C.EDESchedule(epochs=3)])
        expected = [C.ede_parameters(e, 3)[0] for e in range(3)]
        np.testing.assert_allclose(history.history["ede_t"], expected, rtol=1e-6)
        conv = model.layers[1]
        for quantizer in (conv.kernel_quantizer, conv.input_quantizer):
            assert quantizer.t.numpy() == pytest.approx(expected[-1])
            assert quantizer.k.numpy() == pytest.approx(max(1 / expected[-1], 1))

    def test_warns_without_ede_quantizer(self, caplog):
        model = _net("ste_sign", "ste_sign")
        x, y = _data(4)
        with caplog.at_level(logging.WARNING, logger="larq_l1inf.callbacks"):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[C.EDESchedule(epochs=1)])
        assert "EDESchedule" in caplog.text

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="epochs"):
            C.EDESchedule(0)
        with pytest.raises(ValueError, match="t_min"):
            C.EDESchedule(3, t_min=1.0, t_max=0.5)


class TestCyclic:
    def test_cyclic_bits(self):
        period, low, high = 10, 2, 8
        values = [C.cyclic_bits(i, period, low, high) for i in range(25)]
        for i, b in enumerate(values):
            phase = (i % period) / period
            assert b == np.rint(low + 0.5 * (high - low) * (1 + np.cos(np.pi * phase + np.pi)))
        assert values[0] == low and max(values) <= high and values[10] == low

    def test_schedule_in_fit_and_final_bits(self):
        model = _net(Q.CyclicSign("weights"), Q.CyclicSign("activations"), post=L.GradientQuantizer())
        seen = []

        class Record(tf.keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                seen.append((float(model.layers[1].kernel_quantizer.bits.numpy()),
                             float(model.layers[2].bits.numpy())))

        x, y = _data(8)
        schedule = C.CyclicPrecisionSchedule(total_steps=4, cycles=1, bits=(2, 8), grad_bits=(4, 8))
        model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[schedule, Record()])
        assert seen == [(C.cyclic_bits(i, 4, 2, 8), C.cyclic_bits(i, 4, 4, 8)) for i in range(4)]
        conv = model.layers[1]
        assert conv.kernel_quantizer.bits.numpy() == 0 and conv.input_quantizer.bits.numpy() == 0
        assert model.layers[2].bits.numpy() == 0
        assert conv.input_quantizer.deployment_issue() is None

    def test_set_cyclic_bits(self):
        model = _net(Q.CyclicSign("weights"), Q.CyclicSign("activations"), post=L.GradientQuantizer())
        assert C.set_cyclic_bits(model, 3, 5) == 3
        conv = model.layers[1]
        assert conv.kernel_quantizer.bits.numpy() == 3 and model.layers[2].bits.numpy() == 5

    def test_model_quantizers(self):
        model = _net(Q.CyclicSign("weights"), "ste_sign")
        found = C.model_quantizers(model)
        conv = model.layers[1]
        assert conv.kernel_quantizer in found and conv.input_quantizer in found
        assert len({id(o) for o in found}) == len(found)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="total_steps"):
            C.CyclicPrecisionSchedule(0)
        with pytest.raises(ValueError, match="bits"):
            C.CyclicPrecisionSchedule(10, bits=(8, 2))

"""`larq_l1inf.attacks`: gradients through the STE, PGD and FGSM on images and 1-D signals."""

import logging

import larq as lq
import numpy as np
import pytest
from helpers import BINARY

from larq_l1inf import attacks
from larq_l1inf._keras import tf
from larq_l1inf.data import load_digits


def toy_bnn(sign=None):
    """A small BNN whose first layer binarizes its (rescaled) input with a sign quantizer
    given here (`helpers.toy_bnn` has a float stem and fixed quantizers, so it cannot show
    gradient masking by a true sign)."""
    return tf.keras.Sequential(
        [
            tf.keras.layers.Input((8, 8, 1)),
            tf.keras.layers.Rescaling(2.0, offset=-1.0),  # [0, 1] -> [-1, 1]
            lq.layers.QuantConv2D(16, 3, padding="same", pad_values=1.0,
                                  **dict(BINARY, input_quantizer=sign or "ste_sign")),
            tf.keras.layers.BatchNormalization(),
            lq.layers.QuantConv2D(16, 3, **BINARY),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.Flatten(),
            lq.layers.QuantDense(10, **BINARY),
            tf.keras.layers.BatchNormalization(),
        ]
    )


@pytest.fixture(scope="module")
def trained():
    (x_train, y_train), (x_test, y_test) = load_digits(size=8, channels=1)
    tf.keras.utils.set_random_seed(0)
    model = toy_bnn()
    model.compile(tf.keras.optimizers.Adam(1e-2),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=4, batch_size=64, verbose=0)
    return model, x_test[:96], y_test[:96]


def mean_loss(model, x, y):
    ce = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return float(ce(y, model(x, training=False)))


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model(x, training=False), 1) == y))


class TestGradientThroughSTE:
    def test_input_gradient_nonzero_through_sign_quantizer(self, trained):
        model, x, y = trained
        grad = attacks.input_gradient(model, x[:8], y[:8])
        assert grad.shape == x[:8].shape
        # every sample gets a usable direction, not only a few pixels
        assert np.all(np.abs(grad).reshape(8, -1).max(1) > 0)

    def test_true_sign_masks_gradient_and_pgd_warns(self, caplog):
        hard_sign = lambda t: tf.where(t >= 0, 1.0, -1.0)  # noqa: E731 - no STE: zero grad
        model = toy_bnn(sign=hard_sign)
        x = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
        y = np.arange(4)
        assert np.all(attacks.input_gradient(model, x, y) == 0)
        with caplog.at_level(logging.WARNING, logger="larq_l1inf.attacks"):
            attacks.pgd(model, x, y, 0.1, iterations=1, seed=0)
        assert "gradient masking" in caplog.text


class TestPGD:
    @pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
    def test_stays_in_ball(self, trained, clip):
        model, x, y = trained
        eps = 0.05
        x_adv = attacks.pgd(model, x, y, eps, iterations=3, clip=clip, seed=0, batch_size=32)
        assert x_adv.shape == x.shape and x_adv.dtype == np.float32
        assert np.abs(x_adv - x).max() <= eps + 1e-6
        assert np.abs(x_adv - x).max() > 0.9 * eps
        if clip:
            assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0

    def test_raises_loss_more_than_random_noise(self, trained):
        model, x, y = trained
        eps = 0.15
        clean = mean_loss(model, x, y)
        noisy = x + np.random.default_rng(0).uniform(-eps, eps, x.shape).astype(np.float32)
        x_adv = attacks.pgd(model, x, y, eps, iterations=10, seed=0)
        assert accuracy(model, x, y) > 0.6  # the toy model did learn
        assert mean_loss(model, x_adv, y) > max(clean, mean_loss(model, noisy, y)) + 0.5
        assert accuracy(model, x_adv, y) < accuracy(model, x, y)

    def test_reproducible_and_default_step(self, trained):
        model, x, y = trained
        a = attacks.pgd(model, x[:8], y[:8], 0.1, iterations=2, seed=3)
        b = attacks.pgd(model, x[:8], y[:8], 0.1, iterations=2, seed=3)
        np.testing.assert_array_equal(a, b)
        # without random start, one step of the default size eps/4 moves by exactly eps/4
        c = attacks.pgd(model, x[:8], y[:8], 0.1, iterations=1, random_start=False)
        moved = np.abs(c - x[:8])
        assert np.allclose(moved[moved > 0], 0.025, atol=1e-6)

    def test_fgsm_is_one_full_step(self, trained):
        model, x, y = trained
        x_adv = attacks.fgsm(model, x[:8], y[:8], 0.1)
        moved = np.abs(x_adv - x[:8])
        assert np.allclose(moved[moved > 0], 0.1, atol=1e-6)
        assert (moved > 0).mean() > 0.5
        assert mean_loss(model, x_adv, y[:8]) > mean_loss(model, x[:8], y[:8])

    def test_one_hot_labels_and_softmax_output(self, trained):
        model, x, y = trained
        prob_model = tf.keras.Sequential([model, tf.keras.layers.Softmax()])
        a = attacks.pgd(prob_model, x[:8], np.eye(10)[y[:8]], 0.1, iterations=2, seed=1)
        b = attacks.pgd(model, x[:8], y[:8], 0.1, iterations=2, seed=1)
        # same direction from probabilities or logits: the sign of the gradient agrees
        assert np.mean(a == b) > 0.9


class TestBadInputs:
    def test_errors(self, trained):
        model, x, y = trained
        with pytest.raises(ValueError, match="labels"):
            attacks.pgd(model, x, y[:-1], 0.1)
        with pytest.raises(ValueError, match="epsilon"):
            attacks.pgd(model, x, y, -0.1)
        with pytest.raises(TypeError, match="Keras model"):
            attacks.pgd(b"TFL3", x, y, 0.1)
        with pytest.raises(TypeError, match="floating"):
            attacks.fgsm(model, (x * 255).astype(np.uint8), y, 0.1)
        with pytest.raises(ValueError, match="iterations"):
            attacks.pgd(model, x, y, 0.1, iterations=-1)


def signals(n, seed):
    """1-D signals (N, T=16, C=2): class 1 when the first half of channel 0 is brighter."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 16, 2)).astype(np.float32)
    y = (x[:, :8, 0].mean(1) > x[:, 8:, 0].mean(1)).astype(np.int64)
    return x, y


@pytest.fixture(scope="module")
def trained_1d():
    x, y = signals(512, 0)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.layers.Input((16, 2)),
        tf.keras.layers.Rescaling(2.0, offset=-1.0),
        lq.layers.QuantConv1D(8, 3, padding="same", pad_values=1.0, **BINARY),
        tf.keras.layers.BatchNormalization(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(2),
    ])
    model.compile(tf.keras.optimizers.Adam(1e-2),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    x_test, y_test = signals(64, 1)
    return model, x_test, y_test


class TestSignals:
    def test_pgd_on_nwc_signals_stays_in_ball_and_raises_loss(self, trained_1d):
        model, x, y = trained_1d
        assert accuracy(model, x, y) > 0.75  # the toy learned the task
        eps = 0.1
        x_adv = attacks.pgd(model, x, y, eps, iterations=5, seed=0, clip=(0.0, 1.0))
        assert x_adv.shape == x.shape == (64, 16, 2)
        assert np.abs(x_adv - x).max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        noisy = np.clip(x + np.random.default_rng(0).uniform(-eps, eps, x.shape), 0, 1)
        assert mean_loss(model, x_adv, y) > mean_loss(model, noisy.astype(np.float32), y) + 0.3
        assert accuracy(model, x_adv, y) < accuracy(model, x, y)


class TestDeprecatedNames:
    def test_progress_is_verbose_for_one_release(self, trained, capsys):
        model, x, y = trained
        with pytest.warns(DeprecationWarning, match="pgd\\(\\): `progress` is deprecated"):
            old = attacks.pgd(model, x[:8], y[:8], 0.1, iterations=1, seed=0, progress=True)
        assert "8/8" in capsys.readouterr().out  # the Keras progress bar ran
        np.testing.assert_array_equal(
            old, attacks.pgd(model, x[:8], y[:8], 0.1, iterations=1, seed=0, verbose=0))
        assert capsys.readouterr().out == ""
        with pytest.warns(DeprecationWarning, match="fgsm"):
            attacks.fgsm(model, x[:8], y[:8], 0.1, progress=False)
        with pytest.raises(ValueError, match="verbose"):
            attacks.pgd(model, x[:8], y[:8], 0.1, verbose=3)

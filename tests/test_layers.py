"""Tests of larq_l1inf.layers: each layer's formula against NumPy, its gradient, and the
larq-style round trip (functional, from_config, training step, Sequential, h5, SavedModel)."""

import numpy as np
import pytest
from helpers import layer_test
from test_quantizers import docstring_examples

from larq_l1inf import layers as L
from larq_l1inf._keras import tf


def _sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def _inputs(shape=(2, 3, 3, 4), seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _gradient(layer, upstream, as_numpy=True):
    """d sum(layer(x) * upstream) / dx: the layer's backward pass applied to `upstream`."""
    x = tf.zeros(upstream.shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(layer(x) * upstream)
    g = tape.gradient(total, x)
    return g.numpy() if as_numpy else g


def _built(layer, shape):
    layer.build(shape)
    return layer


#: (layer class, kwargs, input shape): every layer of the module, for the round trip.
LAYERS = [
    (L.RSign, {}, (4, 4, 3)),
    (L.RPReLU, {}, (4, 4, 3)),
    (L.ABCActivation, {"bases": 2}, (4, 4, 3)),
    (L.AdaBinActivation, {}, (4, 4, 3)),
    (L.Maxout, {}, (4, 4, 3)),
    (L.GradientQuantizer, {"bits": 3.0}, (4, 4, 3)),
]


class TestFormulas:
    def test_rsign(self):
        x = _inputs()
        layer = _built(L.RSign(), x.shape)
        alpha = np.array([0.5, -0.5, 0.0, 1.0], np.float32)
        layer.alpha.assign(alpha)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt)
        np.testing.assert_array_equal(y.numpy(), _sign(x - alpha))
        g = tape.gradient(y, xt).numpy()
        np.testing.assert_allclose(g, np.maximum(2 - 2 * np.abs(x - alpha), 0), atol=1e-6)

    def test_rprelu(self):
        x = _inputs()
        layer = _built(L.RPReLU(), x.shape)
        gamma, zeta, beta = (np.array(v, np.float32) for v in ([0.1, 0, -0.2, 0.3], [0.5, 0, 0, -1], [0.25, 0.1, 0.5, 1]))
        layer.gamma.assign(gamma), layer.zeta.assign(zeta), layer.beta.assign(beta)
        ref = np.where(x > gamma, x - gamma + zeta, beta * (x - gamma) + zeta)
        np.testing.assert_allclose(layer(x).numpy(), ref, rtol=1e-6)

    @pytest.mark.parametrize("bases", [1, 3])
    def test_abc_activation(self, bases):
        x = np.linspace(-2, 2, 21).astype(np.float32).reshape(1, 21, 1)
        layer = _built(L.ABCActivation(bases), x.shape)
        v, beta = layer.shift.numpy(), layer.scale.numpy()
        ref = sum(beta[i] * (2.0 * (np.clip(x + v[i], 0, 1) >= 0.5) - 1) for i in range(bases))
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt)
        np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6)
        assert len(np.unique(y.numpy())) == bases + 1  # N bases give N + 1 levels
        grad_ref = sum(beta[i] * ((x + v[i] >= 0) & (x + v[i] <= 1)) for i in range(bases))
        np.testing.assert_allclose(tape.gradient(y, xt).numpy(), grad_ref, rtol=1e-6)

    def test_adabin_activation(self):
        x = _inputs((2, 4, 3), seed=2)
        layer = _built(L.AdaBinActivation(), x.shape)
        layer.distance.assign(0.7), layer.center.assign(0.2)
        np.testing.assert_allclose(layer(x).numpy(), 0.7 * _sign((x - 0.2) / 0.7) + 0.2, rtol=1e-6)

    def test_maxout(self):
        x = _inputs((2, 4, 3), seed=2)
        layer = _built(L.Maxout(), x.shape)
        pos, neg = np.array([1.0, 2.0, 0.5]), np.array([0.25, 0.0, 1.0])
        layer.pos_scale.assign(pos), layer.neg_scale.assign(neg)
        np.testing.assert_allclose(layer(x).numpy(), pos * np.maximum(x, 0) - neg * np.maximum(-x, 0), rtol=1e-6)

    @pytest.mark.parametrize("bits", [0, 2])
    def test_gradient_quantizer(self, bits):
        layer = L.GradientQuantizer(bits=bits)
        x = tf.constant(_inputs((2, 50), seed=3))
        upstream = tf.constant(_inputs((2, 50), seed=4))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            total = tf.reduce_sum(y * upstream)
        g = tape.gradient(total, x).numpy()
        np.testing.assert_array_equal(y.numpy(), x.numpy())
        if bits == 0:
            np.testing.assert_array_equal(g, upstream.numpy())
            return
        for sample in range(2):
            u = upstream.numpy()[sample]
            step = (u.max() - u.min()) / 3
            levels = np.round((g[sample] - u.min()) / step, 4)
            assert set(np.unique(levels)) <= {0.0, 1.0, 2.0, 3.0}
            assert np.all(np.abs(g[sample] - u) <= step + 1e-5)  # one step at most (stochastic)

    def test_gradient_quantizer_rounding_is_unbiased(self):
        # 4000 samples with the same upstream gradient: one backward pass gives 4000 draws per
        # element, whose mean estimates E[g~] = g (stochastic rounding is unbiased).
        levels, rows = 3, 4000
        u = np.linspace(-1.0, 1.0, 21).astype(np.float32)
        step = (u.max() - u.min()) / levels
        g = _gradient(L.GradientQuantizer(bits=2, seed=5), np.tile(u, (rows, 1)))
        tolerance = 5 * step / (2 * np.sqrt(rows))  # 5 standard errors: a draw's std is <= s/2
        np.testing.assert_allclose(g.mean(axis=0), u, rtol=0, atol=tolerance)
        nearest = np.round((u - u.min()) / step) * step + u.min()
        assert np.abs(nearest - u).max() > 5 * tolerance  # rounding to nearest would fail this
        assert np.all(np.abs(g - u) <= step + 1e-5)

    def test_gradient_quantizer_noise_is_reproducible(self):
        upstream = _inputs((2, 50), seed=4)
        tf.keras.utils.set_random_seed(7)
        first = L.GradientQuantizer(bits=2)
        tf.keras.utils.set_random_seed(7)
        twin, other = L.GradientQuantizer(bits=2), L.GradientQuantizer(bits=2)
        assert first.seed == twin.seed != other.seed  # set_random_seed fixes the drawn seed
        run = [_gradient(first, upstream) for _ in range(3)]
        again = [_gradient(twin, upstream) for _ in range(3)]
        np.testing.assert_array_equal(np.stack(run), np.stack(again))  # same seed, same draws
        assert not np.array_equal(run[0], run[1])  # a new draw every backward pass
        assert not np.array_equal(run[0], _gradient(other, upstream))
        assert int(first.noise_step.numpy()) == 3

        # Inside tf.function, forward-only calls leave the counter alone; the backward advances it.
        step = tf.function(lambda x: _gradient(twin, x, as_numpy=False))
        forward = tf.function(lambda x: twin(x, training=True))
        forward(upstream)
        assert int(twin.noise_step.numpy()) == 3
        step(upstream)
        assert int(twin.noise_step.numpy()) == 4

    def test_gradient_quantizer_counter_is_checkpointed_not_a_weight(self, tmp_path):
        upstream = _inputs((2, 50), seed=4)
        layer = L.GradientQuantizer(bits=2, seed=3)
        _gradient(layer, upstream)
        assert layer.weights == [] and layer.count_params() == 0
        path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
        assert [n for n, _ in tf.train.list_variables(path) if "noise_step" in n]
        expected = _gradient(layer, upstream)  # the uninterrupted second step

        restored = L.GradientQuantizer(bits=2, seed=3)
        tf.train.Checkpoint(layer=restored).restore(path).assert_existing_objects_matched()
        assert int(restored.noise_step.numpy()) == 1
        np.testing.assert_array_equal(_gradient(restored, upstream), expected)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="bases"):
            L.ABCActivation(0)
        with pytest.raises(ValueError, match="seed"):
            L.GradientQuantizer(seed=1.5)


class TestRoundTrip:
    @pytest.mark.parametrize("cls,kwargs,shape", LAYERS, ids=[c[0].__name__ for c in LAYERS])
    def test_layer_test(self, cls, kwargs, shape, tmp_path):
        out = layer_test(cls, kwargs, shape, tmp_path)
        assert np.all(np.isfinite(out))

    @pytest.mark.parametrize("cls,kwargs,shape", LAYERS, ids=[c[0].__name__ for c in LAYERS])
    def test_serialize_without_custom_objects(self, cls, kwargs, shape):
        layer = cls(**kwargs)
        clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
        assert type(clone) is cls and clone.get_config() == layer.get_config()


@pytest.mark.parametrize("block", docstring_examples(L), ids=lambda b: b.split("\n")[-2][:30])
def test_docstring_examples_run(block):
    import larq as lq

    exec(block, {"lq": lq, "tf": tf, **{name: getattr(L, name) for name in L.__all__}})

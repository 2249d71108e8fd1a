"""Interval bound propagation: soundness by sampling, exactness by enumeration, gradients."""

import itertools

import larq as lq
import numpy as np
import pytest
from helpers import BINARY, random_batchnorm, toy_bnn, trained_like_batchnorm, uniform_inputs

from larq_l1inf import ibp
from larq_l1inf._keras import tf
from larq_l1inf.ibp import (
    UnsupportedLayerError,
    certified_margin,
    input_box,
    interval_bounds,
    verified_accuracy,
)

L = tf.keras.layers
TOL = 1e-4


def every_layer_2d():
    """Every supported 2-D layer once, with a residual Add."""
    sign = dict(BINARY)
    inputs = tf.keras.Input((8, 8, 2))
    x = L.Rescaling(2.0, offset=-1.0)(inputs)
    x = L.Normalization(mean=[0.1, -0.1], variance=[0.5, 2.0])(x)
    x = L.Conv2D(4, 3, padding="same", activation="elu")(x)
    x = L.BatchNormalization()(x)
    a = lq.layers.QuantConv2D(4, 3, padding="same", pad_values=1.0, **sign)(x)
    a = L.BatchNormalization()(a)
    b = lq.layers.QuantDepthwiseConv2D(3, padding="same", pad_values=1.0,
                                       input_quantizer="approx_sign",
                                       depthwise_quantizer="ste_sign", use_bias=False)(x)
    b = L.BatchNormalization()(b)
    x = L.Add()([a, b])
    x = L.Activation(lq.activations.hard_tanh)(x)
    x = L.MaxPooling2D(2)(x)
    x = lq.layers.QuantConv2D(4, 3, padding="same", input_quantizer="swish_sign",
                              kernel_quantizer="magnitude_aware_sign", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(2, padding="valid")(x)
    x = L.AveragePooling2D(2, padding="same")(x)
    x = L.Dropout(0.5)(x)
    y = L.GlobalMaxPooling2D()(x)
    x = L.Flatten()(x)
    x = L.Reshape((-1,))(x)
    x = lq.layers.QuantDense(6, input_quantizer="ste_sign", kernel_quantizer="ste_sign")(x)
    x = L.BatchNormalization()(x)
    x = L.Concatenate()([x, y])
    x = L.Dense(5)(x)
    return random_batchnorm(tf.keras.Model(inputs, x))


def every_layer_1d():
    inputs = tf.keras.Input((16, 2))
    x = L.Conv1D(4, 3, padding="causal", activation="tanh")(inputs)
    x = L.BatchNormalization()(x)
    x = lq.layers.QuantConv1D(4, 3, padding="same", **BINARY)(x)
    x = L.BatchNormalization()(x)
    x = L.MaxPooling1D(2)(x)
    x = lq.layers.QuantConv1D(4, 3, strides=2, padding="valid", **BINARY)(x)
    x = L.BatchNormalization()(x)
    x = L.LeakyReLU(0.1)(x)
    x = L.AveragePooling1D(2)(x)
    x = L.GlobalAveragePooling1D()(x)
    x = L.Dense(3, activation="softmax")(x)
    return random_batchnorm(tf.keras.Model(inputs, x))


def _samples(lower, upper, count, rng):
    """`count` points per sample: box corners (half) and uniform points, shape (count, *x)."""
    shape = (count, *lower.shape)
    corners = np.where(rng.random(shape) < 0.5, lower, upper)
    inside = rng.uniform(lower, upper, shape)
    pick = (np.arange(count) % 2 == 0).reshape(-1, *([1] * lower.ndim))
    return np.where(pick, corners, inside).astype("float32")


class _pre_softmax:
    """The model's logits: a model ending in Dense(softmax) with the Dense applied linearly."""

    def __init__(self, model):
        last = model.layers[-1]
        self.head = None
        if getattr(last, "activation", None) is tf.keras.activations.softmax:
            self.head = last
            model = tf.keras.Model(model.input, last.input)
        self.model = model

    def _logits(self, h):
        if self.head is None:
            return h
        return h @ self.head.kernel.numpy() + self.head.bias.numpy()

    def predict(self, x, **kwargs):
        return self._logits(self.model.predict(x, **kwargs))

    def __call__(self, x):
        return tf.constant(self._logits(self.model(x).numpy()))


def _assert_contains(model, x, epsilon, count=1000, seed=0, clip=(0.0, 1.0)):
    lower, upper = (t.numpy() for t in interval_bounds(model, x, epsilon, clip=clip))
    box = input_box(x, epsilon, clip)
    lo, hi = box.lower.numpy(), box.upper.numpy()
    logits = _pre_softmax(model)
    rng = np.random.default_rng(seed)
    for i in range(len(x)):
        points = _samples(lo[i], hi[i], count, rng)
        out = logits.predict(points, batch_size=500, verbose=0)
        assert np.all(out >= lower[i] - TOL), (out.min(0), lower[i])
        assert np.all(out <= upper[i] + TOL), (out.max(0), upper[i])
    return lower, upper


@pytest.mark.parametrize("builder,shape,epsilon", [(every_layer_2d, (8, 8, 2), 0.01),
                                                   (every_layer_1d, (16, 2), 0.2)])
def test_bounds_contain_sampled_perturbations(builder, shape, epsilon):
    model = builder()
    x = uniform_inputs((3, *shape))
    lower, upper = _assert_contains(model, x, epsilon)
    assert np.all(upper >= lower)
    assert np.mean(upper - lower > 1e-3) > 0.5  # the box really reaches the output
    # The clean output lies inside too, and epsilon = 0 collapses the box to it.
    clean = _pre_softmax(model)(x).numpy()
    l0, u0 = (t.numpy() for t in interval_bounds(model, x, 0.0))
    np.testing.assert_allclose(l0, clean, atol=1e-4)
    np.testing.assert_allclose(u0, clean, atol=1e-4)


def test_bounds_contain_toy_bnn_and_nested_model():
    inner = trained_like_batchnorm(toy_bnn(input_shape=(8, 8, 3)))
    inputs = tf.keras.Input((8, 8, 3))
    model = tf.keras.Model(inputs, L.Activation("softmax")(inner(inputs)))
    x = uniform_inputs((2, 8, 8, 3))
    lower, upper = _assert_contains(tf.keras.Model(inputs, inner(inputs)), x, 0.02, count=500)
    nested_lower, nested_upper = interval_bounds(model, x, 0.02)
    np.testing.assert_allclose(nested_lower.numpy(), lower, atol=1e-5)
    np.testing.assert_allclose(nested_upper.numpy(), upper, atol=1e-5)


def test_bounds_equal_the_enumerated_range_of_a_binary_input_layer():
    """Sign input over 4 pixels: the reachable sign patterns are the box corners, and one
    linear layer over independent inputs is bounded exactly by interval arithmetic."""
    model = tf.keras.Sequential([
        tf.keras.Input((2, 2, 1)),
        lq.layers.QuantConv2D(3, 2, padding="same", pad_values=1.0, **BINARY),
        L.BatchNormalization(),
        L.Flatten(),
    ])
    random_batchnorm(model, seed=3)
    x = np.array([[[[0.02], [-0.3]], [[-0.01], [0.5]]]], np.float32)
    epsilon = 0.05  # pixels 0 and 2 straddle 0, pixels 1 and 3 do not
    lower, upper = (t.numpy()[0] for t in interval_bounds(model, x, epsilon, clip=(-1.0, 1.0)))
    corners = np.array([x[0] + epsilon * np.array(s, np.float32).reshape(2, 2, 1)
                        for s in itertools.product((-1, 1), repeat=4)])
    out = model.predict(corners, verbose=0)
    np.testing.assert_allclose(lower, out.min(0), atol=1e-5)
    np.testing.assert_allclose(upper, out.max(0), atol=1e-5)
    assert np.any(upper - lower > 0.1)  # some output really varies


def test_sign_of_an_interval_follows_larq_sign_at_zero():
    model = tf.keras.Sequential([tf.keras.Input((3,)), lq.quantizers.SteSign()])
    x = np.array([[-0.5, 0.0, 0.5]], np.float32)
    lower, upper = interval_bounds(model, x, 0.0, clip=None)
    np.testing.assert_array_equal(lower.numpy(), [[-1, 1, 1]])  # sign(0) = +1
    lower, upper = interval_bounds(model, x, 0.25, clip=None)
    np.testing.assert_array_equal(lower.numpy(), [[-1, -1, 1]])
    np.testing.assert_array_equal(upper.numpy(), [[-1, 1, 1]])


def test_gradient_at_zero_epsilon_equals_the_forward_pass_gradient():
    """At epsilon = 0 both bounds equal the forward pass, and so must their STE gradients."""
    model = every_layer_2d()
    x = uniform_inputs((2, 8, 8, 2), seed=4)
    with tf.GradientTape(persistent=True) as tape:
        lower, upper = interval_bounds(model, x, 0.0)
        bound_loss = tf.reduce_sum(lower * np.arange(5.0)) + tf.reduce_sum(upper)
        out = model(x, training=False)
        forward_loss = tf.reduce_sum(out * np.arange(5.0)) + tf.reduce_sum(out)
    weights = model.trainable_weights
    got = tape.gradient(bound_loss, weights)
    want = tape.gradient(forward_loss, weights)
    for w, g, e in zip(weights, got, want):
        assert g is not None, w.name
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-4, atol=1e-4, err_msg=w.name)


def test_bound_width_is_differentiable_and_finite():
    model = toy_bnn()
    x = uniform_inputs((2, 8, 8, 3))
    with tf.GradientTape() as tape:
        lower, upper = interval_bounds(model, x, 0.05, training=True)
        loss = tf.reduce_mean(upper - lower)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    assert any(np.any(g.numpy() != 0) for g in grads)


def test_training_mode_batch_norm_matches_keras_at_zero_epsilon():
    model = toy_bnn()
    x = uniform_inputs((8, 8, 8, 3))
    lower, _ = interval_bounds(model, x, 0.0, training=True)
    np.testing.assert_allclose(lower.numpy(), model(x, training=True).numpy(), atol=1e-4)


def test_certified_margin_folding_is_sound_and_not_looser():
    model = trained_like_batchnorm(toy_bnn(softmax=True))
    x = uniform_inputs((4, 8, 8, 3), seed=2)
    y = np.array([0, 1, 2, 3])
    folded = certified_margin(model, x, y, 0.01).numpy()
    plain = certified_margin(model, x, y, 0.01, fold_last=False).numpy()
    assert np.all(folded >= plain - 1e-4)
    # sound: no sampled perturbation has a smaller margin
    logits = _pre_softmax(model)
    box = input_box(x, 0.01)
    rng = np.random.default_rng(0)
    for i in range(len(x)):
        points = _samples(box.lower.numpy()[i], box.upper.numpy()[i], 300, rng)
        out = logits.predict(points, verbose=0)
        margin = out[:, y[i]] - np.max(np.delete(out, y[i], axis=1), axis=1)
        assert np.all(margin >= folded[i] - TOL)
    # at epsilon = 0 the margin is the clean margin
    clean = logits(x).numpy()
    want = [clean[i, y[i]] - np.max(np.delete(clean[i], y[i])) for i in range(4)]
    np.testing.assert_allclose(certified_margin(model, x, y, 0.0).numpy(), want, atol=1e-4)
    acc = verified_accuracy(model, x, y, 0.0, batch_size=3)
    assert acc == np.mean(np.argmax(clean, 1) == y)


def test_bad_inputs_raise_clear_errors():
    model = toy_bnn()
    x = uniform_inputs((1, 8, 8, 3))
    with pytest.raises(ValueError, match="epsilon"):
        interval_bounds(model, x, -0.1)
    with pytest.raises(ValueError, match="clip"):
        interval_bounds(model, x, 0.1, clip=(1.0, 0.0))
    bad = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), L.Conv2D(2, 3, name="stem"),
                               L.LayerNormalization(name="layer_norm"), L.Flatten()])
    with pytest.raises(UnsupportedLayerError, match="layer_norm"):
        interval_bounds(bad, x, 0.1)
    gelu = tf.keras.Sequential([tf.keras.Input((4,)), L.Dense(2, activation="gelu", name="head")])
    with pytest.raises(UnsupportedLayerError, match="head.*gelu"):
        interval_bounds(gelu, np.zeros((1, 4), np.float32), 0.1)
    tern = tf.keras.Sequential([tf.keras.Input((4,)), lq.layers.QuantDense(
        2, input_quantizer=lq.quantizers.SteTern(ternary_weight_networks=True), name="twn")])
    with pytest.raises(UnsupportedLayerError, match="twn"):
        interval_bounds(tern, np.zeros((1, 4), np.float32), 0.1)


@pytest.mark.parametrize("variant,options", [
    ("reactnet", {}), ("adabin", {}), ("abc", {}), ("cyclebnn", {}),
    ("mbn", dict(weight_bases=2, activation_bases=2))])
def test_backbone_variants_are_bounded_soundly(variant, options):
    """RSign/RPReLU (ReActNet), AdaBin's activation and Maxout, ABC-Net's activation bases
    (one scale negative), CycleBNN's min-max sign at 8 bits, MBN's base pairs."""
    from larq_l1inf.backbones import resnet20

    model = resnet20(variant, num_classes=3, input_shape=(8, 8, 3), width=2, logits=True,
                     **options)
    random_batchnorm(model)
    for layer in model.submodules:  # non-trivial learned shifts and slopes
        for name in ("alpha", "gamma", "zeta", "center"):
            w = getattr(layer, name, None)
            if isinstance(w, tf.Variable) and not isinstance(layer, L.BatchNormalization):
                w.assign(np.full(w.shape, 0.05, np.float32))
        if type(layer).__name__ == "ABCActivation":
            layer.scale.assign([0.6, -0.3, 0.4])
        if type(layer).__name__ == "CyclicSign":
            assert float(layer.bits.numpy()) == 8.0  # the training state, not the plain sign
    x = uniform_inputs((2, 8, 8, 3))
    lower, upper = _assert_contains(model, x, 0.01, count=200)
    assert np.all(upper >= lower)


def test_cyclic_sign_at_zero_bits_is_the_plain_sign_interval():
    from larq_l1inf.quantizers import CyclicSign

    def conv(q):
        return lq.layers.QuantConv2D(3, 3, input_quantizer=q, kernel_quantizer="ste_sign",
                                     use_bias=False)
    cyclic = tf.keras.Sequential([tf.keras.Input((6, 6, 2)), conv(CyclicSign("activations"))])
    plain = tf.keras.Sequential([tf.keras.Input((6, 6, 2)), conv("approx_sign")])
    plain.set_weights(cyclic.get_weights())
    x = uniform_inputs((2, 6, 6, 2)) - 0.5
    wide = [t.numpy() for t in interval_bounds(cyclic, x, 0.1, clip=None)]  # 8 bits
    cyclic.layers[0].input_quantizer.bits.assign(0.0)
    got = [t.numpy() for t in interval_bounds(cyclic, x, 0.1, clip=None)]
    want = [t.numpy() for t in interval_bounds(plain, x, 0.1, clip=None)]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.all(wide[0] <= got[0] + 1e-6) and np.all(wide[1] >= got[1] - 1e-6)


def test_per_sample_epsilon_equals_separate_calls():
    model = toy_bnn()
    x = uniform_inputs((2, 8, 8, 3))
    eps = np.array([0.0, 0.05], np.float32).reshape(2, 1, 1, 1)
    lower, upper = interval_bounds(model, x, eps)
    for i in range(2):
        li, ui = interval_bounds(model, x[i:i + 1], float(eps[i, 0, 0, 0]))
        np.testing.assert_allclose(lower.numpy()[i:i + 1], li.numpy(), atol=1e-5)
        np.testing.assert_allclose(upper.numpy()[i:i + 1], ui.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="epsilon"):
        interval_bounds(model, x, np.array([0.1, -0.1]).reshape(2, 1, 1, 1))


# ---------------------------------------------------------------------------------------------
# The binary-kernel radius (|W_b| = c_o): window sums instead of a convolution with |W_b|
# ---------------------------------------------------------------------------------------------

BINARY_KERNELS = ["ste_sign", "magnitude_aware_sign", "xnor_sign", "magnitude_sign",
                  "libra_pb_sign", "dorefa_weight",
                  lambda: lq.quantizers.DoReFa(k_bit=1, mode="weights")]
RADIUS_LAYERS = [  # (layer, input shape)
    (lambda q, iq: lq.layers.QuantConv2D(3, 3, padding="same", pad_values=1.0, kernel_quantizer=q,
                                         input_quantizer=iq, use_bias=False), (7, 7, 2)),
    (lambda q, iq: lq.layers.QuantConv2D(3, 3, padding="same", strides=2, kernel_quantizer=q,
                                         input_quantizer=iq), (7, 7, 2)),
    (lambda q, iq: lq.layers.QuantConv2D(3, (2, 3), padding="valid", dilation_rate=2,
                                         kernel_quantizer=q, input_quantizer=iq), (8, 8, 2)),
    (lambda q, iq: lq.layers.QuantConv1D(3, 3, padding="causal", dilation_rate=2,
                                         kernel_quantizer=q, input_quantizer=iq), (9, 2)),
    (lambda q, iq: lq.layers.QuantConv1D(3, 3, padding="same", pad_values=-1.0, strides=2,
                                         kernel_quantizer=q, input_quantizer=iq), (9, 2)),
    (lambda q, iq: lq.layers.QuantConv3D(2, 2, padding="same", pad_values=1.0, kernel_quantizer=q,
                                         input_quantizer=iq), (4, 4, 4, 2)),
    (lambda q, iq: lq.layers.QuantDense(3, kernel_quantizer=q, input_quantizer=iq), (5,)),
    (lambda q, iq: lq.layers.QuantDense(3, kernel_quantizer=q, input_quantizer=iq), (4, 5)),
]


def _quantizer(q):
    return q() if callable(q) else q


@pytest.fixture
def radius_mode(monkeypatch):
    def set_mode(mode):
        monkeypatch.setattr(ibp, "BINARY_RADIUS", mode)
    return set_mode


# Every layer case with ste_sign; every binary kernel on a conv and a Dense case.
RADIUS_CASES = ([("ste_sign", c) for c in range(len(RADIUS_LAYERS))]
                + [(q, c) for q in BINARY_KERNELS[1:] for c in (0, len(RADIUS_LAYERS) - 1)])


@pytest.mark.parametrize("q,case", RADIUS_CASES)
def test_binary_radius_equals_the_generic_path(q, case, radius_mode):
    make, shape = RADIUS_LAYERS[case]
    rng = np.random.default_rng(case)
    # A continuous radius in endpoint form, the same in centre/radius form (after an affine
    # Rescaling), and a sign's {0, 1}.
    for input_quantizer, centred in ((None, False), (None, True), ("ste_sign", False)):
        layer = make(_quantizer(q), input_quantizer)
        before = [L.Rescaling(0.5, offset=0.1)] if centred else []
        model = tf.keras.Sequential([tf.keras.Input(shape), *before, layer])
        layer.kernel.assign(rng.normal(0, 0.5, layer.kernel.shape).astype("float32"))
        assert ibp._binary_quantizer(layer, layer.kernel), "fast path not taken"
        x = rng.uniform(-1, 1, (3, *shape)).astype("float32")
        eps = rng.uniform(0, 0.3, (3, *shape)).astype("float32")  # a different radius per entry
        got = {}
        for mode in ("fast", "exact", "generic"):
            radius_mode(mode)
            got[mode] = [t.numpy() for t in interval_bounds(model, x, eps, clip=None)]
            if mode == "fast" and input_quantizer is None and not centred:  # the graph's tf.cond
                graph = tf.function(lambda: interval_bounds(model, x, eps, clip=None))()
                for a, b in zip(got[mode], graph):
                    np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-5)
        for mode in ("fast", "exact"):
            for a, b in zip(got[mode], got["generic"]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        assert np.any(got["fast"][1] - got["fast"][0] > 1e-3)


def test_binary_radius_is_not_used_for_other_kernels():
    float_conv = L.Conv2D(2, 3)
    tern = lq.layers.QuantConv2D(2, 3, kernel_quantizer="ste_tern")
    adabin = lq.layers.QuantConv2D(2, 3, kernel_quantizer="adabin_weight")
    for layer in (float_conv, tern, adabin):
        layer.build((None, 6, 6, 2))
        assert not ibp._binary_quantizer(layer, layer.kernel), layer.kernel_quantizer


def _gradients(model, x, mode, radius_mode, extra=()):
    radius_mode(mode)
    with tf.GradientTape() as tape:
        lower, upper = interval_bounds(model, x, 0.05, training=True)
        loss = tf.reduce_sum(upper - lower) + tf.reduce_sum(lower * np.arange(5.0))
    variables = list(model.trainable_weights) + list(extra)
    grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return variables, grads


def test_binary_radius_gradients(radius_mode):
    """`exact` gives the generic path's gradients everywhere; `fast` everywhere but in the
    latent binary kernels (the straight-through gradient through |W_b| = 1), and for a kernel
    `alpha_o * sign(W)` with a learned `alpha` the same gradient in `alpha`."""
    alpha = tf.Variable(np.linspace(0.5, 2.0, 8).astype("float32"))

    def scaled_sign(w):
        return alpha * tf.stop_gradient(lq.math.sign(w))

    model = toy_bnn()
    x = uniform_inputs((4, 8, 8, 3))
    scaled = tf.keras.Sequential([
        tf.keras.Input((8, 8, 3)),
        lq.layers.QuantConv2D(8, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                              kernel_quantizer=scaled_sign, use_bias=False),
        L.BatchNormalization(), L.GlobalAveragePooling2D(), L.Dense(5)])
    for net, extra in ((model, ()), (scaled, (alpha,))):
        variables, generic = _gradients(net, x, "generic", radius_mode, extra)
        _, exact = _gradients(net, x, "exact", radius_mode, extra)
        _, fast = _gradients(net, x, "fast", radius_mode, extra)
        assert any(np.any(g.numpy() != 0) for g in generic)
        for v, g, e, f in zip(variables, generic, exact, fast):
            np.testing.assert_allclose(e.numpy(), g.numpy(), rtol=1e-4, atol=1e-5, err_msg=v.name)
            latent_binary = "quant_conv" in v.name and "kernel" in v.name and net is model
            if not latent_binary:
                np.testing.assert_allclose(f.numpy(), g.numpy(), rtol=1e-4, atol=1e-5,
                                           err_msg=v.name)


def test_binary_radius_falls_back_when_a_traced_kernel_stops_being_binary(radius_mode):
    """A quantizer with state can leave +-c after tracing: checked in the graph on every call."""
    shift = tf.Variable(0.0, trainable=False)

    def shifted_sign(w):
        return lq.math.sign(w) + shift

    model = tf.keras.Sequential([tf.keras.Input((6, 6, 2)), lq.layers.QuantConv2D(
        3, 3, kernel_quantizer=shifted_sign, input_quantizer="ste_sign")])
    x = uniform_inputs((2, 6, 6, 2))
    bounds = tf.function(lambda: interval_bounds(model, x, 0.3))
    radius_mode("fast")
    bounds()  # traced while the kernel is +-1
    shift.assign(0.5)  # now {-0.5, 1.5}
    got = [t.numpy() for t in bounds()]
    radius_mode("generic")
    want = [t.numpy() for t in interval_bounds(model, x, 0.3)]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bad_binary_radius_mode(radius_mode):
    radius_mode("quick")
    with pytest.raises(ValueError, match="BINARY_RADIUS"):
        interval_bounds(toy_bnn(), uniform_inputs((1, 8, 8, 3)), 0.1)

"""L1InfRegularizer, penalty() and attach() against an independent NumPy implementation."""

import math

import larq as lq
import numpy as np
import pytest
from helpers import numpy_rows

import larq_l1inf
from larq_l1inf import L1InfRegularizer, attach, l1inf_norm, penalty, regularizers
from larq_l1inf._keras import tf

# name -> (larq quantizer, NumPy forward of W_b from the latent weights)
QUANTIZERS = {
    "ste_sign": ("ste_sign", lambda w: np.where(w >= 0, 1.0, -1.0)),
    "approx_sign": ("approx_sign", lambda w: np.where(w >= 0, 1.0, -1.0)),
    "swish_sign": ("swish_sign", lambda w: np.where(w >= 0, 1.0, -1.0)),
    # its alpha_c * sign(w) output is split: W_b is the sign part, alpha comes from the mode
    "magnitude_aware_sign": ("magnitude_aware_sign", lambda w: np.where(w >= 0, 1.0, -1.0)),
    "dorefa": (
        lambda: lq.quantizers.DoReFa(k_bit=2, mode="weights"),
        lambda w: 2.0 * np.round((np.tanh(w) / (2 * np.abs(np.tanh(w)).max()) + 0.5) * 3) / 3 - 1,
    ),
    "ste_tern": ("ste_tern", lambda w: np.where(np.abs(w) >= 0.05, np.sign(w), 0.0)),
    "none": (None, lambda w: w),
}
REDUCTIONS = ["log", "sum", "product"]
ALPHAS = ["auto", "layer", "channel", "none"]
# Quantizers whose output carries a per-output-channel scale: "auto" takes it as alpha.
PER_CHANNEL = {"magnitude_aware_sign"}


def make_layer(kind, quantizer, shape_seed=0):
    """A built larq layer of each kind, with its kernel and whether it is depthwise."""
    q = quantizer() if callable(quantizer) else quantizer
    if kind == "dense":
        layer, shape = lq.layers.QuantDense(5, kernel_quantizer=q), (None, 7)
    elif kind == "conv1d":
        layer, shape = lq.layers.QuantConv1D(4, 3, kernel_quantizer=q), (None, 9, 6)
    elif kind == "conv2d":
        layer, shape = lq.layers.QuantConv2D(6, 3, kernel_quantizer=q), (None, 8, 8, 4)
    else:
        layer, shape = lq.layers.QuantDepthwiseConv2D(3, depth_multiplier=2, depthwise_quantizer=q), (None, 8, 8, 4)
    layer.build(shape)
    weight = layer.depthwise_kernel if kind == "depthwise" else layer.kernel
    rng = np.random.default_rng(shape_seed)
    weight.assign(rng.uniform(-1.2, 1.2, weight.shape).astype(np.float32))
    return layer, weight, kind == "depthwise"


def np_term(latent, w_b, depthwise, alpha, normalize, quantized, per_channel=False):
    """The layer term by loops. `per_channel`: the quantizer's own scale is the per-output-channel
    mean |w| (larq's MagnitudeAwareSign: over all axes but the last, also for depthwise)."""
    rows_b, rows_f = numpy_rows(w_b, depthwise), numpy_rows(latent, depthwise)
    if per_channel:
        last = latent.shape[-1]
        channel_scale = [np.abs(latent[..., k]).mean() for k in range(last)]
        # row i of a depthwise kernel is (c, k) with k fastest; otherwise row i is channel i
        row_scale = [channel_scale[i % last] for i in range(rows_b.shape[0])]
    best = 0.0
    for i in range(rows_b.shape[0]):
        row_sum = sum(abs(v) for v in rows_b[i])
        if alpha == "none" or not quantized:
            a = 1.0
        elif alpha == "layer" or (alpha == "auto" and not per_channel):
            a = np.abs(rows_f).mean()
        elif alpha == "auto":
            a = row_scale[i]
        else:
            a = np.abs(rows_f[i]).mean()
        best = max(best, a * row_sum)
    return best / rows_b.shape[1] if normalize else best


def np_penalty(terms, delta, reduction):
    if reduction == "sum":
        return delta * sum(terms)
    if reduction == "log":
        return delta * sum(math.log(t) for t in terms)
    return delta * math.prod(terms)


class TestNorm:
    @pytest.mark.parametrize("shape", [(3, 2), (3, 4, 5), (3, 3, 2, 4)])
    def test_l1inf_norm_matches_loops(self, shape):
        w = np.random.default_rng(1).normal(size=shape)
        assert float(l1inf_norm(w)) == pytest.approx(numpy_rows(w, False).__abs__().sum(1).max(), rel=1e-5)

    def test_depthwise_rows(self):
        w = np.random.default_rng(2).normal(size=(3, 3, 4, 2))
        got = float(l1inf_norm(w, depthwise=True))
        assert got == pytest.approx(np.abs(numpy_rows(w, True)).sum(1).max(), rel=1e-5)


class TestAgainstNumPy:
    @pytest.mark.parametrize("kind", ["dense", "conv1d", "conv2d", "depthwise"])
    @pytest.mark.parametrize("quantizer", list(QUANTIZERS))
    def test_every_reduction_and_alpha(self, kind, quantizer):
        q, forward = QUANTIZERS[quantizer]
        layer, weight, depthwise = make_layer(kind, q)
        latent = np.asarray(getattr(weight, "latent_variable", weight).numpy())
        for alpha in ALPHAS:
            for normalize in (False, True):
                expected_t = np_term(latent, forward(latent), depthwise, alpha, normalize,
                                     q is not None, quantizer in PER_CHANNEL)
                for reduction in REDUCTIONS:
                    reg = L1InfRegularizer(0.3, reduction=reduction, alpha=alpha, normalize=normalize)
                    assert float(reg.term(weight)) == pytest.approx(expected_t, rel=1e-5), (alpha, normalize)
                    if reduction != "product":
                        assert float(reg(weight)) == pytest.approx(
                            np_penalty([expected_t], 0.3, reduction), rel=1e-5, abs=1e-6
                        )


def small_model(reduction, delta=0.1, alpha="layer", normalize=False, functional=False):
    reg = dict(reduction=reduction, alpha=alpha, normalize=normalize)
    conv = dict(
        padding="same", pad_values=1.0, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip", use_bias=False,
    )
    layers = [
        lq.layers.QuantConv2D(8, 3, kernel_regularizer=L1InfRegularizer(delta, **reg), **conv),
        tf.keras.layers.BatchNormalization(),
        lq.layers.QuantDepthwiseConv2D(
            3, padding="same", depthwise_quantizer="ste_sign", depthwise_constraint="weight_clip",
            depthwise_regularizer=L1InfRegularizer(delta, **reg), use_bias=False,
        ),
        tf.keras.layers.BatchNormalization(),
        lq.layers.QuantConv2D(8, 3, kernel_regularizer=L1InfRegularizer(delta, **reg), **conv),
        tf.keras.layers.GlobalAveragePooling2D(),
        lq.layers.QuantDense(3, kernel_regularizer=L1InfRegularizer(delta, **reg)),
    ]
    if not functional:
        return tf.keras.Sequential([tf.keras.Input((8, 8, 3)), *layers])
    x = inputs = tf.keras.Input((8, 8, 3))
    for layer in layers:
        x = layer(x)
    return tf.keras.Model(inputs, x)


def np_model_terms(model):
    terms = []
    for entry in regularizers.penalized_layers(model):
        weight, reg, depthwise = entry.weight, entry.regularizer, entry.depthwise
        latent = getattr(weight, "latent_variable", weight).numpy()
        quantized = getattr(weight, "quantizer", None) is not None
        w_b = np.where(latent >= 0, 1.0, -1.0) if quantized else latent
        terms.append(np_term(latent, w_b, depthwise, reg.alpha, reg.normalize, quantized))
    return terms


class TestModelPenalty:
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    @pytest.mark.parametrize("functional", [False, True])
    def test_penalty_matches_numpy_and_losses(self, reduction, functional):
        model = small_model(reduction, delta=0.01, functional=functional)
        attach(model)
        expected = np_penalty(np_model_terms(model), 0.01, reduction)
        assert float(penalty(model)) == pytest.approx(expected, rel=1e-5)
        # what training adds is exactly what penalty() reports
        assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)
        assert len(np_model_terms(model)) == 4

    def test_product_without_attach_is_a_clear_error(self):
        model = small_model("product")
        model.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with pytest.raises(ValueError, match="attach"):
            model.fit(np.zeros((4, 8, 8, 3)), np.zeros(4), verbose=0)

    def test_attach_is_idempotent(self):
        model = small_model("product")
        attach(model)
        attach(model)
        assert len(model.losses) == 5  # 4 zero per-layer markers + one product

    def test_product_overflow_names_the_fix(self):
        layers = [tf.keras.Input((64,))]
        for _ in range(12):  # full-precision kernels of 1e3: each term ~6e4, product ~1e57
            layers.append(
                lq.layers.QuantDense(
                    64, kernel_initializer=tf.keras.initializers.Constant(1e3),
                    kernel_regularizer=L1InfRegularizer(1.0, reduction="product", normalize=False),
                )
            )
        model = tf.keras.Sequential(layers)
        with pytest.raises(tf.errors.InvalidArgumentError, match="reduction='log'"):
            attach(model)
        with pytest.raises(tf.errors.InvalidArgumentError, match="float32"):
            penalty(model)

    def test_product_underflow_is_an_error_not_a_silent_zero(self):
        layers = [tf.keras.Input((4,))]
        for _ in range(12):
            layers.append(
                lq.layers.QuantDense(
                    4, kernel_initializer=tf.keras.initializers.Constant(1e-4),
                    kernel_regularizer=L1InfRegularizer(1.0, reduction="product", normalize=False),
                )
            )
        with pytest.raises(tf.errors.InvalidArgumentError, match="underflow"):
            attach(tf.keras.Sequential(layers))

    def test_no_penalized_layer_gives_zero(self, caplog):
        model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
        assert float(penalty(model)) == 0.0
        assert "no layer" in caplog.text

    def test_mixed_deltas_in_one_product_are_refused(self):
        model = tf.keras.Sequential([
            tf.keras.Input((4,)),
            lq.layers.QuantDense(4, kernel_regularizer=L1InfRegularizer(0.1, reduction="product")),
            lq.layers.QuantDense(4, kernel_regularizer=L1InfRegularizer(0.2, reduction="product")),
        ])
        with pytest.raises(ValueError, match="one delta"):
            attach(model)


class HookedSign(lq.quantizers.SteSign):
    """A test quantizer with both hooks: output `scale * sign(w)`, scale = 0.5 + max |w| of
    each output channel (deliberately not a mean, so no other rule can produce it)."""

    precision = 1

    def scale(self, latent):
        return 0.5 + tf.reduce_max(tf.abs(latent), axis=list(range(latent.shape.rank - 1)))

    def binary_kernel(self, latent):
        return lq.quantizers.ste_sign(latent)

    def call(self, inputs):
        return self.scale(inputs) * lq.quantizers.ste_sign(inputs)


def _larq_weight_quantizers():
    """Every quantizer class larq exports (aliases once), so a new one is tested for free."""
    classes = {getattr(lq.quantizers, n) for n in lq.quantizers.__all__}
    return sorted((c for c in classes if isinstance(c, type)
                   and issubclass(c, lq.quantizers._BaseQuantizer)), key=lambda c: c.__name__)


LARQ_QUANTIZERS = _larq_weight_quantizers()
QUANTIZER_ARGS = {lq.quantizers.NoOp: dict(precision=1)}


class TestAlphaAndBinaryKernel:
    """`binary_kernel` and `scaling_factor(..., "auto")` against loops, for every larq quantizer."""

    @pytest.mark.parametrize("kind", ["conv2d", "depthwise"])
    @pytest.mark.parametrize("cls", LARQ_QUANTIZERS, ids=lambda c: c.__name__)
    def test_auto_alpha_is_the_scale_the_layer_computes_with(self, cls, kind):
        layer, weight, depthwise = make_layer(kind, lambda: cls(**QUANTIZER_ARGS.get(cls, {})))
        latent = weight.latent_variable.numpy().astype(np.float64)
        computed = np.asarray(cls(**QUANTIZER_ARGS.get(cls, {}))(latent.astype(np.float32)), np.float64)
        w_b = regularizers.binary_kernel(weight, depthwise).numpy()
        alpha = np.broadcast_to(regularizers.scaling_factor(weight, "auto", depthwise).numpy(),
                                (numpy_rows(latent, depthwise).shape[0],))
        rows_q, rows_b = numpy_rows(computed, depthwise), numpy_rows(w_b, depthwise)
        if cls is lq.quantizers.NoOp:  # larq's full-precision tag: the float kernel, alpha 1
            np.testing.assert_allclose(w_b, latent, rtol=1e-6)
            np.testing.assert_allclose(alpha, 1.0)
        elif larq_l1inf.kernels.is_binary_quantizer(weight.quantizer):
            assert set(np.unique(w_b)) <= {-1.0, 0.0, 1.0}  # 0 only for ste_heaviside's {0, 1}
            magnitudes = [np.abs(row).max() for row in rows_q]
            for i, row in enumerate(rows_q):  # the layer computes with magnitude_i * W_b row i
                np.testing.assert_allclose(row, magnitudes[i] * rows_b[i], rtol=1e-5)
            scaled = not np.allclose(magnitudes, 1.0)
            expected = magnitudes if scaled else [np.abs(latent).mean()] * len(magnitudes)
            np.testing.assert_allclose(alpha, expected, rtol=1e-5)
        else:  # multi-bit / ternary: W_b is the quantizer's output, alpha eq. 1
            np.testing.assert_allclose(w_b, computed, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(alpha, np.abs(latent).mean(), rtol=1e-5)

    @pytest.mark.parametrize("kind", ["dense", "conv2d", "depthwise"])
    def test_quantizer_hooks_give_w_b_and_alpha(self, kind):
        layer, weight, depthwise = make_layer(kind, HookedSign)
        latent = weight.latent_variable.numpy().astype(np.float64)
        last = latent.shape[-1]
        channel = [0.5 + np.abs(latent[..., k]).max() for k in range(last)]
        rows = numpy_rows(latent, depthwise)
        per_row = [channel[i % last] for i in range(rows.shape[0])]
        got = regularizers.scaling_factor(weight, "auto", depthwise).numpy()
        np.testing.assert_allclose(got, per_row, rtol=1e-6)
        np.testing.assert_array_equal(regularizers.binary_kernel(weight, depthwise).numpy(),
                                      np.where(latent >= 0, 1.0, -1.0))
        expected = max(per_row[i] * rows.shape[1] for i in range(rows.shape[0]))  # ||diag(a) W_b||
        reg = L1InfRegularizer(1.0, normalize=False)
        assert float(reg.term(weight, depthwise)) == pytest.approx(expected, rel=1e-6)
        # the explicit modes ignore the hook
        assert float(L1InfRegularizer(1.0, alpha="layer", normalize=False).term(weight, depthwise)) \
            == pytest.approx(np.abs(latent).mean() * rows.shape[1], rel=1e-6)

    def test_hookless_scaled_quantizer_is_split_by_its_output(self):
        """A 1-bit quantizer that multiplies sign by a scale but names neither part: the scale is
        read off its output, so alpha is not counted twice (the bounds' toy models are such)."""

        class Scaled(lq.quantizers.SteSign):
            def call(self, w):
                return tf.reduce_mean(tf.abs(w)) * super().call(w)

        layer, weight, _ = make_layer("dense", Scaled)
        latent = weight.latent_variable.numpy()
        np.testing.assert_array_equal(regularizers.binary_kernel(weight).numpy(),
                                      np.where(latent >= 0, 1.0, -1.0))
        fan_in = latent.shape[0]
        term = float(L1InfRegularizer(1.0, normalize=False).term(weight))
        assert term == pytest.approx(np.abs(latent).mean() * fan_in, rel=1e-5)

    def test_bad_scale_hook_shape_is_a_clear_error(self):
        class Bad(HookedSign):
            def scale(self, latent):
                return tf.ones((7, 7))

        layer, weight, _ = make_layer("conv2d", Bad)
        with pytest.raises(ValueError, match="one value per output channel"):
            regularizers.scaling_factor(weight, "auto")


class TestStringNames:
    @pytest.mark.parametrize("name", sorted(regularizers.PENALTIES))
    def test_name_yields_an_instance_in_a_larq_layer(self, name, tmp_path):
        cls = regularizers.PENALTIES[name]
        layer = lq.layers.QuantConv2D(3, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                      kernel_constraint="weight_clip", kernel_regularizer=name)
        model = tf.keras.Sequential([tf.keras.Input((6, 6, 2)), layer])
        assert isinstance(layer.kernel_regularizer, cls)
        default = cls()
        assert layer.kernel_regularizer.get_config() == default.get_config()
        (loss,) = model.losses
        assert float(loss) == pytest.approx(default.delta * float(default.term(layer.kernel)), rel=1e-5)
        path = str(tmp_path / f"{name}.h5")  # SavedModel: TestSerialization
        model.save(path)
        loaded = tf.keras.models.load_model(path)  # no custom_objects
        assert isinstance(loaded.layers[0].kernel_regularizer, cls)
        assert float(loaded.losses[0]) == pytest.approx(float(loss), rel=1e-6)

    def test_keras_names_are_not_shadowed(self):
        assert type(tf.keras.regularizers.get("l1")) is tf.keras.regularizers.L1
        assert type(tf.keras.regularizers.get("l2")) is tf.keras.regularizers.L2
        with pytest.raises(ValueError, match="Keras regularizer name"):
            regularizers.register_penalty("l2")(type("L2Like", (L1InfRegularizer,), {}))

    def test_get(self):
        assert regularizers.get("absum") is not regularizers.get("absum")  # fresh instances
        assert type(regularizers.get("L1InfRegularizer")) is L1InfRegularizer
        reg = L1InfRegularizer(0.1)
        assert regularizers.get(reg) is reg
        assert regularizers.get(tf.keras.regularizers.serialize(reg)).delta == 0.1
        with pytest.raises(ValueError, match="l1inf"):
            regularizers.get("no_such_penalty")


class TestWalker:
    def test_nested_models_depthwise_and_each_layer_once(self):
        shared = lq.layers.QuantConv2D(2, 1, kernel_quantizer="ste_sign", name="shared")
        inner_in = tf.keras.Input((4, 4, 2))
        inner = tf.keras.Model(inner_in, lq.layers.QuantDepthwiseConv2D(
            3, padding="same", depthwise_quantizer="ste_sign", name="dw")(shared(inner_in)),
            name="inner")
        x = inputs = tf.keras.Input((4, 4, 2))
        x = shared(x)  # the same layer outside and inside the nested model
        x = inner(x)
        x = lq.layers.QuantConv2D(2, 1, kernel_quantizer="ste_tern", name="ternary")(x)
        x = lq.layers.QuantConv2D(2, 1, kernel_quantizer=lq.quantizers.NoOp(precision=1),
                                  name="tagged")(x)
        model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(2, 1, name="float")(x))
        found = [(k.layer.name, k.depthwise) for k in larq_l1inf.kernels.model_kernels(model)]
        assert sorted(found) == sorted([("shared", False), ("dw", True), ("ternary", False),
                                        ("tagged", False), ("float", False)])
        binary = [(k.layer.name, k.depthwise) for k in larq_l1inf.kernels.binary_kernels(model)]
        assert sorted(binary) == [("dw", True), ("shared", False)]  # precision 1, not NoOp


class TestGradients:
    """The gradient of a +-1 layer's term against its closed form (method.md)."""

    def setup_method(self):
        self.layer, self.weight, _ = make_layer("conv2d", "ste_sign", shape_seed=3)
        self.latent = self.weight.latent_variable.numpy()
        self.n_rows = self.latent.shape[-1]
        self.fan_in = self.latent.size // self.n_rows

    def grad(self, **kwargs):
        reg = L1InfRegularizer(0.5, normalize=False, **kwargs)
        with tf.GradientTape() as tape:
            value = reg(self.weight)
        grad = tape.gradient(value, self.weight.latent_variable)
        return None if grad is None else grad.numpy()

    def closed_form(self, alpha_path=True, ste_path=True):
        sign = np.where(self.latent >= 0, 1.0, -1.0)
        alpha = np.abs(self.latent).mean()
        grad = np.zeros_like(self.latent)
        if alpha_path:  # d(alpha * fan_in)/dW = fan_in * sign(W) / N
            grad += self.fan_in * sign / self.latent.size
        if ste_path:  # alpha * d|sign w|/dw, STE 1{|w|<=1}, max split over the tied rows
            grad += alpha * sign * (np.abs(self.latent) <= 1.0) / self.n_rows
        return grad

    @pytest.mark.parametrize("alpha_path,ste_path", [(True, True), (True, False), (False, True)])
    def test_sum(self, alpha_path, ste_path):
        got = self.grad(reduction="sum", alpha_gradient=alpha_path, quantizer_gradient=ste_path)
        np.testing.assert_allclose(got, 0.5 * self.closed_form(alpha_path, ste_path), rtol=1e-5, atol=1e-7)

    def test_log_is_sum_gradient_over_term(self):
        term = np.abs(self.latent).mean() * self.fan_in
        np.testing.assert_allclose(self.grad(reduction="log"), 0.5 * self.closed_form() / term, rtol=1e-5, atol=1e-7)

    def test_both_paths_off_gives_no_gradient_and_a_warning(self, caplog):
        grad = self.grad(reduction="sum", alpha_gradient=False, quantizer_gradient=False)
        assert grad is None or not np.any(grad)
        assert "no gradient" in caplog.text

    def test_product_gradient_is_product_times_log_gradient(self):
        model = small_model("product", delta=0.01)
        attach(model)
        entries = regularizers.penalized_layers(model)
        variables = [getattr(k.weight, "latent_variable", k.weight) for k in entries]
        with tf.GradientTape(persistent=True) as tape:
            product = penalty(model)
            logs = tf.add_n([tf.math.log(k.regularizer.term(k.weight, depthwise=k.depthwise))
                             for k in entries])
        for g_p, g_l in zip(tape.gradient(product, variables), tape.gradient(logs, variables)):
            np.testing.assert_allclose(g_p.numpy(), float(product) * g_l.numpy(), rtol=1e-4, atol=1e-9)


class TestTraining:
    @pytest.mark.parametrize("reduction", REDUCTIONS)
    def test_resnet_shaped_toy_bnn_delta_0_1_stays_finite(self, reduction):
        conv = dict(padding="same", pad_values=1.0, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                    kernel_constraint="weight_clip", use_bias=False)
        x = inputs = tf.keras.Input((8, 8, 3))
        x = tf.keras.layers.Conv2D(8, 3, padding="same")(x)
        for _ in range(2):  # two residual blocks of two binary convs
            shortcut = x
            for _ in range(2):
                x = lq.layers.QuantConv2D(8, 3, kernel_regularizer=L1InfRegularizer(0.1, reduction=reduction), **conv)(x)
                x = tf.keras.layers.BatchNormalization()(x)
            x = tf.keras.layers.Add()([x, shortcut])
        x = tf.keras.layers.GlobalAveragePooling2D()(x)
        model = tf.keras.Model(inputs, tf.keras.layers.Dense(3)(x))
        model.compile(tf.keras.optimizers.SGD(0.1, momentum=0.9),
                      tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        history = model.fit(rng.random((16, 8, 8, 3)), rng.integers(0, 3, 16), epochs=3, batch_size=8,
                            verbose=0, callbacks=[larq_l1inf.L1InfCallback()])
        assert np.all(np.isfinite(history.history["loss"]))
        assert np.all(np.isfinite(history.history["l1inf_penalty"]))
        for w in model.weights:
            assert np.all(np.isfinite(w.numpy())), w.name

    @pytest.mark.parametrize("kind", ["dense", "conv1d", "conv2d", "depthwise"])
    def test_every_layer_kind_trains_in_sequential(self, kind):
        reg = L1InfRegularizer(5e-3)
        if kind == "dense":
            shape, layer = (6,), lq.layers.QuantDense(4, kernel_quantizer="ste_sign", kernel_regularizer=reg)
        elif kind == "conv1d":
            shape, layer = (6, 2), lq.layers.QuantConv1D(4, 3, kernel_quantizer="ste_sign", kernel_regularizer=reg)
        elif kind == "conv2d":
            shape, layer = (6, 6, 2), lq.layers.QuantConv2D(4, 3, kernel_quantizer="ste_sign", kernel_regularizer=reg)
        else:
            shape = (6, 6, 2)
            layer = lq.layers.QuantDepthwiseConv2D(3, depthwise_quantizer="ste_sign", depthwise_regularizer=reg)
        model = tf.keras.Sequential([tf.keras.Input(shape), layer, tf.keras.layers.Flatten(), tf.keras.layers.Dense(2)])
        model.compile("sgd", "mse")
        before = [w.numpy().copy() for w in model.trainable_weights]
        model.fit(np.ones((4, *shape)), np.zeros((4, 2)), verbose=0)
        assert len(model.losses) == 1 and float(model.losses[0]) != 0.0
        assert any(not np.allclose(a, b.numpy()) for a, b in zip(before, model.trainable_weights))


class TestSerialization:
    def test_defaults_are_the_measured_choice(self):
        reg = L1InfRegularizer()
        assert (reg.delta, reg.reduction, reg.normalize, reg.alpha) == (5e-3, "sum", True, "auto")

    def test_get_config_round_trip(self):
        reg = L1InfRegularizer(0.05, reduction="sum", alpha="channel", normalize=True,
                               alpha_gradient=False, quantizer_gradient=True)
        clone = L1InfRegularizer.from_config(reg.get_config())
        assert clone.get_config() == reg.get_config()
        assert tf.keras.regularizers.serialize(reg)["config"]["delta"] == 0.05

    @pytest.mark.parametrize("fmt", ["h5", "tf"])
    def test_save_load_without_custom_objects(self, tmp_path, fmt):
        model = small_model("log", delta=0.02)
        path = str(tmp_path / ("m.h5" if fmt == "h5" else "m"))
        model.save(path, save_format=fmt)
        loaded = tf.keras.models.load_model(path)
        regs = [k.regularizer for k in regularizers.penalized_layers(loaded)]
        assert len(regs) == 4 and all(isinstance(r, L1InfRegularizer) and r.delta == 0.02 for r in regs)
        assert float(penalty(loaded)) == pytest.approx(float(penalty(model)), rel=1e-6)


class TestBadInput:
    @pytest.mark.parametrize("delta", [-1e-3, float("nan"), float("inf")])
    def test_bad_delta(self, delta):
        with pytest.raises(ValueError, match="delta"):
            L1InfRegularizer(delta)

    def test_non_number_delta(self):
        with pytest.raises(TypeError, match="delta"):
            L1InfRegularizer("big")

    @pytest.mark.parametrize("kwargs", [dict(reduction="mean"), dict(alpha="global")])
    def test_bad_choice(self, kwargs):
        with pytest.raises(ValueError, match="must be one of"):
            L1InfRegularizer(**kwargs)

    def test_weight_without_kernel_shape(self):
        bn = tf.keras.layers.BatchNormalization(gamma_regularizer=L1InfRegularizer())
        with pytest.raises(ValueError, match="kernel_regularizer"):
            bn.build((None, 4))
            bn.losses  # noqa: B018 - evaluating the regularizer

    def test_zero_delta_adds_nothing(self):
        layer, weight, _ = make_layer("dense", "ste_sign")
        assert float(L1InfRegularizer(0.0)(weight)) == 0.0

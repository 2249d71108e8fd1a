"""CROWN-IBP margin bounds: soundness by sampling, exactness on linear nets, a NumPy CROWN
reference, tightness against IBP, beta mixing, bad inputs and gradients."""

import larq as lq
import numpy as np
import pytest
from helpers import BINARY, random_batchnorm, toy_bnn, trained_like_batchnorm, uniform_inputs

from larq_l1inf._keras import tf
from larq_l1inf.crown import (
    crown_ibp_margin,
    hard_tanh_relaxation,
    margin_bounds,
    relu_relaxation,
    verified_accuracy,
)
from larq_l1inf.ibp import UnsupportedLayerError, certified_margin

L = tf.keras.layers
TOL = 1e-4


def relu_mlp():
    return tf.keras.Sequential([
        tf.keras.Input((6,)),
        L.Dense(8, activation="relu"),
        L.Dense(8),
        L.ReLU(),
        L.Dense(4),
    ], name="relu_mlp")


def relu_conv():
    inputs = tf.keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = L.BatchNormalization()(x)
    x = L.AveragePooling2D(2)(x)
    x = L.Conv2D(4, 3, strides=2, padding="same")(x)
    x = L.Activation("relu")(x)
    x = L.Flatten()(x)
    x = L.Dense(4, activation="softmax")(x)  # the margin is of the pre-softmax logits
    return random_batchnorm(tf.keras.Model(inputs, x, name="relu_conv"))


def hard_tanh_net():
    inputs = tf.keras.Input((6,))
    x = L.Dense(8, activation=lq.activations.hard_tanh,
                kernel_initializer=tf.keras.initializers.RandomNormal(0, 2.0))(inputs)
    x = L.Dense(8, kernel_initializer=tf.keras.initializers.RandomNormal(0, 1.5))(x)
    x = L.Activation(lq.activations.hard_tanh)(x)
    x = L.Dense(4)(x)
    return tf.keras.Model(inputs, x, name="hard_tanh_net")


def residual_bnn():
    """Float stem, residual binary blocks (Add), BN, sign input quantizers, ReLU and hard
    tanh, a nested block model and a Concatenate."""
    inputs = tf.keras.Input((8, 8, 2))
    x = L.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    block_in = tf.keras.Input((8, 8, 4))
    h = lq.layers.QuantConv2D(4, 3, padding="same", pad_values=1.0, **BINARY)(block_in)
    h = L.BatchNormalization()(h)
    block = tf.keras.Model(block_in, L.Add()([block_in, h]), name="block")
    x = block(x)
    shortcut = L.AveragePooling2D(2)(x)
    h = lq.layers.QuantConv2D(4, 3, strides=2, padding="same", input_quantizer="approx_sign",
                              kernel_quantizer="ste_sign", use_bias=False)(x)
    h = L.BatchNormalization()(h)
    x = L.Add()([shortcut, h])
    x = L.Activation(lq.activations.hard_tanh)(x)
    a = L.GlobalAveragePooling2D()(x)
    b = L.GlobalMaxPooling2D()(x)  # no linear relaxation: the backward pass stops here
    x = L.Concatenate()([a, b])
    x = lq.layers.QuantDense(6, input_quantizer="swish_sign", kernel_quantizer="ste_sign")(x)
    x = L.BatchNormalization()(x)
    x = L.Dense(4)(x)
    return random_batchnorm(tf.keras.Model(inputs, x, name="residual_bnn"))


def sign_mlp():
    """Sequential BNN MLP with a sign activation layer and a Dropout."""
    return random_batchnorm(tf.keras.Sequential([
        tf.keras.Input((6,)),
        L.Dense(8),
        L.BatchNormalization(),
        lq.quantizers.SteSign(),
        L.Dropout(0.3),
        lq.layers.QuantDense(8, input_quantizer=lq.quantizers.ste_sign,
                             kernel_quantizer="ste_sign", use_bias=False),
        L.BatchNormalization(),
        L.Dense(4),
    ], name="sign_mlp"))


def conv_1d():
    inputs = tf.keras.Input((16, 2))
    x = L.Conv1D(4, 3, padding="causal", activation="relu")(inputs)
    x = lq.layers.QuantConv1D(4, 3, padding="same", pad_values=1.0, **BINARY)(x)
    x = L.BatchNormalization()(x)
    x = L.DepthwiseConv1D(3, strides=2, padding="same")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling1D()(x)
    return random_batchnorm(tf.keras.Model(inputs, L.Dense(4)(x), name="conv_1d"))


def plumbing_linear():
    """Only affine layers, through every parameter-free linear layer and linear merge."""
    inputs = tf.keras.Input((6, 6, 1))
    x = L.Rescaling(2.0, offset=-1.0)(inputs)
    x = L.ZeroPadding2D(1)(x)
    x = L.Conv2D(2, 3, strides=2, dilation_rate=1)(x)
    x = L.UpSampling2D(2)(x)
    x = L.Cropping2D(1)(x)
    x = L.Conv2D(2, 3, padding="same", dilation_rate=2)(x)
    x = L.AveragePooling2D(2, padding="same")(x)
    x = L.Permute((2, 1, 3))(x)
    x = L.Reshape((-1,))(x)
    a, b = L.Dense(5)(x), L.Dense(5)(x)
    x = L.Concatenate()([L.Subtract()([a, b]), L.Average()([a, b, L.Add()([a, b])])])
    x = L.RepeatVector(2)(x)
    x = L.Flatten()(x)
    return tf.keras.Model(inputs, L.Dense(3)(x), name="plumbing_linear")


def toy():
    return trained_like_batchnorm(toy_bnn(input_shape=(8, 8, 1), num_classes=4, width=4))


BUILDERS = [relu_mlp, relu_conv, hard_tanh_net, residual_bnn, sign_mlp, conv_1d, toy]


def _logits(model, x):
    out = model(x, training=False)
    if isinstance(model.layers[-1], L.Dense) and model.layers[-1].activation is (
            tf.keras.activations.softmax):
        out = tf.math.log(out)  # margins of log-softmax = margins of logits
    return out.numpy().astype(np.float64)


def _sampled_min_margins(model, x, y, epsilon, count, seed, clip=(0.0, 1.0)):
    """Smallest observed margin z_y - z_j per sample and class over `count` random points
    of the clipped box, half of them its corners."""
    rng = np.random.default_rng(seed)
    lo, hi = np.clip(x - epsilon, *clip), np.clip(x + epsilon, *clip)
    best = np.full((len(x), _logits(model, x[:1]).shape[-1]), np.inf)
    for i in range(len(x)):
        u = rng.uniform(0, 1, (count, *x.shape[1:]))
        u[: count // 2] = np.round(u[: count // 2])  # box corners
        pts = (lo[i] + u * (hi[i] - lo[i])).astype("float32")
        z = _logits(model, pts)
        best[i] = (z[:, y[i]][:, None] - z).min(axis=0)
    return best


class TestSoundness:
    @pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
    def test_bound_below_every_sampled_margin(self, builder):
        model = builder()
        shape = model.input_shape[1:]
        x = uniform_inputs((3, *shape), seed=2)
        y = np.array([0, 1, 3])
        epsilon = 0.05
        sampled = _sampled_min_margins(model, x, y, epsilon, count=1500, seed=3)
        for beta in (1.0, 0.5):
            bound = margin_bounds(model, x, y, epsilon, beta=beta).numpy()
            assert np.all(np.isfinite(bound))
            assert np.all(bound <= sampled + TOL * (1 + np.abs(sampled))), (beta, bound, sampled)
            np.testing.assert_allclose(bound[np.arange(3), y], 0.0)

    @pytest.mark.parametrize("activation", ["relu", lq.activations.hard_tanh],
                             ids=["relu", "hard_tanh"])
    @pytest.mark.parametrize("epsilon", [0.05, 0.1, 0.3])
    def test_bound_below_the_grid_minimum_of_a_2d_input_net(self, activation, epsilon):
        """Two inputs: a 161 x 161 grid of the box finds the true minimum margin closely, so a
        relaxation on the wrong side shows up (random samples of a wide box rarely do)."""
        model = tf.keras.Sequential([tf.keras.Input((2,)), L.Dense(8, activation=activation),
                                     L.Dense(8, activation=activation), L.Dense(3)])
        rng = np.random.default_rng(17)
        model.set_weights([rng.normal(0, 1.5, w.shape).astype("float32")
                           for w in model.get_weights()])
        x = np.random.default_rng(16).uniform(-1, 1, (6, 2)).astype("float32")
        y = np.arange(6) % 3
        epsilon = 0.2
        t = np.linspace(-epsilon, epsilon, 161)
        grid = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
        bound = margin_bounds(model, x, y, epsilon, clip=None).numpy()
        for i in range(len(x)):
            z = _logits(model, (x[i] + grid).astype("float32"))
            exact = (z[:, y[i]][:, None] - z).min(axis=0)
            assert np.all(bound[i] <= exact + TOL), (i, bound[i], exact)

    def test_relaxations_hold_on_a_grid_in_every_case(self):
        rng = np.random.default_rng(0)
        centres = rng.uniform(-3, 3, 400)
        radii = rng.uniform(0, 3, 400) * (rng.uniform(size=400) > 0.05)  # a few points
        lower, upper = centres - radii, centres + radii
        t = np.linspace(0, 1, 101)[:, None]
        z = lower + t * (upper - lower)  # (101, 400) points of each interval
        for relax, fn in ((relu_relaxation, lambda v: np.maximum(v, 0.0)),
                          (hard_tanh_relaxation, lambda v: np.clip(v, -1.0, 1.0))):
            a_l, b_l, a_u, b_u = (v.numpy() for v in relax(tf.constant(lower), tf.constant(upper)))
            assert np.all(a_l * z + b_l <= fn(z) + 1e-9), relax.__name__
            assert np.all(a_u * z + b_u >= fn(z) - 1e-9), relax.__name__
            # exact at both ends of an interval inside one linear piece, tight at an end else
            gap = np.minimum(fn(lower) - (a_l * lower + b_l), fn(upper) - (a_l * upper + b_l))
            assert np.all(gap <= 1e-9), relax.__name__


def assert_exact_affine_bound(model, w, x, y, epsilon, abs_tol):
    """On an affine model with linear part `w` (inputs, classes), the unclipped bound on every
    margin c = e_y - e_j is its exact minimum over the box, c z(x) - epsilon ||w c||_1."""
    logits = _logits(model, x)
    bound = margin_bounds(model, x, y, epsilon, clip=None).numpy()
    classes = logits.shape[-1]
    for i in range(len(x)):
        for j in range(classes):
            c = np.eye(classes)[y[i]] - np.eye(classes)[j]
            exact = c @ logits[i] - epsilon * np.abs(w @ c).sum()
            assert bound[i, j] == pytest.approx(exact, abs=abs_tol)


class TestExactness:
    def test_linear_dense_network_is_exact(self):
        model = tf.keras.Sequential([tf.keras.Input((5,)), L.Dense(7), L.Dense(6), L.Dense(4)])
        x = uniform_inputs((6, 5), seed=4)
        y = np.array([0, 1, 2, 3, 0, 1])
        epsilon = 0.1
        weights = [layer.get_weights() for layer in model.layers]
        w = np.eye(5)
        for kernel, _ in weights:
            w = w @ kernel.astype(np.float64)
        assert_exact_affine_bound(model, w, x, y, epsilon, abs_tol=1e-4)

    @staticmethod
    def linear_conv():
        """Convs (binary kernel, pad_values=1), BN, average pooling, Flatten."""
        inputs = tf.keras.Input((6, 6, 1))
        h = lq.layers.QuantConv2D(3, 3, padding="same", pad_values=1.0,
                                  kernel_quantizer="ste_sign", use_bias=False)(inputs)
        h = L.BatchNormalization()(h)
        h = L.AveragePooling2D(2, padding="same")(h)
        h = L.DepthwiseConv2D(2, padding="same")(h)
        h = L.Flatten()(h)
        return random_batchnorm(tf.keras.Model(inputs, L.Dense(3)(h)))

    @pytest.mark.parametrize("builder", ["linear_conv", "plumbing_linear"])
    def test_affine_conv_network_is_exact(self, builder):
        """The bound is the exact minimum, whose matrix is read from the model on basis
        vectors (the model is affine)."""
        model = self.linear_conv() if builder == "linear_conv" else plumbing_linear()
        n = 36
        basis = np.concatenate([np.zeros((1, n)), np.eye(n)]).reshape(-1, 6, 6, 1)
        z = _logits(model, basis.astype("float32"))
        w = z[1:] - z[:1]  # (inputs, classes), the linear part of the affine model
        x = uniform_inputs((4, 6, 6, 1), seed=5)
        y = np.array([0, 1, 2, 1])
        epsilon = 0.2
        assert_exact_affine_bound(model, w, x, y, epsilon, abs_tol=1e-3)

    @pytest.mark.parametrize("training", [False, True])
    def test_zero_epsilon_gives_the_clean_margin(self, training):
        model = residual_bnn()
        x = uniform_inputs((4, 8, 8, 2), seed=6)
        y = np.array([0, 1, 2, 3])
        z = model(x, training=training).numpy()
        expected = z[np.arange(4), y][:, None] - z
        got = margin_bounds(model, x, y, 0.0, training=training).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4)


def numpy_crown_two_layer(w1, b1, w2, b2, x, y, epsilon):
    """CROWN-IBP for relu(x W1 + b1) W2 + b2 over the unclipped box, by loops."""
    classes = w2.shape[1]
    out = np.zeros((len(x), classes))
    for n in range(len(x)):
        centre = x[n] @ w1 + b1
        radius = epsilon * np.abs(w1).sum(axis=0)
        lower, upper = centre - radius, centre + radius
        for j in range(classes):
            c = np.eye(classes)[y[n]] - np.eye(classes)[j]
            lam = w2 @ c  # coefficients on the hidden units
            slope, const = np.zeros_like(lam), c @ b2
            for k in range(len(lam)):
                l, u = lower[k], upper[k]
                if l >= 0:
                    slope[k] = 1.0
                elif u <= 0:
                    slope[k] = 0.0
                elif lam[k] >= 0:  # lower relaxation: line through 0, slope 1 or 0
                    slope[k] = 1.0 if u > -l else 0.0
                else:  # upper relaxation: the chord
                    slope[k] = u / (u - l)
                    const += lam[k] * (-u * l / (u - l))
            coef = lam * slope
            g = w1 @ coef  # on the input
            const += coef @ b1
            out[n, j] = const + g @ x[n] - epsilon * np.abs(g).sum()
    return out


class TestAgainstReferences:
    def test_two_layer_relu_net_matches_numpy_crown(self):
        model = tf.keras.Sequential([tf.keras.Input((5,)), L.Dense(8, activation="relu"),
                                     L.Dense(4)])
        x = uniform_inputs((16, 5), seed=7)
        y = np.arange(16) % 4
        epsilon = 0.15
        (w1, b1), (w2, b2) = (
            [v.astype(np.float64) for v in layer.get_weights()] for layer in model.layers)
        b1 = b1 + np.linspace(-0.5, 0.5, 8)  # unstable, active and dead units
        model.layers[0].bias.assign(b1.astype("float32"))
        expected = numpy_crown_two_layer(w1, b1, w2, b2, x.astype(np.float64), y, epsilon)
        got = margin_bounds(model, x, y, epsilon, clip=None).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4)

    @pytest.mark.parametrize("builder", BUILDERS + [plumbing_linear], ids=lambda b: b.__name__)
    def test_beta_zero_is_ibp_certified_margin(self, builder):
        model = builder()
        x = uniform_inputs((4, *model.input_shape[1:]), seed=8)
        y = np.array([0, 1, 2, 3]) % model.output_shape[-1]
        got = crown_ibp_margin(model, x, y, 0.03, beta=0.0).numpy()
        np.testing.assert_allclose(got, certified_margin(model, x, y, 0.03).numpy(),
                                   rtol=1e-5, atol=1e-4)

    @pytest.mark.parametrize("builder", [relu_mlp, relu_conv], ids=lambda b: b.__name__)
    def test_float_relu_nets_tighter_than_ibp_in_most_samples(self, builder):
        model = builder()
        x = uniform_inputs((32, *model.input_shape[1:]), seed=9)
        y = np.arange(32) % 4
        crown = margin_bounds(model, x, y, 0.03).numpy()
        ibp = margin_bounds(model, x, y, 0.03, beta=0.0).numpy()
        wrong = np.arange(4)[None] != y[:, None]
        assert np.mean(crown[wrong] >= ibp[wrong] - TOL) >= 0.9
        assert np.mean(crown[wrong] > ibp[wrong] + TOL) >= 0.5  # strictly tighter mostly

    @pytest.mark.parametrize("builder", [sign_mlp, toy], ids=lambda b: b.__name__)
    def test_bnn_without_relu_never_looser_than_ibp(self, builder):
        """Between sign layers only linear layers: CROWN passes them exactly, IBP does not."""
        model = builder()
        x = uniform_inputs((16, *model.input_shape[1:]), seed=10)
        y = np.arange(16) % 4
        crown = margin_bounds(model, x, y, 0.05).numpy()
        ibp = margin_bounds(model, x, y, 0.05, beta=0.0).numpy()
        assert np.all(crown >= ibp - 1e-4 * (1 + np.abs(ibp)))
        assert np.any(crown > ibp + 1e-3)


class TestMixingAndInputs:
    def test_beta_mixes_the_two_bounds(self):
        model = relu_conv()
        x = uniform_inputs((4, 8, 8, 1), seed=11)
        y = np.array([3, 2, 1, 0])
        crown = margin_bounds(model, x, y, 0.04, beta=1.0).numpy()
        ibp = margin_bounds(model, x, y, 0.04, beta=0.0).numpy()
        for beta in (0.25, tf.constant(0.25), tf.Variable(0.25)):
            got = margin_bounds(model, x, y, 0.04, beta=beta).numpy()
            np.testing.assert_allclose(got, 0.25 * crown + 0.75 * ibp, rtol=1e-5, atol=1e-5)
        margin = crown_ibp_margin(model, x, y, 0.04, beta=0.25).numpy()
        masked = np.where(np.eye(4, dtype=bool)[y], np.inf, 0.25 * crown + 0.75 * ibp)
        np.testing.assert_allclose(margin, masked.min(-1), rtol=1e-5, atol=1e-5)

    def test_verified_accuracy_counts_positive_margins(self):
        model = toy()
        x = uniform_inputs((10, 8, 8, 1), seed=12)
        y = np.argmax(model(x).numpy(), -1)
        margin = crown_ibp_margin(model, x, y, 0.001).numpy()
        assert verified_accuracy(model, x, y, 0.001, batch_size=3) == np.mean(margin > 0)
        assert verified_accuracy(model, x, y, 0.0) == 1.0  # predicted labels, no noise

    @pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan"), "1", True, None])
    def test_bad_beta_raises(self, beta):
        with pytest.raises(ValueError, match="beta"):
            margin_bounds(relu_mlp(), uniform_inputs((2, 6)), [0, 1], 0.1, beta=beta)

    def test_bad_tensor_beta_raises_eagerly_and_in_a_graph(self):
        model, x = relu_mlp(), uniform_inputs((2, 6))
        with pytest.raises(ValueError, match="beta"):
            margin_bounds(model, x, [0, 1], 0.1, beta=tf.constant(1.2))
        step = tf.function(lambda b: margin_bounds(model, x, [0, 1], 0.1, beta=b))
        with pytest.raises(tf.errors.InvalidArgumentError, match="beta"):
            step(tf.constant(-0.5))

    def test_bad_inputs_raise_clear_errors(self):
        model, x = relu_mlp(), uniform_inputs((2, 6))
        with pytest.raises(ValueError, match="epsilon"):
            margin_bounds(model, x, [0, 1], -0.1)
        with pytest.raises(ValueError, match="class labels in"):
            margin_bounds(model, x, [0, 4], 0.1)
        with pytest.raises(ValueError, match="one-hot"):
            margin_bounds(model, x, np.eye(4)[[0, 1]], 0.1)
        with pytest.raises(ValueError, match="differ in length"):
            verified_accuracy(model, x, [0, 1, 2], 0.1)
        inner_softmax = tf.keras.Sequential([tf.keras.Input((6,)), L.Dense(4, "softmax"),
                                             L.Dense(3)])
        with pytest.raises(UnsupportedLayerError, match="last operation"):
            margin_bounds(inner_softmax, x, [0, 1], 0.1)
        transpose = tf.keras.Sequential([tf.keras.Input((4, 4, 1)),
                                         L.Conv2DTranspose(2, 3), L.Flatten(), L.Dense(3)])
        with pytest.raises(UnsupportedLayerError, match="conv2d_transpose"):
            margin_bounds(transpose, uniform_inputs((2, 4, 4, 1)), [0, 1], 0.1)


class TestGradients:
    def test_gradients_reach_every_trainable_weight(self):
        model = residual_bnn()
        x = uniform_inputs((4, 8, 8, 2), seed=13)
        y = np.array([0, 1, 2, 3])
        with tf.GradientTape() as tape:
            margins = margin_bounds(model, x, y, 0.02, beta=0.5, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                y, -margins, from_logits=True))
        grads = tape.gradient(loss, model.trainable_weights)
        for weight, grad in zip(model.trainable_weights, grads):
            assert grad is not None, weight.name
            assert np.all(np.isfinite(grad.numpy())), weight.name
        binary = [g for w, g in zip(model.trainable_weights, grads)
                  if "quant_conv2d" in w.name and "kernel" in w.name]
        assert binary and all(np.any(g.numpy() != 0) for g in binary)  # the STE passes

    def test_gradient_matches_finite_differences(self):
        model = relu_mlp()
        x = uniform_inputs((4, 6), seed=14)
        y = np.array([0, 1, 2, 3])
        kernel = model.layers[0].kernel

        def loss():
            return tf.reduce_sum(margin_bounds(model, x, y, 0.05, beta=0.7))

        with tf.GradientTape() as tape:
            value = loss()
        grad = tape.gradient(value, kernel).numpy()
        # One-sided differences: the bound is piecewise smooth (an adaptive slope flips at
        # u = -l), so at least one side of a kink is smooth.
        h = 1e-3
        base = kernel.numpy()
        at = float(loss())
        for index in [(0, 0), (2, 3), (5, 7), (1, 4), (3, 1)]:
            sides = []
            for sign in (1, -1):
                w = base.copy()
                w[index] += sign * h
                kernel.assign(w)
                sides.append(sign * (float(loss()) - at) / h)
            kernel.assign(base)
            assert min(abs(grad[index] - s) for s in sides) <= 2e-3 + 2e-2 * abs(grad[index]), (
                index, grad[index], sides)

    def test_compiled_training_step_with_scheduled_beta(self):
        model = relu_conv()
        x = uniform_inputs((8, 8, 8, 1), seed=15)
        y = np.arange(8) % 4
        beta = tf.Variable(1.0, trainable=False)
        ramp = tf.Variable(0.5, trainable=False)  # epsilon as a scheduled tensor too
        optimizer = tf.keras.optimizers.SGD(0.01)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                margins = margin_bounds(model, x, y, ramp * 0.04, beta=beta, training=True)
                loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                    y, -margins, from_logits=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights),
                                          model.trainable_weights))
            return loss

        losses = []
        for b in (1.0, 0.5, 0.0):
            beta.assign(b)
            losses.append(float(step()))
        assert np.all(np.isfinite(losses))


def test_module_example_runs(tmp_path):
    import re
    import runpy

    from larq_l1inf import crown

    code = re.search(r"```python\n(.*?)```", crown.__doc__, re.DOTALL).group(1)
    script = tmp_path / "example.py"
    script.write_text("\n".join(line[4:] for line in code.splitlines()))
    runpy.run_path(str(script))


@pytest.mark.parametrize("variant", ["reactnet", "adabin"])
def test_backbone_variants_sound_and_not_looser_than_ibp(variant):
    """ResNet-20 of the package's variants: RSign / RPReLU (ReActNet), AdaBin's activation,
    Normalization, residual shortcuts; the variant layers are bounded by ibp.py's rules."""
    from larq_l1inf.backbones import resnet20

    model = random_batchnorm(resnet20(variant, num_classes=3, input_shape=(8, 8, 3),
                                          width=2, logits=True))
    for layer in model.submodules:  # non-trivial learned shifts and slopes
        for name in ("alpha", "gamma", "zeta", "center"):
            w = getattr(layer, name, None)
            if isinstance(w, tf.Variable) and not isinstance(layer, L.BatchNormalization):
                w.assign(np.full(w.shape, 0.05, np.float32))
    x = uniform_inputs((2, 8, 8, 3), seed=18)
    y = np.array([0, 2])
    bound = margin_bounds(model, x, y, 0.01).numpy()
    sampled = _sampled_min_margins(model, x, y, 0.01, count=300, seed=19)
    assert np.all(bound <= sampled + TOL * (1 + np.abs(sampled)))
    ibp = margin_bounds(model, x, y, 0.01, beta=0.0).numpy()
    np.testing.assert_allclose(ibp.min(-1, initial=np.inf, where=np.eye(3)[y] == 0),
                               certified_margin(model, x, y, 0.01).numpy(), rtol=1e-5, atol=1e-3)
    assert np.all(bound >= ibp - 1e-3 * (1 + np.abs(ibp)))  # no ReLU relaxed: never looser

"""Layers of published BNN methods that are not quantizers: learnable activations and gates.

Every class is a registered Keras layer with a `get_config`, so a saved model loads without
`custom_objects`.

| layer | method | what it does |
|---|---|---|
| `RSign` | ReActNet | sign with a learnable threshold per channel |
| `RPReLU` | ReActNet | PReLU with learnable shifts per channel |
| `ABCActivation` | ABC-Net | N shifted binary activation bases |
| `AdaBinActivation` | AdaBin | learnable binary set {beta - alpha, beta + alpha} |
| `Maxout` | AdaBin | two learnable slopes per channel |
| `GradientQuantizer` | CycleBNN / CPT | identity forward, k-bit gradient |
"""

import numbers

import larq as lq
import numpy as np

from larq_l1inf._keras import tf
from larq_l1inf.quantizers import straight_through

__all__ = ["ABCActivation", "AdaBinActivation", "GradientQuantizer", "Maxout", "RPReLU", "RSign"]

_register = lq.utils.register_keras_custom_object


def _channels(input_shape):
    channels = input_shape[-1]
    if channels is None:
        raise ValueError(f"The channel (last) axis must be known, got input shape {input_shape}.")
    return (int(channels),)


@_register
class RSign(tf.keras.layers.Layer):
    r"""ReActNet's RSign: a sign with a learnable threshold per channel.

    \\[
    x_i^b = \begin{cases} +1 & x_i \ge \alpha_c \\ -1 & x_i < \alpha_c \end{cases}
    \\]

    (Liu et al. ECCV 2020, eq. 3; the paper puts $x_i = \alpha_c$ on the $-1$ side, we follow
    larq/LCE's `sign(0) = +1`.) The backward pass is larq's `approx_sign` (Bi-Real's
    $\max(2 - 2|x - \alpha_c|, 0)$, which ReActNet trains with); $\alpha$ gets the negated
    gradient. The binary conv after it keeps `input_quantizer="ste_sign"` so LCE sees a
    binary input.

    !!! example
        ```python
        x = tf.keras.Input((8, 8, 4))
        y = lq.layers.QuantConv2D(8, 3, input_quantizer="ste_sign",
                                  kernel_quantizer="magnitude_sign")(RSign()(x))
        ```

    # References
    - Z. Liu, Z. Shen, M. Savvides, K.-T. Cheng. ReActNet: Towards Precise Binary Neural
      Network with Generalized Activation Functions. ECCV 2020, eq. 3.
    """

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=_channels(input_shape), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        return lq.quantizers.approx_sign(inputs - self.alpha)


@_register
class RPReLU(tf.keras.layers.Layer):
    r"""ReActNet's RPReLU: a PReLU with learnable shifts per channel.

    \\[
    f(x_i) = \begin{cases} x_i - \gamma_i + \zeta_i & x_i > \gamma_i \\
        \beta_i (x_i - \gamma_i) + \zeta_i & x_i \le \gamma_i \end{cases}
    \\]

    (Liu et al. ECCV 2020, eq. 4), $\beta$ initialized to 0.25, $\gamma$ and $\zeta$ to 0.

    !!! example
        ```python
        y = RPReLU()(tf.keras.Input((8, 8, 4)))
        ```

    # References
    - Z. Liu et al. ReActNet, ECCV 2020, eq. 4.
    """

    def build(self, input_shape):
        channels = _channels(input_shape)
        self.gamma = self.add_weight(name="gamma", shape=channels, initializer="zeros")
        self.zeta = self.add_weight(name="zeta", shape=channels, initializer="zeros")
        self.beta = self.add_weight(name="beta", shape=channels, initializer=tf.keras.initializers.Constant(0.25))
        super().build(input_shape)

    def call(self, inputs):
        shifted = inputs - self.gamma
        return tf.where(shifted > 0, shifted, self.beta * shifted) + self.zeta


def _abc_heaviside(v):
    """H_v of ABC-Net eq. 8 on the shifted input: 2 * 1[clip(v, 0, 1) >= 0.5] - 1."""
    return 2.0 * tf.cast(tf.clip_by_value(v, 0.0, 1.0) >= 0.5, v.dtype) - 1.0


def _abc_heaviside_gradient(v):
    """ABC-Net eq. 9: the straight-through estimator passes where 0 <= v <= 1."""
    return tf.cast((v >= 0.0) & (v <= 1.0), v.dtype)


@_register
class ABCActivation(tf.keras.layers.Layer):
    r"""ABC-Net's N binary activation bases with learnable shifts and scales.

    \\[
    A \approx \sum_{n=1}^{N} \beta_n H_{v_n}(R),\quad
    H_v(R) = 2\,\mathbb{1}_{h_v(R) \ge 0.5} - 1,\quad h_v(x) = \mathrm{clip}(x + v, 0, 1)
    \\]

    (Lin et al. NeurIPS 2017, sec. 3.2, eq. 7-9). $v_n$ and $\beta_n$ are trained; the
    backward pass is the straight-through estimator $\partial H_v/\partial R =
    \mathbb{1}_{-v \le R \le 1-v}$ (eq. 9). Initialization (ours; the paper does not fix it):
    thresholds $0.5 - v_n$ spread evenly over [-0.5, 0.5] (0 for N = 1, i.e. plain sign)
    and $\beta_n = 1/N$. With N > 1 the output has up to N + 1 levels: LCE cannot run the
    conv as `LceBconv2d`.

    # Arguments
    bases: N, the number of binary activation bases.

    # Raises
    ValueError: for `bases` < 1.

    !!! example
        ```python
        y = ABCActivation(3)(tf.keras.Input((8, 8, 4)))
        ```

    # References
    - X. Lin, C. Zhao, W. Pan. Towards Accurate Binary Convolutional Neural Network.
      NeurIPS 2017, sec. 3.2, eq. 7-10.
    """

    def __init__(self, bases=3, **kwargs):
        if int(bases) != bases or bases < 1:
            raise ValueError(f"`bases` (N) must be an integer >= 1, got {bases!r}.")
        self.bases = int(bases)
        super().__init__(**kwargs)

    def build(self, input_shape):
        n = self.bases
        thresholds = np.linspace(-0.5, 0.5, n) if n > 1 else np.zeros(1)
        self.shift = self.add_weight(
            name="shift", shape=(n,), initializer=tf.keras.initializers.Constant(0.5 - thresholds)
        )
        self.scale = self.add_weight(name="scale", shape=(n,), initializer=tf.keras.initializers.Constant(1.0 / n))
        super().build(input_shape)

    def call(self, inputs):
        parts = [
            self.scale[i] * straight_through(_abc_heaviside, inputs + self.shift[i], _abc_heaviside_gradient)
            for i in range(self.bases)
        ]
        return tf.add_n(parts)

    def get_config(self):
        return {**super().get_config(), "bases": self.bases}


@_register
class AdaBinActivation(tf.keras.layers.Layer):
    r"""AdaBin activations: a learnable binary set $\{\beta_a - \alpha_a, \beta_a + \alpha_a\}$.

    \\[
    a_b = \alpha_a\, g\!\left(\frac{a - \beta_a}{\alpha_a}\right) + \beta_a
    \\]

    (Tu et al. ECCV 2022, sec. 3.3, eq. 9-11) with $g$ the sign, larq's `approx_sign`
    backward (Bi-Real's), and one learnable center $\beta_a$ (init 0) and distance
    $\alpha_a$ (init 1) per layer.

    !!! example
        ```python
        y = AdaBinActivation()(tf.keras.Input((8, 8, 4)))
        ```

    # References
    - Z. Tu, X. Chen, P. Ren, Y. Wang. AdaBin: Improving Binary Neural Networks with Adaptive
      Binary Sets. ECCV 2022, sec. 3.3, eq. 9-11.
    """

    def build(self, input_shape):
        self.distance = self.add_weight(name="alpha_a", shape=(), initializer="ones")
        self.center = self.add_weight(name="beta_a", shape=(), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        return self.distance * lq.quantizers.approx_sign((inputs - self.center) / self.distance) + self.center


@_register
class Maxout(tf.keras.layers.Layer):
    r"""AdaBin's Maxout nonlinearity, two learnable slopes per channel.

    \\[
    f(x) = \gamma^+ \operatorname{ReLU}(x) - \gamma^- \operatorname{ReLU}(-x)
    \\]

    (Tu et al. ECCV 2022, sec. 3.4, eq. 12), $\gamma^+$ initialized to 1 and $\gamma^-$ to
    0.25.

    !!! example
        ```python
        y = Maxout()(tf.keras.Input((8, 8, 4)))
        ```

    # References
    - Z. Tu et al. AdaBin, ECCV 2022, sec. 3.4, eq. 12.
    """

    def build(self, input_shape):
        channels = _channels(input_shape)
        self.pos_scale = self.add_weight(name="pos_scale", shape=channels, initializer="ones")
        self.neg_scale = self.add_weight(
            name="neg_scale", shape=channels, initializer=tf.keras.initializers.Constant(0.25)
        )
        super().build(input_shape)

    def call(self, inputs):
        return self.pos_scale * tf.nn.relu(inputs) - self.neg_scale * tf.nn.relu(-inputs)


def _draw_seed():
    """A layer seed from TF's global RNG: fixed by `tf.random.set_seed`/`set_random_seed`."""
    with tf.init_scope():  # eager even when the layer is built inside a tf.function
        return int(tf.random.uniform([], 0, 2**31 - 1, dtype=tf.int64))


@_register
class GradientQuantizer(tf.keras.layers.Layer):
    r"""Identity forward; quantizes the gradient to `bits` bits in the backward pass (CPT).

    \\[
    \tilde g = \mathrm{clip}\!\left(\left\lfloor \tfrac{g - m}{s} + u \right\rceil,
        0, 2^k - 1\right) s + m,\quad s = \tfrac{M - m}{2^k - 1},\ u \sim U[-\tfrac12, \tfrac12]
    \\]

    stochastic rounding of the incoming gradient $g$ to $2^k$ levels between its min $m$ and
    max $M$ over each sample (the granularity is ours; the papers do not fix it), as cyclic
    precision training does for the conv output's gradient; `bits <= 0` passes it unchanged.
    `bits` is a variable `CyclicPrecisionSchedule` assigns, not a weight.

    The noise $u$ is stateless: drawn from (`seed`, backward-pass counter), and the counter
    (`noise_step`, +1 per backward pass, so evaluation and prediction leave it alone) is
    tracked by the layer, so Keras checkpoints and `BackupAndRestore` save and restore it and
    a resumed run draws the noise an uninterrupted one would. Like `bits`, it is not a weight:
    `get_weights()`, h5 weight files and `count_params()` do not see it. Under a
    `tf.distribute` strategy each replica folds its id into the seed.

    # Arguments
    bits: the initial gradient bit width.
    seed: the integer seed of the rounding noise; None draws one from TensorFlow's global
        RNG, so `tf.keras.utils.set_random_seed` fixes it.

    # Raises
    ValueError: for a `seed` that is not an integer.

    !!! example
        ```python
        y = GradientQuantizer(bits=8)(tf.keras.Input((8, 8, 4)))
        ```

    # References
    - Y. Fu et al. CPT: Efficient Deep Neural Network Training via Cyclic Precision.
      ICLR 2021, sec. 3.
    - F. Fontana et al. CycleBNN: Cyclic Precision Training in Binary Neural Networks.
      ECCV 2024 Workshops (arXiv:2410.00050), sec. 3.
    """

    def __init__(self, bits=8.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(
                f"GradientQuantizer `seed` must be an integer or None (drawn), got {seed!r}.")
        self.seed = _draw_seed() if seed is None else int(seed)
        self.bits = tf.Variable(float(bits), trainable=False, dtype=tf.float32, name="grad_bits")
        # ON_READ: each replica counts its own backward passes without a cross-replica sync;
        # all replicas count alike, and a checkpoint keeps the first one's count.
        self.noise_step = tf.Variable(
            0, trainable=False, dtype=tf.int64, name="noise_step",
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def noise_seed(self):
        """Advance `noise_step` and return the stateless seed of this backward pass."""
        with tf.control_dependencies([self.noise_step.assign_add(1)]):
            seed = tf.stack([tf.constant(self.seed, tf.int64), self.noise_step.read_value()])
        replicas = tf.distribute.get_replica_context()
        if replicas is not None and replicas.num_replicas_in_sync > 1:
            seed = tf.random.experimental.stateless_fold_in(seed, replicas.replica_id_in_sync_group)
        return seed

    def call(self, inputs):
        bits = self.bits

        @tf.custom_gradient
        def _identity(x):
            def grad(dy):
                axes = list(range(1, dy.shape.rank))
                levels = tf.pow(2.0, tf.maximum(bits, 1.0)) - 1.0
                low = tf.reduce_min(dy, axis=axes, keepdims=True)
                high = tf.reduce_max(dy, axis=axes, keepdims=True)
                step = tf.maximum((high - low) / levels, 1e-12)
                noise = tf.random.stateless_uniform(tf.shape(dy), self.noise_seed(), -0.5, 0.5,
                                                    dtype=dy.dtype)
                rounded = tf.round((dy - low) / step + noise)
                quantized = tf.clip_by_value(rounded, 0.0, levels) * step + low
                return tf.where(bits > 0, quantized, dy)

            return tf.identity(x), grad

        return _identity(inputs)

    @property
    def non_trainable_weights(self):
        # Not weights: object-graph checkpoints still save `bits` and `noise_step` (attributes).
        return []

    def get_config(self):
        return {**super().get_config(), "bits": float(self.bits.numpy()), "seed": self.seed}

"""Weight and activation quantizers of published BNN methods, as larq quantizers.

Every class here is a larq quantizer (`precision` set), registered as a Keras object and
under a snake-case alias (`kernel_quantizer="xnor_sign"` works as `"ste_sign"` does), so a
saved model loads without `custom_objects`. Where larq has the same quantizer we subclass it
and say in one line what differs.

Quantizers whose output carries a scale, `output = scale(latent) * binary_kernel(latent)`,
expose both parts as hooks for `L1InfRegularizer`: `binary_kernel(latent)` is the unscaled
`W_b` and `scale(latent)` the scale the layer computes with (a scalar or one value per output
channel), so the penalty applies alpha once. `AdaBinWeight` adds a `center(latent)`.

| quantizer | alias | method | output |
|---|---|---|---|
| `MagnitudeSign` | `magnitude_sign` | Bi-Real, ReActNet | alpha_c sign(W) |
| `XnorSign` | `xnor_sign` | XNOR-Net | alpha_c sign(W), eq. 7 gradient |
| `DoReFaWeight` | `dorefa_weight` | DoReFa-Net | E|W| sign(W) or k-bit levels |
| `EDESign` | `ede_sign` | IR-Net activations | sign, EDE gradient |
| `LibraPBSign` | `libra_pb_sign` | IR-Net weights | 2^s_c sign(W_std) |
| `ABCWeight` | `abc_weight` | ABC-Net | sum_i alpha_i B_i |
| `AdaBinWeight` | `adabin_weight` | AdaBin | alpha_c sign(W - beta_c) + beta_c |
| `CyclicSign` | `cyclic_sign` | CycleBNN | sign(Q_k(x)) |

DoReFa activations are larq's own `lq.quantizers.DoReFa(k_bit, mode="activations")`.
"""

import logging
import math
import warnings

import larq as lq
import numpy as np

from larq_l1inf._keras import tf

log = logging.getLogger(__name__)

__all__ = [
    "ABCWeight",
    "AdaBinWeight",
    "CyclicSign",
    "DoReFaActivation",
    "DoReFaWeight",
    "EDEMixin",
    "EDESign",
    "LibraPBSign",
    "MagnitudeSign",
    "XnorSign",
    "abc_shifts",
    "approx_sign_gradient",
    "minmax_quantize",
    "straight_through",
]

_BaseQuantizer = lq.quantizers._BaseQuantizer


def _register(alias):
    """Register a quantizer as a Keras object and under its snake-case alias, as larq does."""

    def decorator(cls):
        return lq.utils.register_alias(alias)(lq.utils.register_keras_custom_object(cls))

    return decorator


def _channel_axes(x):
    """All axes but the last (output-channel) one."""
    return list(range(len(x.shape) - 1))


def straight_through(forward, inputs, gradient):
    """`forward(inputs)` in the forward pass, `dy * gradient(inputs)` in the backward pass.

    # Arguments
    forward: the forward function (e.g. a sign).
    inputs: a tensor.
    gradient: the pseudo-derivative, a function of `inputs` of the same shape.

    # Returns
    `forward(inputs)` with the given backward pass.
    """

    @tf.custom_gradient
    def _call(x):
        def grad(dy):
            return dy * gradient(x)

        return forward(x), grad

    return _call(inputs)


def approx_sign_gradient(x):
    r"""Bi-Real's piecewise-polynomial derivative of sign, $\max(2 - 2|x|, 0)$ (Liu et al.
    ECCV 2018, eq. 5); larq's `approx_sign` uses the same backward pass."""
    return tf.maximum(2.0 - 2.0 * tf.abs(x), 0.0)


def _ones(x):
    return tf.ones_like(x)


def _clipped_ones(clip_value):
    if clip_value is None:
        return _ones
    return lambda x: tf.cast(tf.abs(x) <= clip_value, x.dtype)


def _sign_ste(x, gradient=_ones):
    """larq's sign (sign(0) = +1, what LCE's LceQuantize computes) with a given backward."""
    return straight_through(lq.math.sign, x, gradient)


def _check_bits(k_bit, name="k_bit"):
    if int(k_bit) != k_bit or k_bit < 1 or k_bit > 16:
        raise ValueError(f"`{name}` must be an integer between 1 and 16, got {k_bit!r}.")
    return int(k_bit)


# --------------------------------------------------------------------------------------------
# Bi-Real, ReActNet, XNOR-Net: sign with a magnitude per output channel
# --------------------------------------------------------------------------------------------


@_register("magnitude_sign")
class MagnitudeSign(lq.quantizers.MagnitudeAwareSign):
    r"""Bi-Real Net's magnitude-aware weight sign, with the hooks `L1InfRegularizer` reads.

    \\[
    W_b = \alpha_c \operatorname{sign}(W),\quad \alpha_c = \tfrac{1}{n}\|W_c\|_1,\qquad
    \frac{\partial W_b}{\partial W} \approx \alpha_c\, \mathbb{1}_{|W| \le 1}
    \\]

    per output channel $c$ with fan-in $n$ (Liu et al. ECCV 2018, sec. 3.3, eq. 8-9). Larq's
    `MagnitudeAwareSign` exactly, plus `binary_kernel`/`scale`: the scale is a constant in the
    backward pass, as in the paper's magnitude-aware gradient, Bi-Real's official code and
    larq; the official PyTorch code also drops the factor $\alpha_c$ from the straight-through
    gradient (a positive per-channel factor; we keep the paper's and larq's form). ReActNet
    (Liu et al. ECCV 2020) binarizes its weights the same way.

    # Arguments
    clip_value: the straight-through estimator passes gradients where `|w| <= clip_value`.
    scale_gradient: accepted for models saved with larq-l1inf 0.1.0 only; `True` is
        deprecated and ignored (use `XnorSign` for a gradient through the scale).

    !!! example
        ```python
        layer = lq.layers.QuantConv2D(8, 3, kernel_quantizer="magnitude_sign",
                                      input_quantizer="approx_sign")
        ```

    # References
    - Z. Liu, B. Wu, W. Luo, X. Yang, W. Liu, K.-T. Cheng. Bi-Real Net: Enhancing the
      Performance of 1-bit CNNs with Improved Representational Capability and Advanced
      Training Algorithm. ECCV 2018, sec. 3.3, eq. 8-9.
    """

    def __init__(self, clip_value=1.0, scale_gradient=None, **kwargs):
        if scale_gradient and type(self) is MagnitudeSign:
            warnings.warn(
                "MagnitudeSign(scale_gradient=True) is deprecated and ignored: Bi-Real's "
                "magnitude-aware gradient treats the scale as a constant. Use XnorSign for the "
                "gradient through the scale.",
                DeprecationWarning,
                stacklevel=2,
            )
        super().__init__(clip_value=clip_value, **kwargs)

    def scale(self, latent):
        """alpha per output channel, `mean |W|` over all other axes (differentiable)."""
        latent = tf.convert_to_tensor(latent)
        return tf.reduce_mean(tf.abs(latent), axis=_channel_axes(latent))

    def binary_kernel(self, latent):
        """`sign(W)` without alpha, with the clipped straight-through estimator."""
        latent = tf.convert_to_tensor(latent)
        return lq.quantizers.ste_sign(latent, clip_value=self.clip_value)


@_register("xnor_sign")
class XnorSign(MagnitudeSign):
    r"""XNOR-Net weight binarization: $\alpha_c \operatorname{sign}(W)$ with eq. 7's gradient.

    \\[
    \tilde W = \alpha B,\quad B = \operatorname{sign}(W),\quad \alpha = \tfrac{1}{n}\|W\|_1,
    \qquad
    \frac{\partial C}{\partial W_i} = \frac{\partial C}{\partial \tilde W_i}
        \left(\frac{1}{n} + \alpha\, \mathbb{1}_{|W_i| \le 1}\right)
    \\]

    (Rastegari et al. ECCV 2016, eq. 4-7), $\alpha$ per output filter of fan-in $n$. The
    backward pass is eq. 7 as written: the scale's derivative enters only through the
    diagonal term $\frac{1}{n}\frac{\partial C}{\partial \tilde W_i}$, not the full chain rule
    $\frac{\operatorname{sign}(W_i)}{n} \sum_j \frac{\partial C}{\partial \tilde W_j}
    \operatorname{sign}(W_j)$; the official Torch code does the same (times a constant
    $n(1 - 1/c_{in})$, which the learning rate absorbs). Subclasses `MagnitudeSign`; differs
    only in that gradient. `scale_gradient=False` drops the $1/n$ term (larq's
    `MagnitudeAwareSign`).

    # Arguments
    clip_value: the straight-through estimator passes gradients where `|w| <= clip_value`.
    scale_gradient: add eq. 7's $1/n$ term for the scale.

    !!! example
        ```python
        layer = lq.layers.QuantConv2D(8, 3, kernel_quantizer="xnor_sign",
                                      input_quantizer="ste_sign")
        ```

    # References
    - M. Rastegari, V. Ordonez, J. Redmon, A. Farhadi. XNOR-Net: ImageNet Classification Using
      Binary Convolutional Neural Networks. ECCV 2016, eq. 4-7.
    """

    def __init__(self, clip_value=1.0, scale_gradient=True, **kwargs):
        self.scale_gradient = bool(scale_gradient)
        super().__init__(clip_value=clip_value, **kwargs)

    def call(self, inputs):
        if not self.scale_gradient:
            return super().call(inputs)
        alpha = tf.stop_gradient(self.scale(inputs))
        fan_in = float(np.prod(inputs.shape[:-1]))
        ste = _clipped_ones(self.clip_value)
        outputs = straight_through(lambda w: alpha * lq.math.sign(w), inputs, lambda w: alpha * ste(w) + 1.0 / fan_in)
        return _BaseQuantizer.call(self, outputs)

    def get_config(self):
        return {**super().get_config(), "scale_gradient": self.scale_gradient}


# --------------------------------------------------------------------------------------------
# DoReFa-Net
# --------------------------------------------------------------------------------------------


@_register("dorefa_weight")
class DoReFaWeight(lq.quantizers.DoReFa):
    r"""DoReFa-Net k-bit weight quantizer, with the paper's scaled sign for one bit.

    \\[
    k = 1:\ r_o = \mathbb{E}(|r_i|)\operatorname{sign}(r_i),\ 
        \frac{\partial c}{\partial r_i} = \frac{\partial c}{\partial r_o};\qquad
    k > 1:\ r_o = 2\, \mathrm{quantize}_k\!\left(\frac{\tanh r_i}{2 \max|\tanh r_i|}
        + \tfrac12\right) - 1
    \\]

    (Zhou et al. 2016, eq. 7-9; $\mathbb{E}$ over the whole layer, $\mathrm{quantize}_k$ of
    eq. 5 with the straight-through estimator). Larq's `DoReFa(k_bit, mode="weights")` for
    k > 1; for k = 1 it outputs the paper's $\mathbb{E}|r_i| \operatorname{sign}(r_i)$
    (larq's gives an unscaled ±1) and passes the gradient straight through the scaled sign,
    unclipped, as eq. 8, tensorpack's DoReFa code and larq-zoo's DoReFaNet do.

    # Arguments
    k_bit: weight bits, 1..16.

    # Raises
    ValueError: for k_bit outside 1..16 or a mode other than `"weights"`.

    !!! example
        ```python
        layer = lq.layers.QuantConv2D(8, 3, kernel_quantizer=DoReFaWeight(1),
                                      input_quantizer=lq.quantizers.DoReFa(2))
        ```

    # References
    - S. Zhou, Y. Wu, Z. Ni, X. Zhou, H. Wen, Y. Zou. DoReFa-Net: Training Low Bitwidth
      Convolutional Neural Networks with Low Bitwidth Gradients. arXiv:1606.06160, 2016,
      eq. 5, 7-9.
    """

    def __init__(self, k_bit=1, mode="weights", **kwargs):
        if mode != "weights":
            raise ValueError(
                f"DoReFaWeight quantizes weights only, got mode={mode!r}; use "
                "lq.quantizers.DoReFa(k_bit, mode='activations') for activations."
            )
        super().__init__(k_bit=_check_bits(k_bit), mode="weights", **kwargs)

    @property
    def k_bit(self):
        return self.precision

    def scale(self, latent):
        """`E|W|` over the layer for one bit (differentiable); 1 for k > 1 (no separate scale)."""
        latent = tf.convert_to_tensor(latent)
        if self.k_bit == 1:
            return tf.reduce_mean(tf.abs(latent))
        return tf.ones((), latent.dtype)

    def binary_kernel(self, latent):
        """`sign(W)` (one bit, straight-through) or the k-bit levels in [-1, 1]."""
        latent = tf.convert_to_tensor(latent)
        if self.k_bit == 1:
            return _sign_ste(latent)
        return super().call(latent)

    def call(self, inputs):
        if self.k_bit > 1:
            return super().call(inputs)
        scale = tf.stop_gradient(self.scale(inputs))
        # Eq. 8: the whole scaled sign is straight-through, so no factor E|W| in the gradient.
        outputs = straight_through(lambda w: scale * lq.math.sign(w), inputs, _ones)
        return _BaseQuantizer.call(self, outputs)


@_register("dorefa_activation")
class DoReFaActivation(lq.quantizers.DoReFa):
    """Deprecated: larq's `lq.quantizers.DoReFa(k_bit, mode="activations")`, which it is.

    Kept so models saved with larq-l1inf 0.1.0 load; it warns on construction.

    # Arguments
    k_bit: activation bits, 1..16.
    """

    def __init__(self, k_bit=2, mode="activations", **kwargs):
        warnings.warn(
            "DoReFaActivation is deprecated; use lq.quantizers.DoReFa(k_bit, mode='activations').",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(k_bit=_check_bits(k_bit), mode="activations", **kwargs)


# --------------------------------------------------------------------------------------------
# IR-Net: Libra-PB and the Error Decay Estimator
# --------------------------------------------------------------------------------------------


def _ede(x, t, k):
    """sign forward; EDE backward g'(x) = k t (1 - tanh^2(t x)) (IR-Net eq. 14)."""
    return _sign_ste(x, lambda v: k * t * (1.0 - tf.square(tf.math.tanh(t * v))))


class EDEMixin:
    """State of IR-Net's Error Decay Estimator: `t` and `k`, variables `EDESchedule` assigns.

    They are not weights: a loaded model restarts the schedule from its saved config values.
    """

    def _init_ede(self, t, k):
        self.t = tf.Variable(float(t), trainable=False, dtype=tf.float32, name="ede_t")
        self.k = tf.Variable(float(k), trainable=False, dtype=tf.float32, name="ede_k")

    def set_ede(self, t, k):
        """Assign the EDE parameters."""
        self.t.assign(float(t))
        self.k.assign(float(k))

    def _ede_config(self):
        return {"t": float(self.t.numpy()), "k": float(self.k.numpy())}


@_register("ede_sign")
class EDESign(EDEMixin, _BaseQuantizer):
    r"""IR-Net sign with the Error Decay Estimator (EDE) as its backward pass.

    \\[
    \text{forward: } \operatorname{sign}(x), \qquad
    \text{backward: } g'(x) = k\, t\, (1 - \tanh^2(t x)),\quad
    t = T_{min} 10^{\frac{i}{N} \log_{10}\frac{T_{max}}{T_{min}}},\ k = \max(1/t, 1)
    \\]

    (Qin et al. CVPR 2020, sec. 3.3, eq. 13-14; $T_{min} = 0.1$, $T_{max} = 10$, $i$ the
    epoch out of $N$). `t` and `k` are variables; `EDESchedule` assigns them each epoch.

    # Arguments
    t, k: the initial EDE parameters (the schedule's value at epoch 0 by default).

    !!! example
        ```python
        layer = lq.layers.QuantConv2D(8, 3, kernel_quantizer="libra_pb_sign",
                                      input_quantizer="ede_sign")
        ```

    # References
    - H. Qin, R. Gong, X. Liu, M. Shen, Z. Wei, F. Yu, J. Song. Forward and Backward
      Information Retention for Accurate Binary Neural Networks. CVPR 2020, sec. 3.3.
    """

    precision = 1

    def __init__(self, t=0.1, k=10.0, **kwargs):
        super().__init__(**kwargs)
        self._init_ede(t, k)

    def call(self, inputs):
        return super().call(_ede(inputs, self.t, self.k))

    def get_config(self):
        return {**super().get_config(), **self._ede_config()}


@_register("libra_pb_sign")
class LibraPBSign(EDEMixin, _BaseQuantizer):
    r"""IR-Net Libra Parameter Binarization: balanced, standardized weights, power-of-two scale.

    \\[
    \hat W_{std} = \frac{W - \mu(W)}{\sigma(W)},\qquad
    Q_w(\hat W) = \operatorname{sign}(\hat W_{std}) \ll s,\quad
    s = \operatorname{round}\!\left(\log_2 \tfrac{\|\hat W_{std}\|_1}{n}\right)
    \\]

    (Qin et al. CVPR 2020, sec. 3.2, eq. 9-11): the balanced, standardized kernel maximizes the
    information entropy of the binary weights, and the scale $2^s$ is a bit shift. Mean,
    standard deviation and $s$ are taken per output filter, as the official code does. The
    sign's backward pass is the EDE (see `EDESign`); the gradient flows through the
    standardization, not through the rounded scale. `scale(W)` is $2^s$ per channel and
    `binary_kernel(W)` is $\operatorname{sign}(\hat W_{std})$.

    # Arguments
    t, k: the initial EDE parameters.

    !!! example
        ```python
        layer = lq.layers.QuantConv2D(8, 3, kernel_quantizer=LibraPBSign(),
                                      input_quantizer=EDESign())
        ```

    # References
    - H. Qin et al. Forward and Backward Information Retention for Accurate Binary Neural
      Networks. CVPR 2020, sec. 3.2 (Libra-PB, eq. 9-11), sec. 3.3 (EDE).
    """

    precision = 1

    def __init__(self, t=0.1, k=10.0, **kwargs):
        super().__init__(**kwargs)
        self._init_ede(t, k)

    def standardize(self, inputs):
        """`(W - mean) / std` per output channel."""
        inputs = tf.convert_to_tensor(inputs)
        axes = _channel_axes(inputs)
        centred = inputs - tf.reduce_mean(inputs, axis=axes)
        std = tf.math.reduce_std(centred, axis=axes)
        return centred / tf.maximum(std, 1e-12)

    def scale(self, latent):
        """`2^s` per output channel (a constant: the rounding has no gradient)."""
        latent = tf.convert_to_tensor(latent)
        mean_abs = tf.reduce_mean(tf.abs(self.standardize(latent)), axis=_channel_axes(latent))
        return tf.stop_gradient(tf.pow(2.0, tf.round(tf.math.log(mean_abs) / math.log(2.0))))

    def binary_kernel(self, latent):
        """`sign(W_std)` without the `2^s` scale, EDE backward through the standardization."""
        latent = tf.convert_to_tensor(latent)
        return _ede(self.standardize(latent), self.t, self.k)

    def call(self, inputs):
        return super().call(self.scale(inputs) * self.binary_kernel(inputs))

    def get_config(self):
        return {**super().get_config(), **self._ede_config()}


# --------------------------------------------------------------------------------------------
# ABC-Net: M weight bases
# --------------------------------------------------------------------------------------------


def abc_shifts(m):
    """ABC-Net's weight-base shifts `u_i = -1 + (i - 1) 2 / (M - 1)`, i = 1..M (0 for M = 1)."""
    if m == 1:
        return np.zeros(1, dtype=np.float32)
    return (-1.0 + np.arange(m) * 2.0 / (m - 1)).astype(np.float32)


@_register("abc_weight")
class ABCWeight(_BaseQuantizer):
    r"""ABC-Net's linear combination of M binary weight bases.

    \\[
    W \approx \sum_{i=1}^{M} \alpha_i B_i,\quad
    B_i = \operatorname{sign}(\bar W + u_i \operatorname{std}(W)),\
    \bar W = W - \operatorname{mean}(W),\ u_i = -1 + (i-1)\tfrac{2}{M-1}
    \\]

    with $\alpha$ the least-squares solution of $\min_\alpha \|\mathrm{vec}(W) - B\alpha\|^2$
    (Lin et al. NeurIPS 2017, sec. 3.1, eq. 1-5). Backward (eq. 6):
    $\partial c/\partial W = \sum_i \alpha_i\, \partial c/\partial B_i$ through the
    straight-through estimator; $\alpha$, mean and std are constants in the backward pass.
    The layer computes $\mathrm{conv}(\sum_i \alpha_i B_i, A)$ in one convolution, by
    bilinearity the same numbers as eq. 10's M x N binary convolutions.

    Scale and `W_b` for the penalty (our definition; the paper has no such penalty):
    `scale(W)` $= \sum_i |\alpha_i|$ and `binary_kernel(W)` $= \sum_i \alpha_i B_i /
    \sum_i |\alpha_i|$, the effective kernel with its scale divided out (entries in
    [-1, 1]; for M = 1 exactly $\operatorname{sign}$), so `scale * binary_kernel` is the
    output.

    # Arguments
    bases: M, the number of binary weight bases (precision is set to M).

    # Raises
    ValueError: for `bases` < 1.

    !!! example
        ```python
        layer = lq.layers.QuantConv2D(8, 3, kernel_quantizer=ABCWeight(3))
        ```

    # References
    - X. Lin, C. Zhao, W. Pan. Towards Accurate Binary Convolutional Neural Network.
      NeurIPS 2017, sec. 3.1, eq. 1-6, 10.
    """

    def __init__(self, bases=3, **kwargs):
        if int(bases) != bases or bases < 1:
            raise ValueError(f"`bases` (M) must be an integer >= 1, got {bases!r}.")
        self.bases = int(bases)
        self.precision = self.bases
        super().__init__(**kwargs)

    def binary_bases(self, inputs):
        """The M binary bases B_i, stacked on a new last axis, with STE gradients."""
        # Mean and std are constants in the backward pass (eq. 6: only the STE of each B_i);
        # differentiating std would also give 0/0 = NaN for a constant kernel.
        centred = inputs - tf.stop_gradient(tf.reduce_mean(inputs))
        std = tf.stop_gradient(tf.math.reduce_std(inputs))
        return tf.stack([_sign_ste(centred + float(u) * std) for u in abc_shifts(self.bases)], axis=-1)

    def coefficients(self, inputs):
        """The least-squares alpha_i (a constant in the backward pass), shape (M,)."""
        inputs = tf.convert_to_tensor(inputs)
        bases = tf.stop_gradient(tf.reshape(self.binary_bases(inputs), (-1, self.bases)))
        target = tf.stop_gradient(tf.reshape(inputs, (-1, 1)))
        # Complete orthogonal decomposition (fast=False): the minimum-norm solution also when
        # bases coincide (a constant kernel gives M equal columns; Cholesky gave NaN there).
        return tf.reshape(tf.linalg.lstsq(bases, target, fast=False), (-1,))

    def scale(self, latent):
        """`sum_i |alpha_i|` (a constant, as alpha is)."""
        latent = tf.convert_to_tensor(latent)
        return tf.reduce_sum(tf.abs(self.coefficients(latent)))

    def binary_kernel(self, latent):
        """`sum_i alpha_i B_i / sum_i |alpha_i|`: the effective kernel without its scale."""
        latent = tf.convert_to_tensor(latent)
        alpha = self.coefficients(latent)
        # All-zero alpha (an all-zero kernel) would give 0/0; the floor keeps it finite.
        weights = alpha / tf.maximum(tf.reduce_sum(tf.abs(alpha)), 1e-12)
        return tf.tensordot(self.binary_bases(latent), weights, axes=[[-1], [0]])

    def call(self, inputs):
        alpha = self.coefficients(inputs)
        return super().call(tf.tensordot(self.binary_bases(inputs), alpha, axes=[[-1], [0]]))

    def get_config(self):
        return {**super().get_config(), "bases": self.bases}


# --------------------------------------------------------------------------------------------
# AdaBin: adaptive binary sets
# --------------------------------------------------------------------------------------------


@_register("adabin_weight")
class AdaBinWeight(_BaseQuantizer):
    r"""AdaBin weights: a binary set $\{\beta_w - \alpha_w, \beta_w + \alpha_w\}$ per filter.

    \\[
    \beta_w = \tfrac{1}{n}\sum_i w_i,\quad
    \alpha_w = \tfrac{1}{\sqrt n}\|w - \beta_w\|_2,\quad
    w_b = \alpha_w \operatorname{sign}\!\left(\tfrac{w - \beta_w}{\alpha_w}\right) + \beta_w
    \\]

    (Tu et al. ECCV 2022, sec. 3.2, eq. 6-8), center $\beta_w$ and distance $\alpha_w$ per
    output filter. The gradient flows through $\alpha_w$, $\beta_w$ and, for the sign,
    through the straight-through estimator (the official code's EDE with $k=10, t=0.1$ is
    $1 - \tanh^2(0.1 x) \approx 1$ there). The set is not symmetric around 0, so LCE cannot
    run an AdaBin conv as `LceBconv2d`. For the penalty, `scale(w)` $= \alpha_w$,
    `center(w)` $= \beta_w$ and `binary_kernel(w)` $= \operatorname{sign}((w - \beta_w) /
    \alpha_w)$: the output is `scale * binary_kernel + center` (our definition; AdaBin's paper
    has no such penalty).

    !!! example
        ```python
        layer = lq.layers.QuantConv2D(8, 3, kernel_quantizer="adabin_weight")
        ```

    # References
    - Z. Tu, X. Chen, P. Ren, Y. Wang. AdaBin: Improving Binary Neural Networks with Adaptive
      Binary Sets. ECCV 2022, sec. 3.2, eq. 6-8.
    """

    precision = 1

    def center(self, latent):
        """beta_w per output channel, the mean (differentiable)."""
        latent = tf.convert_to_tensor(latent)
        return tf.reduce_mean(latent, axis=_channel_axes(latent))

    def scale(self, latent):
        """alpha_w per output channel, the root mean square around the center (differentiable)."""
        latent = tf.convert_to_tensor(latent)
        centred = latent - self.center(latent)
        return tf.maximum(tf.sqrt(tf.reduce_mean(tf.square(centred), axis=_channel_axes(latent))), 1e-12)

    def binary_kernel(self, latent):
        """`sign((w - beta_w) / alpha_w)`, the ±1 part of the adaptive set, with the STE."""
        latent = tf.convert_to_tensor(latent)
        return _sign_ste((latent - self.center(latent)) / self.scale(latent))

    def call(self, inputs):
        return super().call(self.scale(inputs) * self.binary_kernel(inputs) + self.center(inputs))


# --------------------------------------------------------------------------------------------
# CycleBNN: cyclic precision
# --------------------------------------------------------------------------------------------


def minmax_quantize(x, bits, axes):
    r"""Uniform `bits`-bit min-max quantization over `axes`, straight-through.

    \\[
    Q_k(x) = \mathrm{round}\!\left(\tfrac{x - m}{s}\right) s + m,\quad
    s = \tfrac{M - m}{2^k - 1}
    \\]

    with $m$, $M$ the min and max over `axes` (constants in the backward pass).
    """
    levels = tf.pow(2.0, bits) - 1.0
    low = tf.stop_gradient(tf.reduce_min(x, axis=axes, keepdims=True))
    high = tf.stop_gradient(tf.reduce_max(x, axis=axes, keepdims=True))
    step = tf.maximum((high - low) / levels, 1e-8)
    return straight_through(lambda v: tf.round((v - low) / step) * step + low, x, _ones)


@_register("cyclic_sign")
class CyclicSign(_BaseQuantizer):
    r"""CycleBNN's binarizer: sign of a k-bit quantized tensor, k set by a cyclic schedule.

    \\[
    x_b = \operatorname{sign}(Q_k(x)),\qquad
    Q_k(x) = \mathrm{round}\!\left(\tfrac{x - m}{s}\right) s + m,\
    s = \tfrac{M - m}{2^k - 1}
    \\]

    with min $m$ and max $M$ per output filter (weights) or over each sample's own tensor
    (activations), and $k$ cycling between two bit widths (`CyclicPrecisionSchedule`).
    `bits <= 0` skips $Q_k$ (plain sign); the schedule sets it at the end of training, which
    leaves the plain 1-bit network to deploy. Backward: straight-through for weights,
    approx-sign ($\max(2 - 2|x|, 0)$) for activations.

    Differences from the papers' code, each a decision of ours: CPT's quantizer (Fu et al.
    ICLR 2021), which CycleBNN reuses, averages the per-sample min/max over the batch in
    training and uses running averages at inference; we take each sample's own min/max, so an
    output never depends on the rest of its batch. CycleBNN divides weights/activations by
    their std before quantizing: min-max quantization is equivariant to a positive scale, so
    that changes no sign and is left out. Its learnable per-channel output scale is absorbed
    by the BatchNormalization after every binary conv.

    Deployment: with `bits > 0` the sign's thresholds are the half-points of a per-sample
    grid; binary-conv outputs lie on an integer lattice, so inputs land exactly on those
    ties, which Keras and the LCE interpreter break differently (float rounding), and
    `deployment_issue()` says so. Convert after training (`bits = 0`).

    # Arguments
    mode: `"weights"` or `"activations"`.
    bits: the initial bit width k (a variable the schedule assigns).

    # Raises
    ValueError: for a mode other than `"weights"` or `"activations"`.

    !!! example
        ```python
        layer = lq.layers.QuantConv2D(8, 3, kernel_quantizer=CyclicSign("weights"),
                                      input_quantizer=CyclicSign("activations"))
        ```

    # References
    - F. Fontana, R. Lanzino, A. Diko, G. L. Foresti, L. Cinque. CycleBNN: Cyclic Precision
      Training in Binary Neural Networks. ECCV 2024 Workshops (arXiv:2410.00050), sec. 3.
    - Y. Fu, H. Guo, M. Li, X. Yang, Y. Ding, V. Chandra, Y. Lin. CPT: Efficient Deep Neural
      Network Training via Cyclic Precision. ICLR 2021, sec. 3.
    """

    precision = 1

    def __init__(self, mode="weights", bits=8.0, **kwargs):
        if mode not in ("weights", "activations"):
            raise ValueError(f"CyclicSign `mode` must be 'weights' or 'activations', got {mode!r}.")
        self.mode = mode
        super().__init__(**kwargs)
        self.bits = tf.Variable(float(bits), trainable=False, dtype=tf.float32, name="bits")

    def deployment_issue(self):
        """Why a converted model would not reproduce this quantizer, or None (bits <= 0)."""
        bits = float(self.bits.numpy())
        if bits <= 0:
            return None
        return (
            f"CyclicSign({self.mode!r}) is at {bits:g} bits, CycleBNN's training state: its sign "
            "thresholds are min-max rounding ties that binary-conv outputs hit exactly, and Keras "
            "and LCE break those ties differently. Convert the trained model (the "
            "CyclicPrecisionSchedule leaves bits = 0), or call "
            "larq_l1inf.callbacks.set_cyclic_bits(model, 0) first."
        )

    def call(self, inputs):
        if self.mode == "weights":
            axes, grad = _channel_axes(inputs), _ones
        else:
            axes, grad = list(range(1, inputs.shape.rank)), approx_sign_gradient
        quantized = tf.where(self.bits > 0, minmax_quantize(inputs, tf.maximum(self.bits, 1.0), axes), inputs)
        return super().call(_sign_ste(quantized, grad))

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "bits": float(self.bits.numpy())}

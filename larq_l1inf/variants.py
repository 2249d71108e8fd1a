"""Binary neural network variants: the quantizers, layers and schedules that set each apart.

A variant is the distinctive part of a published BNN method, implemented from its paper, and a
recipe (`Variant`) that tells a backbone (`larq_l1inf.backbones`) how to build one binary
convolution with it. Weight binarizers are larq quantizers (`precision` set), so a layer's
kernel is a larq `QuantizedVariable` and `L1InfRegularizer` finds `W_b` as
`kernel.quantizer(kernel.latent_variable)`, or as `quantizer.binary_kernel(latent)` for the
quantizers whose output carries a scale (`XnorSign`, `MagnitudeSign`, `DoReFaWeight`,
`LibraPBSign`, `ABCWeight`, `AdaBinWeight`): then `W_b` is the unscaled binary part and alpha
is applied once, by the penalty's `alpha` mode. Every class is a registered Keras object, so a
saved model loads without `custom_objects`.

| name | paper | weights | activations | block |
|---|---|---|---|---|
| `bnn` | Hubara et al. 2016 | `ste_sign` | `ste_sign` | basic |
| `xnor` | Rastegari et al. 2016 | `XnorSign` (alpha per channel) | `ste_sign` | basic |
| `dorefa` | Zhou et al. 2016 | `DoReFaWeight(k)` | `DoReFaActivation(k)` | basic |
| `bireal` | Liu et al. 2018 | `MagnitudeSign` | `approx_sign` | shortcut per conv |
| `reactnet` | Liu et al. 2020 | `MagnitudeSign` (no scale gradient) | `RSign`, `RPReLU` | shortcut per conv |
| `irnet` | Qin et al. 2020 | `LibraPBSign` (EDE) | `EDESign` | basic |
| `abc` | Lin et al. 2017 | `ABCWeight(M)` | `ABCActivation(N)` | basic |
| `adabin` | Tu et al. 2022 | `AdaBinWeight` | `AdaBinActivation`, `Maxout` | basic |
| `cyclebnn` | Fontana et al. 2024 | `CyclicSign` | `CyclicSign`, `GradientQuantizer` | basic |

Schedules are Keras callbacks: `EDESchedule` (IR-Net) and `CyclicPrecisionSchedule`
(CycleBNN); `Variant.callbacks(...)` returns the ones a variant needs.
"""

import logging
import math

import larq as lq
import numpy as np

from larq_l1inf._keras import tf

log = logging.getLogger(__name__)

__all__ = [
    "ABCActivation",
    "ABCWeight",
    "AdaBinActivation",
    "AdaBinWeight",
    "CyclicPrecisionSchedule",
    "CyclicSign",
    "DoReFaActivation",
    "DoReFaWeight",
    "EDESchedule",
    "EDESign",
    "GradientQuantizer",
    "LibraPBSign",
    "MagnitudeSign",
    "Maxout",
    "RPReLU",
    "RSign",
    "VARIANTS",
    "Variant",
    "XnorSign",
    "get_variant",
]

_register = lq.utils.register_keras_custom_object
_BaseQuantizer = lq.quantizers._BaseQuantizer


def _sign(x):
    """sign with sign(0) = +1 (larq's convention, which LCE's LceQuantize implements)."""
    return lq.math.sign(x)


def _reduce_axes(x, per_channel):
    """Axes to average over: all but the last (output-channel) axis, or all of them."""
    return list(range(x.shape.rank - 1)) if per_channel else list(range(x.shape.rank))


def _approx_sign_grad(x):
    """Bi-Real's piecewise-polynomial derivative of sign: 2 - 2|x| on |x| <= 1, else 0."""
    return tf.maximum(2.0 - 2.0 * tf.abs(x), 0.0)


def _ste(forward, x, grad_fn):
    """forward(x) in the forward pass, dy * grad_fn(x) in the backward pass."""

    @tf.custom_gradient
    def _call(x):
        def grad(dy):
            return dy * grad_fn(x)

        return forward(x), grad

    return _call(x)


def _clipped_identity(clip_value):
    if clip_value is None:
        return tf.ones_like
    return lambda x: tf.cast(tf.abs(x) <= clip_value, x.dtype)


# --------------------------------------------------------------------------------------------
# XNOR-Net, Bi-Real, ReActNet: sign with a per-output-channel magnitude
# --------------------------------------------------------------------------------------------


@_register
class XnorSign(lq.quantizers.MagnitudeAwareSign):
    r"""XNOR-Net weight binarization: one scale per output filter, $\alpha \operatorname{sign}(W)$.

    \\[
    W \approx \alpha B,\quad B = \operatorname{sign}(W),\quad
    \alpha = \tfrac{1}{n}\|W\|_{\ell 1}
    \\]

    (Rastegari et al., eq. 4-6), with $\alpha$ per output filter and $n$ its fan-in. The
    gradient follows eq. 7, $\partial C/\partial W_i = \partial C/\partial \tilde W_i\,
    (1/n + \partial \operatorname{sign}/\partial W_i\, \alpha)$: it flows through $\alpha$ as
    well as through the clipped straight-through estimator of sign. Set
    `scale_gradient=False` to stop it at $\alpha$ (larq's `MagnitudeAwareSign`, ReActNet).

    It subclasses larq's `MagnitudeAwareSign`, so `L1InfRegularizer` treats it the same way:
    `W_b` is the sign part and alpha is applied by the penalty's own `alpha` mode (use
    `alpha="channel"` for XNOR's per-filter scale).

    # Arguments
    clip_value: the straight-through estimator passes gradients where `|w| <= clip_value`.
    scale_gradient: let the gradient flow through alpha (eq. 7).

    # References
    - M. Rastegari, V. Ordonez, J. Redmon, A. Farhadi. XNOR-Net: ImageNet Classification Using
      Binary Convolutional Neural Networks. ECCV 2016, eq. 4-7.
    """

    precision = 1

    def __init__(self, clip_value=1.0, scale_gradient=True, **kwargs):
        self.scale_gradient = bool(scale_gradient)
        super().__init__(clip_value=clip_value, **kwargs)

    def scale(self, inputs):
        alpha = tf.reduce_mean(tf.abs(inputs), axis=_reduce_axes(inputs, True))
        return alpha if self.scale_gradient else tf.stop_gradient(alpha)

    def binary_kernel(self, latent):
        """`W_b = sign(W)` without alpha, with the clipped STE (alpha is the penalty's job)."""
        return lq.quantizers.ste_sign(latent, clip_value=self.clip_value)

    def call(self, inputs):
        outputs = self.scale(inputs) * lq.quantizers.ste_sign(inputs, clip_value=self.clip_value)
        return _BaseQuantizer.call(self, outputs)

    def get_config(self):
        return {**super().get_config(), "scale_gradient": self.scale_gradient}


@_register
class MagnitudeSign(XnorSign):
    r"""Bi-Real's magnitude-aware weight sign: $\frac{\|W\|_1}{n} \operatorname{sign}(W)$ per filter.

    Bi-Real Net (Liu et al. 2018, sec. 3.3, eq. 8-9) keeps the magnitude of the real weights
    in the binarized kernel and differentiates through it ("magnitude-aware gradient"):
    `scale_gradient=True` (the default here). ReActNet (Liu et al. 2020) builds its weights
    the same way but treats the scale as a constant: `MagnitudeSign(scale_gradient=False)`.

    # References
    - Z. Liu, B. Wu, W. Luo, X. Yang, W. Liu, K.-T. Cheng. Bi-Real Net: Enhancing the
      Performance of 1-bit CNNs with Improved Representational Capability and Advanced
      Training Algorithm. ECCV 2018, sec. 3.3.
    """


# --------------------------------------------------------------------------------------------
# DoReFa-Net
# --------------------------------------------------------------------------------------------


def _quantize_k(x, k_bit):
    """DoReFa eq. 5: quantize_k(r) = round((2^k - 1) r) / (2^k - 1), straight-through."""
    n = float(2**k_bit - 1)
    return _ste(lambda v: tf.round(v * n) / n, x, tf.ones_like)


def _check_bits(k_bit, name="k_bit"):
    if int(k_bit) != k_bit or k_bit < 1 or k_bit > 16:
        raise ValueError(f"`{name}` must be an integer between 1 and 16, got {k_bit!r}.")
    return int(k_bit)


@_register
class DoReFaWeight(_BaseQuantizer):
    r"""DoReFa-Net k-bit weight quantizer.

    \\[
    k = 1:\ r_o = \operatorname{sign}(r_i)\, \mathbb{E}(|r_i|), \qquad
    k > 1:\ r_o = 2\, \mathrm{quantize}_k\!\left(\frac{\tanh r_i}{2 \max|\tanh r_i|}
        + \tfrac12\right) - 1
    \\]

    (Zhou et al., eq. 7 for one bit, with the mean over the whole layer, and eq. 9), with
    $\mathrm{quantize}_k(r) = \mathrm{round}((2^k - 1) r)/(2^k - 1)$ (eq. 5) and the
    straight-through estimator. The max is treated as a constant in the backward pass.

    For `L1InfRegularizer`, `W_b` is `binary_kernel(w)`: for one bit the unscaled `sign(w)`
    (the scale `E|w|` is alpha, which the penalty's `alpha` mode applies once), for k > 1 the
    quantized levels in [-1, 1], which carry no separate scale.

    # Arguments
    k_bit: weight bits, 1..16.

    # References
    - S. Zhou, Y. Wu, Z. Ni, X. Zhou, H. Wen, Y. Zou. DoReFa-Net: Training Low Bitwidth
      Convolutional Neural Networks with Low Bitwidth Gradients. arXiv:1606.06160, 2016,
      eq. 5, 7, 9.
    """

    def __init__(self, k_bit=1, **kwargs):
        self.k_bit = _check_bits(k_bit)
        self.precision = self.k_bit
        super().__init__(**kwargs)

    def _levels(self, inputs):
        limited = tf.math.tanh(inputs)
        peak = tf.stop_gradient(tf.reduce_max(tf.abs(limited)))
        return 2.0 * _quantize_k(tf.math.divide_no_nan(limited, 2.0 * peak) + 0.5, self.k_bit) - 1.0

    def binary_kernel(self, latent):
        """The quantized part without a scale: `sign(w)` (one bit) or the k-bit levels."""
        if self.k_bit == 1:
            return _ste(_sign, latent, tf.ones_like)
        return self._levels(latent)

    def call(self, inputs):
        if self.k_bit == 1:
            scale = tf.stop_gradient(tf.reduce_mean(tf.abs(inputs)))
            outputs = scale * _ste(_sign, inputs, tf.ones_like)
        else:
            outputs = self._levels(inputs)
        return super().call(outputs)

    def get_config(self):
        return {**super().get_config(), "k_bit": self.k_bit}


@_register
class DoReFaActivation(_BaseQuantizer):
    r"""DoReFa-Net k-bit activation quantizer, $\mathrm{quantize}_k(\mathrm{clip}(r, 0, 1))$.

    (Zhou et al., eq. 11, with the bounded activation clip to [0, 1].) The straight-through
    estimator passes gradients inside [0, 1]. The outputs lie in $\{0, 1/(2^k-1), ..., 1\}$:
    not symmetric around 0, so LCE cannot run a DoReFa conv as a binary `LceBconv2d`.

    # Arguments
    k_bit: activation bits, 1..16.

    # References
    - S. Zhou et al. DoReFa-Net, arXiv:1606.06160, 2016, eq. 11.
    """

    def __init__(self, k_bit=2, **kwargs):
        self.k_bit = _check_bits(k_bit)
        self.precision = self.k_bit
        super().__init__(**kwargs)

    def call(self, inputs):
        clipped = tf.clip_by_value(inputs, 0.0, 1.0)
        return super().call(_quantize_k(clipped, self.k_bit))

    def get_config(self):
        return {**super().get_config(), "k_bit": self.k_bit}


# --------------------------------------------------------------------------------------------
# IR-Net: Libra-PB and the Error Decay Estimator
# --------------------------------------------------------------------------------------------


def _ede(x, t, k):
    """sign forward; EDE backward g'(x) = k t (1 - tanh^2(t x)) (IR-Net eq. 14)."""
    return _ste(_sign, x, lambda v: k * t * (1.0 - tf.square(tf.math.tanh(t * v))))


class _EDEMixin:
    """State of the Error Decay Estimator: t and k, variables a schedule assigns."""

    def _init_ede(self, t, k):
        # Not weights: the schedule's state is restarted from `t`/`k` when a model is loaded.
        self.t = tf.Variable(float(t), trainable=False, dtype=tf.float32, name="ede_t")
        self.k = tf.Variable(float(k), trainable=False, dtype=tf.float32, name="ede_k")

    def set_ede(self, t, k):
        self.t.assign(float(t))
        self.k.assign(float(k))

    def _ede_config(self):
        return {"t": float(self.t.numpy()), "k": float(self.k.numpy())}


@_register
class EDESign(_EDEMixin, _BaseQuantizer):
    r"""IR-Net sign with the Error Decay Estimator (EDE) as its backward pass.

    \\[
    \text{forward: } \operatorname{sign}(x), \qquad
    \text{backward: } g'(x) = k\, t\, (1 - \tanh^2(t x)),\quad
    t = T_{min} 10^{\frac{i}{N} \log_{10}\frac{T_{max}}{T_{min}}},\ k = \max(1/t, 1)
    \\]

    (Qin et al., sec. 3.3, eq. 13-14; $T_{min} = 0.1$, $T_{max} = 10$, $i$ the epoch out of
    $N$). `t` and `k` are variables; `EDESchedule` assigns them each epoch.

    # Arguments
    t, k: the initial EDE parameters (the schedule's value at epoch 0 by default).

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


@_register
class LibraPBSign(_EDEMixin, _BaseQuantizer):
    r"""IR-Net Libra Parameter Binarization: balanced, standardized weights, power-of-two scale.

    \\[
    \hat W_{std} = \frac{W - \mu(W)}{\sigma(W)},\qquad
    Q_w(\hat W) = \operatorname{sign}(\hat W_{std}) \ll s,\quad
    s = \operatorname{round}\!\left(\log_2 \tfrac{\|\hat W_{std}\|_1}{n}\right)
    \\]

    (Qin et al., sec. 3.2, eq. 9-11): the balanced, standardized kernel maximizes the
    information entropy of the binary weights, and the scale $2^s$ is a bit shift. Mean,
    standard deviation and $s$ are taken per output filter, as the official code does.
    The sign's backward pass is the EDE (see `EDESign`), which `EDESchedule` drives; the
    gradient flows through the standardization, not through the rounded scale.

    For `L1InfRegularizer`, `W_b` is `binary_kernel(W)` = `sign(W_std)` with the EDE gradient:
    the balanced binary kernel without its power-of-two scale `2^s`, which plays alpha's role;
    the penalty's `alpha` mode applies alpha once (never `2^s` and alpha together).

    # References
    - H. Qin et al. Forward and Backward Information Retention for Accurate Binary Neural
      Networks. CVPR 2020, sec. 3.2 (Libra-PB), sec. 3.3 (EDE).
    """

    precision = 1

    def __init__(self, t=0.1, k=10.0, **kwargs):
        super().__init__(**kwargs)
        self._init_ede(t, k)

    def standardize(self, inputs):
        axes = _reduce_axes(inputs, True)
        centred = inputs - tf.reduce_mean(inputs, axis=axes)
        std = tf.math.reduce_std(centred, axis=axes)
        return centred / tf.maximum(std, 1e-12)

    def binary_kernel(self, latent):
        """`sign(W_std)` without the `2^s` scale, EDE backward through the standardization."""
        return _ede(self.standardize(latent), self.t, self.k)

    def call(self, inputs):
        standardized = self.standardize(inputs)
        axes = _reduce_axes(inputs, True)
        shift = tf.round(tf.math.log(tf.reduce_mean(tf.abs(standardized), axis=axes)) / math.log(2.0))
        scale = tf.stop_gradient(tf.pow(2.0, shift))
        return super().call(scale * _ede(standardized, self.t, self.k))

    def get_config(self):
        return {**super().get_config(), **self._ede_config()}


def ede_parameters(epoch, epochs, t_min=0.1, t_max=10.0):
    """IR-Net's EDE schedule: `t = T_min 10^(i/N log10(T_max/T_min))`, `k = max(1/t, 1)`."""
    t = t_min * 10.0 ** (epoch / epochs * math.log10(t_max / t_min))
    return t, max(1.0 / t, 1.0)


def _model_objects(model):
    """Every layer and every quantizer attached to a layer, each once."""
    seen, found = set(), []
    for layer in [model, *model.submodules]:
        candidates = [layer]
        for attr in ("kernel_quantizer", "input_quantizer", "depthwise_quantizer", "pointwise_quantizer"):
            candidates.append(getattr(layer, attr, None))
        for obj in candidates:
            if obj is not None and id(obj) not in seen:
                seen.add(id(obj))
                found.append(obj)
    return found


@_register
class EDESchedule(tf.keras.callbacks.Callback):
    """Keras callback: IR-Net's Error Decay Estimator schedule, assigned at every epoch start.

    Sets `t` and `k` of every `EDESign` / `LibraPBSign` in the model to
    `t = t_min 10^(epoch/epochs log10(t_max/t_min))`, `k = max(1/t, 1)` (Qin et al. 2020,
    sec. 3.3). Logs `ede_t` into the epoch logs.

    # Arguments
    epochs: the number of training epochs N of the schedule.
    t_min, t_max: the paper's 0.1 and 10.

    # Raises
    ValueError: for epochs < 1 or t_min/t_max not positive and ordered.
    """

    def __init__(self, epochs, t_min=0.1, t_max=10.0):
        super().__init__()
        if int(epochs) < 1:
            raise ValueError(f"`epochs` must be >= 1, got {epochs!r}.")
        if not 0 < t_min < t_max:
            raise ValueError(f"Need 0 < t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}.")
        self.epochs, self.t_min, self.t_max = int(epochs), float(t_min), float(t_max)
        self.t = None

    def on_train_begin(self, logs=None):
        if not any(isinstance(obj, _EDEMixin) for obj in _model_objects(self.model)):
            log.warning("EDESchedule: the model has no EDESign/LibraPBSign quantizer; it does nothing.")

    def on_epoch_begin(self, epoch, logs=None):
        self.t, k = ede_parameters(epoch, self.epochs, self.t_min, self.t_max)
        for obj in _model_objects(self.model):
            if isinstance(obj, _EDEMixin):
                obj.set_ede(self.t, k)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.t is not None:
            logs["ede_t"] = self.t


# --------------------------------------------------------------------------------------------
# ReActNet: RSign and RPReLU
# --------------------------------------------------------------------------------------------


@_register
class RSign(tf.keras.layers.Layer):
    r"""ReActNet's RSign: a sign with a learnable threshold per channel.

    \\[
    x_i^b = \begin{cases} +1 & x_i \ge \alpha_c \\ -1 & x_i < \alpha_c \end{cases}
    \\]

    (Liu et al. 2020, eq. 3; the paper puts $x_i = \alpha_c$ on the $-1$ side, we follow
    larq/LCE's `sign(0) = +1`, which only differs on a set of measure zero). The backward
    pass is Bi-Real's approx-sign derivative $2 - 2|x - \alpha_c|$ (ReActNet trains with
    it); $\alpha$ gets the negated gradient. The output is already $\pm 1$; the binary conv
    after it keeps `input_quantizer="ste_sign"` so LCE still sees a binary input.

    # References
    - Z. Liu, Z. Shen, M. Savvides, K.-T. Cheng. ReActNet: Towards Precise Binary Neural
      Network with Generalized Activation Functions. ECCV 2020, eq. 3.
    """

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=(input_shape[-1],), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        return _ste(_sign, inputs - self.alpha, _approx_sign_grad)


@_register
class RPReLU(tf.keras.layers.Layer):
    r"""ReActNet's RPReLU: a PReLU with learnable shifts per channel.

    \\[
    f(x_i) = \begin{cases} x_i - \gamma_i + \zeta_i & x_i > \gamma_i \\
        \beta_i (x_i - \gamma_i) + \zeta_i & x_i \le \gamma_i \end{cases}
    \\]

    (Liu et al. 2020, eq. 4), $\beta$ initialized to 0.25, $\gamma$ and $\zeta$ to 0.

    # References
    - Z. Liu et al. ReActNet, ECCV 2020, eq. 4.
    """

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.gamma = self.add_weight(name="gamma", shape=channels, initializer="zeros")
        self.zeta = self.add_weight(name="zeta", shape=channels, initializer="zeros")
        self.beta = self.add_weight(
            name="beta", shape=channels, initializer=tf.keras.initializers.Constant(0.25)
        )
        super().build(input_shape)

    def call(self, inputs):
        shifted = inputs - self.gamma
        return tf.where(shifted > 0, shifted, self.beta * shifted) + self.zeta


# --------------------------------------------------------------------------------------------
# ABC-Net: M weight bases, N activation bases
# --------------------------------------------------------------------------------------------


def abc_shifts(m):
    """ABC-Net's weight-base shifts u_i = -1 + (i - 1) 2 / (M - 1), i = 1..M (0 for M = 1)."""
    if m == 1:
        return np.zeros(1, dtype=np.float32)
    return (-1.0 + np.arange(m) * 2.0 / (m - 1)).astype(np.float32)


@_register
class ABCWeight(_BaseQuantizer):
    r"""ABC-Net's linear combination of M binary weight bases.

    \\[
    W \approx \sum_{i=1}^{M} \alpha_i B_i,\quad
    B_i = \operatorname{sign}(\bar W + u_i \operatorname{std}(W)),\
    \bar W = W - \operatorname{mean}(W),\ u_i = -1 + (i-1)\tfrac{2}{M-1}
    \\]

    with $\alpha$ the least-squares solution of $\min_\alpha \|\mathrm{vec}(W) - B\alpha\|^2$
    (Lin et al. 2017, sec. 3.1, eq. 1-5). Backward (eq. 6):
    $\partial c/\partial W = \sum_i \alpha_i\, \partial c/\partial B_i$ through the
    straight-through estimator; $\alpha$ is a constant in the backward pass.

    The layer computes $\mathrm{conv}(\sum_i \alpha_i B_i, \sum_n \beta_n A_n) =
    \sum_{i,n} \alpha_i \beta_n \mathrm{conv}(B_i, A_n)$ (eq. 10) in one convolution:
    the same numbers as the M x N binary convolutions, by bilinearity.

    How the L1,inf penalty applies: `W_b` is `binary_kernel(W)` =
    $\sum_i \alpha_i B_i / \sum_i |\alpha_i|$, the effective kernel the layer applies with its
    scale divided out (entries in [-1, 1]; for M = 1 exactly $B_1 = \operatorname{sign}$). Its
    $\|\cdot\|_{1,\infty}$ is the direction of the operator the noise bound multiplies, and by
    the triangle inequality at most the $|\alpha_i|$-weighted mean of the bases'
    $\|B_i\|_{1,\infty}$. The scale is alpha, applied once by the penalty's `alpha` mode
    (decision of this project; the papers do not combine ABC-Net with the penalty).

    # Arguments
    bases: M, the number of binary weight bases (precision is set to M).

    # References
    - X. Lin, C. Zhao, W. Pan. Towards Accurate Binary Convolutional Neural Network.
      NeurIPS 2017, sec. 3.1-3.3, eq. 1-10.
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
        return tf.stack(
            [_ste(_sign, centred + float(u) * std, tf.ones_like) for u in abc_shifts(self.bases)],
            axis=-1,
        )

    def _bases_and_alpha(self, inputs):
        bases = self.binary_bases(inputs)
        matrix = tf.stop_gradient(tf.reshape(bases, (-1, self.bases)))
        target = tf.stop_gradient(tf.reshape(inputs, (-1, 1)))
        # Complete orthogonal decomposition (fast=False): the minimum-norm solution also when
        # bases coincide (a constant kernel gives M equal columns; Cholesky gave NaN there).
        alpha = tf.stop_gradient(tf.linalg.lstsq(matrix, target, fast=False))
        return bases, tf.reshape(alpha, (-1,))

    def binary_kernel(self, latent):
        """`sum_i alpha_i B_i / sum_i |alpha_i|`: the effective kernel without its scale."""
        bases, alpha = self._bases_and_alpha(latent)
        # All-zero alpha (an all-zero kernel) would give 0/0; the floor keeps it finite.
        weights = alpha / tf.maximum(tf.reduce_sum(tf.abs(alpha)), 1e-12)
        return tf.tensordot(bases, weights, axes=[[-1], [0]])

    def call(self, inputs):
        bases, alpha = self._bases_and_alpha(inputs)
        return super().call(tf.tensordot(bases, alpha, axes=[[-1], [0]]))

    def get_config(self):
        return {**super().get_config(), "bases": self.bases}


@_register
class ABCActivation(tf.keras.layers.Layer):
    r"""ABC-Net's N binary activation bases with learnable shifts and scales.

    \\[
    A \approx \sum_{n=1}^{N} \beta_n H_{v_n}(R),\quad
    H_v(R) = 2\,\mathbb{1}_{h_v(R) \ge 0.5} - 1,\quad h_v(x) = \mathrm{clip}(x + v, 0, 1)
    \\]

    (Lin et al. 2017, sec. 3.2, eq. 7-9). $v_n$ and $\beta_n$ are trained; the backward pass
    is the straight-through estimator $\partial H_v/\partial R = \mathbb{1}_{-v \le R \le 1-v}$
    (eq. 9). Initialization (ours; the paper does not fix it): thresholds $0.5 - v_n$ spread
    evenly over [-0.5, 0.5] (0 for N = 1, i.e. plain sign) and $\beta_n = 1/N$.
    With N > 1 the output has up to N + 1 levels: LCE cannot run the conv as `LceBconv2d`.

    # Arguments
    bases: N, the number of binary activation bases.

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
        self.scale = self.add_weight(
            name="scale", shape=(n,), initializer=tf.keras.initializers.Constant(1.0 / n)
        )
        super().build(input_shape)

    def call(self, inputs):
        parts = []
        for i in range(self.bases):
            shifted = inputs + self.shift[i]
            h = _ste(
                lambda v: 2.0 * tf.cast(tf.clip_by_value(v, 0.0, 1.0) >= 0.5, v.dtype) - 1.0,
                shifted,
                lambda v: tf.cast((v >= 0.0) & (v <= 1.0), v.dtype),
            )
            parts.append(self.scale[i] * h)
        return tf.add_n(parts)

    def get_config(self):
        return {**super().get_config(), "bases": self.bases}


# --------------------------------------------------------------------------------------------
# AdaBin: adaptive binary sets, Maxout
# --------------------------------------------------------------------------------------------


@_register
class AdaBinWeight(_BaseQuantizer):
    r"""AdaBin weights: a binary set $\{\beta_w - \alpha_w, \beta_w + \alpha_w\}$ per filter.

    \\[
    \beta_w = \tfrac{1}{n}\sum_i w_i,\quad
    \alpha_w = \tfrac{1}{\sqrt n}\|w - \beta_w\|_2,\quad
    w_b = \alpha_w \operatorname{sign}\!\left(\tfrac{w - \beta_w}{\alpha_w}\right) + \beta_w
    \\]

    (Tu et al. 2022, sec. 3.2, eq. 6-8), center $\beta_w$ and distance $\alpha_w$ per output
    filter. The gradient flows through $\alpha_w$, $\beta_w$ and, for the sign, through the
    straight-through estimator (the official code's EDE with $k=10, t=0.1$ is
    $1 - \tanh^2(0.1 x) \approx 1$ there).

    The set is not symmetric around 0 ($\beta_w \ne 0$), so LCE cannot run an AdaBin conv as
    `LceBconv2d`. For `L1InfRegularizer`, `W_b` is `binary_kernel(w)` =
    $\operatorname{sign}((w - \beta_w)/\alpha_w)$ with the STE: the binary part without the
    set's distance and center, which play alpha's role (the penalty's `alpha` mode applies
    alpha once). Decision of this project; AdaBin's paper has no such penalty.

    # References
    - Z. Tu, X. Chen, P. Ren, Y. Wang. AdaBin: Improving Binary Neural Networks with Adaptive
      Binary Sets. ECCV 2022, sec. 3.2.
    """

    precision = 1

    def _set(self, inputs):
        axes = _reduce_axes(inputs, True)
        center = tf.reduce_mean(inputs, axis=axes)
        distance = tf.sqrt(tf.reduce_mean(tf.square(inputs - center), axis=axes))
        return center, tf.maximum(distance, 1e-12)

    def binary_kernel(self, latent):
        """`sign((w - beta_w) / alpha_w)`, the +-1 part of the adaptive set, with the STE."""
        center, distance = self._set(latent)
        return _ste(_sign, (latent - center) / distance, tf.ones_like)

    def call(self, inputs):
        center, distance = self._set(inputs)
        outputs = distance * _ste(_sign, (inputs - center) / distance, tf.ones_like) + center
        return super().call(outputs)


@_register
class AdaBinActivation(tf.keras.layers.Layer):
    r"""AdaBin activations: a learnable binary set $\{\beta_a - \alpha_a, \beta_a + \alpha_a\}$.

    \\[
    a_b = \alpha_a\, g\!\left(\frac{a - \beta_a}{\alpha_a}\right) + \beta_a
    \\]

    (Tu et al. 2022, sec. 3.3, eq. 9-11) with $g$ the sign, Bi-Real's approx-sign gradient
    in the backward pass, and one learnable center $\beta_a$ (init 0) and distance
    $\alpha_a$ (init 1) per layer.

    # References
    - Z. Tu et al. AdaBin, ECCV 2022, sec. 3.3.
    """

    def build(self, input_shape):
        self.distance = self.add_weight(name="alpha_a", shape=(), initializer="ones")
        self.center = self.add_weight(name="beta_a", shape=(), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        normalized = (inputs - self.center) / self.distance
        return self.distance * _ste(_sign, normalized, _approx_sign_grad) + self.center


@_register
class Maxout(tf.keras.layers.Layer):
    r"""AdaBin's Maxout nonlinearity, two learnable slopes per channel.

    \\[
    f(x) = \gamma^+ \operatorname{ReLU}(x) - \gamma^- \operatorname{ReLU}(-x)
    \\]

    (Tu et al. 2022, sec. 3.4, eq. 12), $\gamma^+$ initialized to 1 and $\gamma^-$ to 0.25.

    # References
    - Z. Tu et al. AdaBin, ECCV 2022, sec. 3.4.
    """

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.pos_scale = self.add_weight(name="pos_scale", shape=channels, initializer="ones")
        self.neg_scale = self.add_weight(
            name="neg_scale", shape=channels, initializer=tf.keras.initializers.Constant(0.25)
        )
        super().build(input_shape)

    def call(self, inputs):
        return self.pos_scale * tf.nn.relu(inputs) - self.neg_scale * tf.nn.relu(-inputs)


# --------------------------------------------------------------------------------------------
# CycleBNN: cyclic precision
# --------------------------------------------------------------------------------------------


def minmax_quantize(x, bits, axes):
    """Uniform `bits`-bit min-max quantization over `axes` (zero point = min), straight-through."""
    levels = tf.pow(2.0, bits) - 1.0
    low = tf.stop_gradient(tf.reduce_min(x, axis=axes, keepdims=True))
    high = tf.stop_gradient(tf.reduce_max(x, axis=axes, keepdims=True))
    step = tf.maximum((high - low) / levels, 1e-8)
    return _ste(lambda v: tf.round((v - low) / step) * step + low, x, tf.ones_like)


def cyclic_bits(step, period, low, high):
    """CycleBNN's cosine cycle: `rint(low + (high - low)/2 (1 + cos(pi (step mod T)/T + pi)))`."""
    phase = (step % period) / period
    return float(np.rint(low + 0.5 * (high - low) * (1.0 + math.cos(math.pi * phase + math.pi))))


@_register
class CyclicSign(_BaseQuantizer):
    r"""CycleBNN's binarizer: sign of a k-bit quantized tensor, k set by a cyclic schedule.

    \\[
    x_b = \operatorname{sign}(Q_k(x)),\qquad
    Q_k(x) = \mathrm{round}\!\left(\tfrac{x - m}{s}\right) s + m,\
    s = \tfrac{M - m}{2^k - 1}
    \\]

    with min $m$ and max $M$ per output filter (weights) or per sample (activations), and
    $k$ cycling between two bit widths (`CyclicPrecisionSchedule`). `bits <= 0` skips $Q_k$
    (plain sign); `CyclicPrecisionSchedule` sets that at the end of training, which leaves the
    plain 1-bit network to deploy. Backward: straight-through for weights, approx-sign
    ($\max(2 - 2|x|, 0)$) for activations, as the official code does. The official code also
    rescales weights/activations by their std before quantizing (it changes no sign) and
    multiplies the conv output by a learnable per-channel scale, which the BatchNormalization
    that follows every binary conv here absorbs; both are left out.

    # Arguments
    mode: `"weights"` or `"activations"`.
    bits: the initial bit width k (a variable the schedule assigns).

    # References
    - F. Fontana, R. Lanzino, A. Diko, G. L. Foresti, L. Cinque. CycleBNN: Cyclic Precision
      Training in Binary Neural Networks. ECCV 2024 Workshops (arXiv:2410.00050), sec. 3.
    - Y. Fu et al. CPT: Efficient Deep Neural Network Training via Cyclic Precision. ICLR 2021.
    """

    precision = 1

    def __init__(self, mode="weights", bits=8.0, **kwargs):
        if mode not in ("weights", "activations"):
            raise ValueError(f"CyclicSign `mode` must be 'weights' or 'activations', got {mode!r}.")
        self.mode = mode
        super().__init__(**kwargs)
        self.bits = tf.Variable(float(bits), trainable=False, dtype=tf.float32, name="bits")

    def call(self, inputs):
        if self.mode == "weights":
            axes = _reduce_axes(inputs, True)
            grad = tf.ones_like
        else:
            axes = list(range(1, inputs.shape.rank))
            grad = _approx_sign_grad
        bits = tf.maximum(self.bits, 1.0)
        quantized = tf.where(self.bits > 0, minmax_quantize(inputs, bits, axes), inputs)
        return super().call(_ste(_sign, quantized, grad))

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "bits": float(self.bits.numpy())}


@_register
class GradientQuantizer(tf.keras.layers.Layer):
    r"""Identity forward; quantizes the gradient to `bits` bits in the backward pass (CPT).

    The backward pass rounds the incoming gradient stochastically to $2^k$ levels between its
    per-sample min and max, as cyclic precision training (Fu et al. 2021) and CycleBNN do for
    the conv output's gradient; `bits <= 0` passes it unchanged.

    # References
    - F. Fontana et al. CycleBNN, arXiv:2410.00050, 2024, sec. 3.
    """

    def __init__(self, bits=8.0, **kwargs):
        super().__init__(**kwargs)
        self.bits = tf.Variable(float(bits), trainable=False, dtype=tf.float32, name="grad_bits")

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
                noise = tf.random.uniform(tf.shape(dy), -0.5, 0.5)
                rounded = tf.round((dy - low) / step + noise)
                quantized = tf.clip_by_value(rounded, 0.0, levels) * step + low
                return tf.where(bits > 0, quantized, dy)

            return tf.identity(x), grad

        return _identity(inputs)

    @property
    def non_trainable_weights(self):
        return []

    def get_config(self):
        return {**super().get_config(), "bits": float(self.bits.numpy())}


@_register
class CyclicPrecisionSchedule(tf.keras.callbacks.Callback):
    """Keras callback: CycleBNN's cyclic precision, assigned before every training batch.

    At step i, with period `T = total_steps / cycles`, the forward bit width is
    `rint(b_min + (b_max - b_min)/2 (1 + cos(pi (i mod T)/T + pi)))` (rising from `b_min` to
    `b_max` in each cycle) and the gradient bit width likewise (CycleBNN / CPT). It assigns
    every `CyclicSign` and `GradientQuantizer` in the model; at the end of training it sets
    `final_bits` (default 0: plain sign, the deployed 1-bit network).

    # Arguments
    total_steps: training steps the cycles are spread over.
    cycles: number of cosine cycles (the paper's `num_cyclic_period`).
    bits: (b_min, b_max) for weights and activations; grad_bits likewise for gradients.
    final_bits: bit width left in the quantizers after training (0 = plain sign).

    # Raises
    ValueError: for total_steps or cycles < 1, or bit ranges that are not 1 <= min <= max.
    """

    def __init__(self, total_steps, cycles=8, bits=(2, 8), grad_bits=(6, 8), final_bits=0):
        super().__init__()
        if int(total_steps) < 1 or int(cycles) < 1:
            raise ValueError(f"Need total_steps >= 1 and cycles >= 1, got {total_steps!r}, {cycles!r}.")
        for name, pair in (("bits", bits), ("grad_bits", grad_bits)):
            if len(pair) != 2 or not 1 <= pair[0] <= pair[1]:
                raise ValueError(f"`{name}` must be (min, max) with 1 <= min <= max, got {pair!r}.")
        self.total_steps, self.cycles = int(total_steps), int(cycles)
        self.bits, self.grad_bits, self.final_bits = tuple(bits), tuple(grad_bits), final_bits
        self.step = 0

    @property
    def period(self):
        return max(self.total_steps / self.cycles, 1.0)

    def _assign(self, bits, grad_bits):
        for obj in _model_objects(self.model):
            if isinstance(obj, CyclicSign):
                obj.bits.assign(float(bits))
            elif isinstance(obj, GradientQuantizer):
                obj.bits.assign(float(grad_bits))

    def on_train_batch_begin(self, batch, logs=None):
        bits = cyclic_bits(self.step, self.period, *self.bits)
        grad_bits = cyclic_bits(self.step, self.period, *self.grad_bits)
        self._assign(bits, grad_bits)
        self.step += 1

    def on_train_end(self, logs=None):
        self._assign(self.final_bits, 0)


# --------------------------------------------------------------------------------------------
# Variant recipes
# --------------------------------------------------------------------------------------------


class Variant:
    """How one BNN method builds a binary convolution, for `larq_l1inf.backbones`.

    A backbone calls `binary_conv` for every binary convolution, puts BatchNormalization after
    it and calls `activation` where the block has its nonlinearity. `per_conv_shortcut`
    asks for a real-valued shortcut around every binary conv (Bi-Real, ReActNet) instead of one
    per basic block.

    # Arguments
    name: the variant's name.
    kernel_quantizer, input_quantizer: zero-argument factories of the conv's quantizers.
    pre: zero-argument factory of a layer applied before the conv (RSign, ABCActivation...).
    post: zero-argument factory of a layer applied to the conv output (GradientQuantizer).
    activation: zero-argument factory of the block nonlinearity (RPReLU, Maxout), or None.
    per_conv_shortcut: real-valued shortcut around every binary conv.
    kernel_constraint: the conv's kernel constraint (e.g. "weight_clip").
    lce_binary: whether LCE can run this conv as `LceBconv2d`; `lce_note` says why not.
    """

    def __init__(
        self,
        name,
        kernel_quantizer,
        input_quantizer,
        pre=None,
        post=None,
        activation=None,
        per_conv_shortcut=False,
        kernel_constraint=None,
        lce_binary=True,
        lce_note="",
        schedules=(),
    ):
        self.name = name
        self._kernel_quantizer = kernel_quantizer
        self._input_quantizer = input_quantizer
        self._pre, self._post, self._activation = pre, post, activation
        self.per_conv_shortcut = per_conv_shortcut
        self.kernel_constraint = kernel_constraint
        self.lce_binary = lce_binary
        self.lce_note = lce_note
        self.schedules = tuple(schedules)

    def __repr__(self):
        return f"Variant({self.name!r})"

    def binary_conv(self, x, filters, kernel_size, strides=1, kernel_regularizer=None, name=None):
        """Build one binary conv (1-D or 2-D from `x`'s rank) on `x`; no BatchNormalization."""
        rank = x.shape.rank - 2
        if rank not in (1, 2):
            raise ValueError(f"binary_conv needs a 1-D or 2-D feature map, got shape {x.shape}.")
        if self._pre is not None:
            x = self._pre()(x)
        conv = lq.layers.QuantConv2D if rank == 2 else lq.layers.QuantConv1D
        kwargs = {}
        if rank == 2:
            # LCE pads binary convs with +1; only valid when the input quantizer is a sign.
            kwargs["pad_values"] = 1.0 if self.lce_binary else 0.0
        x = conv(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            input_quantizer=self._input_quantizer() if self._input_quantizer else None,
            kernel_quantizer=self._kernel_quantizer(),
            kernel_constraint=self.kernel_constraint,
            kernel_regularizer=kernel_regularizer,
            kernel_initializer="glorot_normal",
            name=name,
            **kwargs,
        )(x)
        if self._post is not None:
            x = self._post()(x)
        return x

    def activation(self, x):
        """The block nonlinearity after BatchNormalization (identity for most variants)."""
        return self._activation()(x) if self._activation is not None else x

    def callbacks(self, epochs=None, steps_per_epoch=None):
        """The schedules this variant trains with (`EDESchedule`, `CyclicPrecisionSchedule`).

        # Raises
        ValueError: when the variant has a schedule and `epochs` (and for CycleBNN
            `steps_per_epoch`) are not given.
        """
        found = []
        for schedule in self.schedules:
            if schedule == "ede":
                if not epochs:
                    raise ValueError(f"Variant {self.name!r} needs `epochs` for its EDE schedule.")
                found.append(EDESchedule(epochs))
            elif schedule == "cyclic":
                if not epochs or not steps_per_epoch:
                    raise ValueError(
                        f"Variant {self.name!r} needs `epochs` and `steps_per_epoch` for its "
                        "cyclic precision schedule."
                    )
                found.append(CyclicPrecisionSchedule(total_steps=epochs * steps_per_epoch))
        return found


_SYMMETRIC = "binary weights (+-1 or +-scale per channel) and sign activations"


def _bnn(**_):
    return Variant(
        "bnn", lambda: lq.quantizers.SteSign(), lambda: lq.quantizers.SteSign(),
        kernel_constraint="weight_clip", lce_note=_SYMMETRIC,
    )


def _xnor(**_):
    return Variant(
        "xnor", lambda: XnorSign(), lambda: lq.quantizers.SteSign(),
        kernel_constraint="weight_clip", lce_note=_SYMMETRIC,
    )


def _dorefa(w_bits=1, a_bits=2, **_):
    return Variant(
        "dorefa",
        lambda: DoReFaWeight(w_bits),
        lambda: DoReFaActivation(a_bits),
        lce_binary=False,
        lce_note=(
            f"activations quantize to {a_bits}-bit levels in [0, 1] (not a +-1 sign), so the "
            "conv stays a float Conv2D"
        ),
    )


def _bireal(**_):
    return Variant(
        "bireal", lambda: MagnitudeSign(), lambda: lq.quantizers.ApproxSign(),
        per_conv_shortcut=True, kernel_constraint="weight_clip", lce_note=_SYMMETRIC,
    )


def _reactnet(**_):
    return Variant(
        "reactnet",
        lambda: MagnitudeSign(scale_gradient=False),
        lambda: lq.quantizers.SteSign(),
        pre=RSign,
        activation=RPReLU,
        per_conv_shortcut=True,
        kernel_constraint="weight_clip",
        lce_note=_SYMMETRIC + " (RSign's threshold is a float subtraction before the conv)",
    )


def _irnet(**_):
    return Variant(
        "irnet", LibraPBSign, EDESign, schedules=("ede",),
        lce_note=_SYMMETRIC + " (power-of-two scale per channel)",
    )


def _abc(weight_bases=3, activation_bases=3, **_):
    binary = weight_bases == 1 and activation_bases == 1
    return Variant(
        "abc",
        lambda: ABCWeight(weight_bases),
        lq.quantizers.SteSign if binary else None,
        pre=(lambda: ABCActivation(activation_bases)) if not binary else None,
        lce_binary=binary,
        lce_note=(
            _SYMMETRIC if binary else
            f"{weight_bases} weight bases x {activation_bases} activation bases give multi-level "
            "weights and activations in one conv; LCE has no multi-base binary conv, so it stays float"
        ),
    )


def _adabin(**_):
    return Variant(
        "adabin",
        AdaBinWeight,
        None,
        pre=AdaBinActivation,
        activation=Maxout,
        lce_binary=False,
        lce_note=(
            "the adaptive binary sets {b - a, b + a} are not symmetric around 0 (learned center), "
            "which LceBconv2d (+-1 x scale only) cannot represent, so the conv stays float"
        ),
    )


def _cyclebnn(**_):
    return Variant(
        "cyclebnn",
        lambda: CyclicSign("weights"),
        lambda: CyclicSign("activations"),
        post=GradientQuantizer,
        schedules=("cyclic",),
        lce_note=_SYMMETRIC + " (after training the schedule leaves bits = 0, plain sign)",
    )


#: Variant name -> factory taking the variant's options (e.g. `dorefa`: w_bits, a_bits).
VARIANTS = {
    "bnn": _bnn,
    "xnor": _xnor,
    "dorefa": _dorefa,
    "bireal": _bireal,
    "reactnet": _reactnet,
    "irnet": _irnet,
    "abc": _abc,
    "adabin": _adabin,
    "cyclebnn": _cyclebnn,
}


def get_variant(identifier, **options):
    """A `Variant` from its name (see `VARIANTS`) or the instance itself.

    # Arguments
    identifier: a name such as `"irnet"` or a `Variant`.
    options: the variant's options, e.g. `get_variant("dorefa", a_bits=1)`,
        `get_variant("abc", weight_bases=5, activation_bases=1)`.

    # Raises
    ValueError: for an unknown name.
    """
    if isinstance(identifier, Variant):
        return identifier
    key = str(identifier).lower().replace("-", "").replace("_", "")
    aliases = {"xnornet": "xnor", "birealnet": "bireal", "react": "reactnet", "ir": "irnet",
               "abcnet": "abc", "dorefanet": "dorefa", "cycle": "cyclebnn"}
    key = aliases.get(key, key)
    if key not in VARIANTS:
        raise ValueError(f"Unknown BNN variant {identifier!r}; choose one of {sorted(VARIANTS)}.")
    return VARIANTS[key](**options)

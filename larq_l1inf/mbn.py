r"""Multi-bit binary layers (MBN): M weight bases x N activation bases, learned scales.

\\[
\mathrm{Conv}(W, A) \approx \sum_{m=1}^{M}\sum_{n=1}^{N} \alpha_m \beta_n\,
\mathrm{Conv}\big(\operatorname{sign}(W_m), \operatorname{sign}(A_n)\big)
\\]

(Frickenstein et al., eq. 2, after ABC-Net, Lin et al. 2017), computed literally as M x N
convolutions of a sign input with a +-1 kernel, so that Larq Compute Engine turns each of them
into one `LceBconv2d` (2-D layers; `tests/test_mbn.py` counts them). One latent kernel W per
layer gives the M weight bases $W_m = W + u_m \operatorname{std}(W)$ with ABC-Net's shifts
$u_m = -1 + 2(m-1)/(M-1)$ ($u = 0$ for M = 1; std a constant in the backward pass), the N
activation bases are $A_n = x + v_n$ with learned shifts $v_n$; $\alpha_m$ and $\beta_n$ are
learned scalars (eq. 3: the gradient reaches W through every base's straight-through
estimator, weighted by $\alpha_m$). With M = N = 1 and the initial scales the layer is exactly a
larq binary layer (`ste_sign` input and kernel, `pad_values=1`), output and gradient.

The L1,inf penalty (`kernel_regularizer=L1InfRegularizer(...)`) acts on the layer's effective
binary operator: the term is $\|\sum_m \alpha_m W_b^m\|_{1,\infty}$ (divided by the fan-in
when the regularizer normalizes), the norm of the linear map the noise bound of Zheng et al.
(Thm. 4.2) multiplies, which is at most $\sum_m |\alpha_m| \|W_b^m\|_{1,\infty}$ (triangle
inequality) and can be smaller where bases disagree. The learned $\alpha_m$ are its scale, so
the regularizer's `alpha` mode is not applied again. The layer adds this term as its own loss.

!!! example
    ```python
    import larq_l1inf  # selects Keras 2 first
    import tensorflow as tf
    from larq_l1inf import L1InfRegularizer
    from larq_l1inf.mbn import MBNConv2D

    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 3)),
        tf.keras.layers.Conv2D(8, 3, padding="same"),
        MBNConv2D(8, 3, weight_bases=3, activation_bases=1,
                  kernel_regularizer=L1InfRegularizer(5e-3)),
        tf.keras.layers.BatchNormalization(),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(10),
    ])
    ```

# References
- L. Frickenstein, S. B. Sampath, P. Mori, M.-R. Vemparala, N. Fasfous, A. Frickenstein,
  C. Unger, C. Passerone, W. Stechele. Adversarial Robustness of Multi-bit Convolutional
  Neural Networks. IntelliSys 2023 (Springer LNNS, 2024), sec. 3.1-3.2, eq. 2-3.
- X. Lin, C. Zhao, W. Pan. Towards Accurate Binary Convolutional Neural Network. NeurIPS 2017,
  sec. 3.1-3.2.
"""

import logging

import larq as lq
import numpy as np

from larq_l1inf._keras import tf
from larq_l1inf import ibp
from larq_l1inf.ibp import Interval, register_interval_rule
from larq_l1inf.regularizers import KernelPenalty, kernel_rows
from larq_l1inf.variants import Variant

log = logging.getLogger(__name__)

__all__ = ["CombinedBases", "MBNConv1D", "MBNConv2D", "MBNDense", "MultiBitLayer", "mbn_variant",
           "weight_shifts"]

_register = lq.utils.register_keras_custom_object


def weight_shifts(m):
    """ABC-Net's base shifts $u_m = -1 + 2(m-1)/(M-1)$, m = 1..M (0 for M = 1)."""
    if m == 1:
        return np.zeros(1, np.float32)
    return np.linspace(-1.0, 1.0, m).astype(np.float32)


def _check_bases(value, name):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    return int(value)


class MultiBitLayer(tf.keras.layers.Layer):
    """Base of the MBN layers: latent kernel, M weight bases, N activation bases, scales, penalty.

    Subclasses set `rank` (0 for dense) and implement `base_op(a, kernel, pad_value)`: one
    base-pair product of an (already binarized) input with a kernel, padding with `pad_value`.
    """

    rank = None

    def __init__(self, filters, kernel_size=None, strides=1, padding="same", weight_bases=3,
                 activation_bases=1, pad_values=1.0, kernel_initializer="glorot_normal",
                 kernel_constraint="weight_clip", kernel_regularizer=None, clip_value=1.0,
                 **kwargs):
        super().__init__(**kwargs)
        if int(filters) != filters or filters < 1:
            raise ValueError(f"`filters`/`units` must be a positive integer, got {filters!r}.")
        self.filters = int(filters)
        self.weight_bases = _check_bases(weight_bases, "weight_bases")
        self.activation_bases = _check_bases(activation_bases, "activation_bases")
        if self.rank:
            if kernel_size is None:
                raise ValueError("`kernel_size` is required for a convolution.")
            ks = (kernel_size,) * self.rank if np.isscalar(kernel_size) else tuple(kernel_size)
            st = (strides,) * self.rank if np.isscalar(strides) else tuple(strides)
            self.kernel_size = tuple(int(k) for k in ks)
            self.strides = tuple(int(s) for s in st)
            if padding not in ("same", "valid"):
                raise ValueError(f"`padding` must be 'same' or 'valid', got {padding!r}.")
        self.padding = padding
        self.pad_values = float(pad_values)
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.kernel_constraint = tf.keras.constraints.get(kernel_constraint)
        # Not `kernel_regularizer`: the layer computes its term itself (`penalty_term`) and
        # hands the regularizer to `larq_l1inf.kernels` through `kernel_entries`.
        self.bases_regularizer = tf.keras.regularizers.get(kernel_regularizer)
        reg = self.bases_regularizer
        if reg is not None and not isinstance(reg, KernelPenalty):
            raise ValueError(
                f"{type(self).__name__}: `kernel_regularizer` must be a larq_l1inf KernelPenalty "
                f"(e.g. L1InfRegularizer), got {self.bases_regularizer!r}; it acts on the "
                "combined binary kernel sum_m alpha_m sign(W_m)."
            )
        if getattr(self.bases_regularizer, "reduction", None) == "product":
            raise ValueError(
                f"{type(self).__name__}: reduction='product' couples all layers and is not "
                "supported inside a multi-bit layer; use reduction='sum' (default) or 'log'."
            )
        self.clip_value = clip_value
        self.input_spec = tf.keras.layers.InputSpec(min_ndim=2 if not self.rank else self.rank + 2)

    def build(self, input_shape):
        c_in = int(input_shape[-1])
        shape = (*(self.kernel_size if self.rank else ()), c_in, self.filters)
        # A plain variable: the bases are computed in call (a larq quantizer yields one base).
        self.kernel = self.add_weight("kernel", shape=shape, initializer=self.kernel_initializer,
                                      constraint=self.kernel_constraint)
        m, n = self.weight_bases, self.activation_bases
        # Initial scales 1/M, 1/N (1 for M = N = 1: the plain binary layer); thresholds -v_n
        # spread over [-1, 1] for N > 1 (decision: the papers do not give an initialization).
        self.weight_scale = self.add_weight("weight_scale", shape=(m,),
                                            initializer=tf.keras.initializers.Constant(1.0 / m))
        self.activation_scale = self.add_weight("activation_scale", shape=(n,),
                                                initializer=tf.keras.initializers.Constant(1.0 / n))
        shifts = np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
        self.activation_shift = self.add_weight("activation_shift", shape=(n,),
                                                initializer=tf.keras.initializers.Constant(shifts))
        if self.bases_regularizer is not None:
            self.add_loss(self.penalty)
        super().build(input_shape)

    # ---- bases --------------------------------------------------------------------------

    def weight_bases_tensors(self, latent=None):
        """The M binary kernels $\\operatorname{sign}(W + u_m \\operatorname{std} W)$ with STE."""
        w = tf.convert_to_tensor(self.kernel if latent is None else latent)
        if self.weight_bases == 1:
            return [lq.quantizers.ste_sign(w, clip_value=self.clip_value)]
        std = tf.stop_gradient(tf.math.reduce_std(w))  # eq. 6 of ABC-Net: a constant
        return [lq.quantizers.ste_sign(w + float(u) * std, clip_value=self.clip_value)
                for u in weight_shifts(self.weight_bases)]

    def combined_kernel(self, latent=None):
        """$\\sum_m \\alpha_m W_b^m$: the effective binary operator of the layer (of its own
        kernel, or of `latent` weights of the kernel's shape)."""
        bases = self.weight_bases_tensors(latent)
        return tf.add_n([self.weight_scale[m] * w for m, w in enumerate(bases)])

    def kernel_entries(self):
        """The `larq_l1inf.kernels.Kernel` of this layer (the `kernels` hook): the latent
        kernel as a larq `QuantizedVariable` whose quantizer is `CombinedBases(self)`, so
        `kernels.binary_kernel` and `kernels.scaling_factor` see the operator the layer
        computes with, and this layer's penalty."""
        from larq_l1inf.kernels import Kernel

        if not self.built:
            return []
        # Built on demand: kept as attributes, Keras would track them (and save them).
        quantizer = CombinedBases(self)
        weight = lq.quantized_variable.QuantizedVariable.from_variable(self.kernel, quantizer)
        return [Kernel(self, weight, quantizer, self.bases_regularizer, False)]

    def penalty_term(self, regularizer=None):
        """The layer's term $t = \\|\\sum_m \\alpha_m W_b^m\\|_{1,\\infty}$ (the regularizer's
        `layer_term` of the combined kernel, alpha = 1), divided by the fan-in if the
        regularizer normalizes; before delta and the reduction.

        # Arguments
        regularizer: a `KernelPenalty`; None for the layer's own.
        """
        reg = self.bases_regularizer if regularizer is None else regularizer
        if reg is None:
            raise ValueError(f"{self.name}: the layer has no kernel_regularizer to evaluate.")
        bases = self.weight_bases_tensors()
        if not reg.quantizer_gradient:
            bases = [tf.stop_gradient(b) for b in bases]
        alpha = self.weight_scale if reg.alpha_gradient else tf.stop_gradient(self.weight_scale)
        combined = tf.add_n([alpha[m] * b for m, b in enumerate(bases)])
        # The combined kernel's norm, not a per-base sum: it is the operator norm the bound
        # multiplies, and alpha_m is its scale, so the regularizer's alpha mode is not applied.
        term = reg.layer_term(tf.cast(combined, tf.float32), tf.ones(()), False)
        if reg.normalize:
            term = term / float(kernel_rows(combined).shape[1])
        return term

    def penalty(self):
        """This layer's loss: `warmup_factor * delta * t` (or `delta * log t`), with `t` from
        `penalty_term`; `larq_l1inf.penalty(model)` adds up the same values."""
        reg = self.bases_regularizer
        if reg is None or reg.delta == 0:
            return tf.zeros(())
        return reg.warmup_factor * reg.reduce(self.penalty_term())

    def base_macs(self):
        """MACs of one base pair (one binary convolution) per sample."""
        shape = self.output_shape
        positions = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
        return positions * int(np.prod(self.kernel.shape))

    # ---- forward ------------------------------------------------------------------------

    def _pad(self, x, pad_value):
        if not self.rank or self.padding != "same":
            return x
        spec = [[0, 0]]
        for size, k, s in zip(x.shape[1:-1], self.kernel_size, self.strides):
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            spec.append([total // 2, total - total // 2])
        spec.append([0, 0])
        return tf.pad(x, spec, constant_values=pad_value)

    def base_op(self, a, kernel, pad_value):
        a = self._pad(a, pad_value)
        if not self.rank:
            return tf.tensordot(a, kernel, [[a.shape.rank - 1], [0]])
        return tf.nn.convolution(a, kernel, strides=self.strides, padding="VALID")

    def call(self, inputs):
        bases = self.weight_bases_tensors()
        outputs = []
        for n in range(self.activation_bases):
            a = lq.quantizers.ste_sign(inputs + self.activation_shift[n],
                                       clip_value=self.clip_value)
            for m, kernel in enumerate(bases):
                # one sign-input, +-1-kernel convolution per base pair: one LceBconv2d each
                y = self.base_op(a, kernel, self.pad_values)
                outputs.append(self.weight_scale[m] * self.activation_scale[n] * y)
        return tf.add_n(outputs)

    def interval(self, box):
        r"""Interval bounds of the layer's output for an input `Interval` (for IBP).

        With $[l_n, u_n]$ the interval of activation base $n$, $\operatorname{sign}(x + v_n)$,
        centre $c_n$ and radius $r_n$, and $|\operatorname{sign}(W_m)| = 1$ everywhere:

        $$\mu' = \sum_n \beta_n\, \mathrm{Conv}\big(c_n, \textstyle\sum_m \alpha_m
        W_b^m\big),\qquad r' = \sum_n |\beta_n| \Big(\sum_m |\alpha_m|\Big)
        \sum_{\text{window}} \sum_i r_{n, i}$$

        the same bound as the $M \times N$ base-pair convolutions with $|W_b^m|$, in one centre
        convolution with the combined kernel and one single-channel window sum
        (`larq_l1inf.ibp.binary_radius`) per activation base. `larq_l1inf.ibp.BINARY_RADIUS`
        `"exact"` or `"generic"` compute the radius with the $M \times N$ convolutions instead
        (the straight-through gradient to the latent kernel through $|W_b^m|$ exactly; the
        fast path spreads it evenly over each output channel, as IBP's does).

        # Arguments
        box: the input `Interval`.

        # Returns
        The output `Interval`.
        """
        bases = self.weight_bases_tensors()
        combined = tf.add_n([self.weight_scale[m] * w for m, w in enumerate(bases)])
        fast = ibp.BINARY_RADIUS == "fast"
        if fast:
            # |W_b^m| = 1: its channel max is 1 in the forward pass and carries the STE
            # gradient of |W_b^m| spread over the channel, as ibp's fast path does.
            axes = list(range(combined.shape.rank - 1))
            magnitude = tf.add_n([tf.abs(self.weight_scale[m]) * tf.reduce_max(tf.abs(w), axes)
                                  for m, w in enumerate(bases)])
            padding = None if not self.rank else self.padding.upper()
        centres, radii = [], []
        for n in range(self.activation_bases):
            a = box.map(lambda v: lq.quantizers.ste_sign(v + self.activation_shift[n],
                                                         clip_value=self.clip_value))
            beta = self.activation_scale[n]
            centres.append(beta * self.base_op(a.centre, combined, self.pad_values))
            if fast:
                radii.append(ibp.binary_radius(self, a.radius, tf.abs(beta) * magnitude, padding))
                continue
            for m, kernel in enumerate(bases):
                scale = tf.abs(self.weight_scale[m] * beta)
                radii.append(scale * self.base_op(a.radius, tf.abs(kernel), 0.0))
        return Interval.from_centre(tf.add_n(centres), tf.add_n(radii))

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if not self.rank:
            return input_shape[:-1].concatenate([self.filters])
        spatial = []
        for size, k, s in zip(input_shape[1:-1], self.kernel_size, self.strides):
            if size is None:
                spatial.append(None)
            elif self.padding == "same":
                spatial.append(-(-size // s))
            else:
                spatial.append((size - k) // s + 1)
        return tf.TensorShape([input_shape[0], *spatial, self.filters])

    def get_config(self):
        config = {
            **super().get_config(),
            "weight_bases": self.weight_bases,
            "activation_bases": self.activation_bases,
            "pad_values": self.pad_values,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
            "kernel_constraint": tf.keras.constraints.serialize(self.kernel_constraint),
            "kernel_regularizer": tf.keras.regularizers.serialize(self.bases_regularizer),
            "clip_value": self.clip_value,
        }
        if self.rank:
            config.update(filters=self.filters, kernel_size=list(self.kernel_size),
                          strides=list(self.strides), padding=self.padding)
        else:
            config.update(units=self.filters)
        return config


@_register
class MBNConv2D(MultiBitLayer):
    """2-D multi-bit binary convolution: M weight bases x N activation bases (see module).

    # Arguments
    filters: output channels.
    kernel_size, strides: int or pair.
    padding: `"same"` (padded with `pad_values` after the sign, as larq does) or `"valid"`.
    weight_bases: M. activation_bases: N.
    pad_values: padding constant of the binarized input (1.0: what LCE's `LceBconv2d` pads).
    kernel_initializer, kernel_constraint: of the latent kernel (`"weight_clip"` by default).
    kernel_regularizer: a `KernelPenalty` (e.g. `L1InfRegularizer`) on the combined binary
        kernel; the layer adds it as its own loss.
    clip_value: the straight-through estimators pass gradients where `|x| <= clip_value`.

    # Raises
    ValueError: for bases < 1, a non-L1,inf regularizer or `reduction="product"`.

    # References
    - L. Frickenstein et al. Adversarial Robustness of Multi-bit Convolutional Neural Networks.
      IntelliSys 2023, eq. 2.

    !!! example
        ```python
        import larq_l1inf
        import numpy as np
        from larq_l1inf.mbn import MBNConv2D
        layer = MBNConv2D(4, 3, weight_bases=2, activation_bases=2)
        print(layer(np.random.rand(1, 8, 8, 3).astype("float32")).shape)  # (1, 8, 8, 4)
        ```
    """

    rank = 2


@_register
class MBNConv1D(MultiBitLayer):
    """1-D multi-bit binary convolution; arguments as `MBNConv2D`.

    LCE has no 1-D binary convolution, so on device these stay float convolutions.
    """

    rank = 1


@_register
class MBNDense(MultiBitLayer):
    """Multi-bit binary dense layer, $\\sum_{m,n} \\alpha_m\\beta_n \\operatorname{sign}(x + v_n)
    \\operatorname{sign}(W_m)$; arguments as `MBNConv2D` with `units` for `filters`."""

    rank = 0

    def __init__(self, units, weight_bases=3, activation_bases=1, **kwargs):
        for key in ("kernel_size", "strides", "padding"):
            kwargs.pop(key, None)
        super().__init__(units, weight_bases=weight_bases, activation_bases=activation_bases,
                         **kwargs)


class CombinedBases:
    """A multi-bit layer's kernel binarization as a quantizer, for `larq_l1inf.kernels`.

    $Q(W) = \\sum_m \\alpha_m \\operatorname{sign}(W + u_m \\operatorname{std} W)$, split into
    the scale $a = \\sum_m |\\alpha_m|$ (the `scale` hook) and the unscaled $W_b = Q(W) / a$
    with entries in [-1, 1] (the `binary_kernel` hook), so $a \\|W_b\\|_{1,\\infty}$ is the
    combined kernel's norm, the term of the layer's penalty.

    # Arguments
    layer: a built `MultiBitLayer`.
    """

    precision = 1

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, latent):
        return self.layer.combined_kernel(latent)

    def scale(self, latent):
        """$a = \\sum_m |\\alpha_m|$, one value for the layer."""
        return tf.reduce_sum(tf.abs(tf.convert_to_tensor(self.layer.weight_scale)))

    def binary_kernel(self, latent):
        """$W_b = Q(W) / a$ (0 where every $\\alpha_m$ is 0)."""
        return tf.math.divide_no_nan(self(latent), self.scale(latent))


@register_interval_rule(MultiBitLayer)
def _mbn_interval(layer, box, training):
    return layer.interval(box[0] if isinstance(box, list) else box)


class MBNVariant(Variant):
    """The `Variant` that builds every binary convolution of a backbone as an `MBNConv2D` /
    `MBNConv1D` with M weight and N activation bases."""

    def __init__(self, weight_bases=3, activation_bases=1):
        self.weight_bases = _check_bases(weight_bases, "weight_bases")
        self.activation_bases = _check_bases(activation_bases, "activation_bases")
        pairs = self.weight_bases * self.activation_bases
        super().__init__(
            "mbn",
            lambda: lq.quantizers.SteSign(),
            lambda: lq.quantizers.SteSign(),
            kernel_constraint="weight_clip",
            lce_binary=True,
            lce_convs=pairs,
            lce_note=(f"{self.weight_bases} x {self.activation_bases} bases: {pairs} sign-input, "
                      "+-1-kernel convolutions per layer, each an LceBconv2d (2-D only)"),
        )

    def __repr__(self):
        return (f"Variant('mbn', weight_bases={self.weight_bases}, "
                f"activation_bases={self.activation_bases})")

    def binary_conv(self, x, filters, kernel_size, strides=1, kernel_regularizer=None, name=None):
        """One multi-bit binary conv (1-D or 2-D from `x`'s rank), `same` padding with +1."""
        rank = x.shape.rank - 2
        if rank not in (1, 2):
            raise ValueError(f"binary_conv needs a 1-D or 2-D feature map, got shape {x.shape}.")
        layer = MBNConv2D if rank == 2 else MBNConv1D
        return layer(filters, kernel_size, strides=strides, padding="same",
                     weight_bases=self.weight_bases, activation_bases=self.activation_bases,
                     kernel_regularizer=kernel_regularizer, name=name)(x)


def mbn_variant(weight_bases=3, activation_bases=1, **_):
    """The MBN `Variant` (`VARIANTS["mbn"]`, `get_variant("mbn", weight_bases=M,
    activation_bases=N)`): every binary conv an M x N multi-bit binary conv. MBN3x1 is the default, the trade-off Frickenstein et al. recommend (sec. 4.2).

    # Raises
    ValueError: for bases < 1.
    """
    return MBNVariant(weight_bases, activation_bases)

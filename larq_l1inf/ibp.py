r"""Interval bound propagation (IBP) through larq binary networks.

For an input box $x' \in [\max(x - \epsilon, c_0), \min(x + \epsilon, c_1)]$ (the
$\ell_\infty$ ball of radius $\epsilon$ around $x$, clipped to the valid pixel range) every
layer maps an elementwise interval $[l, u]$ to an interval that contains all its outputs:

- affine layers (Dense, Conv1D/2D/3D, DepthwiseConv2D, their larq `Quant*` versions,
  BatchNormalization in inference form, Rescaling) in centre-radius form,
  $\mu' = W\mu + b,\ r' = |W| r$ with $\mu = (u + l)/2,\ r = (u - l)/2$; for a binary
  kernel ($|W_b| = c_o$ in output channel $o$, found by behaviour) $|W_b| r$ is $c_o$ times a
  window sum of $\sum_i r_i$, one cheap single-channel convolution (`BINARY_RADIUS`);
- monotone elementwise maps (sign-type quantizers, ReLU, hard tanh, ...) endpoint-wise,
  $[f(l), f(u)]$; larq's `sign(0) = +1`, so sign maps $[l, u]$ to $-1$ if $u < 0$, $+1$ if
  $l \ge 0$ and $[-1, +1]$ otherwise;
- pooling, reshaping and merging layers endpoint-wise (they are monotone); the linear ones
  (average pooling, reshaping) in centre-radius form;
- this package's variant layers: RSign, RPReLU, Maxout, AdaBin's activation, ABC-Net's
  activation bases (a sum of monotone steps with signed scales), CycleBNN's min-max sign
  (its grid step bounds how far the sign's threshold moves), and the MBN layers.

A larq layer's kernel is read as its quantizer's forward output (inside
`larq.context.quantized_scope`), so a binary or scaled-binary kernel is simply a constant linear
map, and the whole computation is differentiable: the sign of an interval endpoint passes the
gradient of the quantizer's own straight-through estimator, so the bounds can be used inside
a training step (IBP training, Gowal et al. 2018).

`interval_bounds` bounds the model's output logits; `certified_margin` the worst-case logit
margin $\min_{j \ne y} (z_y - z_j)$, computed with the last linear layer folded into the
margin (tighter than subtracting separately bounded logits); `verified_accuracy` the fraction
of samples whose certified margin is positive. The per-layer rules are public
(`apply_rule`, `affine_interval`, `quantizer_interval`, `batch_norm_affine`, `linear_map`,
`read_kernel`, `graph_nodes`, ...) so that bounds built on IBP's forward pass, such as
`larq_l1inf.crown`'s CROWN-IBP, use the very same intervals.

!!! example
    ```python
    import larq_l1inf  # selects Keras 2 first
    import larq as lq
    import numpy as np
    import tensorflow as tf
    from larq_l1inf.ibp import interval_bounds, verified_accuracy

    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)),
        lq.layers.QuantConv2D(4, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                              padding="same", pad_values=1.0, use_bias=False),
        tf.keras.layers.BatchNormalization(),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(3),
    ])
    x = np.random.rand(4, 8, 8, 1).astype("float32")
    lower, upper = interval_bounds(model, x, epsilon=0.01)
    assert np.all(lower.numpy() <= model(x).numpy() + 1e-5)
    print(verified_accuracy(model, x, np.array([0, 1, 2, 0]), epsilon=0.01))
    ```

# References
- S. Gowal, K. Dvijotham, R. Stanforth, R. Bunel, C. Qin, J. Uesato, R. Arandjelovic, T. Mann,
  P. Kohli. On the Effectiveness of Interval Bound Propagation for Training Verifiably Robust
  Models. arXiv:1810.12715, 2018, sec. 3 (eq. 6) and the elision of the last layer.
- H. Zhang, H. Chen, C. Xiao, S. Gowal, R. Stanforth, B. Li, D. Boning, C.-J. Hsieh. Towards
  Stable and Efficient Training of Verifiably Robust Neural Networks (CROWN-IBP). ICLR 2020.
"""

import logging
import weakref

import larq as lq
import numpy as np

from larq_l1inf._keras import tf

log = logging.getLogger(__name__)

__all__ = [
    "BINARY_RADIUS",
    "BINARY_RADIUS_MODES",
    "IDENTITY_LAYERS",
    "Interval",
    "LINEAR_LAYERS",
    "UnsupportedLayerError",
    "affine_interval",
    "apply_rule",
    "batch_norm_affine",
    "binary_radius",
    "binary_radius_exact",
    "certified_margin",
    "channel_scale",
    "graph_nodes",
    "input_box",
    "interval_bounds",
    "is_monotone_quantizer",
    "linear_map",
    "linear_op",
    "positive_fraction",
    "propagate",
    "quantizer_interval",
    "read_kernel",
    "register_interval_rule",
    "register_monotone_quantizer",
    "same_padding",
    "verified_accuracy",
]

layers = tf.keras.layers


class UnsupportedLayerError(ValueError):
    """A layer IBP cannot bound (its name and type are in the message)."""


class Interval:
    """An elementwise interval of one tensor, held as `[lower, upper]` or as centre and
    radius, whichever the producing layer had; the other form is computed on first use (an
    affine layer reads and writes centre/radius, a monotone map lower/upper, so chains of
    affine layers convert nothing). Not a tuple, so `tf.nest` treats it as one leaf."""

    __slots__ = ("_lower", "_upper", "_centre", "_radius")

    def __init__(self, lower, upper):
        self._lower, self._upper = lower, upper
        self._centre = self._radius = None

    @classmethod
    def from_centre(cls, centre, radius):
        box = cls(None, None)
        box._centre, box._radius = centre, radius
        return box

    @property
    def lower(self):
        if self._lower is None:
            self._lower = self._centre - self._radius
        return self._lower

    @property
    def upper(self):
        if self._upper is None:
            self._upper = self._centre + self._radius
        return self._upper

    @property
    def centre(self):
        if self._centre is None:
            self._centre = (self._upper + self._lower) * 0.5
        return self._centre

    @property
    def radius(self):
        if self._radius is None:
            self._radius = (self._upper - self._lower) * 0.5
        return self._radius

    @property
    def is_centred(self):
        """Whether the centre/radius form is at hand (no conversion needed)."""
        return self._centre is not None

    def map(self, fn):
        """`[fn(l), fn(u)]` for a monotone non-decreasing `fn`."""
        return Interval(fn(self.lower), fn(self.upper))


# --------------------------------------------------------------------------------------------
# Elementwise monotone maps: activations and quantizers
# --------------------------------------------------------------------------------------------

_MONOTONE_ACTIVATION_NAMES = (
    "linear", "relu", "relu6", "elu", "selu", "sigmoid", "hard_sigmoid", "tanh", "softplus",
    "softsign", "exponential",
)


def _monotone_activations():
    found = {tf.keras.activations.get(n) for n in _MONOTONE_ACTIVATION_NAMES}
    found |= {lq.activations.hard_tanh, lq.activations.leaky_tanh, tf.nn.relu, tf.nn.relu6,
              tf.identity, None}
    return found


_MONOTONE_ACTIVATIONS = _monotone_activations()
_SOFTMAX = {tf.keras.activations.softmax, tf.nn.softmax}

# Larq quantizers whose forward pass is elementwise and non-decreasing.
_MONOTONE_QUANTIZERS = [
    lq.quantizers.SteSign, lq.quantizers.ApproxSign, lq.quantizers.SwishSign,
    lq.quantizers.SteHeaviside, lq.quantizers.NoOp,
]
_MONOTONE_QUANTIZER_FUNCTIONS = {
    lq.quantizers.ste_sign, lq.quantizers.approx_sign, lq.quantizers.swish_sign,
    lq.quantizers.ste_heaviside, lq.quantizers.ste_tern,
}


def register_monotone_quantizer(cls):
    """Declare a quantizer class elementwise and non-decreasing, so IBP maps `[l, u]` to
    `[q(l), q(u)]` when it is used as an input quantizer. Usable as a class decorator."""
    _MONOTONE_QUANTIZERS.append(cls)
    return cls


def is_monotone_quantizer(q):
    """Whether IBP (and CROWN-IBP) may bound the quantizer `q` endpoint-wise, `[q(l), q(u)]`:
    larq's sign-type quantizers (functions or objects), DoReFa in activation mode, `ste_tern`
    without the data-dependent threshold, `None`, and classes declared with
    `register_monotone_quantizer`.

    # Arguments
    q: a quantizer function or object, or None.

    # Returns
    A bool.
    """
    if q is None or q in _MONOTONE_QUANTIZER_FUNCTIONS:
        return True
    if isinstance(q, lq.quantizers.DoReFa):
        return q.mode == "activations"  # clip + round; the weight mode normalises by a max
    if isinstance(q, lq.quantizers.SteTern):
        return not q.ternary_weight_networks  # a threshold from the data is not elementwise
    return isinstance(q, tuple(_MONOTONE_QUANTIZERS))


# Quantizers that are not elementwise but have an interval rule: class -> fn(q, box) -> Interval.
_QUANTIZER_RULES = []


def quantizer_interval(layer, q, box, attr="input_quantizer"):
    """The `Interval` of a layer's quantizer `q` applied to `box`: a registered quantizer rule
    (e.g. CycleBNN's min-max sign), else `[q(l), q(u)]` for a monotone quantizer
    (`is_monotone_quantizer`); `box` itself for `q = None`.

    # Arguments
    layer: the layer `q` belongs to (named in errors).
    q: the quantizer (function, object or None).
    box: the input `Interval`.
    attr: how `q` is named in errors.

    # Returns
    An `Interval`.

    # Raises
    UnsupportedLayerError: for a quantizer that is neither monotone nor has a rule.
    """
    if q is None:
        return box
    for cls, fn in _QUANTIZER_RULES:
        if isinstance(q, cls):
            return fn(q, box)
    if not is_monotone_quantizer(q):
        raise UnsupportedLayerError(
            f"Layer {layer.name!r} ({type(layer).__name__}): its {attr} {type(q).__name__} is "
            "not a known elementwise non-decreasing quantizer, so IBP cannot bound it. Use a "
            "sign-type quantizer (ste_sign, approx_sign, swish_sign) or declare yours with "
            "`larq_l1inf.ibp.register_monotone_quantizer`."
        )
    return box.map(q)


def _activate(layer, fn, box):
    if fn in _MONOTONE_ACTIVATIONS:
        return box if fn in (None, tf.keras.activations.linear, tf.identity) else box.map(fn)
    name = getattr(fn, "__name__", repr(fn))
    raise UnsupportedLayerError(
        f"Layer {layer.name!r} ({type(layer).__name__}): activation {name!r} is not monotone "
        f"(or not known to IBP); supported: {', '.join(_MONOTONE_ACTIVATION_NAMES)}, hard_tanh, "
        "leaky_tanh (and softmax as the model's last operation)."
    )


def _kinked(box, fn, kink=0.0):
    """Bounds of a piecewise-linear `fn` with one kink at `kink` (PReLU/LeakyReLU with any
    slope, RPReLU, Maxout): the extremes are at the endpoints or at the kink."""
    fl, fu = fn(box.lower), fn(box.upper)
    kink = tf.zeros_like(box.lower) + kink
    straddles = tf.logical_and(box.lower < kink, box.upper > kink)
    at_kink = fn(kink)
    lower = tf.minimum(fl, fu)
    upper = tf.maximum(fl, fu)
    return Interval(tf.where(straddles, tf.minimum(lower, at_kink), lower),
                    tf.where(straddles, tf.maximum(upper, at_kink), upper))


def _endpoints_either_way(box, fn):
    """Bounds of a monotone `fn` of unknown direction (a learned scale may be negative)."""
    fl, fu = fn(box.lower), fn(box.upper)
    return Interval(tf.minimum(fl, fu), tf.maximum(fl, fu))


# --------------------------------------------------------------------------------------------
# Affine layers
# --------------------------------------------------------------------------------------------

_CONV_TRANSPOSE = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)


def same_padding(layer, shape):
    """TF's `same` padding `[[before, after], ...]` of a convolution layer for an input of
    `shape` (batch and channel axes unpadded), as larq pads with `pad_values`.

    # Arguments
    layer: a convolution layer (`kernel_size`, `strides`, `dilation_rate`).
    shape: the static input shape, channels last.

    # Returns
    A list of `[before, after]` pairs, one per axis of `shape`, for `tf.pad`.
    """
    pads = []
    for size, k, s, d in zip(shape[1:-1], layer.kernel_size, layer.strides, layer.dilation_rate):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append([total // 2, total - total // 2])
    return [[0, 0], *pads, [0, 0]]


def linear_op(layer, x, kernel, padding):
    """The layer's linear operation of `x` with `kernel` (no bias, no padding of its own
    beyond TF's zero `padding`): a tensordot for Dense, a (depthwise) convolution with the
    layer's strides and dilation otherwise.

    # Arguments
    layer: a Dense, Conv1D/2D/3D or DepthwiseConv1D/2D layer (channels_last).
    x: the input, already padded if `padding` is `"VALID"`.
    kernel: the kernel to use (e.g. the quantized kernel, or its absolute value).
    padding: `"SAME"` or `"VALID"`; ignored for Dense.

    # Returns
    The output tensor.
    """
    if isinstance(layer, layers.DepthwiseConv2D):
        return tf.nn.depthwise_conv2d(x, kernel, strides=(1, *layer.strides, 1), padding=padding,
                                      dilations=layer.dilation_rate)
    if isinstance(layer, layers.DepthwiseConv1D):
        y = tf.nn.depthwise_conv2d(x[:, :, None, :], kernel[:, None], padding=padding,
                                   strides=(1, layer.strides[0], 1, 1),
                                   dilations=(layer.dilation_rate[0], 1))
        return y[:, :, 0, :]
    if isinstance(layer, layers.Dense):
        return tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]])
    return tf.nn.convolution(x, kernel, strides=layer.strides, padding=padding,
                             dilations=layer.dilation_rate)


def _is_zero(value):
    return not tf.is_tensor(value) and value == 0.0


def _pad_input(layer, x, pad_value):
    """`(x, padding)`: `x` padded as the layer pads it before its `linear_op` (causal: zeros
    on the left; `same` with a non-zero `pad_value`: that constant), and the padding left
    for the op."""
    if isinstance(layer, layers.Dense):
        return x, None
    padding = layer.padding.upper()
    if padding == "CAUSAL":
        left = (layer.kernel_size[0] - 1) * layer.dilation_rate[0]
        return tf.pad(x, [[0, 0], [left, 0], [0, 0]]), "VALID"
    if padding == "SAME" and not _is_zero(pad_value):
        spec = same_padding(layer, x.shape)
        return tf.pad(x, spec, constant_values=tf.cast(pad_value, x.dtype)), "VALID"
    return x, padding


def linear_map(layer, x, kernel, pad_value=0.0):
    """The layer's linear map of `x` (no bias), padded as the layer pads: `same` padding
    filled with `pad_value` (larq pads the quantized input with its `pad_values`), causal
    padding with zeros.

    # Arguments
    layer: a Dense, Conv1D/2D/3D or DepthwiseConv1D/2D layer (channels_last).
    x: the input tensor.
    kernel: the kernel (e.g. from `read_kernel`).
    pad_value: the constant of the layer's `same` padding.

    # Returns
    The output tensor.
    """
    x, padding = _pad_input(layer, x, pad_value)
    return linear_op(layer, x, kernel, padding)


#: How the radius goes through a layer whose kernel is `+-c_o` (`|W_b| = c_o` in output
#: channel `o`: sign-type binary kernels, with or without a scale):
#: `"fast"` (default): `c_o` times a window sum of the channel-summed radius
#: (`binary_radius`), the same bound as the convolution with `|W_b|`, and the same gradients
#: in the radius and in `c_o`; the straight-through gradient to the latent weights through
#: `|W_b|` is spread evenly over each output channel's fan-in.
#: `"exact"`: the same forward, and the generic path's gradient in `|W_b|` (one filter
#: correlation more in the backward pass).
#: `"generic"`: the convolution with `|W_b|`.
BINARY_RADIUS = "fast"
#: The values `BINARY_RADIUS` takes.
BINARY_RADIUS_MODES = ("fast", "exact", "generic")

# Tolerance of "constant per output channel": binary scales are one float per channel, so
# |W_b| is constant to rounding; the bound uses the channel's max, so it stays sound anyway.
_CONSTANT_RTOL = 1e-6
_PROBED = weakref.WeakKeyDictionary()  # quantizer -> {kernel shape: binary on random probes}


def channel_scale(kernel):
    """`(c, constant)`: the largest `|kernel|` per output channel (last axis) and whether
    `|kernel|` equals it everywhere in the channel (to a relative 1e-6), a scalar bool tensor."""
    magnitude = tf.abs(kernel)
    axes = list(range(kernel.shape.rank - 1))
    hi = tf.reduce_max(magnitude, axes)
    lo = tf.reduce_min(magnitude, axes)
    return hi, tf.reduce_all(hi - lo <= _CONSTANT_RTOL * hi)


def _binary_quantizer(layer, kernel):
    """Whether the layer's kernel quantizer gives `+-c_o` (constant `|.|` per output channel)
    on random latent kernels: decided by behaviour, eagerly, once per quantizer and shape."""
    q = getattr(layer, "kernel_quantizer", None)
    if q is None or not isinstance(layer, (layers.Dense, layers.Conv1D, layers.Conv2D,
                                           layers.Conv3D)):
        return False
    shape = tuple(kernel.shape)
    try:
        seen = _PROBED.setdefault(q, {})
    except TypeError:  # not weak-referenceable: probe every time
        seen = {}
    if shape not in seen:
        with tf.init_scope():
            if not tf.executing_eagerly():  # TF1 graph mode: the in-graph check decides alone
                return True
            rng = np.random.default_rng(0)
            verdict = True
            for scale in (0.1, 0.7):
                probe = tf.constant(rng.normal(0.0, scale, shape).astype("float32"))
                with lq.context.quantized_scope(True):
                    _, constant = channel_scale(tf.convert_to_tensor(q(probe)))
                verdict = verdict and bool(constant)
        seen[shape] = verdict
    return seen[shape]


def binary_radius(layer, radius, scale, padding):
    r"""`|W_b| r` for a kernel with `|W_b| = c_o` everywhere in output channel `o`.

    $$(|W_b| * r)_o = c_o \sum_{k \in \text{window}} \sum_i r_{k, i}$$

    a channel sum, then a window sum (a convolution with one all-ones 1-in/1-out filter, the
    layer's strides, dilation and padding; zero radius in the padding), times `c_o`; for
    Dense `c_o \sum_i r_i`. The map of `r` is the same linear map as the convolution with
    `|W_b|`, so its gradients in `r` are equal; so is the gradient in `c` (e.g. a learned
    scale alpha), as $\partial/\partial c_o$ of both is the window sum.

    # Arguments
    layer: a Dense or Conv1D/2D/3D layer (channels_last, groups 1), or any layer with
        `kernel_size` and `strides` (and optionally `dilation_rate`), e.g. an MBN layer.
    radius: the (already padded) input radius.
    scale: `(C_out,)` tensor `c` (or anything broadcastable to the output, e.g. a scalar).
    padding: `"SAME"`/`"VALID"` as passed to the convolution, None for a dense map.

    # Returns
    The output radius.
    """
    summed = tf.reduce_sum(radius, axis=-1, keepdims=True)
    if padding is None or isinstance(layer, layers.Dense):
        return summed * scale
    ones = tf.ones((*layer.kernel_size, 1, 1), radius.dtype)
    window = tf.nn.convolution(summed, ones, strides=layer.strides, padding=padding,
                               dilations=getattr(layer, "dilation_rate", None))
    return window * scale


def binary_radius_exact(layer, radius, magnitude, padding):
    """`binary_radius` forward, and in the backward pass the generic path's gradient in
    `|W_b|` (`magnitude`), a full filter correlation."""

    @tf.custom_gradient
    def fn(radius, magnitude):
        scale = tf.reduce_max(magnitude, list(range(magnitude.shape.rank - 1)))
        out = binary_radius(layer, radius, scale, padding)

        def grad(g):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch([radius, magnitude])
                fast = binary_radius(layer, radius, tf.stop_gradient(scale), padding)
                generic = linear_op(layer, tf.stop_gradient(radius), magnitude, padding)
            return (tape.gradient(fast, radius, output_gradients=g),
                    tape.gradient(generic, magnitude, output_gradients=g))

        return out, grad

    return fn(radius, magnitude)


def _radius_op(layer, radius, kernel, padding):
    if BINARY_RADIUS not in BINARY_RADIUS_MODES:
        raise ValueError(
            f"larq_l1inf.ibp.BINARY_RADIUS must be one of {BINARY_RADIUS_MODES}, got "
            f"{BINARY_RADIUS!r}.")
    generic = lambda: linear_op(layer, radius, tf.abs(kernel), padding)  # noqa: E731
    if BINARY_RADIUS == "generic" or not _binary_quantizer(layer, kernel):
        return generic()
    scale, constant = channel_scale(kernel)
    if BINARY_RADIUS == "exact":
        fast = lambda: binary_radius_exact(layer, radius, tf.abs(kernel), padding)  # noqa: E731
    else:
        fast = lambda: binary_radius(layer, radius, scale, padding)  # noqa: E731
    if tf.executing_eagerly():
        return fast() if bool(constant) else generic()
    # A quantizer with state (a learned shift) may leave +-c later: checked on every call.
    return tf.cond(constant, fast, generic)


def read_kernel(layer):
    """The kernel a layer computes with: a larq `QuantizedVariable` read inside
    `larq.context.quantized_scope`, i.e. its quantizer's forward output with the quantizer's
    straight-through gradient to the latent weights; `depthwise_kernel` for depthwise layers.

    # Arguments
    layer: a Dense, Conv or DepthwiseConv layer (larq `Quant*` or Keras).

    # Returns
    A tensor.
    """
    attr = "depthwise_kernel" if isinstance(
        layer, (layers.DepthwiseConv2D, layers.DepthwiseConv1D)) else "kernel"
    with lq.context.quantized_scope(True):
        return tf.convert_to_tensor(getattr(layer, attr))


def _check_affine(layer):
    if isinstance(layer, (*_CONV_TRANSPOSE, layers.SeparableConv1D, layers.SeparableConv2D)):
        raise UnsupportedLayerError(
            f"Layer {layer.name!r} ({type(layer).__name__}) is not supported by IBP yet; use "
            "Conv, DepthwiseConv2D + a 1x1 Conv, or Dense."
        )
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise UnsupportedLayerError(
            f"Layer {layer.name!r}: IBP supports channels_last only, got {layer.data_format!r}."
        )
    if getattr(layer, "groups", 1) != 1:
        raise UnsupportedLayerError(
            f"Layer {layer.name!r}: grouped convolutions are not supported.")


def affine_interval(layer, box, kernel=None):
    r"""The `Interval` of an affine layer's linear part and bias (no input quantizer, no
    activation) for an input `box`: $\mu' = W\mu + b,\ r' = |W| r$, the padding of the
    centre filled with the layer's `pad_values`, of the radius with zeros; `|W| r` of a binary
    kernel as `BINARY_RADIUS` says.

    # Arguments
    layer: a Dense, Conv1D/2D/3D or DepthwiseConv1D/2D layer (larq `Quant*` or Keras).
    box: the `Interval` of its (quantized) input.
    kernel: the kernel to use; default `read_kernel(layer)`.

    # Returns
    An `Interval` in centre/radius form.

    # Raises
    UnsupportedLayerError: for transposed or separable convolutions, channels_first or groups.
    """
    _check_affine(layer)
    kernel = read_kernel(layer) if kernel is None else kernel
    if box.is_centred:
        centre, radius, half = box.centre, box.radius, 1.0
    else:
        # Endpoint form (after a sign): u + l and u - l, with the 1/2 of centre and radius
        # folded into the small kernel instead of two multiplications of the large input.
        centre, radius, half = box.upper + box.lower, box.upper - box.lower, 0.5
        kernel = kernel * half
    pad_value = 0.0 if isinstance(layer, layers.Dense) else getattr(layer, "pad_values", 0.0)
    out_centre = linear_map(layer, centre, kernel, pad_value / half)
    # larq pads the quantized input with the constant pad_values: radius 0 there (TF's own
    # zero "SAME" padding, so the radius is not padded explicitly).
    radius, padding = _pad_input(layer, radius, 0.0)
    out_radius = _radius_op(layer, radius, kernel, padding)
    if getattr(layer, "use_bias", False) and layer.bias is not None:
        out_centre = out_centre + layer.bias
    return Interval.from_centre(out_centre, out_radius)


def _affine_layer(layer, box, training=False):
    _check_affine(layer)
    box = quantizer_interval(layer, getattr(layer, "input_quantizer", None), box)
    return _activate(layer, layer.activation, affine_interval(layer, box))


def _batch_norm_moments(layer, centre, training):
    """(mean, variance) BatchNormalization normalises with: the moving averages, or in
    training mode the batch statistics of the box centres as constants."""
    rank = centre.shape.rank
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if [a % rank for a in axes] != [rank - 1]:
        raise UnsupportedLayerError(
            f"Layer {layer.name!r}: BatchNormalization over axis {layer.axis} is not supported "
            "(channels_last, axis=-1 only)."
        )
    if training:
        # Batch statistics of the box centres, treated as the batch's constants; at epsilon = 0
        # they equal those of the clean batch (decision of this module, see docs/readme/ibp.md).
        mean, var = tf.nn.moments(centre, list(range(rank - 1)))
        return tf.stop_gradient(mean), tf.stop_gradient(var)
    return layer.moving_mean, layer.moving_variance


def _batch_norm_scale_shift(layer, mean, var):
    scale = tf.math.rsqrt(var + layer.epsilon)
    if layer.gamma is not None:
        scale = scale * layer.gamma
    shift = -mean * scale
    if layer.beta is not None:
        shift = shift + layer.beta
    return scale, shift


def batch_norm_affine(layer, centre, training=False):
    r"""BatchNormalization as the affine map IBP bounds it by, $y = s \odot x + t$ per channel:

    $$s = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}},\quad t = \beta - \mu s$$

    with the moving averages $(\mu, \sigma^2)$, or in training mode the batch statistics of
    the box centres (constants in the backward pass).

    # Arguments
    layer: a `BatchNormalization` layer over the last axis.
    centre: the centre of its input box (for the training-mode statistics).
    training: batch statistics instead of the moving averages.

    # Returns
    `(scale, shift)`, each of shape `(channels,)`.

    # Raises
    UnsupportedLayerError: for normalisation over another axis than the last.
    """
    return _batch_norm_scale_shift(layer, *_batch_norm_moments(layer, centre, training))


def _batch_norm(layer, box, training=False):
    centre, radius = box.centre, box.radius
    rank = centre.shape.rank
    mean, var = _batch_norm_moments(layer, centre, training)
    scale, shift = _batch_norm_scale_shift(layer, mean, var)
    out_radius = radius * tf.abs(scale)
    if 2 <= rank <= 5 and layer.epsilon > 1.001e-5 and centre.dtype == tf.float32:
        # One fused op (and one for its gradient) instead of a chain of broadcasts: the same
        # inference-form map with the statistics as constants, measured faster on CPU.
        shape = tf.shape(centre)
        x4 = centre if rank >= 4 else tf.reshape(
            centre, tf.concat([shape[:-1], tf.ones([4 - rank], tf.int32), shape[-1:]], 0))
        out, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x4, layer.gamma if layer.gamma is not None else tf.ones_like(mean),
            layer.beta if layer.beta is not None else tf.zeros_like(mean), mean=mean,
            variance=var, epsilon=layer.epsilon, is_training=False,
            data_format="NHWC" if rank <= 4 else "NDHWC")
        return Interval.from_centre(tf.reshape(out, shape) if rank < 4 else out, out_radius)
    return Interval.from_centre(centre * scale + shift, out_radius)


def _rescaling(layer, box, training=False):
    scale = tf.cast(layer.scale, box.lower.dtype)
    return Interval.from_centre(layer(box.centre), box.radius * tf.abs(scale))


# --------------------------------------------------------------------------------------------
# Rules: layer class -> function(layer, inputs, training) -> Interval
# --------------------------------------------------------------------------------------------

#: Layers that are the identity at inference (and are bounded as the identity in training too).
IDENTITY_LAYERS = (layers.Dropout, layers.SpatialDropout1D, layers.SpatialDropout2D,
             layers.SpatialDropout3D, layers.GaussianNoise, layers.GaussianDropout,
             layers.AlphaDropout, layers.ActivityRegularization)
# Monotone (non-decreasing in every input), so [f(l), f(u)] bounds them: pooling, reshaping.
_ENDPOINT = (layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D,
             layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D,
             layers.Normalization)
#: Parameter-free linear layers with non-negative coefficients (average pooling, reshaping,
#: padding, cropping, upsampling): f(mu) and f(r) are the exact centre and radius, so a box in
#: centre/radius form (after an affine layer) is not converted twice.
LINEAR_LAYERS = (
    layers.AveragePooling1D, layers.AveragePooling2D, layers.AveragePooling3D,
    layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D, layers.GlobalAveragePooling3D,
    layers.Flatten, layers.Reshape, layers.Permute, layers.ZeroPadding1D, layers.ZeroPadding2D,
    layers.ZeroPadding3D, layers.Cropping1D, layers.Cropping2D, layers.Cropping3D,
    layers.UpSampling1D, layers.UpSampling2D, layers.RepeatVector)
_MERGE_ENDPOINT = (layers.Add, layers.Average, layers.Maximum, layers.Minimum,
                   layers.Concatenate)

_RULES = []  # (class, fn), searched in order; registered rules first


def register_interval_rule(cls):
    """Register `fn(layer, inputs, training) -> Interval` as IBP's rule for layers of `cls`
    (`inputs` is one `Interval`, or a list for merge layers). A decorator:

    ```python
    @register_interval_rule(MyLayer)
    def my_rule(layer, box, training):
        return box.map(layer)
    ```
    """

    def decorator(fn):
        _RULES.insert(0, (cls, fn))
        return fn

    return decorator


def _single(fn):
    def rule(layer, inputs, training):
        return fn(layer, inputs[0] if isinstance(inputs, list) else inputs, training)

    return rule


def _merge(layer, inputs, training):
    if isinstance(layer, layers.Subtract):
        a, b = inputs
        return Interval(a.lower - b.upper, a.upper - b.lower)
    if isinstance(layer, (layers.Add, layers.Average)) and all(i.is_centred for i in inputs):
        radius = tf.add_n([i.radius for i in inputs])
        if isinstance(layer, layers.Average):
            radius = radius / len(inputs)
        return Interval.from_centre(layer([i.centre for i in inputs]), radius)
    return Interval(layer([i.lower for i in inputs]), layer([i.upper for i in inputs]))


def _linear_nonnegative(layer, box, training):
    if box.is_centred:
        return Interval.from_centre(layer(box.centre), layer(box.radius))
    return box.map(layer)


def _activation_layer(layer, box, training):
    return _activate(layer, layer.activation, box)


def _relu_layer(layer, box, training):
    if float(layer.negative_slope) >= 0:
        return box.map(layer)
    return _kinked(box, layer)


def _leaky(layer, box, training):
    return _kinked(box, layer)


def _quantizer_layer(layer, box, training):
    return quantizer_interval(layer, layer, box, "forward pass")


def _base_rules():
    return [
        ((layers.Dense, layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.DepthwiseConv2D,
          layers.DepthwiseConv1D), _single(_affine_layer)),
        (layers.BatchNormalization, _single(_batch_norm)),
        (layers.Rescaling, _single(_rescaling)),
        (layers.Activation, _single(_activation_layer)),
        (layers.ReLU, _single(_relu_layer)),
        ((layers.LeakyReLU, layers.PReLU, layers.ELU), _single(_leaky)),
        (IDENTITY_LAYERS, _single(lambda layer, box, training: box)),
        (_ENDPOINT, _single(lambda layer, box, training: box.map(layer))),
        (LINEAR_LAYERS, _single(_linear_nonnegative)),
        ((*_MERGE_ENDPOINT, layers.Subtract), _merge),
        (lq.quantizers.Quantizer, _single(_quantizer_layer)),
    ]


_RULES.extend(_base_rules())


def _abc_activation(layer, box, training):
    r"""ABC-Net's $\sum_n \beta_n H_{v_n}(x)$ with non-decreasing steps $H$: the terms with
    $\beta_n \ge 0$ are smallest at $l$, the others at $u$ (a sum of interval maps)."""
    scale = tf.convert_to_tensor(layer.scale)

    def part(x, scales):
        # The layer's own call with the scales of one sign: its forward and its STE.
        with _patched(layer, "scale", scales, track=False):
            return layer(x)

    positive, negative = tf.maximum(scale, 0.0), tf.minimum(scale, 0.0)
    return Interval(part(box.lower, positive) + part(box.upper, negative),
                    part(box.upper, positive) + part(box.lower, negative))


def _cyclic_sign(q, box):
    r"""CycleBNN's $\operatorname{sign}(Q_k(x))$ with a min-max grid of step $s$ over each
    sample (or filter): the grid moves with the input, but $|Q_k(x) - x| \le s/2$ and
    $s \le \bar s = (\max u - \min l) / (2^k - 1)$ over the box, so
    $[\operatorname{sign}(l - \bar s/2), \operatorname{sign}(u + \bar s/2)]$ contains it
    (exactly $[q(l), q(u)]$ at `bits <= 0`, the plain sign)."""
    from larq_l1inf import quantizers

    lower, upper = box.lower, box.upper
    rank = lower.shape.rank
    axes = list(range(1, rank)) if q.mode == "activations" else list(range(rank - 1))
    levels = tf.pow(2.0, tf.maximum(q.bits, 1.0)) - 1.0
    spread = tf.reduce_max(upper, axes, keepdims=True) - tf.reduce_min(lower, axes, keepdims=True)
    # The quantizer's floor on the step, and its min/max as constants in the backward pass.
    half = tf.stop_gradient(tf.where(q.bits > 0, tf.maximum(spread / levels, 1e-8), 0.0) / 2)
    grad = (quantizers.approx_sign_gradient if q.mode == "activations"
            else lambda v: tf.ones_like(v))
    sign = lambda v: quantizers.straight_through(lq.math.sign, v, grad)  # noqa: E731
    return Interval(sign(lower - half), sign(upper + half))


def _variant_rules():
    """Rules for this package's BNN-variant layers and quantizers."""
    from larq_l1inf import layers as ours
    from larq_l1inf import quantizers

    for cls in (quantizers.EDESign, quantizers.DoReFaActivation):  # elementwise sign / round
        register_monotone_quantizer(cls)
    _QUANTIZER_RULES.append((quantizers.CyclicSign, _cyclic_sign))
    rules = [
        (ours.RSign, lambda layer, box, training: box.map(layer)),  # sign(x - alpha_c)
        (ours.GradientQuantizer, lambda layer, box, training: box.map(layer)),  # identity
        (ours.RPReLU, lambda layer, box, training: _kinked(box, layer, layer.gamma)),
        (ours.Maxout, lambda layer, box, training: _kinked(box, layer)),
        (ours.AdaBinActivation, lambda layer, box, training: _endpoints_either_way(box, layer)),
        (ours.ABCActivation, _abc_activation),
    ]
    for cls, fn in rules:
        _RULES.insert(0, (cls, _single(fn)))


_variant_rules()


def apply_rule(layer, inputs, training=False):
    """The `Interval` of one layer's output by its interval rule (built-in or registered with
    `register_interval_rule`), the same rule `propagate` applies to the layer in a model.

    # Arguments
    layer: a Keras layer (not a model).
    inputs: its input `Interval`, or a list of them for a merge layer.
    training: BatchNormalization with batch statistics of the box centres.

    # Returns
    An `Interval`.

    # Raises
    UnsupportedLayerError: for a layer without a rule, naming it.
    """
    return _rule_for(layer)(layer, inputs, training)


def _rule_for(layer):
    for cls, fn in _RULES:
        if isinstance(layer, cls):
            return fn
    raise UnsupportedLayerError(
        f"Layer {layer.name!r} of type {type(layer).__name__} has no interval-bound rule. "
        "Supported: larq Quant{Conv1D,Conv2D,Conv3D,DepthwiseConv2D,Dense} with sign-type "
        "input quantizers, Conv/Dense/DepthwiseConv, BatchNormalization, pooling, Flatten, "
        "Reshape, Add/Subtract/Concatenate, monotone activations, Rescaling, Normalization, "
        "Dropout. Register one with `larq_l1inf.ibp.register_interval_rule`."
    )


# --------------------------------------------------------------------------------------------
# Walking the model
# --------------------------------------------------------------------------------------------


def _is_softmax(layer):
    if isinstance(layer, layers.Softmax):
        return True
    return isinstance(layer, layers.Activation) and layer.activation in _SOFTMAX


def graph_nodes(model):
    """`(layer, input ids, output ids)` of a functional model in execution order, inputs first
    (input layers left out); ids are the keys Keras gives tensors (`str(id(tensor))` for the
    model's inputs and outputs).

    Keras 2 keeps the graph in private attributes (`_nodes_by_depth`, node ids); its own
    `Functional._run_internal_graph` walks them the same way.
    """
    order = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if isinstance(node.layer, layers.InputLayer):
                continue
            order.append((node.layer, node.flat_input_ids, node.flat_output_ids))
    return order


def _output_layers(model):
    if isinstance(model, tf.keras.Sequential) or not getattr(model, "_is_graph_network", False):
        return [model.layers[-1]]
    return [t._keras_history.layer for t in model.outputs]


def _apply(layer, inputs, training, last):
    if isinstance(layer, tf.keras.Model):
        return propagate(layer, inputs, training=training, logits=last)
    if last and _is_softmax(layer):
        return inputs
    if last and getattr(layer, "activation", None) in _SOFTMAX and not isinstance(
            layer, layers.Activation):
        # Bound the pre-softmax logits: the same layer with a linear activation.
        with _patched(layer, "activation", tf.keras.activations.linear):
            return apply_rule(layer, inputs, training)
    return apply_rule(layer, inputs, training)


class _patched:
    """Set an attribute for the duration of a `with` block; `track=False` bypasses Keras'
    attribute tracking (a tensor in place of a layer's weight)."""

    def __init__(self, obj, attr, value, track=True):
        self.obj, self.attr, self.value = obj, attr, value
        self.set = setattr if track else object.__setattr__

    def __enter__(self):
        self.old = getattr(self.obj, self.attr)
        self.set(self.obj, self.attr, self.value)

    def __exit__(self, *exc):
        self.set(self.obj, self.attr, self.old)


def propagate(model, box, training=False, logits=True, until=None):
    """Propagate an input `Interval` through a Keras model; returns the output `Interval`.

    # Arguments
    model: a Sequential or functional Keras model (nested models are walked too).
    box: an `Interval` of the model's input (or a list for several inputs).
    training: use batch statistics of the box centres in BatchNormalization instead of the
        moving averages (for IBP training; the moving averages are not updated).
    logits: a softmax as the model's last operation is skipped, so the pre-softmax logits are
        bounded.
    until: a layer of the model; return the `Interval` of that layer's input instead (its
        input quantizer not applied), e.g. for folding the last layer into a margin.

    # Raises
    UnsupportedLayerError: naming the first layer that cannot be bounded.
    """
    last_layers = _output_layers(model)
    if isinstance(model, tf.keras.Sequential) or not getattr(model, "_is_graph_network", False):
        current = box
        for layer in model.layers:
            if layer is until:
                return current
            current = _apply(layer, current, training, logits and layer is last_layers[-1])
        return current
    values = {}
    boxes = box if isinstance(box, (list, tuple)) else [box]
    if len(boxes) != len(model.inputs):
        raise ValueError(
            f"Model {model.name!r} has {len(model.inputs)} inputs, got {len(boxes)} boxes.")
    for tensor, b in zip(model.inputs, boxes):
        values[str(id(tensor))] = b
    for layer, in_ids, out_ids in graph_nodes(model):
        inputs = [values[i] for i in in_ids]
        if layer is until:
            return inputs[0] if len(inputs) == 1 else inputs
        result = _apply(layer, inputs if len(inputs) > 1 else inputs[0], training,
                        logits and layer in last_layers)
        if len(out_ids) != 1:
            raise UnsupportedLayerError(
                f"Layer {layer.name!r} has {len(out_ids)} outputs; IBP needs one.")
        values[out_ids[0]] = result
    outputs = [values[str(id(t))] for t in model.outputs]
    return outputs[0] if len(outputs) == 1 else outputs


def _check_epsilon(epsilon):
    if tf.is_tensor(epsilon):
        return epsilon
    value = np.asarray(epsilon, dtype=np.float32)
    if not np.all(np.isfinite(value)) or np.any(value < 0):
        raise ValueError(
            f"`epsilon` must be finite and >= 0 (the L-inf radius in input units, e.g. 2/255), "
            f"got {epsilon!r}."
        )
    return value


def input_box(x, epsilon, clip=(0.0, 1.0)):
    """The input `Interval`: `[x - epsilon, x + epsilon]`, both ends clipped to `clip`.

    `epsilon` is a number, or an array broadcastable to `x` (e.g. shape `(batch, 1, 1, 1)` for
    one radius per sample). Clipping both ends keeps `lower <= upper` even for an `x` outside
    `clip`.

    # Raises
    ValueError: for a negative or non-finite `epsilon`, or a `clip` with `lo > hi`.
    """
    epsilon = _check_epsilon(epsilon)
    x = tf.convert_to_tensor(x, tf.float32)
    epsilon = tf.cast(epsilon, x.dtype)
    lower, upper = x - epsilon, x + epsilon
    if clip is not None:
        lo, hi = (float(c) for c in clip)
        if not lo <= hi:
            raise ValueError(
                f"`clip` must be (lo, hi) with lo <= hi, got {clip!r}; None for no clipping.")
        lower, upper = tf.clip_by_value(lower, lo, hi), tf.clip_by_value(upper, lo, hi)
    return Interval(lower, upper)


def interval_bounds(model, x, epsilon, clip=(0.0, 1.0), training=False):
    r"""Elementwise lower and upper bounds of a model's logits over an L-inf input box.

    \\[
    l \le f(x') \le u \quad \forall x':\ \|x' - x\|_\infty \le \epsilon,\ c_0 \le x' \le c_1
    \\]

    by interval bound propagation. If the model ends in a softmax, the bounds are of the
    pre-softmax logits. Differentiable: use it inside a training step (the sign of an interval
    endpoint passes the gradient of the quantizer's straight-through estimator).

    # Arguments
    model: a Keras model of supported layers (see the module docstring).
    x: input batch in the model's input units.
    epsilon: the L-inf radius, >= 0: a number or an array broadcastable to `x`.
    clip: `(lo, hi)` valid input range the box is clipped to, or None.
    training: BatchNormalization with batch statistics of the box centres (IBP training).

    # Returns
    `(lower, upper)` tensors of the logits' shape.

    # Raises
    ValueError: for a negative `epsilon`.
    UnsupportedLayerError: naming a layer that cannot be bounded.

    # References
    - S. Gowal et al. On the Effectiveness of Interval Bound Propagation for Training
      Verifiably Robust Models. arXiv:1810.12715, 2018, eq. 6.
    """
    out = propagate(model, input_box(x, epsilon, clip), training=training)
    if isinstance(out, list):
        raise ValueError(f"Model {model.name!r} has several outputs; interval_bounds needs one.")
    return out.lower, out.upper


def _final_linear(model):
    """The model's last Dense (with an optional softmax after it or as its activation), or None."""
    if isinstance(model, tf.keras.Sequential) or getattr(model, "_is_graph_network", False):
        outs = _output_layers(model)
        if len(outs) != 1:
            return None
        layer = outs[0]
        if _is_softmax(layer):
            if isinstance(model, tf.keras.Sequential) or not model._is_graph_network:
                layer = model.layers[-2] if len(model.layers) > 1 else None
            else:
                node = layer._inbound_nodes[-1]
                parents = node.parent_nodes
                layer = parents[0].layer if len(parents) == 1 else None
        if isinstance(layer, layers.Dense) and (
            layer.activation in (tf.keras.activations.linear, *_SOFTMAX)
        ):
            return layer
    return None


def certified_margin(model, x, y, epsilon, clip=(0.0, 1.0), training=False, fold_last=True):
    r"""Per-sample lower bound of the logit margin $\min_{j \ne y}(z_y - z_j)$ over the box.

    With `fold_last=True` (default) and a model ending in a Dense layer, the margin is bounded
    through that layer directly: the interval $[l, u]$ of its input $h$ gives
    $\underline{m}_j = (w_y - w_j)^\top \mu - |w_y - w_j|^\top r + b_y - b_j$, as IBP papers do
    (Gowal et al., sec. 3, "elision of the last layer"); this is never looser than
    $l_y - \max_{j \ne y} u_j$, which is used otherwise.

    # Arguments
    model, x, epsilon, clip, training: as `interval_bounds`.
    y: integer labels, shape `(batch,)`.
    fold_last: fold the last Dense layer into the margin.

    # Returns
    A float tensor `(batch,)`; a sample is verified where it is > 0.
    """
    y = tf.convert_to_tensor(np.asarray(y) if not tf.is_tensor(y) else y)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    box = input_box(x, epsilon, clip)
    head = _final_linear(model) if fold_last else None
    if head is None:
        out = propagate(model, box, training=training)
        classes = out.lower.shape[-1]
        onehot = tf.one_hot(y, classes, dtype=out.lower.dtype)
        lower_y = tf.reduce_sum(out.lower * onehot, axis=-1)
        others = tf.where(onehot > 0, tf.fill(tf.shape(out.upper), -np.inf), out.upper)
        return lower_y - tf.reduce_max(others, axis=-1)
    h = propagate(model, box, training=training, until=head)
    h = quantizer_interval(head, getattr(head, "input_quantizer", None), h)
    kernel = read_kernel(head)  # (in, classes)
    classes = kernel.shape[-1]
    w_y = tf.transpose(tf.gather(kernel, y, axis=1))  # (batch, in)
    diff = w_y[:, :, None] - kernel[None]  # (batch, in, classes): w_y - w_j
    margin = (tf.einsum("bi,bij->bj", h.centre, diff)
              - tf.einsum("bi,bij->bj", h.radius, tf.abs(diff)))
    if head.use_bias:
        margin = margin + tf.gather(head.bias, y)[:, None] - head.bias[None]
    onehot = tf.one_hot(y, classes, dtype=margin.dtype)
    margin = tf.where(onehot > 0, tf.fill(tf.shape(margin), np.inf), margin)
    return tf.reduce_min(margin, axis=-1)


def verified_accuracy(model, x, y, epsilon, clip=(0.0, 1.0), batch_size=256, fold_last=True):
    """Fraction of samples whose certified margin (`certified_margin`) is positive: no input
    in the L-inf box of radius `epsilon` (clipped to `clip`) changes the prediction away from
    the true label `y`.

    # Arguments
    model, x, y, epsilon, clip, fold_last: as `certified_margin`.
    batch_size: samples per bound pass.

    # Returns
    A Python float in [0, 1].
    """
    return positive_fraction(
        lambda xb, yb: certified_margin(model, xb, yb, epsilon, clip, fold_last=fold_last),
        x, y, batch_size)


def positive_fraction(margin_fn, x, y, batch_size=256):
    """Fraction of samples whose margin bound `margin_fn(x_batch, y_batch)` is positive,
    computed over batches of `batch_size` (the verified accuracy of any bound).

    # Raises
    ValueError: for `x` and `y` of different lengths or no samples.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"`x` and `y` differ in length: {len(x)} vs {len(y)}.")
    if len(x) == 0:
        raise ValueError("verified_accuracy needs at least one sample.")
    verified = 0
    for start in range(0, len(x), batch_size):
        margin = margin_fn(x[start:start + batch_size], y[start:start + batch_size])
        verified += int(tf.reduce_sum(tf.cast(margin > 0, tf.int32)))
    return verified / len(x)

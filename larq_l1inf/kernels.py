"""One answer to "which kernels are binary, what is `W_b`, what is alpha", for every module.

The penalty (`larq_l1inf.regularizers`), the baselines, `L1InfCallback`, the bounds
(`larq_l1inf.bounds`) and the deployment diagnosis (`larq_l1inf.flatbuffer`) all call these
functions, so they cannot disagree:

- `model_kernels(model)` walks a model (nested models and layers included, each layer once,
  depthwise kernels too) and returns one `Kernel` per kernel weight.
- A kernel is binary when its quantizer is, decided as larq decides
  (`larq.layers_base._is_binary`): `precision == 1` and not the `NoOp` tag.
- `binary_kernel(weight)` is the unscaled quantized kernel `W_b`; `quantized_kernel(weight)`
  is what the layer computes with (`alpha * W_b` for scaled quantizers).
- `scaling_factor(weight, mode)` is alpha. `mode="auto"` takes the scale the layer computes
  with, so XNOR-style quantizers get the term `||diag(alpha) W_b||_{1,inf}` (method.md,
  "Binarization").

A quantizer may define two hooks: `binary_kernel(latent)` (the unscaled `W_b`) and
`scale(latent)` (a scalar or one value per output channel). Without hooks: larq's
`MagnitudeAwareSign` is split into `sign` and its per-channel mean |w|; another 1-bit
quantizer is probed on the layer's own latent weights: if its output has magnitude 1 it is
unscaled (`W_b = Q(W_F)`), otherwise its per-output-channel magnitude is its scale and
`W_b = Q(W_F) / scale`.

A layer whose kernels do not sit under larq's attribute names (a multi-bit layer of
`larq_l1inf.mbn`, which binarizes one latent kernel into several bases) defines the layer hook
`kernel_entries()`, returning its `Kernel` tuples. If it computes its own penalty term it also
defines `penalty_term(regularizer=None)` (the term before delta and the reduction, see
`larq_l1inf.regularizers.kernel_term`) and `combined_kernel()`, the kernel-shaped operator it
computes with (scales included); `is_multi_base(layer)` tells such layers apart.
"""

import collections

import larq as lq

from larq_l1inf._keras import tf

__all__ = [
    "ALPHA_MODES",
    "KERNEL_ATTRIBUTES",
    "Kernel",
    "binary_kernel",
    "binary_kernels",
    "is_binary",
    "is_binary_quantizer",
    "is_multi_base",
    "kernel_rows",
    "l1inf_norm",
    "latent_kernel",
    "layer_kernels",
    "model_kernels",
    "model_layers",
    "quantized_kernel",
    "scaling_factor",
]

ALPHA_MODES = ("auto", "layer", "channel", "none")
# (weight, quantizer, regularizer) attributes of the larq layers that hold a kernel.
KERNEL_ATTRIBUTES = (
    ("kernel", "kernel_quantizer", "kernel_regularizer"),
    ("depthwise_kernel", "depthwise_quantizer", "depthwise_regularizer"),
)

Kernel = collections.namedtuple(
    "Kernel", ["layer", "weight", "quantizer", "regularizer", "depthwise"]
)
Kernel.__doc__ = """One kernel weight of a model.

# Attributes
layer: the Keras layer that owns it.
weight: the kernel (a larq `QuantizedVariable` or a plain variable).
quantizer: the layer's quantizer for it (None for a full-precision kernel).
regularizer: the layer's regularizer for it (None if there is none).
depthwise: whether it is a depthwise kernel `(kh, kw, c_in, m)`.
"""


def is_binary_quantizer(quantizer):
    """Whether a quantizer is binary, as `larq.layers_base._is_binary` decides.

    # Arguments
    quantizer: a larq quantizer (instance or function), or None.

    # Returns
    True for `precision == 1` unless the quantizer is larq's `NoOp` tag.
    """
    return getattr(quantizer, "precision", None) == 1 and not isinstance(
        quantizer, lq.quantizers.NoOp
    )


def is_binary(layer):
    """Whether a layer has a binary kernel (or depthwise) quantizer, decided as larq does
    (for a layer with the `kernel_entries()` hook: one of its entries has)."""
    if _entries_hook(layer) is not None:
        return bool(layer_kernels(layer, binary=True))
    return any(is_binary_quantizer(getattr(layer, q, None)) for _, q, _ in KERNEL_ATTRIBUTES)


def is_multi_base(layer):
    """Whether a layer computes with several binary bases of one kernel and its own penalty
    term (the hooks `kernel_entries`, `penalty_term` and `combined_kernel`; `larq_l1inf.mbn`)."""
    return all(callable(getattr(layer, hook, None))
               for hook in ("kernel_entries", "penalty_term", "combined_kernel"))


def _entries_hook(layer):
    hook = getattr(layer, "kernel_entries", None)
    return hook if callable(hook) else None


def model_layers(model):
    """The layers of a model in its order, nested models and layers flattened, each once.

    # Arguments
    model: a Keras model or layer.

    # Returns
    A list of layers (the model itself is not included).
    """
    found, seen = [], set()

    def visit(layer):
        children = getattr(layer, "layers", None)
        if children is None:
            children = [m for m in layer.submodules if isinstance(m, tf.keras.layers.Layer)]
        for child in children:
            if id(child) in seen:
                continue
            seen.add(id(child))
            if not isinstance(child, tf.keras.Model):
                found.append(child)
            visit(child)

    visit(model)
    return found


def model_kernels(model, binary=None):
    """Every kernel weight of a model, as `Kernel` tuples, in the model's layer order.

    # Arguments
    model: a Keras model (nested models and layers are searched, each layer once).
    binary: None for all kernels; True for binary ones only (`is_binary_quantizer` of their
        quantizer), False for the others.

    # Returns
    A list of `Kernel`.
    """
    found = []
    for layer in model_layers(model):
        found.extend(layer_kernels(layer, binary))
    return found


def layer_kernels(layer, binary=None):
    """The kernel weights of one layer (`kernel`, `depthwise_kernel`), as `Kernel` tuples.

    # Arguments
    layer: a built Keras layer.
    binary: None for all kernels, True for binary ones only, False for the others.

    # Returns
    A list of `Kernel` (empty for a layer without a kernel).
    """
    hook = _entries_hook(layer)
    if hook is not None:
        return [entry for entry in hook()
                if binary is None or binary == is_binary_quantizer(entry.quantizer)]
    found = []
    for weight_attr, quantizer_attr, regularizer_attr in KERNEL_ATTRIBUTES:
        weight = getattr(layer, weight_attr, None)
        if weight is None or not hasattr(weight, "shape"):
            continue
        quantizer = getattr(weight, "quantizer", None) or getattr(layer, quantizer_attr, None)
        entry = Kernel(layer, weight, quantizer, getattr(layer, regularizer_attr, None),
                       weight_attr == "depthwise_kernel")
        if binary is None or binary == is_binary_quantizer(quantizer):
            found.append(entry)
    return found


def binary_kernels(model):
    """The binary kernels of a model: `model_kernels(model, binary=True)`."""
    return model_kernels(model, binary=True)


def latent_kernel(weight):
    """The latent full-precision weights `W_F` of a kernel, as a tensor."""
    return tf.convert_to_tensor(getattr(weight, "latent_variable", weight))


def _is_depthwise(weight, depthwise):
    if depthwise is not None:
        return bool(depthwise)
    return "depthwise" in (getattr(weight, "name", "") or "")


def _row_axes(rank, depthwise):
    """Axes that one row (output channel) spans: `(kh, kw)` for depthwise, else all but last."""
    return [0, 1] if depthwise else list(range(rank - 1))


def _hook(quantizer, name):
    hook = getattr(quantizer, name, None)
    return hook if callable(hook) else None


def _is_unscaled(quantizer, weight, depthwise):
    """Whether a hook-less 1-bit quantizer outputs magnitude 1 on the layer's own weights.

    Probed eagerly (outside any graph being traced), so "scaled or not" is a Python decision,
    not a traced branch.
    """
    source = getattr(weight, "latent_variable", weight)
    with tf.init_scope():
        value = tf.convert_to_tensor(quantizer(tf.convert_to_tensor(source)))
        magnitudes = tf.reduce_max(tf.abs(value), axis=_row_axes(value.shape.rank, depthwise))
        return bool(tf.reduce_all(tf.abs(magnitudes - 1.0) < 1e-6).numpy())


def _is_float(quantizer):
    """A full-precision kernel: no quantizer, or larq's `NoOp` tag (which quantizes nothing)."""
    return quantizer is None or isinstance(quantizer, lq.quantizers.NoOp)


def _split(weight, depthwise=None):
    """`(W_b, scale)`: the unscaled quantized kernel and the quantizer's own scale.

    `scale` is None for full-precision kernels and unscaled quantizers, else a tensor that
    broadcasts against the kernel.
    """
    depthwise = _is_depthwise(weight, depthwise)
    quantizer = getattr(weight, "quantizer", None)
    latent = latent_kernel(weight)
    if _is_float(quantizer):
        return latent, None
    binary_hook, scale_hook = _hook(quantizer, "binary_kernel"), _hook(quantizer, "scale")
    if binary_hook is not None:
        w_b = tf.convert_to_tensor(binary_hook(latent))
        scale = scale_hook(latent) if scale_hook is not None else None
        return w_b, None if scale is None else _broadcastable_scale(scale, latent, depthwise)
    if isinstance(quantizer, lq.quantizers.MagnitudeAwareSign):
        # Its output is alpha_c * sign(w) with alpha_c the mean |w| of output channel c (eq. 1).
        scale = tf.reduce_mean(tf.abs(latent), axis=list(range(latent.shape.rank - 1)))
        return lq.quantizers.ste_sign(latent, clip_value=quantizer.clip_value), scale
    if scale_hook is not None:
        scale = _broadcastable_scale(scale_hook(latent), latent, depthwise)
        return tf.math.divide_no_nan(tf.convert_to_tensor(quantizer(latent)), scale), scale
    output = tf.convert_to_tensor(quantizer(latent))
    if is_binary_quantizer(quantizer):
        if not _is_unscaled(quantizer, weight, depthwise):
            scale = tf.stop_gradient(tf.reduce_max(
                tf.abs(output), axis=_row_axes(output.shape.rank, depthwise), keepdims=True))
            return tf.math.divide_no_nan(output, scale), scale
    return output, None


def _broadcastable_scale(scale, latent, depthwise):
    """A quantizer's `scale()` (scalar, `(c_out,)` or one per row) as a kernel-broadcastable tensor."""
    scale = tf.cast(tf.convert_to_tensor(scale), latent.dtype)
    shape = latent.shape
    if scale.shape.rank == 0 or scale.shape.num_elements() == 1:
        return tf.reshape(scale, ())
    if scale.shape.rank == 1 and scale.shape[0] == shape[-1]:
        return scale
    if depthwise and scale.shape.num_elements() == shape[2] * shape[3]:
        return tf.reshape(scale, (1, 1, shape[2], shape[3]))
    if scale.shape == shape:
        return scale
    raise ValueError(
        f"A quantizer's scale() must return a scalar or one value per output channel "
        f"(shape ({shape[-1]},)) for a kernel of shape {shape}; got shape {scale.shape}."
    )


def binary_kernel(weight, depthwise=None):
    """The unscaled quantized kernel `W_b = Q(W_F)` a larq layer computes with, STE gradient.

    A larq layer hands its regularizer the *latent* kernel wrapped as a `QuantizedVariable`,
    outside `quantized_scope`; this applies the layer's own quantizer to the latent weights.
    A full-precision kernel (no quantizer, or larq's `NoOp`) is returned unchanged. For a scaled quantizer the
    scale is left out (it is alpha, see `scaling_factor`): the quantizer's
    `binary_kernel(latent)` hook if it has one, `sign(w)` for larq's `MagnitudeAwareSign`,
    `Q(W_F) / scale` for a quantizer with only a `scale(latent)` hook or a hook-less 1-bit
    quantizer whose output magnitude is not 1.

    # Arguments
    weight: a larq `QuantizedVariable`, a plain variable or a tensor.
    depthwise: whether the kernel is depthwise; None guesses from the weight's name.

    # Returns
    A float tensor of the kernel's shape.
    """
    return _split(weight, depthwise)[0]


def quantized_kernel(weight):
    """The kernel as the layer computes with it: `Q(W_F)` (`alpha * W_b` for scaled quantizers),
    or the float kernel of a full-precision layer."""
    quantizer = getattr(weight, "quantizer", None)
    latent = latent_kernel(weight)
    return latent if quantizer is None else tf.convert_to_tensor(quantizer(latent))


def kernel_rows(w, depthwise=False):
    """Reshape a kernel into one row per output channel: shape `(c_out, fan_in)`.

    Dense `(c_in, c_out)` and conv `(*k, c_in, c_out)` kernels put output channels last, so
    a row is one output filter. A depthwise kernel `(kh, kw, c_in, m)` has `c_in * m` output
    channels of `kh * kw` weights each.

    # Arguments
    w: a kernel tensor or variable of rank >= 2.
    depthwise: treat `w` as a depthwise kernel.

    # Returns
    A tensor of shape `(c_out, fan_in)`.

    # Raises
    ValueError: for weights of rank < 2 (biases, batch-norm parameters), which are no kernel.
    """
    w = tf.convert_to_tensor(w)
    rank = w.shape.rank
    if rank is None or rank < 2:
        raise ValueError(
            f"A kernel penalty needs a kernel of rank >= 2 (Dense, Conv1D/2D/3D or depthwise "
            f"kernel), got a weight of shape {w.shape}. Put the regularizer on a layer's "
            "`kernel_regularizer` (or `depthwise_regularizer`), not on a bias or "
            "normalisation parameter."
        )
    if depthwise:
        if rank != 4:
            raise ValueError(f"A depthwise kernel has rank 4, got shape {w.shape}.")
        return tf.transpose(tf.reshape(w, (-1, w.shape[2] * w.shape[3])))
    return tf.transpose(tf.reshape(w, (-1, w.shape[-1])))


def l1inf_norm(w, depthwise=False):
    """$\\|W\\|_{1,\\infty}$: the largest L1 norm over output channels (the last axis).

    For a conv kernel `(kh, kw, c_in, c_out)` a row is one output filter of `kh*kw*c_in`
    weights: this is the induced inf->inf operator norm of the layer (Cor. A.1).

    # Arguments
    w: a kernel tensor or variable of rank >= 2.
    depthwise: treat `w` as a depthwise kernel `(kh, kw, c_in, m)`.

    # Returns
    A scalar tensor.

    # References
    - W. Zheng, J. Chen, H. Guo, W. Wang. Can DBNNs Robust to Environmental Noise for
      Resource-constrained Scenarios? ICML 2025, Cor. A.1 (eq. 23-24).

    !!! example
        ```python
        import numpy as np
        from larq_l1inf import l1inf_norm
        w = np.array([[1.0, -2.0], [3.0, 0.5]])  # (c_in=2, c_out=2)
        assert float(l1inf_norm(w)) == 4.0        # output channel 0: |1| + |3|
        ```
    """
    rows = kernel_rows(tf.cast(w, tf.float32), depthwise=depthwise)
    return tf.reduce_max(tf.reduce_sum(tf.abs(rows), axis=1))


def scaling_factor(weight, mode="auto", depthwise=None):
    """The scaling factor alpha of a kernel, one value per layer or per output channel (row).

    $$\\alpha = \\frac{\\|W_F\\|_1}{n}\\ (\\text{eq. 1}),\\qquad
      \\alpha_c = \\frac{\\|W_{F,c}\\|_1}{n_c}\\ (\\text{XNOR-style, per output channel } c)$$

    - `"auto"` (default): the scale the layer computes with. The quantizer's `scale(latent)`
      hook if it has one; the per-output-channel mean |w| for larq's `MagnitudeAwareSign`;
      the per-channel output magnitude of a hook-less scaled 1-bit quantizer; eq. 1 (one
      value per layer) for unscaled quantizers (`ste_sign`, `approx_sign`, multi-bit ones).
    - `"layer"`: eq. 1, one value per layer. `"channel"`: one value per output channel.
      `"none"`: 1 (the paper's "w/o" ablation, tables 15-16).

    A full-precision kernel (no quantizer, or larq's `NoOp`) has alpha = 1 in every mode: it already carries its
    own scale (method.md).

    # Arguments
    weight: a larq `QuantizedVariable` or a plain variable.
    mode: `"auto"`, `"layer"`, `"channel"` or `"none"`.
    depthwise: whether the kernel is depthwise; None guesses from the weight's name.

    # Returns
    A float tensor: a scalar, or shape `(c_out,)` with one value per row of `kernel_rows`.

    # Raises
    ValueError: for an unknown mode, or a `scale()` hook of the wrong shape.

    # References
    - W. Zheng et al. ICML 2025, eq. 1 and 18.
    - M. Rastegari, V. Ordonez, J. Redmon, A. Farhadi. XNOR-Net. ECCV 2016, eq. 4-6.
    """
    if mode not in ALPHA_MODES:
        raise ValueError(f"`alpha` must be one of {ALPHA_MODES}, got {mode!r}.")
    depthwise = _is_depthwise(weight, depthwise)
    latent = latent_kernel(weight)
    if _is_float(getattr(weight, "quantizer", None)) or mode == "none":
        return tf.ones((), latent.dtype)
    if mode == "layer":
        return tf.reduce_mean(tf.abs(latent))
    if mode == "channel":
        return tf.reduce_mean(tf.abs(kernel_rows(latent, depthwise)), axis=1)
    scale = _split(weight, depthwise)[1]
    if scale is None:
        return tf.reduce_mean(tf.abs(latent))
    if scale.shape.rank == 0:
        return scale
    # One value per row: broadcast to the kernel, then read one entry of each row.
    return kernel_rows(tf.broadcast_to(scale, latent.shape), depthwise)[:, 0]

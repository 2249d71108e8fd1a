"""The L1,inf-norm penalty for larq quantized layers, and the base every kernel penalty shares.

The penalty of Zheng et al. (eq. 18-19) is

$$\\mathcal{L}_p = \\delta \\prod_{j=1}^{Q} \\alpha_j \\|W_b^j\\|_{1,\\infty},$$

where $W_b^j = Q(W_F^j)$ is the layer's own quantized kernel, $\\alpha_j = \\|W_F^j\\|_1 / n$ its
scaling factor and $\\|A\\|_{1,\\infty} = \\max_i \\sum_k |a_{ik}|$ the largest L1 norm of a row,
one row per output filter. The decisions the paper leaves open are taken in
`docs/method.md`; each is applied here in one commented line.
"""

import logging
import math

import larq as lq
import numpy as np

from larq_l1inf._keras import tf

log = logging.getLogger(__name__)

__all__ = [
    "KernelPenalty",
    "L1InfRegularizer",
    "attach",
    "binary_kernel",
    "is_binary",
    "kernel_rows",
    "l1inf_norm",
    "penalized_layers",
    "penalty",
    "scaling_factor",
]

REDUCTIONS = ("log", "sum", "product")
ALPHA_MODES = ("layer", "channel", "none")
# (weight, quantizer, regularizer) attributes of the larq layers that hold a kernel.
KERNEL_ATTRIBUTES = (
    ("kernel", "kernel_quantizer", "kernel_regularizer"),
    ("depthwise_kernel", "depthwise_quantizer", "depthwise_regularizer"),
)
# exp() of anything above this overflows float32 (max 3.4e38); below -87.3 it leaves the normal range.
_LOG_FLOAT32_MAX = math.log(np.finfo(np.float32).max)
_LOG_FLOAT32_TINY = math.log(np.finfo(np.float32).tiny)
# Floor for a layer term before its log: an all-zero kernel would give log(0) = -inf.
_TERM_FLOOR = 1e-12


def _check_delta(delta, name="delta"):
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number, got {delta!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"`{name}` must be a finite number >= 0, got {delta!r}. The paper uses 5e-3 and 5e-2; "
            "use 0 to switch the penalty off."
        )
    return value


def _check_choice(value, choices, name):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


def is_binary_quantizer(quantizer):
    """Whether a quantizer is binary, as `larq.layers_base._is_binary` decides: precision 1,
    not the `NoOp` tag."""
    return getattr(quantizer, "precision", None) == 1 and not isinstance(
        quantizer, lq.quantizers.NoOp
    )


def is_binary(layer):
    """Whether a layer has a binary kernel quantizer, decided as larq does (`precision == 1`)."""
    return any(is_binary_quantizer(getattr(layer, q, None)) for _, q, _ in KERNEL_ATTRIBUTES)


def binary_kernel(kernel):
    """The quantized kernel `W_b = Q(W_F)` a larq layer computes with, with its STE gradient.

    A larq layer hands its regularizer the *latent* kernel wrapped as a `QuantizedVariable`,
    outside `quantized_scope`; this applies the layer's own quantizer to the latent weights.
    Kernels without a quantizer (full-precision layers, `kernel_quantizer=None`) are returned
    unchanged. A quantizer whose output is `alpha * W_b` (larq's `MagnitudeAwareSign`, or any
    quantizer with a `binary_kernel(latent)` method) contributes only `W_b`: alpha is applied
    by the penalty's `alpha` mode, never twice.

    # Arguments
    kernel: a larq `QuantizedVariable`, a plain variable or a tensor.

    # Returns
    A float tensor of the kernel's shape.
    """
    latent = getattr(kernel, "latent_variable", kernel)
    quantizer = getattr(kernel, "quantizer", None)
    latent = tf.convert_to_tensor(latent)
    if quantizer is None:
        return latent
    if hasattr(quantizer, "binary_kernel"):
        # A quantizer whose output carries its own scale says which part is W_b (eq. 1).
        return tf.convert_to_tensor(quantizer.binary_kernel(latent))
    if isinstance(quantizer, lq.quantizers.MagnitudeAwareSign):
        # Its output is alpha_c * sign(w) (eq. 1): keep the binary part, alpha is applied by mode.
        return lq.quantizers.ste_sign(latent, clip_value=quantizer.clip_value)
    return tf.convert_to_tensor(quantizer(latent))


def _is_depthwise(kernel):
    name = getattr(kernel, "name", "") or ""
    return "depthwise" in name


def kernel_rows(w, depthwise=False):
    """Reshape a kernel into one row per output channel: shape `(c_out, fan_in)`.

    Dense `(c_in, c_out)` and conv `(*k, c_in, c_out)` kernels put output channels last, so
    a row is one output filter. A depthwise kernel `(kh, kw, c_in, m)` has `c_in * m` output
    channels of `kh * kw` weights each.

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


def scaling_factor(latent_rows, mode="layer"):
    """The scaling factor alpha = ||W_F||_1 / n of eq. 1, from latent rows `(c_out, fan_in)`.

    `mode="layer"`: one scalar; `"channel"`: one per output channel (XNOR-style), shape
    `(c_out,)`; `"none"`: 1 (the paper's "w/o" ablation).
    """
    _check_choice(mode, ALPHA_MODES, "alpha")
    if mode == "none":
        return tf.ones((), latent_rows.dtype)
    if mode == "channel":
        return tf.reduce_mean(tf.abs(latent_rows), axis=1)
    return tf.reduce_mean(tf.abs(latent_rows))


class KernelPenalty(tf.keras.regularizers.Regularizer):
    """Base of the kernel penalties: `W_b` extraction, alpha, rows, gradient paths, reduction.

    A subclass implements `layer_term(rows, alpha)`: the layer's non-negative term from the
    quantized rows `(c_out, fan_in)` and alpha (scalar or `(c_out,)`). This class turns it into
    the layer's loss contribution (`delta * t` for `"sum"`, `delta * log t` for `"log"`) so that
    every penalty sees the same quantized kernel and the same layer selection.

    # Arguments
    delta: the constraint coefficient, a finite number >= 0.
    reduction: one of the class's `reductions`: `"sum"` or `"log"` of the layer terms.
    alpha: `"layer"`, `"channel"` or `"none"`; only applied to quantized kernels (a
        full-precision kernel already carries its scale, so there alpha = 1).
    normalize: divide each layer term by the layer's fan-in (`kh*kw*c_in`).
    alpha_gradient: let the gradient reach the latent weights through alpha.
    quantizer_gradient: let the gradient reach the latent weights through the quantizer's
        pseudo-gradient (STE).
    """

    reductions = ("sum", "log")

    def __init__(
        self,
        delta=5e-3,
        reduction="sum",
        alpha="layer",
        normalize=False,
        alpha_gradient=True,
        quantizer_gradient=True,
    ):
        self.delta = _check_delta(delta)
        self.reduction = _check_choice(reduction, self.reductions, "reduction")
        self.alpha = _check_choice(alpha, ALPHA_MODES, "alpha")
        self.normalize = bool(normalize)
        self.alpha_gradient = bool(alpha_gradient)
        self.quantizer_gradient = bool(quantizer_gradient)
        if not (self.alpha_gradient or self.quantizer_gradient):
            log.warning(
                "%s: alpha_gradient and quantizer_gradient are both off, so the penalty has no "
                "gradient and only shows up in the logged loss.", type(self).__name__
            )
        # Linear warm-up factor in [0, 1], set by `L1InfCallback`; a float unless warm-up runs.
        self.warmup_factor = 1.0

    def layer_term(self, rows, alpha):  # pragma: no cover - abstract
        raise NotImplementedError

    def term(self, kernel, depthwise=None):
        """The layer's term `t_j` (before delta and the reduction), as a float32 scalar."""
        if depthwise is None:
            depthwise = _is_depthwise(kernel)
        quantized = getattr(kernel, "quantizer", None) is not None
        w_b = tf.cast(binary_kernel(kernel), tf.float32)
        latent = tf.cast(tf.convert_to_tensor(getattr(kernel, "latent_variable", kernel)), tf.float32)
        if not self.quantizer_gradient:
            w_b = tf.stop_gradient(w_b)
        rows = kernel_rows(w_b, depthwise)
        # Full-precision kernels get alpha = 1: they already carry their own scale (method.md).
        alpha = scaling_factor(kernel_rows(latent, depthwise), self.alpha if quantized else "none")
        if not self.alpha_gradient:
            alpha = tf.stop_gradient(alpha)
        value = self.layer_term(rows, alpha)
        if self.normalize:
            value = value / float(rows.shape[1])
        return value

    def reduce(self, term):
        """One layer's contribution to the loss from its term."""
        if self.reduction == "sum":
            return self.delta * term
        # The log of an all-zero kernel's term would be -inf; the floor keeps it finite.
        return self.delta * tf.math.log(tf.maximum(term, _TERM_FLOOR))

    # Plain TF ops; AutoGraph conversion only produced a warning on every trace.
    @tf.autograph.experimental.do_not_convert
    def __call__(self, kernel):
        if self.delta == 0:
            return tf.zeros(())
        return self.warmup_factor * self.reduce(self.term(kernel))

    def get_config(self):
        return {
            "delta": float(self.delta),
            "reduction": self.reduction,
            "alpha": self.alpha,
            "normalize": self.normalize,
            "alpha_gradient": self.alpha_gradient,
            "quantizer_gradient": self.quantizer_gradient,
        }


@lq.utils.register_keras_custom_object
class L1InfRegularizer(KernelPenalty):
    """The L1,inf-norm penalty of Zheng et al. on a larq quantized kernel.

    Each penalized layer j contributes the term
    $t_j = \\|\\mathrm{diag}(\\alpha_j) W_b^j\\|_{1,\\infty}$ (alpha per layer, per output
    channel, or off), optionally divided by its fan-in; the terms are combined by `reduction`:

    - `"sum"` (default, with `normalize=True`): $\\delta \\sum_j t_j / n_j$, a per-layer sum as
      other Lipschitz regularizers do. Chosen by measurement (`experiments/choose_default.py`,
      README): at the paper's deltas 5e-3 and 5e-2 it never lowered clean or noisy accuracy,
      while `log` at 5e-2, `sum` without normalisation and the literal product did.
    - `"log"`: $\\delta \\sum_j \\log t_j$, the log of the paper's product. Its gradient has the
      product's direction with a bounded size, and it splits into per-layer terms, so the
      regularizer alone carries it.
    - `"product"`: $\\delta \\prod_j t_j$, the paper's eq. 18, computed as
      $\\delta \\exp(\\sum_j \\log t_j)$. It couples all layers, so the per-layer regularizer only
      marks its layer and a model-level loss adds the product: call
      `larq_l1inf.attach(model)` once the model is built, or train with `L1InfCallback()`.
      A product outside float32's range raises an error naming `"log"` instead.

    # Arguments
    delta: the constraint coefficient; the paper uses 5e-3 and 5e-2.
    reduction: `"log"`, `"sum"` or `"product"`.
    alpha: `"layer"` (eq. 1), `"channel"` (XNOR-style, `diag(alpha) W_b`) or `"none"` (the
        paper's "w/o" ablation, tables 15-16).
    normalize: divide each term by the layer's fan-in `n_j = kh*kw*c_in`, which makes `sum`
        comparable across layers of different width (on by default).
    alpha_gradient: gradient path through alpha to the latent weights (on by default).
    quantizer_gradient: gradient path through the quantizer's STE (on by default). For exact
        +-1 weights the norm is the constant fan-in, so these two paths are the only way the
        penalty reaches the latent weights.

    # Raises
    ValueError: for a negative or non-finite delta, an unknown reduction or alpha mode, or
        when applied to a weight of rank < 2.

    # References
    - W. Zheng, J. Chen, H. Guo, W. Wang. Can DBNNs Robust to Environmental Noise for
      Resource-constrained Scenarios? ICML 2025, eq. 18-19, Thm. 4.2, Cor. A.1.

    !!! example
        ```python
        import larq as lq
        import tensorflow as tf
        from larq_l1inf import L1InfRegularizer

        model = tf.keras.Sequential([
            tf.keras.Input((32, 32, 3)),
            lq.layers.QuantConv2D(32, 3, padding="same", pad_values=1.0,
                                  input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                  kernel_constraint="weight_clip", use_bias=False,
                                  kernel_regularizer=L1InfRegularizer(5e-3)),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(10),
        ])
        ```
    """

    reductions = REDUCTIONS

    def __init__(
        self,
        delta=5e-3,
        reduction="sum",
        alpha="layer",
        normalize=True,
        alpha_gradient=True,
        quantizer_gradient=True,
    ):
        # Default sum + normalize: the only setting harmless at both paper deltas (README).
        super().__init__(
            delta=delta,
            reduction=reduction,
            alpha=alpha,
            normalize=normalize,
            alpha_gradient=alpha_gradient,
            quantizer_gradient=quantizer_gradient,
        )
        # Set by `attach`: the model-level product loss is in place, so the layer adds nothing.
        self._attached = False

    def layer_term(self, rows, alpha):
        row_sums = tf.reduce_sum(tf.abs(rows), axis=1)
        if alpha.shape.rank == 1:  # diag(alpha) W_b: each row scaled by its own alpha
            return tf.reduce_max(alpha * row_sums)
        return alpha * tf.reduce_max(row_sums)

    @tf.autograph.experimental.do_not_convert
    def __call__(self, kernel):
        if self.reduction != "product":
            return super().__call__(kernel)
        if not self._attached:
            raise ValueError(
                "L1InfRegularizer(reduction='product') multiplies the terms of all penalized "
                "layers, which one layer's regularizer cannot see. Call "
                "`larq_l1inf.attach(model)` after building (or loading) the model, or pass "
                "`larq_l1inf.L1InfCallback()` to `fit`; or use reduction='log', the log of the "
                "same product, which needs neither."
            )
        return tf.zeros(())


def _register_string_identifiers(cls, *names):
    """Make `kernel_regularizer="l1inf"` yield an instance, as `"l2"` does in Keras.

    Keras turns a string into an *instance* only for names in its regularizers module (a name
    in the custom-object registry comes back as the class), so the alias is added there.
    """
    from tf_keras.src import regularizers as keras_regularizers

    for name in names:
        setattr(keras_regularizers, name, cls)


_register_string_identifiers(L1InfRegularizer, "l1inf")


def penalized_layers(model):
    """The `(layer, weight, regularizer)` triples of a model whose kernel has a `KernelPenalty`.

    Nested models are searched too (`model.submodules`), each layer once.
    """
    found = []
    seen = set()
    for layer in [model, *model.submodules]:
        if id(layer) in seen or not isinstance(layer, tf.keras.layers.Layer):
            continue
        seen.add(id(layer))
        for weight_attr, _, reg_attr in KERNEL_ATTRIBUTES:
            regularizer = getattr(layer, reg_attr, None)
            weight = getattr(layer, weight_attr, None)
            if isinstance(regularizer, KernelPenalty) and weight is not None:
                found.append((layer, weight, regularizer))
    return found


def _product_groups(entries):
    """The product-reduction entries of `penalized_layers`, checked to form one product."""
    entries = [(layer, weight, reg) for layer, weight, reg in entries if reg.reduction == "product"]
    deltas = {reg.delta for _, _, reg in entries}
    if len(deltas) > 1:
        raise ValueError(
            "All L1InfRegularizer(reduction='product') layers of one model form one product "
            f"and must share one delta; got deltas {sorted(deltas)}. Use one regularizer "
            "instance (or equal deltas) for every penalized layer."
        )
    return entries


def _is_depthwise_weight(layer, weight):
    return weight is getattr(layer, "depthwise_kernel", None)


def _layer_term(layer, weight, reg):
    return reg.term(weight, depthwise=_is_depthwise_weight(layer, weight))


def _log_product(entries):
    return tf.add_n(
        [tf.math.log(tf.maximum(_layer_term(*entry), _TERM_FLOOR)) for entry in entries]
    )


def _product_penalty(entries):
    """delta * exp(sum log t_j), refusing values float32 cannot hold instead of inf or 0."""
    reg = entries[0][2]
    if reg.delta == 0:
        return tf.zeros(())
    log_value = _log_product(entries) + math.log(reg.delta)
    message = (
        f"The L1,inf product penalty of {len(entries)} layers leaves float32's range "
        "(log of delta * prod t_j outside [-87.3, 88.7]): the literal product over- or "
        "underflows. Use reduction='log' (its log, same gradient direction), or "
        "reduction='sum' with normalize=True."
    )
    checks = [
        tf.debugging.assert_less_equal(log_value, _LOG_FLOAT32_MAX, message=message),
        tf.debugging.assert_greater_equal(log_value, _LOG_FLOAT32_TINY, message=message),
    ]
    with tf.control_dependencies(checks):
        return reg.warmup_factor * tf.exp(log_value)


def penalty(model):
    """The total penalty that training adds for the model's current weights, a scalar tensor.

    Per-layer (`log`, `sum`) contributions are summed; `product` layers are multiplied into
    one term. A model without any penalized layer gives 0 and a warning.

    # Raises
    tf.errors.InvalidArgumentError: when a `product` penalty leaves float32's range.
    """
    entries = penalized_layers(model)
    if not entries:
        log.warning("penalty(): the model has no layer with an L1InfRegularizer (or KernelPenalty).")
        return tf.zeros(())
    parts = []
    for layer, weight, reg in entries:
        if reg.reduction == "product" or reg.delta == 0:
            continue
        parts.append(reg.warmup_factor * reg.reduce(_layer_term(layer, weight, reg)))
    products = _product_groups(entries)
    if products:
        parts.append(_product_penalty(products))
    return tf.add_n(parts) if parts else tf.zeros(())


def attach(model):
    """Add the model-level loss that `L1InfRegularizer(reduction="product")` needs.

    Idempotent; models without product layers are returned unchanged. The product is checked
    once right away, so a product that over- or underflows fails here, not mid-training.

    # Returns
    The model.

    # Raises
    tf.errors.InvalidArgumentError: when the product leaves float32's range.
    """
    entries = _product_groups(penalized_layers(model))
    if not entries or getattr(model, "_l1inf_attached", False):
        return model
    _product_penalty(entries)  # fail early on over/underflow
    model.add_loss(lambda: _product_penalty(_product_groups(penalized_layers(model))))
    for _, _, reg in entries:
        reg._attached = True
    model._l1inf_attached = True
    # A train/test function traced before the loss was added would not include it.
    model.train_function = model.test_function = None
    return model

"""The L1,inf-norm penalty for larq quantized layers, and the base every kernel penalty shares.

The penalty of Zheng et al. (eq. 18-19) is

$$\\mathcal{L}_p = \\delta \\prod_{j=1}^{Q} \\alpha_j \\|W_b^j\\|_{1,\\infty},$$

where $W_b^j = Q(W_F^j)$ is the layer's own (unscaled) quantized kernel, $\\alpha_j$ its
scaling factor (the scale the layer computes with; $\\|W_F^j\\|_1 / n$, eq. 1, for unscaled
sign quantizers; one per output channel for XNOR-style ones, see `larq_l1inf.kernels`) and $\\|A\\|_{1,\\infty} = \\max_i \\sum_k |a_{ik}|$ the largest L1 norm of a row,
one row per output filter. The decisions the paper leaves open are taken in
`docs/method.md`; each is applied here in one commented line.
"""

import logging
import math

import larq as lq
import numpy as np

from larq_l1inf import kernels
from larq_l1inf._keras import tf
from larq_l1inf.kernels import (  # noqa: F401 - public here too, where users met them first
    ALPHA_MODES,
    KERNEL_ATTRIBUTES,
    binary_kernel,
    is_binary,
    is_binary_quantizer,
    kernel_rows,
    l1inf_norm,
    scaling_factor,
)

log = logging.getLogger(__name__)

__all__ = [
    "KernelPenalty",
    "L1InfRegularizer",
    "PENALTIES",
    "attach",
    "binary_kernel",
    "get",
    "is_binary",
    "kernel_contribution",
    "kernel_rows",
    "kernel_term",
    "l1inf_norm",
    "penalized_layers",
    "penalty",
    "register_penalty",
    "scaling_factor",
]

REDUCTIONS = ("log", "sum", "product")
#: String name -> penalty class, for every penalty registered with `register_penalty`.
PENALTIES = {}
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


def register_penalty(name):
    """Class decorator: register a `KernelPenalty` so that its string name yields an instance.

    The class is registered as a Keras custom object under its class name (saved models load
    without `custom_objects`), and an instance with the default options under `name`, so
    `kernel_regularizer=name` works in any layer, as `"l2"` does in Keras. Keras returns a
    registered object unchanged for a string (`tf.keras.regularizers.get`), so the layers
    that name it share this one default instance; pass an instance to set options. `get(name)`
    gives a fresh instance instead.

    # Arguments
    name: the snake-case string name; must not be one of Keras's own names (`"l1"`, `"l2"`,
        `"l1_l2"`, ...), which it would shadow.

    # Raises
    ValueError: for a name Keras already uses or another penalty holds.
    """

    def decorator(cls):
        keras_names = {n.lower() for n in dir(tf.keras.regularizers)}
        if name.lower() in keras_names:
            raise ValueError(f"{name!r} is a Keras regularizer name; pick another string name.")
        if PENALTIES.get(name, cls) is not cls:
            raise ValueError(f"{name!r} already names {PENALTIES[name].__name__}.")
        lq.utils.register_keras_custom_object(cls)
        PENALTIES[name] = cls
        tf.keras.utils.get_custom_objects()[name] = cls()
        return cls

    return decorator


def get(identifier):
    """A penalty instance from a string name, a config dict or an instance.

    Unlike a string given to a layer (which yields the shared default instance, see
    `register_penalty`), a string here gives a fresh instance.

    # Arguments
    identifier: a name of `PENALTIES` (`"l1inf"`, `"absum"`, ...), a class name, a
        serialized config dict, a regularizer instance, or None.

    # Returns
    A regularizer instance, or None.

    # Raises
    ValueError: for an unknown name.

    !!! example
        ```python
        from larq_l1inf import regularizers
        assert regularizers.get("absum").delta == 5e-3
        ```
    """
    if identifier is None or isinstance(identifier, tf.keras.regularizers.Regularizer):
        return identifier
    if isinstance(identifier, str):
        cls = PENALTIES.get(identifier) or {c.__name__: c for c in PENALTIES.values()}.get(identifier)
        if cls is not None:
            return cls()
    found = tf.keras.regularizers.get(identifier)
    if isinstance(found, str):  # Keras hands an unknown name back unchanged
        raise ValueError(
            f"Unknown regularizer {identifier!r}: use one of {sorted(PENALTIES)}, a Keras "
            "regularizer name such as 'l2', or an instance."
        )
    return found


class KernelPenalty(tf.keras.regularizers.Regularizer):
    """Base of the kernel penalties: `W_b`, alpha, gradient paths and the reduction.

    A subclass implements `layer_term(w_b, alpha, depthwise)`: the layer's non-negative term
    from the unscaled quantized kernel `W_b` (kernel-shaped, `larq_l1inf.kernels.binary_kernel`)
    and alpha (a scalar or one value per output channel, `larq_l1inf.kernels.scaling_factor`).
    This class turns it into the layer's loss contribution (`delta * t` for `"sum"`,
    `delta * log t` for `"log"`), so every penalty sees the same kernel and the same alpha.

    # Arguments
    delta: the constraint coefficient, a finite number >= 0.
    reduction: one of the class's `reductions`: `"sum"` or `"log"` of the layer terms.
    alpha: `"auto"` (the scale the layer computes with: per output channel for XNOR-style
        quantizers, eq. 1 per layer for unscaled sign quantizers), `"layer"`, `"channel"` or
        `"none"`; see `larq_l1inf.kernels.scaling_factor`. Full-precision kernels always
        have alpha = 1.
    normalize: divide each layer term by the layer's fan-in (`kh*kw*c_in`).
    alpha_gradient: let the gradient reach the latent weights through alpha.
    quantizer_gradient: let the gradient reach the latent weights through the quantizer's
        pseudo-gradient (STE).

    # Raises
    ValueError: for a negative or non-finite delta, an unknown reduction or alpha mode.
    """

    reductions = ("sum", "log")

    def __init__(
        self,
        delta=5e-3,
        reduction="sum",
        alpha="auto",
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

    def layer_term(self, w_b, alpha, depthwise):  # pragma: no cover - abstract
        """The layer's term from `W_b` (kernel-shaped), alpha and whether it is depthwise."""
        raise NotImplementedError

    def term(self, kernel, depthwise=None):
        """The layer's term `t_j` (before delta and the reduction), as a float32 scalar.

        # Arguments
        kernel: the kernel the layer hands its regularizer (a `QuantizedVariable`).
        depthwise: whether it is a depthwise kernel; None guesses from its name.
        """
        if depthwise is None:
            depthwise = "depthwise" in (getattr(kernel, "name", "") or "")
        w_b = tf.cast(binary_kernel(kernel, depthwise), tf.float32)
        alpha = tf.cast(scaling_factor(kernel, self.alpha, depthwise), tf.float32)
        if not self.quantizer_gradient:
            w_b = tf.stop_gradient(w_b)
        if not self.alpha_gradient:
            alpha = tf.stop_gradient(alpha)
        value = self.layer_term(w_b, alpha, depthwise)
        if self.normalize:
            value = value / float(kernel_rows(w_b, depthwise).shape[1])
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


def scale_rows(rows, alpha):
    """`diag(alpha) rows` for a per-channel alpha `(c_out,)`, `alpha * rows` for a scalar."""
    if alpha.shape.rank == 1:
        return rows * alpha[:, None]
    return rows * alpha


@register_penalty("l1inf")
class L1InfRegularizer(KernelPenalty):
    """The L1,inf-norm penalty of Zheng et al. on a larq quantized kernel.

    Each penalized layer j contributes the term
    $t_j = \\|\\mathrm{diag}(\\alpha_j) W_b^j\\|_{1,\\infty}$ (alpha per layer, per output
    channel, or off), optionally divided by its fan-in; the terms are combined by `reduction`.
    The string name `"l1inf"` (`kernel_regularizer="l1inf"`) gives the default instance.

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
    alpha: `"auto"` (default): the scale the layer computes with, one per output channel for
        XNOR-style quantizers (larq's `magnitude_aware_sign`, or a quantizer with a
        `scale(latent)` hook), eq. 1 `||W_F||_1 / n` per layer for unscaled sign quantizers
        (`ste_sign`, `approx_sign`, ...). `"layer"` (eq. 1 for every quantizer), `"channel"`
        (mean |w| per output channel) or `"none"` (the paper's "w/o" ablation, tables
        15-16). See `larq_l1inf.kernels.scaling_factor`.
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
        alpha="auto",
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

    def layer_term(self, w_b, alpha, depthwise):
        row_sums = tf.reduce_sum(tf.abs(kernel_rows(w_b, depthwise)), axis=1)
        return tf.reduce_max(alpha * row_sums)  # ||diag(alpha) W_b||_{1,inf}

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


def penalized_layers(model):
    """The kernels of a model that carry a `KernelPenalty`, as `larq_l1inf.kernels.Kernel`
    tuples `(layer, weight, quantizer, regularizer, depthwise)`.

    Nested models and layers are searched too (`larq_l1inf.kernels.model_kernels`), each
    layer once; a multi-bit layer (`larq_l1inf.mbn`) appears through its `kernel_entries()`
    hook with the regularizer it computes its own loss with.
    """
    return [k for k in kernels.model_kernels(model) if isinstance(k.regularizer, KernelPenalty)]


def kernel_term(entry, regularizer=None):
    """The term `t_j` of one `penalized_layers` entry, before delta and the reduction.

    A larq layer's term is `regularizer.term(weight)`; a layer with the `penalty_term`
    hook (a multi-bit layer, `larq_l1inf.kernels.is_multi_base`) computes its own, e.g.
    $\|\sum_m \alpha_m W_b^m\|_{1,\infty}$.

    # Arguments
    entry: a `larq_l1inf.kernels.Kernel`.
    regularizer: the `KernelPenalty` to evaluate; None for the entry's own.

    # Returns
    A float32 scalar tensor.
    """
    reg = entry.regularizer if regularizer is None else regularizer
    hook = getattr(entry.layer, "penalty_term", None)
    if callable(hook):
        return hook(reg)
    return reg.term(entry.weight, depthwise=entry.depthwise)


def kernel_contribution(entry, regularizer=None):
    """One entry's loss contribution `warmup_factor * reduce(t_j)` (`"sum"`/`"log"` only: a
    `"product"` layer contributes through the model-level product, see `penalty`)."""
    reg = entry.regularizer if regularizer is None else regularizer
    if reg.delta == 0:
        return tf.zeros(())
    return reg.warmup_factor * reg.reduce(kernel_term(entry, reg))


def _product_groups(entries):
    """The product-reduction entries of `penalized_layers`, checked to form one product."""
    entries = [k for k in entries if k.regularizer.reduction == "product"]
    deltas = {k.regularizer.delta for k in entries}
    if len(deltas) > 1:
        raise ValueError(
            "All L1InfRegularizer(reduction='product') layers of one model form one product "
            f"and must share one delta; got deltas {sorted(deltas)}. Use one regularizer "
            "instance (or equal deltas) for every penalized layer."
        )
    return entries


def _log_product(entries):
    return tf.add_n([tf.math.log(tf.maximum(kernel_term(k), _TERM_FLOOR)) for k in entries])


def _product_penalty(entries):
    """delta * exp(sum log t_j), refusing values float32 cannot hold instead of inf or 0."""
    reg = entries[0].regularizer
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
    for entry in entries:
        reg = entry.regularizer
        if reg.reduction == "product" or reg.delta == 0:
            continue
        parts.append(kernel_contribution(entry))
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
    for entry in entries:
        entry.regularizer._attached = True
    model._l1inf_attached = True
    # A train/test function traced before the loss was added would not include it.
    model.train_function = model.test_function = None
    return model

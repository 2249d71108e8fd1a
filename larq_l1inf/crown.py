r"""CROWN-IBP bounds on the certified logit margin of larq / Keras models.

For an input box $x' \in [\max(x - \epsilon, c_0), \min(x + \epsilon, c_1)]$ and the margin
specification $C$ with rows $e_y - e_j$, CROWN-IBP (Zhang et al., 2020) bounds every margin
$m_j(x') = z_y(x') - z_j(x')$ from below in two passes:

1. a forward interval pass (`larq_l1inf.ibp`) gives the interval $[l, u]$ of every
   intermediate tensor;
2. a backward pass carries a linear lower bound $m \ge \Lambda h + c$ from the logits back
   through the network. Linear layers are passed exactly
   ($\Lambda \leftarrow \Lambda W,\ c \leftarrow c + \Lambda b$): Dense, Conv1D/2D/3D and
   DepthwiseConv (larq kernels read as their quantizer's forward output), BatchNormalization
   in inference form, Rescaling, average pooling, Flatten/Reshape/Permute/padding, and the
   merges Add/Subtract/Average/Concatenate of a functional DAG (residual blocks). ReLU and hard
   tanh are replaced by the CROWN linear relaxations built from the interval of their input,
   $\underline{a} z + \underline{b} \le \sigma(z) \le \overline{a} z + \overline{b}$, taking the
   lower one where $\Lambda > 0$ and the upper one where $\Lambda < 0$ (ReLU's lower slope is
   chosen adaptively: 1 if $u > -l$ else 0).
   At a sign-type quantizer (larq `ste_sign`, `approx_sign`, `swish_sign`, ..., anything
   `larq_l1inf.ibp` bounds as a monotone quantizer) or at any layer without a linear
   relaxation (max pooling, tanh, PReLU, ...), the pass stops there and the linear function is
   minimised over that tensor's interval from step 1,
   $\min_{h \in [l, u]} \Lambda h = \Lambda \mu - |\Lambda| r$: a BNN is bounded by CROWN
   between its sign layers and by IBP across them. What reaches the input is minimised over
   the input box.

The margin bound of eq. 17 of Liang et al. mixes this with the IBP margin bound,

$$\underline{m}(x, \epsilon) = \beta\,\underline{m}_{\mathrm{CROWN\text{-}IBP}}(x, \epsilon) +
(1 - \beta)\,\underline{m}_{\mathrm{IBP}}(x, \epsilon),\quad \beta \in [0, 1],$$

sound for every $\beta$ (a convex combination of two lower bounds). The IBP margin is the one
of `larq_l1inf.ibp.certified_margin` (the last Dense folded into the margin), computed from the
same forward pass.

Everything is differentiable (the relaxation slopes depend on the intervals, and a sign
quantizer passes its straight-through gradient), so `margin_bounds` serves as the robust term
of CROWN-IBP training: $\mathcal{L}(-\underline{m}(x, \epsilon); y)$ is the cross-entropy of
the logits $-\underline{m}$ (zero at the true class).

!!! example
    ```python
    import larq_l1inf  # selects Keras 2 first
    import larq as lq
    import numpy as np
    import tensorflow as tf
    from larq_l1inf.crown import crown_ibp_margin, verified_accuracy
    from larq_l1inf.ibp import certified_margin

    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)),
        tf.keras.layers.Conv2D(4, 3, activation="relu"),
        lq.layers.QuantConv2D(4, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                              padding="same", pad_values=1.0, use_bias=False),
        tf.keras.layers.BatchNormalization(),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(3),
    ])
    x = np.random.rand(4, 8, 8, 1).astype("float32")
    y = np.array([0, 1, 2, 0])
    crown = crown_ibp_margin(model, x, y, epsilon=0.01)
    mixed = crown_ibp_margin(model, x, y, epsilon=0.01, beta=0.5)
    ibp = certified_margin(model, x, y, epsilon=0.01)
    assert np.all(crown.numpy() >= ibp.numpy() - 1e-4)  # tighter here: CROWN up to the sign
    print(verified_accuracy(model, x, y, epsilon=0.01))
    ```

# References
- H. Zhang, H. Chen, C. Xiao, S. Gowal, R. Stanforth, B. Li, D. Boning, C.-J. Hsieh. Towards
  Stable and Efficient Training of Verifiably Robust Neural Networks. ICLR 2020, sec. 3
  (the CROWN-IBP bound, its adaptive ReLU lower slope and the beta mixing with IBP).
- H. Zhang, T.-W. Weng, P.-Y. Chen, C.-J. Hsieh, L. Daniel. Efficient Neural Network
  Robustness Certification with General Activation Functions (CROWN). NeurIPS 2018.
- Z. Liang, T. Wu, W. Liu, B. Xue, W. Yang, J. Wang, Z. Pang. Towards robust neural networks
  via a global and monotonically decreasing robustness training strategy. Frontiers of
  Information Technology & Electronic Engineering, 2023, eq. 11-13 and 17.
"""

import logging
import numbers

import larq as lq
import numpy as np

from larq_l1inf import ibp
from larq_l1inf._keras import tf

log = logging.getLogger(__name__)

__all__ = [
    "crown_ibp_margin",
    "hard_tanh_relaxation",
    "margin_bounds",
    "relu_relaxation",
    "verified_accuracy",
]

layers = tf.keras.layers

_AFFINE = (layers.Dense, layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.DepthwiseConv2D,
           layers.DepthwiseConv1D)
_NOT_AFFINE = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose,
               layers.SeparableConv1D, layers.SeparableConv2D)
_SOFTMAX = (tf.keras.activations.softmax, tf.nn.softmax)
_LINEAR_ACTIVATIONS = (None, tf.keras.activations.linear, tf.identity)
_RELU = (tf.keras.activations.relu, tf.nn.relu)
_HARD_TANH = (lq.activations.hard_tanh,)


# --------------------------------------------------------------------------------------------
# Linear relaxations
# --------------------------------------------------------------------------------------------


def _safe_div(num, den, valid):
    # Only where `valid` is the quotient used; elsewhere divide by 1 so no NaN gradient leaks.
    return num / tf.where(valid, den, tf.ones_like(den))


def relu_relaxation(lower, upper):
    r"""CROWN's linear bounds of $\mathrm{relu}(z)$ for $z \in [l, u]$.

    $$\underline{a} z + \underline{b} \le \max(z, 0) \le \overline{a} z + \overline{b}$$

    Stable neurons are exact ($l \ge 0$: identity; $u \le 0$: zero). An unstable one
    ($l < 0 < u$) gets the chord $\overline{a} = u / (u - l)$, $\overline{b} = -u l / (u - l)$
    above and the line $\underline{a} z$ through the origin below, with the adaptive slope
    $\underline{a} = 1$ if $u > -l$, else 0, as CROWN-IBP chooses it.

    # Arguments
    lower, upper: tensors of the same shape, `lower <= upper`.

    # Returns
    `(lower_slope, lower_intercept, upper_slope, upper_intercept)`, each of their shape.

    # References
    - H. Zhang et al. Efficient Neural Network Robustness Certification with General
      Activation Functions. NeurIPS 2018, sec. 3.
    - H. Zhang et al. Towards Stable and Efficient Training of Verifiably Robust Neural
      Networks. ICLR 2020, sec. 3.
    """
    one, zero = tf.ones_like(lower), tf.zeros_like(lower)
    active, dead = lower >= 0, upper <= 0
    unstable = tf.logical_not(tf.logical_or(active, dead))
    chord = _safe_div(upper, upper - lower, unstable)
    upper_slope = tf.where(active, one, tf.where(dead, zero, chord))
    upper_intercept = tf.where(unstable, -chord * lower, zero)
    lower_slope = tf.where(active, one, tf.where(dead | (upper <= -lower), zero, one))
    return lower_slope, zero, upper_slope, upper_intercept


def hard_tanh_relaxation(lower, upper):
    r"""Linear bounds of $\mathrm{hardtanh}(z) = \min(\max(z, -1), 1)$ for $z \in [l, u]$.

    $$\underline{a} z + \underline{b} \le \mathrm{hardtanh}(z) \le \overline{a} z + \overline{b}$$

    Exact where the interval lies in one linear piece. With one kink inside, hard tanh is
    ReLU-like there (convex $\max(z, -1)$ or concave $\min(z, 1)$): the chord on the curved
    side, and on the other side the line through the kink with slope 1 or 0, whichever
    leaves the smaller gap (the CROWN-IBP rule). With both kinks inside ($l < -1$, $1 < u$):
    below, the chord from $(-1, -1)$ to $(u, 1)$ or the constant $-1$; above, the chord from
    $(l, -1)$ to $(1, 1)$ or the constant $1$; each the one of smaller area between line and
    function.

    # Arguments
    lower, upper: tensors of the same shape, `lower <= upper`.

    # Returns
    `(lower_slope, lower_intercept, upper_slope, upper_intercept)`, each of their shape.

    # References
    - H. Zhang et al. Efficient Neural Network Robustness Certification with General
      Activation Functions. NeurIPS 2018, sec. 3 (bounds for general activations).
    """
    l, u = lower, upper
    one, zero = tf.ones_like(l), tf.zeros_like(l)
    low = u <= -1.0  # constant -1
    high = l >= 1.0  # constant +1
    inside = (l >= -1.0) & (u <= 1.0)  # identity
    both = (l < -1.0) & (u > 1.0)
    left = (l < -1.0) & (u > -1.0) & (u <= 1.0)  # max(z, -1) on [l, u]
    right = (l >= -1.0) & (l < 1.0) & (u > 1.0)  # min(z, 1) on [l, u]

    # One kink: chord on the curved side, line through the kink on the other.
    left_chord = _safe_div(u + 1.0, u - l, left)
    left_alpha = tf.where(u + 1.0 > -1.0 - l, one, zero)
    right_chord = _safe_div(1.0 - l, u - l, right)
    right_alpha = tf.where(1.0 - l > u - 1.0, one, zero)
    # Two kinks: a chord through one kink or a constant, by the smaller gap area.
    low_chord = _safe_div(2.0 * one, u + 1.0, both)
    low_pick = (u - 1.0) + _safe_div((1.0 + l) ** 2, u + 1.0, both) < 2.0 * u
    both_lower_slope = tf.where(low_pick, low_chord, zero)
    up_chord = _safe_div(2.0 * one, 1.0 - l, both)
    up_pick = (-l - 1.0) + _safe_div((1.0 - u) ** 2, 1.0 - l, both) < -2.0 * l
    both_upper_slope = tf.where(up_pick, up_chord, zero)

    def select(low_v, high_v, inside_v, left_v, right_v, both_v):
        out = tf.where(low, low_v, tf.where(high, high_v, tf.where(inside, inside_v, both_v)))
        return tf.where(left, left_v, tf.where(right, right_v, out))

    lower_slope = select(zero, zero, one, left_alpha, right_chord, both_lower_slope)
    lower_intercept = select(-one, one, zero, left_alpha - 1.0, l - right_chord * l,
                             both_lower_slope - 1.0)
    upper_slope = select(zero, zero, one, left_chord, right_alpha, both_upper_slope)
    upper_intercept = select(-one, one, zero, -1.0 - left_chord * l, 1.0 - right_alpha,
                             1.0 - both_upper_slope)
    return lower_slope, lower_intercept, upper_slope, upper_intercept


_RELAXATIONS = {fn: relu_relaxation for fn in _RELU}
_RELAXATIONS.update({fn: hard_tanh_relaxation for fn in _HARD_TANH})


# --------------------------------------------------------------------------------------------
# The model as a flat graph of operations
# --------------------------------------------------------------------------------------------


class _Op:
    """One step of the flattened model: `kind` is "affine" (the linear part of a Dense/Conv
    layer, bias and padding included), "quantize" (a layer's input quantizer `fn`),
    "activation" (a layer's activation `fn`) or "layer" (a whole layer)."""

    __slots__ = ("fn", "inputs", "kind", "layer", "output")

    def __init__(self, kind, layer, inputs, output, fn=None):
        self.kind, self.layer, self.inputs, self.output, self.fn = kind, layer, inputs, output, fn


class _Graph:
    def __init__(self):
        self.ops, self.input, self.output, self._next = [], 0, None, 1

    def value(self):
        self._next += 1
        return self._next - 1

    def add(self, kind, layer, inputs, fn=None):
        op = _Op(kind, layer, list(inputs), self.value(), fn)
        self.ops.append(op)
        return op.output


def _is_sequential(model):
    return isinstance(model, tf.keras.Sequential) or not getattr(model, "_is_graph_network",
                                                                 False)


def _expand_layer(graph, layer, inputs):
    """Add the ops of one layer; returns the id of its output value."""
    if isinstance(layer, tf.keras.Model):
        return _expand_model(graph, layer, inputs)
    if isinstance(layer, _AFFINE) and not isinstance(layer, _NOT_AFFINE):
        activation = getattr(layer, "activation", None)
        if activation in _LINEAR_ACTIVATIONS or activation in _RELAXATIONS or (
                activation in _SOFTMAX):
            value = inputs[0]
            quantizer = getattr(layer, "input_quantizer", None)
            if quantizer is not None:
                value = graph.add("quantize", layer, [value], fn=quantizer)
            value = graph.add("affine", layer, [value])
            if activation not in _LINEAR_ACTIVATIONS:
                value = graph.add("activation", layer, [value], fn=activation)
            return value
    return graph.add("layer", layer, inputs)


def _expand_model(graph, model, inputs):
    if _is_sequential(model):
        value = inputs[0]
        for layer in model.layers:
            value = _expand_layer(graph, layer, [value])
        return value
    if len(model.inputs) != len(inputs):
        raise ValueError(f"Model {model.name!r} has {len(model.inputs)} inputs; CROWN-IBP "
                         f"bounds models with one input.")
    values = {str(id(t)): v for t, v in zip(model.inputs, inputs)}
    for layer, in_ids, out_ids in ibp.graph_nodes(model):
        if len(out_ids) != 1:
            raise ibp.UnsupportedLayerError(
                f"Layer {layer.name!r} has {len(out_ids)} outputs; CROWN-IBP needs one.")
        values[out_ids[0]] = _expand_layer(graph, layer, [values[i] for i in in_ids])
    if len(model.outputs) != 1:
        raise ValueError(f"Model {model.name!r} has {len(model.outputs)} outputs; CROWN-IBP "
                         "bounds the margin of a single logit output.")
    return values[str(id(model.outputs[0]))]


def _is_softmax_op(op):
    if op.kind == "activation":
        return op.fn in _SOFTMAX
    if op.kind == "layer":
        layer = op.layer
        return isinstance(layer, layers.Softmax) or (
            isinstance(layer, layers.Activation) and layer.activation in _SOFTMAX)
    return False


def _build_graph(model):
    graph = _Graph()
    if not _is_sequential(model) and len(model.inputs) != 1:
        raise ValueError(f"Model {model.name!r} has {len(model.inputs)} inputs; CROWN-IBP "
                         f"bounds models with one input.")
    graph.output = _expand_model(graph, model, [graph.input])
    # A softmax as the last operation is skipped: the margin is one of the logits.
    while graph.ops:
        last = next((op for op in graph.ops if op.output == graph.output), None)
        if last is None or not _is_softmax_op(last):
            break
        graph.ops.remove(last)
        graph.output = last.inputs[0]
    return graph


# --------------------------------------------------------------------------------------------
# Forward interval pass
# --------------------------------------------------------------------------------------------


def _forward(graph, box, training, kernels):
    boxes = {graph.input: box}
    for op in graph.ops:
        ins = [boxes[i] for i in op.inputs]
        if op.kind == "affine":
            kernels[op.output] = ibp.read_kernel(op.layer)
            out = ibp.affine_interval(op.layer, ins[0], kernels[op.output])
        elif op.kind == "quantize":
            out = ibp.quantizer_interval(op.layer, op.fn, ins[0])
        elif op.kind == "activation":
            if op.fn not in _RELAXATIONS:  # a softmax that is not the last operation
                raise ibp.UnsupportedLayerError(
                    f"Layer {op.layer.name!r}: activation {getattr(op.fn, '__name__', op.fn)!r} "
                    "can only be the model's last operation.")
            out = ins[0].map(op.fn)  # relu / hard tanh: monotone
        else:
            out = ibp.apply_rule(op.layer, ins if len(ins) > 1 else ins[0], training)
        if isinstance(out, list):
            raise ibp.UnsupportedLayerError(
                f"Layer {op.layer.name!r} has several outputs; CROWN-IBP needs one.")
        boxes[op.output] = out
    return boxes


# --------------------------------------------------------------------------------------------
# Backward linear-bound pass
# --------------------------------------------------------------------------------------------


def _sum_tail(t):
    """Sum over every axis after (batch, spec)."""
    return tf.reduce_sum(t, axis=list(range(2, t.shape.rank))) if t.shape.rank > 2 else t


def _concretize(a, box):
    """min over h in [l, u] of sum(a * h): (batch, spec)."""
    return _sum_tail(a * box.centre[:, None] - tf.abs(a) * box.radius[:, None])


def _transpose(fn, a, in_shape):
    """`a` (batch, spec, *out) times the Jacobian of the linear map `fn`: (batch, spec, *in)."""
    a_shape = tf.shape(a)
    rows = a_shape[0] * a_shape[1]
    flat = tf.reshape(a, tf.concat([[rows], a_shape[2:]], 0))
    zeros = tf.zeros(tf.concat([[rows], in_shape], 0), a.dtype)
    with tf.GradientTape() as tape:
        tape.watch(zeros)
        out = fn(zeros)
    grad = tape.gradient(out, zeros, output_gradients=flat)
    return tf.reshape(grad, tf.concat([a_shape[:2], in_shape], 0))


def _in_shape(box):
    return tf.shape(box.centre)[1:]


def _pad_value(layer):
    return getattr(layer, "pad_values", 0.0) if not isinstance(layer, layers.Dense) else 0.0


def _bias(layer):
    return layer.bias if getattr(layer, "use_bias", False) and layer.bias is not None else None


def _back_affine(layer, a, box, kernel):
    """(a_in, constant) of the affine layer's linear part."""
    if isinstance(layer, layers.Dense):
        a_in = tf.einsum("bk...o,io->bk...i", a, kernel)
    else:
        a_in = _transpose(lambda h: ibp.linear_map(layer, h, kernel), a, _in_shape(box))
    constant = 0.0
    pad = _pad_value(layer)
    if not isinstance(layer, layers.Dense) and not (not tf.is_tensor(pad) and pad == 0.0):
        # The padded border is the constant pad_values: its part of the output is a constant.
        border = ibp.linear_map(layer, tf.zeros_like(box.centre[:1]), kernel, pad)
        constant = constant + _sum_tail(a * border[:, None])
    bias = _bias(layer)
    if bias is not None:
        constant = constant + _sum_tail(a * bias)
    return a_in, constant


def _back_relaxed(relax, a, box):
    lower_slope, lower_icpt, upper_slope, upper_icpt = relax(box.lower, box.upper)
    pos, neg = tf.maximum(a, 0.0), tf.minimum(a, 0.0)
    a_in = pos * lower_slope[:, None] + neg * upper_slope[:, None]
    constant = _sum_tail(pos * lower_icpt[:, None] + neg * upper_icpt[:, None])
    return a_in, constant


def _back_layer(layer, a, in_boxes, training):
    """(list of a_in per input, constant) for a layer passed exactly or relaxed; None where
    the backward pass stops (no linear relaxation)."""
    box = in_boxes[0]
    if isinstance(layer, ibp.IDENTITY_LAYERS):
        return [a], 0.0
    if isinstance(layer, layers.BatchNormalization):
        scale, shift = ibp.batch_norm_affine(layer, box.centre, training)
        return [a * scale], _sum_tail(a * shift)
    if isinstance(layer, layers.Rescaling):
        scale = tf.cast(layer.scale, a.dtype)
        offset = tf.cast(layer.offset, a.dtype)
        return [a * scale], _sum_tail(a * tf.ones_like(box.centre[:1, None]) * offset)
    if isinstance(layer, ibp.LINEAR_LAYERS):
        return [_transpose(layer, a, _in_shape(box))], 0.0
    if isinstance(layer, layers.Add):
        return [a] * len(in_boxes), 0.0
    if isinstance(layer, layers.Average):
        return [a / len(in_boxes)] * len(in_boxes), 0.0
    if isinstance(layer, layers.Subtract):
        return [a, -a], 0.0
    if isinstance(layer, layers.Concatenate):
        rank = box.centre.shape.rank
        axis = layer.axis % rank + 1  # one more axis (spec) in `a`
        sizes = [b.centre.shape[axis - 1] for b in in_boxes]
        return tf.split(a, sizes, axis=axis), 0.0
    if isinstance(layer, lq.quantizers.NoOp):
        return [a], 0.0
    relax = None
    if isinstance(layer, layers.ReLU):
        plain = (layer.max_value is None and float(layer.negative_slope) == 0.0
                 and float(layer.threshold) == 0.0)
        relax = relu_relaxation if plain else None
    elif isinstance(layer, layers.Activation):
        if layer.activation in _LINEAR_ACTIVATIONS:
            return [a], 0.0
        relax = _RELAXATIONS.get(layer.activation)
    if relax is None:
        return None
    a_in, constant = _back_relaxed(relax, a, box)
    return [a_in], constant


def _backward(graph, boxes, kernels, spec, training):
    """Lower bound of `spec . logits` (batch, spec) by the CROWN backward pass."""
    pending = {graph.output: spec}
    bound = tf.zeros(tf.shape(spec)[:2], spec.dtype)

    def push(value, a):
        pending[value] = a if value not in pending else pending[value] + a

    for op in reversed(graph.ops):
        a = pending.pop(op.output, None)
        if a is None:
            continue
        in_boxes = [boxes[i] for i in op.inputs]
        if op.kind == "affine":
            result = _back_affine(op.layer, a, in_boxes[0], kernels[op.output])
            result = ([result[0]], result[1])
        elif op.kind == "activation":
            result = [_back_relaxed(_RELAXATIONS[op.fn], a, in_boxes[0])]
            result = ([result[0][0]], result[0][1])
        elif op.kind == "quantize":
            result = None  # "IBP for sign": no linear relaxation of a step function
        else:
            result = _back_layer(op.layer, a, in_boxes, training)
        if result is None:
            bound = bound + _concretize(a, boxes[op.output])
            continue
        a_ins, constant = result
        bound = bound + constant
        for value, a_in in zip(op.inputs, a_ins):
            push(value, a_in)
    if graph.input in pending:
        bound = bound + _concretize(pending.pop(graph.input), boxes[graph.input])
    return bound


def _ibp_margins(graph, boxes, kernels, spec):
    """IBP lower bound of `spec . logits`, with a final Dense folded into the spec as
    `ibp.certified_margin` does."""
    head = next(op for op in graph.ops if op.output == graph.output) if graph.ops else None
    if head is not None and head.kind == "affine" and isinstance(head.layer, layers.Dense):
        a_in, constant = _back_affine(head.layer, spec, boxes[head.inputs[0]],
                                      kernels[head.output])
        return constant + _concretize(a_in, boxes[head.inputs[0]])
    return _concretize(spec, boxes[graph.output])


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check_beta(beta):
    if tf.is_tensor(beta) or isinstance(beta, tf.Variable):
        beta = tf.cast(beta, tf.float32)
        if tf.executing_eagerly():
            value = float(beta)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`beta` must be in [0, 1] (the CROWN-IBP weight of eq. 17), "
                                 f"got {value}.")
            return beta
        checks = [tf.debugging.assert_greater_equal(beta, 0.0, message="`beta` must be >= 0"),
                  tf.debugging.assert_less_equal(beta, 1.0, message="`beta` must be <= 1")]
        with tf.control_dependencies(checks):
            return tf.identity(beta)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta <= 1.0:
        raise ValueError(
            f"`beta` must be a number in [0, 1]: the weight of the CROWN-IBP bound against the "
            f"IBP bound (eq. 17; 1 = CROWN-IBP only, 0 = IBP only), got {beta!r}.")
    return float(beta)


def _labels(y, classes):
    y = tf.convert_to_tensor(np.asarray(y) if not tf.is_tensor(y) else y)
    if y.shape.rank == 2 and y.shape[-1] == classes and classes > 1:
        raise ValueError(
            f"`y` looks one-hot (shape {tuple(y.shape)}); pass integer class labels "
            "(e.g. `np.argmax(y, -1)`).")
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    message = f"`y` must hold integer class labels in [0, {classes})"
    if tf.executing_eagerly():
        if tf.size(y) and not (0 <= int(tf.reduce_min(y)) and int(tf.reduce_max(y)) < classes):
            raise ValueError(f"{message}, got labels {sorted(set(y.numpy().tolist()))}.")
        return y
    checks = [tf.debugging.assert_non_negative(y, message=message),
              tf.debugging.assert_less(y, classes, message=message)]
    with tf.control_dependencies(checks):
        return tf.identity(y)


@tf.autograph.experimental.do_not_convert
def margin_bounds(model, x, y, epsilon, clip=(0.0, 1.0), beta=1.0, training=False):
    r"""Lower bounds of every logit margin $z_y - z_j$ over an L-inf input box.

    $$\underline{m}_j = \beta\,\underline{m}^{\mathrm{CROWN\text{-}IBP}}_j +
    (1 - \beta)\,\underline{m}^{\mathrm{IBP}}_j \le \min_{x'} z_y(x') - z_j(x'),\quad
    x' \in [\max(x - \epsilon, c_0), \min(x + \epsilon, c_1)]$$

    The entry of the true class is 0. As the robust term of CROWN-IBP training, the loss is
    the cross-entropy of the logits $-\underline{m}$:
    `tf.keras.losses.sparse_categorical_crossentropy(y, -margins, from_logits=True)`.
    Differentiable with respect to the model's weights (sign quantizers pass their
    straight-through gradient).

    # Arguments
    model: a Keras model of layers `larq_l1inf.ibp` can bound, with one input and one logit
        (or softmax) output; nested models are walked.
    x: input batch in the model's input units.
    y: integer labels, shape `(batch,)`.
    epsilon: the L-inf radius, >= 0: a number or an array broadcastable to `x`.
    clip: `(lo, hi)` valid input range the box is clipped to, or None.
    beta: weight of the CROWN-IBP bound in [0, 1] (a number, or a scalar tensor / variable
        for a schedule inside a compiled step); 1 = CROWN-IBP, 0 = IBP (the backward pass is
        then skipped if `beta` is a number).
    training: BatchNormalization with batch statistics of the box centres (as
        `larq_l1inf.ibp` in training mode), used alike in both passes.

    # Returns
    A float tensor `(batch, classes)`.

    # Raises
    ValueError: for `beta` outside [0, 1], a negative `epsilon`, one-hot `y` or labels out of
        range, or a model with several inputs or outputs.
    UnsupportedLayerError: naming a layer IBP cannot bound.

    # References
    - H. Zhang et al. Towards Stable and Efficient Training of Verifiably Robust Neural
      Networks. ICLR 2020, sec. 3.
    - Z. Liang et al. Towards robust neural networks via a global and monotonically decreasing
      robustness training strategy. FITEE 2023, eq. 17.
    """
    beta = _check_beta(beta)
    box = ibp.input_box(x, epsilon, clip)
    graph = _build_graph(model)
    kernels = {}
    boxes = _forward(graph, box, training, kernels)
    logits = boxes[graph.output]
    classes = logits.centre.shape[-1]
    y = _labels(y, classes)
    onehot = tf.one_hot(y, classes, dtype=logits.centre.dtype)
    spec = onehot[:, None, :] - tf.eye(classes, dtype=onehot.dtype)[None]  # rows e_y - e_j
    if not tf.is_tensor(beta) and beta == 1.0:
        return _backward(graph, boxes, kernels, spec, training)
    ibp_margins = _ibp_margins(graph, boxes, kernels, spec)
    if not tf.is_tensor(beta) and beta == 0.0:
        return ibp_margins
    crown = _backward(graph, boxes, kernels, spec, training)
    return beta * crown + (1.0 - beta) * ibp_margins


def crown_ibp_margin(model, x, y, epsilon, clip=(0.0, 1.0), beta=1.0, training=False):
    r"""Per-sample lower bound of the worst logit margin $\min_{j \ne y}(z_y - z_j)$ over the
    L-inf box, by CROWN-IBP mixed with IBP (`margin_bounds`).

    # Arguments
    model, x, y, epsilon, clip, beta, training: as `margin_bounds`.

    # Returns
    A float tensor `(batch,)`; a sample is verified where it is > 0.

    # Raises
    As `margin_bounds`.
    """
    margins = margin_bounds(model, x, y, epsilon, clip, beta, training)
    y = tf.cast(tf.reshape(y, [-1]), tf.int32)
    true = tf.one_hot(y, tf.shape(margins)[-1], dtype=margins.dtype) > 0
    return tf.reduce_min(tf.where(true, tf.fill(tf.shape(margins), np.inf), margins), axis=-1)


def verified_accuracy(model, x, y, epsilon, clip=(0.0, 1.0), beta=1.0, batch_size=256):
    """Fraction of samples whose CROWN-IBP margin bound (`crown_ibp_margin`) is positive: no
    input in the L-inf box of radius `epsilon` (clipped to `clip`) changes the prediction away
    from the true label `y`.

    # Arguments
    model, x, y, epsilon, clip, beta: as `margin_bounds`.
    batch_size: samples per bound pass.

    # Returns
    A Python float in [0, 1].

    # Raises
    ValueError: for `x` and `y` of different lengths or no samples, and as `margin_bounds`.
    """
    return ibp.positive_fraction(
        lambda xb, yb: crown_ibp_margin(model, xb, yb, epsilon, clip, beta), x, y, batch_size)

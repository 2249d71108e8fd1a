"""The paper's bounds as diagnostics, in the log10 domain: Theorem 4.2, Corollary 4.3, Corollary A.2.

**What Theorem 4.2 bounds, and when it holds.** For two classes `C1, C2` let the margin be
`m(x) = f_C1(x) - f_C2(x)` (the logits). The theorem (000, eq. 11, proof eq. 20-26) bounds
the change of the margin under input noise of L-inf size `eps`:

$$|m(\\hat x) - m(x)| \\le \\Big(\\prod_{l=1}^{L-1}\\alpha_l\\beta_l\\Big)
  \\|W^L_{b;C_1} - W^L_{b;C_2}\\|_1 \\prod_{l=1}^{L-1}\\|W_b^l\\|_{1,\\infty}\\,\\epsilon .$$

(Def. 4.1 literally compares `f_C1(x_hat)` with `f_C2(x)`; that difference is not small at
`eps = 0`, so the change of the margin is the quantity the proof's steps actually bound.)
The proof chains `||A z||_inf <= ||A||_{1,inf} ||z||_inf` (Cor. A.1) through the layers and
treats every activation *including the binarization* `beta * sign(.)` as 1-Lipschitz
(step b). That step is false for `sign`: a perturbation of any size that moves a
pre-activation across 0 changes the output by a finite amount, so **the bound as written
does not hold for networks with binary activations** (`tests/test_bounds.py` builds a
counterexample). It is a valid bound (with `beta="none"`, i.e. `beta_l = 1`) for networks
the proof covers: a chain of layers `h_l = phi(alpha_l W_b^l h_{l-1})` with 1-Lipschitz
`phi` (hard tanh, ReLU, identity), no batch norm (the proof ignores it), no residual
connections (see Cor. A.2), and the output layer's logits `W^L h_{L-1}`.

Decisions (method.md is silent):
- `W_b^l` and `alpha_l` are the penalty's own (`larq_l1inf.kernels.binary_kernel` and
  `scaling_factor(..., "auto")`): the layer's unscaled quantized kernel and the scale it
  computes with (eq. 1, `mean |W_F^l|`, for unscaled sign quantizers). For a per-channel
  alpha the factor `alpha_l ||W_b^l||_{1,inf}` becomes `||diag(alpha_l) W_b^l||_{1,inf}`, and
  `log10_alpha` reports the effective alpha `||diag(alpha) W_b||_{1,inf} / ||W_b||_{1,inf}`.
- Layers `1..L-1` are the model's binary layers except the output layer (full-precision
  layers, e.g. a float stem, are not in the product: the bound does not cover them).
- The output term uses the output layer's kernel *as the layer computes with it*
  (`Q(W_F)`, or the float kernel), so an output-layer alpha is not lost.
- `beta_l = mean |input of layer l|` over the batch, before the layer's input quantizer.
"""

import itertools
import logging
import math

import numpy as np

from larq_l1inf import kernels
from larq_l1inf._keras import tf

log = logging.getLogger(__name__)

__all__ = [
    "binary_layers",
    "output_layer",
    "data_free_log10_terms",
    "theorem_4_2",
    "margin_change",
    "corollary_4_3",
    "corollary_A2",
    "residual_blocks",
]

_BETA_MODES = ("data", "none")


def _network(model):
    """The network being bounded: an `LCRModel` stands for its student, not its teacher."""
    return getattr(model, "student", model)


def binary_layers(model):
    """The model's layers with a binary kernel quantizer (larq's `precision == 1` rule), in
    the model's order, nested models flattened (`larq_l1inf.kernels.binary_kernels`)."""
    found = []
    for entry in kernels.binary_kernels(_network(model)):
        if not any(entry.layer is layer for layer in found):
            found.append(entry.layer)
    return found


def output_layer(model):
    """The last layer that has a kernel: the classifier `W^L`.

    # Raises
        ValueError: if the model has no layer with a kernel.
    """
    with_kernel = kernels.model_kernels(_network(model))
    if not with_kernel:
        raise ValueError("The model has no layer with a kernel, so no classifier W^L.")
    return with_kernel[-1].layer


def _hidden(model):
    out = output_layer(model)
    hidden = [layer for layer in binary_layers(model) if layer is not out]
    return hidden, out


def _layer_stats(layer):
    """`(log10 alpha, log10 ||W_b||_{1,inf}, log10 ||W_b||_2)` of a binary layer, with the
    penalty's definition of `W_b` and alpha (`larq_l1inf.kernels`)."""
    entries = kernels.layer_kernels(layer, binary=True) or kernels.layer_kernels(layer)
    if not entries:
        raise ValueError(f"Layer {layer.name} has no kernel.")
    weight, depthwise = entries[0].weight, entries[0].depthwise
    w_b = kernels.binary_kernel(weight, depthwise)
    rows = np.asarray(kernels.kernel_rows(w_b, depthwise), np.float64)
    alpha = np.asarray(kernels.scaling_factor(weight, "auto", depthwise), np.float64)
    row_sums = np.abs(rows).sum(axis=1)
    l1inf = row_sums.max()
    scaled = (alpha * row_sums).max()  # ||diag(alpha) W_b||_{1,inf}; alpha * l1inf if scalar
    log_l1inf = _log10(l1inf, f"||W_b||_1,inf of {layer.name}")
    log_alpha = _log10(scaled, f"alpha of {layer.name}") - log_l1inf
    spec = np.linalg.norm(rows, ord=2)
    return log_alpha, log_l1inf, _log10(spec, f"||W_b||_2 of {layer.name}")


def _log10(value, what):
    if not value > 0:
        log.warning("bounds: %s is %r; its log10 is -inf.", what, value)
        return -math.inf
    return math.log10(value)


def _output_kernel(layer):
    """The classifier kernel as the layer computes with it, shape `(features, classes)`."""
    w = np.asarray(kernels.quantized_kernel(kernels.layer_kernels(layer)[0].weight), np.float64)
    if w.ndim != 2:
        w = w.reshape(-1, w.shape[-1])
    return w


def _output_term(layer, classes):
    w = _output_kernel(layer)
    n = w.shape[1]
    if classes is not None:
        c1, c2 = classes
        if not (0 <= c1 < n and 0 <= c2 < n) or c1 == c2:
            raise ValueError(
                f"`classes` must be two different class indices in [0, {n}), got {classes}."
            )
        return float(np.abs(w[:, c1] - w[:, c2]).sum()), (int(c1), int(c2))
    if n < 2:
        raise ValueError("The output layer has one unit: a margin needs at least two classes.")
    best, pair = -1.0, None
    for c1 in range(n):  # one row of the pairwise matrix at a time: O(n) memory per step
        d = np.abs(w[:, [c1]] - w).sum(axis=0)
        d[c1] = -1.0
        c2 = int(np.argmax(d))
        if d[c2] > best:
            best, pair = float(d[c2]), (c1, c2)
    return best, pair


def data_free_log10_terms(model, classes=None):
    """The data-free factors of Theorem 4.2 for the model's current weights, as log10.

    # Arguments
        model: a Keras model with larq binary layers and a classifier layer.
        classes: `(C1, C2)` class indices, or `None` for the pair with the largest term.

    # Returns
        dict of plain numbers (a callback can log every value): `log10_alpha` (sum of
        log10 alpha_l over layers 1..L-1), `log10_l1inf` (sum of log10 ||W_b^l||_{1,inf}),
        `log10_output` (log10 ||W^L_{C1} - W^L_{C2}||_1), `log10_data_free` (their sum),
        `class_1`, `class_2` (the pair used) and `num_layers` (L-1). Empty, with a warning,
        for a model without binary layers before its classifier (so a logging callback does
        not stop training); `theorem_4_2` raises in that case.
    """
    try:
        hidden, out = _hidden(model)
    except ValueError as e:
        log.warning("data_free_log10_terms: %s", e)
        return {}
    if not hidden:
        log.warning("data_free_log10_terms: the model has no binary layer before its "
                    "classifier; Theorem 4.2 is about binary layers. Nothing to log.")
        return {}
    stats = [_layer_stats(layer) for layer in hidden]
    out_value, pair = _output_term(out, classes)
    terms = {
        "log10_alpha": float(sum(s[0] for s in stats)),
        "log10_l1inf": float(sum(s[1] for s in stats)),
        "log10_output": _log10(out_value, "the output-layer term"),
        "class_1": pair[0],
        "class_2": pair[1],
        "num_layers": len(hidden),
    }
    terms["log10_data_free"] = terms["log10_alpha"] + terms["log10_l1inf"] + terms["log10_output"]
    return terms


def _layer_inputs(model, layers, x_batch):
    model = _network(model)
    taps = tf.keras.Model(model.inputs, [layer.input for layer in layers])
    outs = taps(x_batch, training=False)
    if not isinstance(outs, (list, tuple)):
        outs = [outs]
    return [np.asarray(o, np.float64) for o in outs]


def theorem_4_2(model, x_batch, eps, classes=None, beta="data"):
    """Theorem 4.2's bound on the margin change under noise of L-inf size `eps`, as log10.

    See the module docstring for the quantity bounded and the assumptions. With
    `beta="data"` this is the bound as the paper writes it (`beta_l` = mean |input of layer
    l| over `x_batch`); with `beta="none"` (`beta_l = 1`) it is the bound the proof's chain
    of inequalities establishes for 1-Lipschitz activations.

    # Arguments
        model: Keras model (binary layers, classifier last).
        x_batch: a batch of inputs (array or tensor) for `beta`.
        eps: L-inf size of the noise, > 0.
        classes: `(C1, C2)` or `None` (the pair with the largest output term).
        beta: `"data"` or `"none"`.

    # Returns
        dict: the terms of `data_free_log10_terms`, plus `log10_beta`, `log10_eps` and
        `log10_bound` (their total).

    # Raises
        ValueError: for `eps <= 0` or an unknown `beta`.

    # References
        - Zheng et al., ICML 2025, Theorem 4.2 and its proof (eq. 20-26).
    """
    if beta not in _BETA_MODES:
        raise ValueError(f"`beta` must be one of {_BETA_MODES}, got {beta!r}.")
    if not float(eps) > 0:
        raise ValueError(f"`eps` must be > 0 (the L-inf size of the noise), got {eps}.")
    if not _hidden(model)[0]:
        raise ValueError(
            "The model has no binary layer (binary kernel quantizer) before its classifier; "
            "Theorem 4.2 is about binary layers."
        )
    terms = data_free_log10_terms(model, classes)
    if beta == "data":
        hidden, _ = _hidden(model)
        inputs = _layer_inputs(model, hidden, x_batch)
        betas = [float(np.abs(a).mean()) for a in inputs]
        terms["betas"] = betas
        terms["log10_beta"] = float(sum(_log10(b, "a beta") for b in betas))
    else:
        terms["log10_beta"] = 0.0
    terms["log10_eps"] = math.log10(float(eps))
    terms["log10_bound"] = terms["log10_data_free"] + terms["log10_beta"] + terms["log10_eps"]
    return terms


def margin_change(model, x, x_noisy, classes=None):
    """Measured `max |m(x_noisy) - m(x)|` over samples (and class pairs if `classes` is None).

    # Returns
        dict with `value`, `log10` and `classes` (the pair attaining it).
    """
    model = _network(model)
    f = np.asarray(model(x, training=False), np.float64)
    g = np.asarray(model(x_noisy, training=False), np.float64)
    d = g - f  # change of every logit
    pairs = [tuple(classes)] if classes is not None else list(
        itertools.permutations(range(d.shape[1]), 2))
    best, arg = -1.0, None
    for c1, c2 in pairs:
        v = float(np.abs(d[:, c1] - d[:, c2]).max())
        if v > best:
            best, arg = v, (c1, c2)
    return {"value": best, "log10": _log10(best, "the margin change") if best > 0 else -math.inf,
            "classes": arg}


def corollary_4_3(model, gamma=2.0):
    """Corollary 4.3's tightness ratio of the L1,inf product against the LCR bound, as log10.

    $$\\text{ratio} = \\frac{\\prod_{j=1}^{Q}\\|W_b^j\\|_{1,\\infty}}
      {\\prod_{j=1}^{Q}\\left(\\|W_b^j\\|_2\\,\\gamma^{j-Q}\\right)^2}$$

    over the `Q` binary layers before the classifier, `||.||_2` the spectral norm of the
    kernel reshaped to `c_out x fan_in` (exact SVD here) and `gamma > 1` (eq. 12).

    # Returns
        dict with `log10_ours`, `log10_lcr` and `log10_ratio` (< 0: ours is tighter).

    # Raises
        ValueError: for `gamma <= 1` or a model without binary layers.
    """
    if not float(gamma) > 1:
        raise ValueError(f"Eq. 12 takes `gamma > 1`, got {gamma}.")
    hidden, _ = _hidden(model)
    if not hidden:
        raise ValueError("The model has no binary layer before its classifier.")
    stats = [_layer_stats(layer) for layer in hidden]
    q = len(stats)
    ours = sum(s[1] for s in stats)
    lcr = 2.0 * sum(s[2] + (j - q) * math.log10(gamma) for j, s in enumerate(stats, start=1))
    return {"log10_ours": ours, "log10_lcr": lcr, "log10_ratio": ours - lcr, "num_layers": q}


def _inbound_layers(layer):
    nodes = getattr(layer, "_inbound_nodes", [])
    if not nodes:
        return []
    inbound = nodes[0].inbound_layers
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


def _ancestors(layer, cache):
    if id(layer) in cache:
        return cache[id(layer)]
    result = {id(layer): layer}
    for parent in _inbound_layers(layer):
        result.update(_ancestors(parent, cache))
    cache[id(layer)] = result
    return result


def residual_blocks(model):
    """The residual blocks of a functional model: for each `Add` layer, the binary layers
    only on one of its two input paths, as `(path_a, path_b)` lists (one may be empty: the
    identity shortcut)."""
    model = _network(model)
    binary = {id(layer) for layer in binary_layers(model)}
    cache = {}
    blocks = []
    for layer in model.layers:
        if not isinstance(layer, tf.keras.layers.Add):
            continue
        parents = _inbound_layers(layer)
        if len(parents) != 2:
            log.warning("residual_blocks: %s adds %d tensors; skipped.", layer.name, len(parents))
            continue
        a, b = (_ancestors(p, cache) for p in parents)
        only_a = [v for k, v in a.items() if k not in b]
        only_b = [v for k, v in b.items() if k not in a]
        blocks.append(([v for v in only_a if id(v) in binary],
                       [v for v in only_b if id(v) in binary]))
    return blocks


def corollary_A2(model, blocks=None):
    """Corollary A.2's residual factor, as log10.

    Per residual block (Gouk et al. 2021) the Lipschitz constant is at most
    `prod_{path a} L_i + prod_{path b} L_i` (an identity shortcut contributes 1, giving
    `1 + prod L_i`), with `L_i = alpha_i ||W_b^i||_{1,inf}` for the binary layers on each path
    (batch norm and float layers ignored, as in the paper).

    # Arguments
        model: functional model; blocks found by `residual_blocks` unless given.
        blocks: optional list of `(path_a_layers, path_b_layers)`.

    # Returns
        dict with `k` (number of blocks), `log10_blocks` (one factor per block),
        `log10_composed` (sum over blocks: the factor of the composed network) and
        `log10_paper` (eq. 28 literally, `k * (1 + prod ...)`, taking the largest block's
        factor for the one block the equation names).
    """
    blocks = residual_blocks(model) if blocks is None else blocks
    factors = []
    for path_a, path_b in blocks:
        logs = []
        for path in (path_a, path_b):
            total = 0.0
            for layer in path:
                la, l1inf, _ = _layer_stats(layer)
                total += la + l1inf
            logs.append(total)
        hi, lo = max(logs), min(logs)
        factors.append(hi + math.log10(1.0 + 10.0 ** (lo - hi)))  # log10(10^a + 10^b), stably
    k = len(factors)
    return {
        "k": k,
        "log10_blocks": factors,
        "log10_composed": float(sum(factors)),
        "log10_paper": (math.log10(k) + max(factors)) if k else 0.0,
    }

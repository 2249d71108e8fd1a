r"""Bit operations (BOPs) per layer and per model, next to larq's MAC counts.

A multiply-accumulate of a $b_w$-bit weight with a $b_a$-bit activation costs $b_w b_a$ bit
operations on bit-serial hardware, so a layer costs

\\[
\mathrm{BOPs} = \mathrm{MACs} \cdot b_w \cdot b_a,
\\]

with $b_w$ ($b_a$) the precision of the layer's kernel (input) quantizer, a full-precision
operand counted at `fp_bits` = 8 bits, and a multi-bit binary layer with M weight and N
activation bases (`larq_l1inf.mbn`) counted as M x N binary convolutions. This is the count
of Frickenstein et al. (sec. 3.3; their table 2 counts floating-point layers as 8-bit): it
reproduces their ResNet-20 CIFAR-10 numbers (0.68e8 BOPs for XNOR-Net, 1.89e8 for 2-bit PACT, 25.95e8 for
8-bit ResNet-20, 10.31e8 for MBN 5x5; `tests/test_bops.py`).

MACs are counted as larq's `ModelProfile` counts them (kernel size x output positions), and
each layer's entry carries larq's own count (`larq_macs`, None where larq does not count the
layer) so the two can be compared.

!!! example
    ```python
    import larq_l1inf  # selects Keras 2 first
    import larq as lq
    import tensorflow as tf
    from larq_l1inf.bops import bops

    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)),
        tf.keras.layers.Conv2D(4, 3, padding="same"),
        lq.layers.QuantConv2D(4, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign"),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(3),
    ])
    report = bops(model)
    print(report["total_bops"], report["total_macs"])  # 153408 7500
    ```

# References
- L. Frickenstein, S. B. Sampath, P. Mori, M.-R. Vemparala, N. Fasfous, A. Frickenstein,
  C. Unger, C. Passerone, W. Stechele. Adversarial Robustness of Multi-bit Convolutional
  Neural Networks. IntelliSys 2023 (Springer LNNS, 2024), sec. 3.1 (eq. 2), 3.3, table 2.
"""

import logging

import larq as lq
import numpy as np

from larq_l1inf import kernels
from larq_l1inf._keras import tf

log = logging.getLogger(__name__)

__all__ = ["bops", "layer_bops", "format_bops"]

layers = tf.keras.layers

_UNSUPPORTED_MAC_LAYERS = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose,
                           layers.LocallyConnected1D, layers.LocallyConnected2D)


def _precision(quantizer, fp_bits):
    """Bits of an operand: the quantizer's `precision`, else full precision (`fp_bits`)."""
    bits = getattr(quantizer, "precision", None)
    if quantizer is None or bits is None or bits >= 32:
        return fp_bits
    return int(bits)


def _output_positions(layer):
    shape = layer.output_shape
    if isinstance(shape, list):
        shape = shape[0]
    if shape is None or any(d is None for d in shape[1:-1]):
        raise ValueError(
            f"Layer {layer.name!r}: BOPs need a fixed spatial input size, got output shape {shape}."
        )
    return int(np.prod(shape[1:-1])) if len(shape) > 2 else 1


def _macs(layer):
    """MACs per sample, counted as larq does: kernel entries x output positions."""
    if isinstance(layer, (layers.SeparableConv1D, layers.SeparableConv2D)):
        positions = _output_positions(layer)
        return positions * (int(np.prod(layer.depthwise_kernel.shape))
                            + int(np.prod(layer.pointwise_kernel.shape)))
    if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        return _output_positions(layer) * int(np.prod(layer.depthwise_kernel.shape))
    return _output_positions(layer) * int(np.prod(layer.kernel.shape))


def layer_bops(layer, fp_bits=8):
    """One layer's entry: `{"name", "type", "macs", "weight_bits", "activation_bits", "bops",
    "larq_macs", "multibit"}`, or None for a layer without multiply-accumulates.

    A layer with `weight_bases` and `activation_bases` (a `larq_l1inf.mbn` layer) counts
    `weight_bases x activation_bases` binary MACs per MAC of one base pair.

    # Raises
    ValueError: for a layer whose MACs this module cannot count (transposed or locally
        connected convolutions) or with an unknown spatial size.
    """
    if hasattr(layer, "weight_bases") and hasattr(layer, "activation_bases"):
        macs = int(layer.base_macs())
        w_bits, a_bits = int(layer.weight_bases), int(layer.activation_bases)
        larq_macs, multibit = None, True
    elif isinstance(layer, _UNSUPPORTED_MAC_LAYERS):
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}): BOPs not counted for this type.")
    elif isinstance(layer, (layers.Dense, layers.Conv1D, layers.Conv2D, layers.Conv3D,
                            layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        macs = _macs(layer)
        kernel_q = (getattr(layer, "kernel_quantizer", None)
                    or getattr(layer, "depthwise_quantizer", None))
        w_bits = _precision(kernel_q, fp_bits)
        a_bits = _precision(getattr(layer, "input_quantizer", None), fp_bits)
        larq_macs, multibit = lq.models.LayerProfile(layer).op_count("mac"), False
    else:
        return None
    return {
        "name": layer.name,
        "type": type(layer).__name__,
        "macs": macs,
        "weight_bits": w_bits,
        "activation_bits": a_bits,
        "bops": macs * w_bits * a_bits,
        "larq_macs": None if larq_macs is None else int(larq_macs),
        "multibit": multibit,
    }


def bops(model, fp_bits=8):
    """Bit operations of a model (per sample), per layer and in total, as a JSON-ready dict.

    # Arguments
    model: a built Keras model with a fixed input size.
    fp_bits: bits a full-precision operand counts as (8, as Frickenstein et al. table 2; 32 for the
        literal float32 count).

    # Returns
    `{"fp_bits", "total_bops", "total_macs", "binary_macs", "larq_macs", "layers": [...]}`:
    `binary_macs` are the MACs with 1-bit weights and activations (MBN layers count
    M x N per base-pair MAC), `larq_macs` larq's `ModelProfile` total for the same model.

    # Raises
    ValueError: for `fp_bits < 1` or a layer whose MACs cannot be counted.
    """
    if int(fp_bits) != fp_bits or fp_bits < 1:
        raise ValueError(
            f"`fp_bits` must be a positive integer (8 as in the paper), got {fp_bits!r}.")
    entries = [e for e in (layer_bops(layer, fp_bits) for layer in kernels.model_layers(model)) if e]
    binary = sum(e["macs"] * e["weight_bits"] * e["activation_bits"] for e in entries
                 if e["multibit"] or (e["weight_bits"] == 1 and e["activation_bits"] == 1))
    return {
        "fp_bits": int(fp_bits),
        "total_bops": int(sum(e["bops"] for e in entries)),
        "total_macs": int(sum(e["macs"] for e in entries)),
        "binary_macs": int(binary),
        "larq_macs": int(lq.models.ModelProfile(model).op_count("mac")),
        "layers": entries,
    }


def format_bops(report):
    """A plain-text table of a `bops` report, for the CLI."""
    rows = [f"{'layer':<28} {'type':<22} {'MACs':>12} {'w':>3} {'a':>3} {'BOPs':>14}"]
    for e in report["layers"]:
        rows.append(f"{e['name']:<28} {e['type']:<22} {e['macs']:>12,} {e['weight_bits']:>3} "
                    f"{e['activation_bits']:>3} {e['bops']:>14,}")
    rows.append(f"{'total':<28} {'':<22} {report['total_macs']:>12,} {'':>3} {'':>3} "
                f"{report['total_bops']:>14,}  (full precision as {report['fp_bits']}-bit)")
    return "\n".join(rows)

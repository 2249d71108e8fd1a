"""Inspect LCE TFLite flatbuffers, and say which binary layers LCE binarizes and why not.

- `op_list`, `op_counts`, `operators` parse a flatbuffer with the TFLite schema that ships
  with Larq Compute Engine (custom LCE ops included).
- `diagnose` predicts, from the Keras model alone, which binary layers become `LceBconv2d`.
  It judges by behaviour, not by quantizer class: it feeds the input quantizer probe values
  (LCE needs outputs in {-1, +1}, with sign(0) = +1) and applies the kernel quantizer to the
  layer's own latent kernel (LCE needs +-c per output channel). So a new quantizer is judged
  by what it does.
- `check_binarized` compares that with the flatbuffer and names what to change.
"""

import collections
import dataclasses
import logging

import larq as lq
import numpy as np

from larq_l1inf import kernels
from larq_l1inf._keras import tf

log = logging.getLogger(__name__)

__all__ = [
    "BCONV_OP",
    "BinarizationError",
    "BinarizationReport",
    "LayerDiagnosis",
    "Operator",
    "binarization_problems",
    "check_binarized",
    "check_flatbuffer",
    "deployment_issues",
    "diagnose",
    "op_counts",
    "op_list",
    "operators",
]

BCONV_OP = "LceBconv2d"
FLOAT_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
ON_FAILURE = ("raise", "warn", "ignore")
# Relative tolerance of "every weight of an output channel has the same magnitude".
_MAGNITUDE_RTOL = 1e-5
_INPUT_FIX = "use a sign-type input quantizer (input_quantizer='ste_sign', 'approx_sign' or 'swish_sign')"
_KERNEL_FIX = ("use a +-1 kernel quantizer (kernel_quantizer='ste_sign', or "
               "'magnitude_aware_sign' for +-scale per channel) with kernel_constraint='weight_clip'")


class BinarizationError(ValueError):
    """Binary convolutions of a Keras model did not become `LceBconv2d` in its flatbuffer."""


Operator = collections.namedtuple("Operator", ["type", "output_shapes"])
Operator.__doc__ = """One operator of a flatbuffer: its type name and the shapes of its outputs."""


def check_flatbuffer(flatbuffer):
    """Raise unless `flatbuffer` is the bytes of a TFLite model.

    # Raises
    TypeError: for anything but bytes.
    ValueError: for bytes without the TFLite file identifier `TFL3`.
    """
    if not isinstance(flatbuffer, (bytes, bytearray)):
        raise TypeError(
            f"Expected a TFLite flatbuffer as bytes (what convert() returns), got "
            f"{type(flatbuffer).__name__}."
        )
    # A TFLite model carries the file identifier "TFL3" at bytes 4..8.
    if len(flatbuffer) < 8 or bytes(flatbuffer[4:8]) != b"TFL3":
        raise ValueError(
            "Not a TFLite flatbuffer (file identifier 'TFL3' missing). Pass the bytes returned "
            "by convert() or read from a .tflite file."
        )


def _schema():
    from larq_compute_engine.mlir.python import tflite_schema

    return tflite_schema


def _opcode_names(model):
    schema = _schema()
    builtin = {value: name for name, value in vars(schema.BuiltinOperator).items()
               if not name.startswith("_") and isinstance(value, int)}
    codes = []
    for i in range(model.OperatorCodesLength()):
        opcode = model.OperatorCodes(i)
        custom = opcode.CustomCode()
        if custom is not None:
            codes.append(custom.decode())
            continue
        # Schema >= 3a: the real code is the larger of the deprecated int8 field and the new one.
        code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
        codes.append(builtin.get(code, f"BUILTIN_{code}"))
    return codes


def operators(flatbuffer):
    """Every operator of the flatbuffer in execution order, with its output shapes.

    # Arguments
    flatbuffer: bytes of a TFLite model, as returned by `larq_l1inf.deploy.convert`.

    # Returns
    A list of `Operator(type, output_shapes)`: builtin operators by their schema name
    (`CONV_2D`, ...), custom ones by their custom code (`LceBconv2d`, `LceQuantize`, ...);
    shapes as tuples. All subgraphs count.
    """
    check_flatbuffer(flatbuffer)
    model = _schema().Model.GetRootAsModel(bytearray(flatbuffer), 0)
    codes = _opcode_names(model)
    found = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for j in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(j)
            shapes = tuple(tuple(int(d) for d in subgraph.Tensors(op.Outputs(k)).ShapeAsNumpy())
                           for k in range(op.OutputsLength()) if op.Outputs(k) >= 0)
            found.append(Operator(codes[op.OpcodeIndex()], shapes))
    return found


def op_list(flatbuffer):
    """The operator types of a flatbuffer, in execution order (see `operators`)."""
    return [op.type for op in operators(flatbuffer)]


def op_counts(flatbuffer):
    """How many operators of each type the flatbuffer holds, e.g. `{"LceBconv2d": 4, ...}`.

    # Arguments
    flatbuffer: bytes of a TFLite model, as returned by `larq_l1inf.deploy.convert`.

    # Returns
    A dict from operator type to count, sorted by type name.
    """
    return dict(sorted(collections.Counter(op_list(flatbuffer)).items()))


# --------------------------------------------------------------------------- diagnosis


@dataclasses.dataclass
class LayerDiagnosis:
    """What LCE will make of one binary layer of a Keras model.

    # Attributes
    layer: the Keras layer.
    binarizable: whether LCE turns it into `LceBconv2d`.
    reasons: why not (each says what to change), or notes that do not block it.
    convs: how many binary 2-D convolutions the layer is (M x N for a multi-bit
        `larq_l1inf.mbn` layer, 1 for a larq `QuantConv2D`, 0 for other kinds); a binarizable
        layer becomes that many `LceBconv2d`.
    """

    layer: object
    binarizable: bool
    reasons: list
    convs: int = 1

    @property
    def name(self):
        return self.layer.name


def _name(quantizer):
    if quantizer is None:
        return "None"
    return getattr(quantizer, "__name__", type(quantizer).__name__)


def _levels(values):
    return np.unique(np.round(np.asarray(values, np.float64), 6))


def _probe_inputs(channels):
    """Probe activations: every sign, several magnitudes, exact zeros; two samples."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.5, (2, 5, 5, channels))
    x[:, 0, 0, :] = 0.0
    x[:, 1, 1, :] = 1e-3
    x[:, 2, 2, :] = -1e-3
    return tf.constant(x, tf.float32)


def _input_reasons(layer):
    """Why the input quantizer does not give LCE's +-1 activations (empty list: it does)."""
    quantizer = getattr(layer, "input_quantizer", None)
    if quantizer is None:
        return [f"input_quantizer is None, so the conv sees float activations: {_INPUT_FIX}"]
    probe = _probe_inputs(int(layer.kernel.shape[-2]))
    out = np.asarray(quantizer(probe))
    levels = _levels(out)
    if not set(levels.tolist()) <= {-1.0, 1.0}:
        shown = ", ".join(f"{v:g}" for v in levels[:5]) + (", ..." if len(levels) > 5 else "")
        kind = ("0/1 or multi-bit [0, 1] activations (DoReFa, ste_heaviside)" if levels.min() >= 0
                else f"{len(levels)} levels")
        return [f"input_quantizer is {_name(quantizer)}: it outputs {{{shown}}}, {kind}, not "
                f"+-1, so LCE keeps the conv float; {_INPUT_FIX}"]
    if np.any(out[:, 0, 0, :] != 1.0):
        # Not blocking: a float op inside the quantizer (e.g. CycleBNN's k-bit rounding) may
        # move 0 before its sign, which LCE then computes the same way.
        return [f"(note) input_quantizer {_name(quantizer)} maps an input of 0 to -1, while "
                "LCE's sign gives +1 for an exact 0 it sees; check the outputs with "
                "compare_outputs"]
    return []


def _kernel_reasons(layer):
    """Why the kernel quantizer does not give +-c per output channel (empty list: it does)."""
    quantizer = getattr(layer, "kernel_quantizer", None)
    if quantizer is None:
        return [f"kernel_quantizer is None, so the kernel is float: {_KERNEL_FIX}"]
    w = np.asarray(kernels.quantized_kernel(layer.kernel), np.float64)
    magnitudes = np.abs(w.reshape(-1, w.shape[-1]))
    peak = magnitudes.max(axis=0)
    if np.all(peak > 0) and np.allclose(magnitudes, peak, rtol=_MAGNITUDE_RTOL, atol=0.0):
        return []
    levels = max(len(_levels(w[..., o])) for o in range(w.shape[-1]))
    return [f"kernel_quantizer is {_name(quantizer)}: an output channel holds {levels} distinct "
            "values, not +-c (multi-level weights, multiple bases as in ABC-Net, or an asymmetric "
            f"binary set as in AdaBin), so LCE keeps the conv float; {_KERNEL_FIX}"]


def diagnose(model):
    """Predict which binary layers of a Keras model LCE turns into `LceBconv2d`, and why not.

    A binary layer is a larq layer whose input or kernel quantizer is 1-bit (larq's rule,
    `larq_l1inf.kernels.is_binary_quantizer`). LCE emits `LceBconv2d` for a 2-D convolution
    when the input quantizer outputs only +-1 and the kernel quantizer gives +-c in every
    output channel (one c per channel, e.g. `magnitude_aware_sign`); both are probed by
    behaviour. Notes, which do not block it: an input quantizer that maps 0 to -1 (LCE's sign
    gives +1), and `padding="same"` with `pad_values=0` (LCE adds a correction;
    `pad_values=1.0` is its direct path). 1-D convolutions, depthwise convolutions and dense
    layers have no binary LCE operator and stay float (a note, not a failure). A multi-bit
    `MBNConv2D` of M weight and N activation bases (`larq_l1inf.mbn`, found through
    `larq_l1inf.kernels.is_multi_base`) is M x N sign-input, +-1-kernel convolutions: one
    diagnosis with `convs = M * N`.

    # Arguments
    model: a built Keras model.

    # Returns
    A list of `LayerDiagnosis`, one per binary layer, in the model's order.

    !!! example
        ```python
        from larq_l1inf import flatbuffer  # first: selects Keras 2 for larq
        import larq as lq
        import tensorflow as tf

        x = tf.keras.Input((8, 8, 3))
        y = lq.layers.QuantConv2D(4, 3, input_quantizer="ste_heaviside",
                                  kernel_quantizer="ste_sign", kernel_constraint="weight_clip")(x)
        (d,) = flatbuffer.diagnose(tf.keras.Model(x, y))
        print(d.binarizable, d.reasons)  # False ['input_quantizer is SteHeaviside: ...']
        ```
    """
    found = []
    for layer in kernels.model_layers(model):
        if kernels.is_multi_base(layer) and kernels.is_binary(layer):
            found.append(_multi_base_diagnosis(layer))
            continue
        if not isinstance(layer, lq.layers_base.QuantizerBase):
            continue
        input_binary = kernels.is_binary_quantizer(getattr(layer, "input_quantizer", None))
        if not (input_binary or kernels.is_binary(layer)):
            continue
        if not isinstance(layer, lq.layers.QuantConv2D):
            kind = {lq.layers.QuantConv1D: "1-D convolution", lq.layers.QuantDense: "dense layer",
                    lq.layers.QuantDepthwiseConv2D: "depthwise convolution"}.get(type(layer), "layer")
            found.append(LayerDiagnosis(layer, False, [
                f"(note) a binary {kind} ({type(layer).__name__}) stays float: LCE has a binary "
                "operator only for 2-D convolutions"], convs=0))
            continue
        reasons = _input_reasons(layer) + _kernel_reasons(layer)
        binarizable = all("(note)" in reason for reason in reasons)
        if (binarizable and layer.padding == "same"
                and float(getattr(layer, "pad_values", 0.0)) != 1.0):
            reasons.append("padding='same' with pad_values=0 (note): set pad_values=1.0, LCE's "
                           "direct binary padding; zero padding needs a correction step")
        found.append(LayerDiagnosis(layer, binarizable, reasons))
    return found


def _multi_base_diagnosis(layer):
    """A multi-bit layer (`larq_l1inf.mbn`): each of its M x N base pairs is a sign input
    convolved with a +-1 kernel, so a 2-D one becomes M x N `LceBconv2d`."""
    pairs = int(layer.weight_bases) * int(layer.activation_bases)
    if getattr(layer, "rank", None) != 2:
        kind = "1-D convolution" if getattr(layer, "rank", None) == 1 else "dense layer"
        return LayerDiagnosis(layer, False, [
            f"(note) a binary multi-bit {kind} ({type(layer).__name__}) stays float: LCE has a "
            "binary operator only for 2-D convolutions"], convs=0)
    reasons = []
    if layer.padding == "same" and float(layer.pad_values) != 1.0:
        reasons.append("padding='same' with pad_values=0 (note): set pad_values=1.0, LCE's "
                       "direct binary padding; zero padding needs a correction step")
    return LayerDiagnosis(layer, True, reasons, convs=pairs)


def deployment_issues(model):
    """Quantizers of a model that say a converted model would not reproduce Keras.

    A quantizer may define `deployment_issue()`, returning None or the reason (CycleBNN's
    `CyclicSign` does while it is above 1 bit: Keras and LCE break its rounding ties
    differently). `larq_l1inf.deploy.convert` refuses such a model.

    # Returns
    A list of `(layer_name, reason)`.
    """
    issues = []
    for layer in kernels.model_layers(model):
        for attribute in ("input_quantizer", "kernel_quantizer", "depthwise_quantizer"):
            check = getattr(getattr(layer, attribute, None), "deployment_issue", None)
            reason = check() if callable(check) else None
            if reason:
                issues.append((layer.name, reason))
    return issues


def _binary_convs(diagnoses):
    return [d for d in diagnoses if d.convs]


def binarization_problems(model):
    """The binary layers of a Keras model that LCE will not (or not directly) binarize.

    # Returns
    A list of `(layer_name, [reason, ...])` for every layer of `diagnose` with a reason; the
    reasons say what to change. Notes (not blocking) start with or contain "(note)".
    """
    return [(d.name, d.reasons) for d in diagnose(model) if d.reasons]


@dataclasses.dataclass
class BinarizationReport:
    """How the binary convolutions of a Keras model ended up in its flatbuffer.

    # Attributes
    binary_convs: number of binary 2-D convolutions: `QuantConv2D` layers with a 1-bit input
        or kernel quantizer, and M x N for every M x N multi-bit `MBNConv2D`.
    binarizable: how many of them `diagnose` expects as `LceBconv2d`.
    lce_bconv2d: number of `LceBconv2d` operators in the flatbuffer.
    float_convs: number of float `CONV_2D` / `DEPTHWISE_CONV_2D` operators in it.
    problems: `(layer_name, reasons)` from `binarization_problems`.
    """

    binary_convs: int
    binarizable: int
    lce_bconv2d: int
    float_convs: int
    problems: list

    @property
    def not_binarized(self):
        """Binary convolutions of the model that did not become `LceBconv2d`."""
        return max(self.binary_convs - self.lce_bconv2d, 0)

    @property
    def ok(self):
        return self.not_binarized == 0

    def message(self, model_name="model"):
        text = (
            f"Model '{model_name}': {self.lce_bconv2d} of {self.binary_convs} binary "
            f"convolutions became {BCONV_OP} ({self.float_convs} float convolutions in the "
            "flatbuffer)."
        )
        blocking = [(n, [r for r in rs if "(note)" not in r]) for n, rs in self.problems]
        blocking = [(n, rs) for n, rs in blocking if rs]
        if not self.ok and blocking:
            details = "; ".join(f"{name}: {' and '.join(rs)}" for name, rs in blocking)
            text += f" Not binarized: {details}."
        if self.lce_bconv2d < self.binarizable:
            text += (
                f" {self.binarizable} looked binarizable from their quantizers, so the graph "
                "around some binary convolutions blocked the conversion (for example an op "
                "between the sign quantizer and the convolution); inspect op_list()."
            )
        return text


def check_binarized(flatbuffer, model, on_failure="raise"):
    """Check that every binary convolution of `model` became `LceBconv2d` in `flatbuffer`.

    A `QuantConv2D` with a 1-bit input or kernel quantizer counts as a binary convolution, an
    M x N multi-bit `MBNConv2D` as M x N.
    When fewer `LceBconv2d` operators than binary convolutions are in the flatbuffer, the
    message names the layers `diagnose` found and what to change.

    # Arguments
    flatbuffer: bytes returned by `larq_l1inf.deploy.convert` for this model.
    model: the Keras model that was converted.
    on_failure: `"raise"` (`BinarizationError`), `"warn"` (logger warning) or `"ignore"`.

    # Returns
    A `BinarizationReport`.

    # Raises
    BinarizationError: with `on_failure="raise"`, when a binary convolution stayed float
        (including a model whose flatbuffer holds no `LceBconv2d` at all).
    ValueError: for an unknown `on_failure`.
    """
    if on_failure not in ON_FAILURE:
        raise ValueError(f"`on_failure` must be 'raise', 'warn' or 'ignore', got {on_failure!r}.")
    counts = op_counts(flatbuffer)
    diagnoses = diagnose(model)
    convs = _binary_convs(diagnoses)
    report = BinarizationReport(
        binary_convs=sum(d.convs for d in convs),
        binarizable=sum(d.convs for d in convs if d.binarizable),
        lce_bconv2d=counts.get(BCONV_OP, 0),
        float_convs=sum(counts.get(op, 0) for op in FLOAT_CONV_OPS),
        problems=[(d.name, d.reasons) for d in diagnoses if d.reasons],
    )
    message = None
    if report.binary_convs == 0:
        message = (
            f"Model '{model.name}' has no binary convolution (QuantConv2D with a 1-bit input "
            "or kernel quantizer), so its flatbuffer runs in float. For binarized deployment "
            "use lq.layers.QuantConv2D(..., input_quantizer='ste_sign', "
            "kernel_quantizer='ste_sign', kernel_constraint='weight_clip', pad_values=1.0)."
        )
    elif not report.ok:
        message = report.message(model.name)
    if message is not None:
        if on_failure == "raise":
            raise BinarizationError(message)
        if on_failure == "warn":
            log.warning(message)
    return report

"""Conversion table: does LCE binarize each BNN variant x backbone, and do the outputs agree?

For every variant (`larq_l1inf.variants.VARIANTS`) and backbone configuration it builds a
small model (random weights, the L1,inf penalty on its binary convs), converts it with
`larq_l1inf.deploy.convert` (a subprocess: a converter crash becomes a row, not a dead
script), counts the binary convs of the Keras model, the `LceBconv2d` and float convolution
ops of the flatbuffer, and compares Keras and Interpreter outputs on random [0, 1] inputs.

Before converting, every BatchNormalization gets off-zero statistics, as after training
(`--bn-stats fresh` keeps the initial ones; see "Ties" in the generated markdown for why that
matters). `--export plain` converts in this process from a plain SavedModel of the inference
function (same LCE MLIR converter, ~5x faster, but a converter crash ends the script);
the default `keras` uses `deploy.convert` in a subprocess.

Writes `results/conversion_table.json` and the markdown table `docs/conversion_table.md`.

    .venv/bin/python scripts/conversion_table.py                      # full matrix, tiny
    .venv/bin/python scripts/conversion_table.py --export plain       # same, in ~10 min
    .venv/bin/python scripts/conversion_table.py --variants irnet bnn --backbones resnet18
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

import larq_l1inf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from larq_l1inf import L1InfRegularizer, deploy
from larq_l1inf.backbones import BACKBONES
from larq_l1inf.variants import VARIANTS, get_variant

import larq as lq

#: name -> (builder name, builder kwargs); inputs are given by --image-size / --signal-length.
CONFIGS = {
    "resnet18-cifar": ("resnet18", {"stem": "cifar"}),
    "resnet18-imagenet": ("resnet18", {"stem": "imagenet"}),
    "resnet34-cifar": ("resnet34", {"stem": "cifar"}),
    "resnet34-imagenet": ("resnet34", {"stem": "imagenet"}),
    "resnet20": ("resnet20", {}),
    "vgg_small": ("vgg_small", {}),
    "conv1d": ("conv1d", {}),
}

FLOAT_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")

TIES = """## Ties: why freshly initialised models disagree (and trained ones do not)

With the BatchNormalization layers as initialised (mean 0, beta 0), an earlier run of this
table on VGG-small found Keras and LCE far apart for xnor, bireal and reactnet (max abs diff
0.25-0.39, top-1 agreement 0.44-0.75) but not for bnn and irnet. The cause is not the
conv -> max-pool -> BN order (a single scaled conv, and that order with any BN statistics,
match to < 2e-6) and not LCE's fusion: it is ties at exactly 0.

- A binary conv computes alpha_c * k with k an integer (+-1 inputs, +-alpha_c weights); with
  an even fan-in, k = 0 is frequent (11% of the first conv's outputs in VGG-small, width 4).
- LCE computes k exactly by popcount, so its output is exactly 0 there. Keras computes the
  float sum of +-alpha_c terms: for a per-channel alpha that is not a power of two (XNOR,
  Bi-Real, ReActNet: mean |w|) rounding leaves +-1e-8 instead of 0 (56 of 535 zeros in that
  run, 17 of them negative). With alpha = 1 (bnn) or a power of two (IR-Net's 2^s) the sums
  are exact and both agree.
- Fresh BN maps 0 to 0, so the next sign sees exactly the tie: LCE gives +1 (sign(0) = +1),
  Keras gives -1 where it rounded below 0. Each flipped bit moves the next conv by 2 alpha;
  through five convs that reaches the logits.
- With off-zero BN statistics (as after any training) the sign threshold is no longer on the
  integer lattice and the same models agree to ~1e-6 (xnor 1.4e-06, bireal 1.4e-06, reactnet
  1.3e-06; cyclebnn and adabin likewise). This table therefore uses `--bn-stats trained` by
  default; tests/test_variants.py::TestConversion pins the agreement for every variant.

So LCE is the exact one here; the mismatch is Keras' float rounding on ties that only an
untrained BatchNormalization leaves in place. Nothing in the backbones is changed for it."""

CYCLIC = """## CycleBNN at its initial 8 bits: rounding ties, not a converter bug

CycleBNN's quantizers compute sign(Q_k(x)) with Q_k a per-sample (activations) or per-filter
(weights) min-max grid of 2^k levels. At bits = 8, `--cyclebnn-bits 8` gave resnet20 a max abs
diff of 0.98 (top-1 agreement 0.88) and resnet18-cifar 1.0, while VGG-small and conv1d agreed.
Cause, found by comparing every binary conv's input and output between Keras and the
Interpreter (resnet20, width 4): all inputs agree to 4e-6, the first three convs' outputs
exactly, and the fourth conv's output differs by 8 (four flipped input bits, 2 each).

- Binary-conv outputs are integers, and a BatchNormalization (or any affine map) keeps the
  ratio (x - min) / (max - min); so (x - min) / step = 255 (k - k_min) / (k_max - k_min) with
  small integers k, which is exactly j + 0.5, a rounding tie, for many values (3 of the 19
  values of k in [-9, 9]); 76 of the 4096 quantized inputs of that fourth conv landed on a
  different level in Keras and in the Interpreter.
- Keras and the Interpreter compute x to within a few ulps (different op fusion) and
  evaluate the quantizer's arithmetic with different kernels, so a tie rounds up in one and
  down in the other. Where the two levels straddle 0 the sign flips; the residual backbones carry the
  flip to the logits.
- Trained-like BN statistics do not help (the ratio is scale-invariant), and no formula can
  break a tie identically on inputs that already differ by ulps.

At bits = 0 (what `CyclicPrecisionSchedule` leaves after training) the quantizer is a plain
sign and every backbone agrees (table above). `CyclicSign.deployment_issue()` returns this
explanation while bits > 0, for the deployment diagnosis to refuse or warn."""


def binary_conv_count(model):
    """Quantized convs of the Keras model (the ones the variant meant to be binary)."""
    return sum(
        isinstance(layer, (lq.layers.QuantConv2D, lq.layers.QuantConv1D))
        and layer.kernel_quantizer is not None
        for layer in model.layers
    )


def build(variant, config, width, image_size, signal_length, num_classes):
    builder_name, kwargs = CONFIGS[config]
    shape = (signal_length, 3) if builder_name == "conv1d" else (image_size, image_size, 3)
    return BACKBONES[builder_name](
        variant, num_classes=num_classes, input_shape=shape,
        kernel_regularizer=L1InfRegularizer(5e-3), width=width, **kwargs,
    )


def trained_like_batchnorm(model, seed=1):
    """Off-zero BatchNormalization statistics, as after training (gamma 0.5-1.5, beta and mean
    N(0, 0.1), variance 0.5-2): fresh BN puts the next sign's threshold exactly at 0, where an
    exact binary-conv result often lands (see "Ties" in the markdown)."""
    from larq_l1inf._keras import tf

    rng = np.random.default_rng(seed)
    for layer in model.submodules:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            shapes = [w.shape for w in layer.get_weights()]
            values = [rng.uniform(0.5, 1.5, shapes[0]), 0.1 * rng.normal(size=shapes[1]),
                      0.1 * rng.normal(size=shapes[2]), rng.uniform(0.5, 2.0, shapes[3])]
            if len(shapes) == 4:
                layer.set_weights([v.astype(np.float32) for v in values])


def deployed_state(model, cyclic_bits=0):
    """Put schedule-driven quantizers in the state training leaves them in: CycleBNN's
    `CyclicPrecisionSchedule.on_train_end` sets bits = 0 (plain sign), the network that is
    deployed. At bits > 0 (`--cyclebnn-bits 8`) Keras and LCE disagree: see CYCLIC."""
    from larq_l1inf.callbacks import set_cyclic_bits

    set_cyclic_bits(model, cyclic_bits)


def plain_convert(model):
    """LCE flatbuffer of `model(x, training=False)` (batch 1) via a plain SavedModel."""
    import larq_compute_engine as lce
    from larq_l1inf._keras import tf

    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    function = tf.function(lambda x: model(x, training=False), input_signature=[spec], autograph=False)
    concrete = function.get_concrete_function()
    module = tf.Module()
    module.function = function
    module.captured = list(concrete.graph.variables)
    with tempfile.TemporaryDirectory() as directory:
        tf.saved_model.save(module, directory, signatures=concrete,
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        return lce.convert_saved_model(directory)


def row(variant, config, args):
    entry = {"variant": variant, "backbone": config}
    start = time.time()
    model = build(variant, config, args.width, args.image_size, args.signal_length, args.num_classes)
    if args.bn_stats == "trained":
        trained_like_batchnorm(model)
    deployed_state(model, args.cyclebnn_bits)
    entry["binary_convs"] = binary_conv_count(model)
    try:
        if args.export == "plain":
            try:
                flatbuffer = plain_convert(model)
            except Exception as error:  # noqa: BLE001 - a converter error is a table entry
                raise deploy.ConversionError(f"{type(error).__name__}: {error}") from error
        else:
            flatbuffer = deploy.convert(model, on_failure="ignore", timeout=args.timeout)
    except deploy.ConversionError as error:
        entry.update(converts=False, error=str(error).splitlines()[0])
        entry["seconds"] = round(time.time() - start, 1)
        return entry
    ops = deploy.op_counts(flatbuffer)
    entry.update(
        converts=True,
        lce_bconv2d=int(ops.get("LceBconv2d", 0)),
        float_convs=int(sum(ops.get(op, 0) for op in FLOAT_CONV_OPS)),
        ops=ops,
    )
    rng = np.random.default_rng(0)
    x = rng.random((args.samples, *model.input_shape[1:]), dtype=np.float32)
    try:
        entry["agreement"] = deploy.compare_outputs(model, flatbuffer, x)
    except Exception as error:  # noqa: BLE001 - an Interpreter failure is a table entry
        entry["agreement_error"] = f"{type(error).__name__}: {error}"
    entry["seconds"] = round(time.time() - start, 1)
    return entry


def markdown(rows, args):
    lines = [
        "# LCE conversion of every BNN variant x backbone",
        "",
        f"Generated by `scripts/conversion_table.py {' '.join(sys.argv[1:])}` (width {args.width}, images "
        f"{args.image_size}x{args.image_size}, signals of length {args.signal_length}, random "
        f"weights, BatchNormalization statistics: {args.bn_stats}, export: {args.export}, "
        f"{args.samples} random inputs in [0, 1]). `binary convs`: quantized convs in "
        "the Keras model; `LceBconv2d` / `float convs`: ops in the flatbuffer (float convs "
        "include the full-precision stem and 1x1 shortcut convs); agreement: Keras vs "
        "`lce.testing.Interpreter`, largest absolute difference of the softmax outputs and "
        "the fraction of equal top-1 classes.",
        "",
        "| variant | backbone | converts | binary convs | LceBconv2d | float convs | max abs diff | top-1 agree |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["converts"]:
            lines.append(f"| {r['variant']} | {r['backbone']} | no: {r['error']} | {r['binary_convs']} | | | | |")
            continue
        agreement = r.get("agreement")
        diff = f"{agreement['max_abs_diff']:.2e}" if agreement else r.get("agreement_error", "")
        agree = f"{agreement['argmax_agreement']:.2f}" if agreement else ""
        lines.append(
            f"| {r['variant']} | {r['backbone']} | yes | {r['binary_convs']} | {r['lce_bconv2d']} "
            f"| {r['float_convs']} | {diff} | {agree} |"
        )
    missing = [(v, c) for v in VARIANTS for c in CONFIGS
               if not any(r["variant"] == v and r["backbone"] == c for r in rows)]
    if missing:
        lines += ["", f"Not run ({len(missing)} cells): "
                  + ", ".join(f"{v} x {c}" for v, c in missing) + "."]
    conv1d = [r for r in rows if r["backbone"] == "conv1d" and r.get("converts")]
    if conv1d and not any(r.get("lce_bconv2d") for r in conv1d):
        lines += ["", "`conv1d`: no variant's `QuantConv1D` became `LceBconv2d` (LCE binarizes 2-D "
                  "convolutions only), so the 1-D signal net runs its binary convs as float ops; "
                  "outputs still agree."]
    lines += ["", TIES, "", CYCLIC, "", "## Why a variant stays float", ""]
    for name in sorted({r["variant"] for r in rows}):
        variant = get_variant(name)
        kind = "binarizable" if variant.lce_binary else "not binarizable by LCE"
        lines.append(f"- **{name}** ({kind}): {variant.lce_note}.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--backbones", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--signal-length", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--bn-stats", choices=("trained", "fresh"), default="trained",
                        help="BatchNormalization statistics: trained-like (default) or as initialised")
    parser.add_argument("--export", choices=("keras", "plain"), default="keras",
                        help="keras: deploy.convert in a subprocess; plain: in-process, ~5x faster")
    parser.add_argument("--cyclebnn-bits", type=float, default=0.0,
                        help="CycleBNN's CyclicSign bits: 0 = deployed state (default), 8 = initial training state")
    parser.add_argument("--json", default="results/conversion_table.json")
    parser.add_argument("--markdown", default="docs/conversion_table.md")
    args = parser.parse_args(argv)

    rows = []
    for variant in args.variants:
        for config in args.backbones:
            entry = row(variant, config, args)
            rows.append(entry)
            print(json.dumps({k: v for k, v in entry.items() if k != "ops"}), flush=True)
    for path, text in ((args.json, json.dumps({"args": vars(args), "rows": rows}, indent=1)),
                       (args.markdown, markdown(rows, args))):
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    print(f"wrote {args.json} and {args.markdown}", file=sys.stderr)


if __name__ == "__main__":
    main()

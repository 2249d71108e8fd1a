"""The `larq-l1inf` command line.

Every subcommand is one `register(subparsers)` function that adds its parser and sets
`func` (called with the parsed arguments, returns an exit code). To add a command, write
such a function (in its own module if it is large) and append it to `COMMANDS`.
Commands import their heavy modules (LCE, scikit-learn, TFDS) inside `func`.

    larq-l1inf demo                  # ~2.5 min on 2 shared CPU cores, offline
    larq-l1inf demo --fast           # seconds; a smoke test of the whole pipeline
    larq-l1inf evaluate MODEL --convert --epsilon 0.03 0.06 --pgd-epsilon 0.0039
    larq-l1inf sweep baseline=a.tflite l1inf=b.tflite --levels 0 0.05 0.1 --png sweep.png
"""

import argparse
import json
import logging
import math
import os
import sys
import time

import numpy as np

__all__ = ["main", "build_parser", "register_demo", "build_demo_model", "COMMANDS"]

log = logging.getLogger(__name__)

# Noise range of the demo, in pixel units ([0, 1]). Measured on the default demo baseline
# (93.6% clean; mean of 3 noise seeds): the paper's CIFAR range [1/255, 4/255] leaves it at 92.2%,
# [0.02, 0.04] at 89.3%, [0.03, 0.06] at 80.3%, the MRI range [0.05, 0.1] at 53.2%.
# [0.03, 0.06] degrades it clearly while staying far from chance, so differences show.
DEMO_NOISE_RANGE = (0.03, 0.06)


# --------------------------------------------------------------------------- demo


def build_demo_model(input_shape=(32, 32, 3), width=32, num_classes=10, regularizer=None,
                     name="demo_bnn"):
    """A small residual BNN whose binary convolutions LCE turns into `LceBconv2d`.

    Float stem (3x3 conv, batch norm, 2x2 max pool), then four binary 3x3 convolutions
    (`QuantConv2D` with `ste_sign` input and kernel quantizers, `weight_clip`,
    `pad_values=1.0`), each followed by batch norm and added to a shortcut (Bi-Real style):
    two at `width` channels, one strided to `2 * width` (shortcut: 2x2 average pool and a
    float 1x1 conv), one more at `2 * width`; global average pool and a float dense layer.

    # Arguments
    input_shape: `(h, w, c)`, h and w divisible by 4.
    width: channels of the first stage.
    num_classes: outputs (softmax).
    regularizer: kernel regularizer of the binary convolutions (e.g. `L1InfRegularizer`),
        or None.
    name: model name.

    # Returns
    An uncompiled `tf.keras.Model`.
    """
    import larq as lq

    from larq_l1inf._keras import tf

    layers = tf.keras.layers
    binary = dict(
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        kernel_constraint="weight_clip",
        padding="same",
        pad_values=1.0,
        use_bias=False,
        kernel_regularizer=regularizer,
    )

    def bn(x):
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)

    inputs = tf.keras.Input(input_shape)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False)(inputs)
    x = bn(x)
    x = layers.MaxPool2D(2)(x)
    for _ in range(2):
        x = layers.add([x, bn(lq.layers.QuantConv2D(width, 3, **binary)(x))])
    shortcut = layers.AveragePooling2D(2)(x)
    shortcut = bn(layers.Conv2D(2 * width, 1, use_bias=False)(shortcut))
    x = layers.add([shortcut, bn(lq.layers.QuantConv2D(2 * width, 3, strides=2, **binary)(x))])
    x = layers.add([x, bn(lq.layers.QuantConv2D(2 * width, 3, **binary)(x))])
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return tf.keras.Model(inputs, outputs, name=name)


def _accuracy(probabilities, labels):
    return float((np.asarray(probabilities).argmax(axis=1) == labels).mean())


def _fit_verbosity():
    # One progress bar per epoch on a terminal; one line per epoch in logs and pipes.
    return 1 if sys.stdout.isatty() else 2


def _train_and_evaluate(name, regularizer, data, args, x_test_noisy):
    """Train one demo model, evaluate it in Keras and as an LCE flatbuffer."""
    from larq_l1inf import deploy, penalty
    from larq_l1inf._keras import tf

    (x_train, y_train), (x_test, y_test) = data
    tf.keras.utils.set_random_seed(args.seed)  # same initial weights and batches for every model
    model = build_demo_model(x_train.shape[1:], width=args.width, regularizer=regularizer,
                             name=f"demo_{name}")
    steps = args.epochs * math.ceil(len(x_train) / args.batch_size)
    schedule = tf.keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=max(steps, 1))
    # SGD with momentum as the paper; Adam rescales the penalty's push (method.md).
    model.compile(
        optimizer=tf.keras.optimizers.SGD(schedule, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    print(f"\n[{name}] training {args.epochs} epoch(s) on {len(x_train)} images "
          f"({'no penalty' if regularizer is None else regularizer.get_config()})")
    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        verbose=_fit_verbosity(), shuffle=True)
    train_seconds = time.perf_counter() - start
    keras_clean = _accuracy(model.predict(x_test, batch_size=256, verbose=0), y_test)
    keras_noisy = _accuracy(model.predict(x_test_noisy, batch_size=256, verbose=0), y_test)

    print(f"[{name}] converting with larq-compute-engine "
          f"({'in-process' if args.convert_in_process else 'subprocess'})")
    start = time.perf_counter()
    flatbuffer = deploy.convert(model, in_process=args.convert_in_process, binarized="raise")
    convert_seconds = time.perf_counter() - start
    if args.save_dir:
        deploy.save_flatbuffer(flatbuffer, os.path.join(args.save_dir, f"{name}.tflite"))
    report = deploy.check_binarized(flatbuffer, model, on_failure="raise")
    tflite = deploy.TFLiteModel(flatbuffer, num_threads=args.threads)
    print(f"[{name}] LCE interpreter on {len(x_test)} clean and {len(x_test)} noisy images")
    tflite_clean_probs = tflite.predict(x_test, verbose=True)
    tflite_noisy_probs = tflite.predict(x_test_noisy, verbose=True)
    agreement = deploy.compare_outputs(model, tflite, x_test_noisy)
    result = {
        "keras_clean_acc": keras_clean,
        "keras_noisy_acc": keras_noisy,
        "tflite_clean_acc": _accuracy(tflite_clean_probs, y_test),
        "tflite_noisy_acc": _accuracy(tflite_noisy_probs, y_test),
        "model_size_bytes": len(flatbuffer),
        "lce_bconv2d": report.lce_bconv2d,
        "binary_convs": report.binary_convs,
        "float_convs": report.float_convs,
        "op_counts": deploy.op_counts(flatbuffer),
        "noisy_agreement": agreement,
        "final_train_loss": float(history.history["loss"][-1]),
        "final_train_acc": float(history.history["accuracy"][-1]),
        "penalty": float(penalty(model)) if regularizer is not None else 0.0,
        "train_seconds": train_seconds,
        "convert_seconds": convert_seconds,
    }
    return result


def _format_table(results):
    header = ["model", "Keras clean", "Keras noisy", "TFLite clean", "TFLite noisy",
              "size (KiB)", "LceBconv2d"]
    rows = []
    for name, r in results.items():
        rows.append([
            name,
            f"{100 * r['keras_clean_acc']:.2f}%",
            f"{100 * r['keras_noisy_acc']:.2f}%",
            f"{100 * r['tflite_clean_acc']:.2f}%",
            f"{100 * r['tflite_noisy_acc']:.2f}%",
            f"{r['model_size_bytes'] / 1024:.1f}",
            f"{r['lce_bconv2d']}/{r['binary_convs']}",
        ])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(header, widths)))
    out = [line, "-" * len(line)]
    for row in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(out)


def _check_all_finite(value, where="results"):
    """Refuse to write NaN/inf silently: raise naming the entry."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_all_finite(item, f"{where}.{key}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise FloatingPointError(
            f"{where} is {value}: training diverged. Lower --lr or --delta and run again."
        )


def _penalty_options(args):
    """The L1InfRegularizer arguments given on the command line; the rest keep its defaults."""
    options = {}
    if args.delta is not None:
        options["delta"] = args.delta
    if args.reduction is not None:
        options["reduction"] = args.reduction
    if args.normalize is not None:
        options["normalize"] = args.normalize == "on"
    return options


def run_demo(args):
    """The `demo` command: train with and without the penalty, evaluate, convert, compare."""
    lo, hi = args.noise_range
    if not 0 <= lo <= hi:
        raise SystemExit(f"--noise-range needs 0 <= lo <= hi, got {lo} {hi}.")
    if args.fast:
        args.epochs = min(args.epochs, 1)
        args.width = min(args.width, 8)
        args.size = min(args.size, 16)
    from larq_l1inf import L1InfRegularizer
    from larq_l1inf.data import load_digits
    from larq_l1inf.noise import environmental_noise

    started = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_digits(
        size=args.size, channels=3, test_fraction=args.test_fraction, seed=args.seed
    )
    if args.fast:  # a smoke test: a few batches, a few test images
        x_train, y_train = x_train[:128], y_train[:128]
        x_test, y_test = x_test[:48], y_test[:48]
    # One draw of Algorithm 1 noise, shared by every model and by Keras and the interpreter.
    x_test_noisy = environmental_noise(x_test, (lo, hi), seed=args.seed).numpy()
    print(f"digits: {len(x_train)} train / {len(x_test)} test images, "
          f"{args.size}x{args.size}x3 in [0, 1]; Algorithm 1 noise eps ~ U[{lo}, {hi}]")
    data = ((x_train, y_train), (x_test, y_test))
    variants = {"baseline": None, "l1inf": L1InfRegularizer(**_penalty_options(args))}
    results = {
        name: _train_and_evaluate(name, regularizer, data, args, x_test_noisy)
        for name, regularizer in variants.items()
    }
    table = _format_table(results)
    print(f"\nAccuracy on {len(x_test)} test digits (noisy: Algorithm 1, eps ~ U[{lo}, {hi}], "
          f"seed {args.seed})\n{table}")
    output = {
        "command": "demo",
        "config": {
            "epochs": args.epochs,
            "penalty": variants["l1inf"].get_config(),
            "seed": args.seed,
            "noise_range": [lo, hi],
            "lr": args.lr,
            "batch_size": args.batch_size,
            "width": args.width,
            "image_size": args.size,
            "n_train": int(len(x_train)),
            "n_test": int(len(x_test)),
            "fast": bool(args.fast),
            "optimizer": "SGD(momentum=0.9), cosine decay",
        },
        "models": results,
        "total_seconds": time.perf_counter() - started,
    }
    _check_all_finite(output)
    if args.out:
        directory = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(directory, exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(output, f, indent=2)
        print(f"results written to {args.out}")
    return 0


def register_demo(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="train a small BNN on digits with and without the L1,inf penalty, evaluate it "
             "clean and noisy, in Keras and as an LCE flatbuffer",
        description=(
            "Trains the same small residual BNN on scikit-learn's digits (upscaled to "
            "SIZExSIZE, 3 channels, offline) with and without the L1,inf penalty, evaluates "
            "both on clean and Algorithm 1 noisy test images, converts both with "
            "larq-compute-engine, evaluates the flatbuffers with the LCE interpreter on the "
            "same inputs and prints one table."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=int, default=15, help="training epochs per model")
    parser.add_argument("--delta", type=float, default=None,
                        help="penalty coefficient (default: L1InfRegularizer's)")
    parser.add_argument("--reduction", choices=("log", "sum", "product"), default=None,
                        help="how the per-layer terms are combined (default: L1InfRegularizer's)")
    parser.add_argument("--normalize", choices=("on", "off"), default=None,
                        help="divide each layer term by its fan-in (default: L1InfRegularizer's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, init and noise")
    parser.add_argument("--noise-range", type=float, nargs=2, metavar=("LO", "HI"),
                        default=list(DEMO_NOISE_RANGE),
                        help="Algorithm 1 epsilon ~ U[LO, HI], pixel units ([0, 1] images)")
    parser.add_argument("--lr", type=float, default=0.1, help="initial SGD learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--width", type=int, default=32, help="channels of the first stage")
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction")
    parser.add_argument("--threads", type=int, default=1, help="LCE interpreter threads")
    parser.add_argument("--out", default="results/demo.json", help="JSON output ('' for none)")
    parser.add_argument("--save-dir", default="",
                        help="also write the two .tflite flatbuffers to this directory")
    parser.add_argument("--convert-in-process", action="store_true",
                        help="run the LCE converter in this process (faster, but a converter "
                             "crash ends the demo)")
    parser.add_argument("--fast", action="store_true",
                        help="smoke test: 1 epoch, width 8, 16x16, 128 train / 48 test images")
    parser.set_defaults(func=run_demo)
    return parser


# --------------------------------------------------------------------------- entry point

def register_evaluation(subparsers):
    """`evaluate` and `sweep` (larq_l1inf.evaluation)."""
    from larq_l1inf.evaluation import register

    return register(subparsers)


#: `register(subparsers)` functions, one per subcommand (or group of subcommands).
COMMANDS = [register_demo, register_evaluation]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="larq-l1inf",
        description="L1,inf-norm penalty for robust binarized neural networks (Larq).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv=None):
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_tensorflow()
    return args.func(args)


def _quiet_tensorflow():
    """Keep TensorFlow's C++ info logs and AutoGraph notices out of the command's output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads, if it has not
    from larq_l1inf._keras import tf

    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)


if __name__ == "__main__":
    sys.exit(main())

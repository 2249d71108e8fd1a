"""The `larq-l1inf` command line.

    larq-l1inf demo                  # ~2.5 min on 2 shared CPU cores, offline
    larq-l1inf demo --fast           # seconds; a smoke test of the whole pipeline
    larq-l1inf evaluate MODEL --convert --epsilon 0.03 0.06 --pgd-epsilon 0.0039
    larq-l1inf sweep baseline=a.tflite l1inf=b.tflite --epsilons 0 0.05 0.1 --out results

Adding a command: write a `register_NAME(subparsers)` function that adds its parser with
`subparsers.add_parser(...)` and sets `func` (called with the parsed arguments; returns the
exit status), and append it to `COMMANDS`. Commands import their heavy modules (LCE,
scikit-learn, TFDS) inside `func`; the command parses and calls the library, nothing more.

Errors, the same for every command (`main` does it):
- A bad value on the command line is one line on stderr, `larq-l1inf CMD: error: argument
  --epochs: must be >= 1, got -1 (see 'larq-l1inf CMD --help')`, and exit status 2. Use
  the argparse `type=` helpers of this module for it: `positive_int`, `non_negative_int`,
  `positive_float`, `non_negative_float`, `probability`, `existing_path`, `model_spec`.
- A check that needs more than one argument raises `CommandError("argument --epsilon:
  needs LO <= HI, got 0.3 0.1")` inside `func`: the same one line, exit status 2.
- Any other exception is one line naming its type, exit status 1; `-v` prints the
  traceback as well.
- `-v` / `--verbose` logs INFO and keeps TensorFlow's messages; `-q` / `--quiet` logs
  errors only and hides progress bars. Both are accepted before or after the command name.
- An option renamed in this release keeps working for one release through
  `action=deprecated_option("--new-name")` (a `DeprecationWarning` and a logged warning).
"""

import argparse
import logging
import math
import os
import sys
import time

import numpy as np

__all__ = [
    "COMMANDS",
    "build_demo_model",
    "build_parser",
    "CommandError",
    "command_error",
    "deprecated_option",
    "existing_path",
    "load_model",
    "main",
    "model_spec",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "probability",
    "register_convert",
    "register_demo",
    "register_evaluation",
    "register_plot",
    "register_train",
]

log = logging.getLogger(__name__)

# Noise range of the demo, in pixel units ([0, 1]). Measured on the default demo baseline
# (93.6% clean; mean of 3 noise seeds): the paper's CIFAR range [1/255, 4/255] leaves it at 92.2%,
# [0.02, 0.04] at 89.3%, [0.03, 0.06] at 80.3%, the MRI range [0.05, 0.1] at 53.2%.
# [0.03, 0.06] degrades it clearly while staying far from chance, so differences show.
DEMO_NOISE_RANGE = (0.03, 0.06)


# --------------------------------------------------------------------------- demo


def build_demo_model(input_shape=(32, 32, 3), width=32, num_classes=10, regularizer=None,
                     name="demo_bnn"):
    """Deprecated alias of `larq_l1inf.backbones.demo_net` (the demo's residual BNN).

    # Arguments
    input_shape, width, num_classes: as `demo_net`.
    regularizer: `demo_net`'s `kernel_regularizer`.
    name: model name.
    """
    import warnings

    from larq_l1inf.backbones import demo_net

    warnings.warn(
        "larq_l1inf.cli.build_demo_model is deprecated; use "
        "larq_l1inf.backbones.demo_net(variant, num_classes, input_shape, kernel_regularizer, "
        "width=...).",
        DeprecationWarning,
        stacklevel=2,
    )
    return demo_net("bnn", num_classes=num_classes, input_shape=tuple(input_shape),
                    kernel_regularizer=regularizer, width=width, name=name)


def _accuracy(probabilities, labels):
    return float((np.asarray(probabilities).argmax(axis=1) == labels).mean())


def _demo_config(args, regularizer):
    from larq_l1inf.training import TrainConfig

    options = _penalty_options(args) if regularizer == "l1inf" else {}
    return TrainConfig(
        variant="bnn", backbone="demo", width=args.width, dataset="digits",
        regularizer=regularizer, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, epsilon=list(args.epsilon), draws=1, **options,
    )


def _train_and_evaluate(name, regularizer, data, args):
    """Train one demo model with the recipe, evaluate it in Keras and as an LCE flatbuffer."""
    from larq_l1inf import deploy, evaluation, penalty, training

    config = _demo_config(args, regularizer)
    print(f"\n[{name}] training {args.epochs} epoch(s) on {data.splits['train']} images "
          f"({'no penalty' if regularizer == 'none' else training.make_regularizer(config).get_config()})")
    start = time.perf_counter()
    model, history = training.fit(config, data, verbose=training.fit_verbosity())
    train_seconds = time.perf_counter() - start

    print(f"[{name}] converting with larq-compute-engine "
          f"({'in-process' if args.convert_in_process else 'subprocess'})")
    start = time.perf_counter()
    flatbuffer = deploy.convert(model, in_process=args.convert_in_process)
    convert_seconds = time.perf_counter() - start
    if args.save_dir:
        deploy.save_flatbuffer(flatbuffer, os.path.join(args.save_dir, f"{name}.tflite"))
    report = deploy.check_binarized(flatbuffer, model, on_failure="raise")
    tflite = deploy.TFLiteModel(flatbuffer, num_threads=args.threads)
    x_test, y_test = data.arrays("test")
    print(f"[{name}] Keras and the LCE interpreter on {len(x_test)} clean and noisy images")
    # One noise draw, identical for every model and for Keras and the interpreter.
    result = training.evaluate_model(model, x_test, y_test, flatbuffer=tflite,
                                     epsilon=args.epsilon, draws=1, seed=args.seed)
    x_noisy = evaluation.noisy_inputs(x_test, "environmental", tuple(args.epsilon), args.seed, 0)
    keras, lite = result.models["keras"], result.models["tflite"]
    return {
        "keras_clean_acc": keras["clean"],
        "keras_noisy_acc": keras["noisy"][0],
        "tflite_clean_acc": lite["clean"],
        "tflite_noisy_acc": lite["noisy"][0],
        "model_size_bytes": len(flatbuffer),
        "lce_bconv2d": report.lce_bconv2d,
        "binary_convs": report.binary_convs,
        "float_convs": report.float_convs,
        "op_counts": deploy.op_counts(flatbuffer),
        "noisy_agreement": deploy.compare_outputs(model, tflite, x_noisy),
        "final_train_loss": float(history.history["loss"][-1]),
        "final_train_acc": float(history.history["accuracy"][-1]),
        "penalty": float(penalty(model)) if regularizer != "none" else 0.0,
        "train_seconds": train_seconds,
        "convert_seconds": convert_seconds,
    }


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


def _check_demo_args(args):
    """One-line errors (exit 2) for arguments the demo cannot run with."""
    lo, hi = args.epsilon
    problems = [
        (args.epochs < 1, f"--epochs must be >= 1, got {args.epochs}"),
        (args.batch_size < 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.width < 1, f"--width must be >= 1, got {args.width}"),
        (args.size < 4 or args.size % 4, f"--size must be a multiple of 4 (>= 4), got {args.size}"),
        (not 0 < args.test_fraction < 1,
         f"--test-fraction must be in (0, 1), got {args.test_fraction}"),
        (args.threads < 1, f"--threads must be >= 1, got {args.threads}"),
        (not args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (args.delta is not None and not args.delta >= 0, f"--delta must be >= 0, got {args.delta}"),
        (not 0 <= lo <= hi, f"--epsilon needs 0 <= LO <= HI, got {lo} {hi}"),
    ]
    for bad, message in problems:
        if bad:
            args.error(message)


def run_demo(args):
    """The `demo` command: train with and without the penalty, evaluate, convert, compare."""
    if args.fast:
        args.epochs = min(args.epochs, 1)
        args.width = min(args.width, 8)
        args.size = min(args.size, 16)
    _check_demo_args(args)
    lo, hi = args.epsilon
    from larq_l1inf import training
    from larq_l1inf.data import load_digits

    started = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_digits(
        size=args.size, channels=3, test_fraction=args.test_fraction, seed=args.seed
    )
    if args.fast:  # a smoke test: a few batches, a few test images
        x_train, y_train = x_train[:128], y_train[:128]
        x_test, y_test = x_test[:48], y_test[:48]
    data = training.ArrayData((x_train, y_train), (x_test, y_test), name="digits",
                              epsilon=(lo, hi), num_classes=10)
    print(f"digits: {len(x_train)} train / {len(x_test)} test images, "
          f"{args.size}x{args.size}x3 in [0, 1]; Algorithm 1 noise eps ~ U[{lo}, {hi}]")
    results = {
        name: _train_and_evaluate(name, regularizer, data, args)
        for name, regularizer in (("baseline", "none"), ("l1inf", "l1inf"))
    }
    table = _format_table(results)
    print(f"\nAccuracy on {len(x_test)} test digits (noisy: Algorithm 1, eps ~ U[{lo}, {hi}], "
          f"seed {args.seed})\n{table}")
    output = {
        "command": "demo",
        "config": {
            "epochs": args.epochs,
            "penalty": training.make_regularizer(_demo_config(args, "l1inf")).get_config(),
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
        from larq_l1inf.utils import write_json

        write_json(output, args.out)
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
    parser.add_argument("--epochs", type=positive_int, default=15, help="training epochs per model")
    parser.add_argument("--delta", type=float, default=None,
                        help="penalty coefficient (default: L1InfRegularizer's)")
    parser.add_argument("--reduction", choices=("log", "sum", "product"), default=None,
                        help="how the per-layer terms are combined (default: L1InfRegularizer's)")
    parser.add_argument("--normalize", choices=("on", "off"), default=None,
                        help="divide each layer term by its fan-in (default: L1InfRegularizer's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, init and noise")
    parser.add_argument("--epsilon", type=float, nargs=2, metavar=("LO", "HI"),
                        default=list(DEMO_NOISE_RANGE),
                        help="Algorithm 1 epsilon ~ U[LO, HI], pixel units ([0, 1] images)")
    parser.add_argument("--noise-range", type=float, nargs=2, metavar=("LO", "HI"),
                        dest="epsilon", action=deprecated_option("--epsilon"),
                        help="deprecated: use --epsilon")
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
    parser.set_defaults(func=run_demo, error=command_error)
    return parser


# --------------------------------------------------------------------------- train


# Flag -> TrainConfig key, for the flags whose key is not the flag's own name.
_TRAIN_KEYS = {"out": "out_dir", "xla": "jit_compile"}


def _parse_value(text):
    """A `KEY=VALUE` option's value: YAML scalars (numbers, booleans, lists), else the string."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _key_values(pairs, flag, error):
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            error(f"{flag} takes KEY=VALUE, got {pair!r}")
        options[key.replace("-", "_")] = _parse_value(value)
    return options


def _train_settings(args):
    """The TrainConfig settings of the command line: the --config file, then the flags given."""
    from larq_l1inf.training import load_config

    settings = {}
    if getattr(args, "config", None):
        try:
            settings.update(load_config(args.config))
        except (OSError, ValueError) as error:
            args.error(f"cannot read --config {args.config}: {error}")
    given = {k: v for k, v in vars(args).items()
             if k not in ("func", "error", "config", "resume", "command", "verbose", "quiet",
                          "convert_in_process", "data_option", "variant_option", "train_size",
                          "test_size")}
    for key, value in given.items():
        settings[_TRAIN_KEYS.get(key, key)] = value
    if "normalize" in settings and isinstance(settings["normalize"], str):
        settings["normalize"] = settings["normalize"] == "on"
    data_options = dict(settings.get("data_options") or {})
    data_options.update(_key_values(getattr(args, "data_option", None), "--data-option", args.error))
    for key in ("train_size", "test_size"):
        if hasattr(args, key):
            data_options[key] = getattr(args, key)
    if data_options:
        settings["data_options"] = data_options
    variant_options = _key_values(getattr(args, "variant_option", None), "--variant-option",
                                  args.error)
    if variant_options:
        settings["variant_options"] = {**(settings.get("variant_options") or {}),
                                       **variant_options}
    if "noise_augment" in settings and settings["noise_augment"] is not None:
        noise, lo, hi = settings["noise_augment"]
        try:
            settings["noise_augment"] = [noise, float(lo), float(hi)]
        except ValueError:
            args.error(f"--noise-augment takes NOISE LO HI (numbers), got {noise} {lo} {hi}")
    return settings


def _default_out_dir(config):
    robust = "" if config.robust == "none" else f"-gm-{config.robust}"
    return os.path.join("runs", f"{config.dataset}-{config.backbone}-{config.variant}-"
                                f"{config.regularizer}{robust}-seed{config.seed}")


def run_train(args):
    """The `train` command: one variant on one backbone, resumable, deployed and evaluated."""
    from larq_l1inf import training

    settings = _train_settings(args)
    out_dir = settings.pop("out_dir", None)
    if args.resume:
        if out_dir is not None and os.path.abspath(out_dir) != os.path.abspath(args.resume):
            args.error("--resume DIR continues the run in DIR; drop --out")
        try:
            config = training.resume_config(args.resume, settings)
        except (OSError, ValueError) as error:
            args.error(str(error))
        out_dir = args.resume
    else:
        try:
            config = training.TrainConfig.from_dict(settings).validate()
        except (TypeError, ValueError) as error:
            args.error(str(error))
        out_dir = out_dir or _default_out_dir(config)
        if os.path.exists(os.path.join(out_dir, "config.yaml")):
            args.error(f"{out_dir} already holds a run; continue it with --resume {out_dir}, "
                       "or choose another --out")
    try:
        config.validate()
    except ValueError as error:
        args.error(str(error))
    try:  # before any file is written: a missing dataset leaves no run directory behind
        data = training.load_data(config)
    except (TypeError, ValueError, OSError) as error:
        args.error(str(error))
    print(f"run directory: {out_dir}")
    try:
        training.train(config, out_dir, data=data, resume=bool(args.resume),
                       convert_in_process=args.convert_in_process,
                       verbose=0 if getattr(args, "quiet", False) else None)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: larq-l1inf train --resume {out_dir}",
              file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the run directory records it; say so once
        print(f"larq-l1inf train: error: the run failed: {type(error).__name__}: {error}\n"
              f"Its checkpoints are in {out_dir}; fix the cause and continue with "
              f"`larq-l1inf train --resume {out_dir}`.", file=sys.stderr)
        return 1
    print(f"finished: {out_dir} ({', '.join(sorted(os.listdir(out_dir)))})")
    return 0


def register_train(subparsers):
    """`larq-l1inf train`: the training recipe of `larq_l1inf.training` as a command."""
    parser = subparsers.add_parser(
        "train",
        help="train a BNN variant on a backbone, with or without a penalty; resumable; "
             "leaves the deployed flatbuffer evaluated under noise",
        description=(
            "Trains a BNN variant (larq_l1inf.variants) on a backbone (larq_l1inf.backbones) "
            "with SGD momentum 0.9 and a cosine learning rate, with or without a penalty, into "
            "a run directory: config.yaml, a checkpoint per epoch, TensorBoard logs, "
            "history.csv, the SavedModel, its LCE flatbuffer and evaluation.json (clean and "
            "Algorithm 1 noisy accuracy of the Keras model and the flatbuffer on identical "
            "inputs). Settings come from the flags or from --config FILE (JSON/YAML, as the "
            "run's config.yaml); unset settings keep TrainConfig's defaults."
        ),
        argument_default=argparse.SUPPRESS,  # only the flags given override --config / defaults
    )
    add = parser.add_argument
    add("--config", metavar="FILE", help="JSON or YAML file of settings (a run's config.yaml)")
    add("--resume", metavar="DIR", default=None,
        help="continue the interrupted run in DIR from its last completed epoch")
    add("--out", metavar="DIR",
        help="run directory (default runs/DATASET-BACKBONE-VARIANT-REGULARIZER[-gm-ROBUST]-seedSEED)")
    add("--variant", help="BNN variant: bnn, xnor, dorefa, bireal, reactnet, irnet, abc, adabin, "
                          "cyclebnn, mbn (default bnn)")
    add("--variant-option", action="append", metavar="KEY=VALUE",
        help="an option of the variant, e.g. a_bits=2 for dorefa, weight_bases=3 for mbn "
             "(repeatable)")
    add("--backbone", help="resnet20 (default), resnet18, resnet34, vgg_small, conv1d, demo")
    add("--width", type=int, help="channels of the backbone's first stage")
    add("--dataset", help="a dataset of larq_l1inf.data (default digits)")
    add("--data-dir", help="the dataset's directory")
    add("--train-size", type=int, help="seeded stratified subsample of the training split")
    add("--test-size", type=int, help="seeded stratified subsample of the test split")
    add("--data-option", action="append", metavar="KEY=VALUE",
        help="another option of the dataset's loader (repeatable)")
    add("--augment", action="store_true", help="the dataset's training augmentation")
    add("--regularizer", help="none (default), l1inf, l1, spectral, absum or lcr")
    add("--delta", type=float, help="penalty coefficient (for lcr: its lam)")
    add("--lcr-teacher", metavar="train|PATH",
        help="LCR's full-precision teacher: train it first, or load its saved weights "
             "(default: untrained, with a warning)")
    add("--reduction", choices=("log", "sum", "product"), help="combination of the layer terms")
    add("--normalize", choices=("on", "off"), help="divide each layer term by its fan-in")
    add("--alpha", choices=("layer", "channel", "none"), help="the penalty's scaling factor")
    add("--warmup-epochs", type=int, help="linear warm-up of delta over these epochs")
    add("--log-bounds", action="store_true",
        help="log the data-free Theorem 4.2 bound terms every epoch (slow on big models)")
    add("--noise-augment", nargs=3, metavar=("NOISE", "LO", "HI"),
        help="train with larq_l1inf.noise.InputNoise(NOISE, (LO, HI)) (training only)")
    add("--epochs", type=int, help="training epochs (default 10)")
    add("--batch-size", type=int, help="global batch size (default 64)")
    add("--lr", type=float, help="initial SGD learning rate (default 0.1)")
    add("--momentum", type=float, help="SGD momentum (default 0.9)")
    add("--lr-schedule", choices=("cosine", "constant"), help="default cosine decay to 0")
    add("--seed", type=int, help="initial weights, batch order and noise (default 0)")
    add("--distribute", choices=("none", "mirrored"),
        help="mirrored: tf.distribute.MirroredStrategy (MultiWorker with TF_CONFIG)")
    add("--xla", action=argparse.BooleanOptionalAction,
        help="compile the train step with XLA (jit_compile)")
    add("--epsilon", type=float, nargs=2, metavar=("LO", "HI"),
        help="evaluation noise range (default: the dataset's)")
    add("--draws", type=int, help="noise draws of the evaluation (default 5)")
    add("--pgd-epsilon", type=float, help="also evaluate under L-inf PGD of this radius")
    add("--pgd-iterations", type=int, help="PGD steps (default 20)")
    add("--convert", action=argparse.BooleanOptionalAction,
        help="convert with LCE and evaluate the flatbuffer (default on)")
    add("--robust", choices=("none", "ibp", "crown-ibp", "pgd", "noise"),
        help="GM robust training (larq_l1inf.robust.GMRobustModel) with this robust term "
             "(default none); the saved model is the inner model")
    add("--robust-epsilon", type=float, nargs="+", metavar="E",
        help="GM's final perturbation size E, or LO HI for --robust noise")
    add("--gm-n", type=int, help="GM robustness size N, sub-perturbations per step (default 5)")
    add("--gm-weights", choices=("1/sqrt", "1/i", "1/i^2", "1/ln", "constant"),
        help="GM weights c_i (default 1/sqrt)")
    add("--gm-kappa", type=float, help="GM final balance of clean and robust loss (default 0.5)")
    add("--gm-warmup-epochs", type=int, help="GM clean-only warm-up epochs (default 0)")
    add("--gm-rampup-epochs", type=int,
        help="GM epochs over which epsilon and kappa (and beta) reach their final values "
             "(default 0)")
    add("--gm-final-beta", type=float, metavar="B",
        help="--robust crown-ibp: final weight of the CROWN-IBP bound against IBP (eq. 17), "
             "in [0, 1]; beta moves from 1 to B over the ramp-up (default 1, the paper's)")
    add("--convert-in-process", action="store_true", default=False,
        help="run the LCE converter in this process")
    parser.set_defaults(func=run_train, error=command_error)
    return parser


def _model_path(path):
    """A SavedModel/.h5 path, or a run directory's model/."""
    if os.path.isdir(os.path.join(path, "model")) and os.path.exists(
            os.path.join(path, "config.yaml")):
        return os.path.join(path, "model")
    return path


def run_convert(args):
    """The `convert` command: flatbuffer, op counts, binarization report, Keras parity."""
    if not os.path.exists(args.model):
        args.error(f"{args.model} does not exist; give a SavedModel directory, an .h5 file or "
                   "a run directory of `larq-l1inf train`")
    if args.samples < 1:
        args.error(f"--samples must be >= 1, got {args.samples}")
    import larq_l1inf  # noqa: F401 - registers the custom objects for loading
    from larq_l1inf import deploy
    from larq_l1inf._keras import tf
    from larq_l1inf.utils import write_atomic, write_json

    path = _model_path(args.model)
    try:
        model = tf.keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as error:
        args.error(f"cannot load a Keras model from {path}: {error}")
    flatbuffer = deploy.convert(model, in_process=args.in_process, batch_size=args.batch_size)
    out = args.out or (os.path.splitext(path.rstrip("/"))[0] + ".tflite")
    write_atomic(out, bytes(flatbuffer))
    counts = deploy.op_counts(flatbuffer)
    report = deploy.check_binarized(flatbuffer, model, on_failure="ignore")
    rng = np.random.default_rng(args.seed)
    shape = tuple(model.inputs[0].shape[1:])
    # Inputs in the models' units ([0, 1]): the parity of a random batch, not of a dataset.
    x = rng.uniform(0, 1, (args.samples, *shape)).astype("float32")
    parity = deploy.compare_outputs(model, deploy.TFLiteModel(flatbuffer), x)
    print(f"flatbuffer: {out} ({len(flatbuffer) / 1024:.1f} KiB)")
    print("ops: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(report.message(model.name))
    print(f"Keras vs interpreter on {parity['n']} uniform [0, 1] inputs: max |diff| "
          f"{parity['max_abs_diff']:.3g}, top-1 agreement {parity['argmax_agree']}/{parity['n']}")
    if args.json:
        write_json({
            "flatbuffer": out, "bytes": len(flatbuffer), "op_counts": counts,
            "binary_convs": report.binary_convs, "lce_bconv2d": report.lce_bconv2d,
            "float_convs": report.float_convs, "parity": parity}, args.json)
    return 0


def register_convert(subparsers):
    """`larq-l1inf convert`: a Keras model to an LCE flatbuffer, with its checks."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a Keras model (or a train run) to an LCE flatbuffer; print op counts, "
             "the binarization report and Keras/interpreter parity",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="SavedModel directory, .h5 file, or a run directory")
    parser.add_argument("--out", default="", help="flatbuffer path (default MODEL.tflite)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="fixed batch size of the flatbuffer (default 1)")
    parser.add_argument("--samples", type=int, default=16, help="inputs of the parity check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parity inputs")
    parser.add_argument("--json", default="", help="also write the report as JSON")
    parser.add_argument("--in-process", action="store_true",
                        help="run the LCE converter in this process")
    parser.set_defaults(func=run_convert, error=command_error)
    return parser


def run_plot(args):
    """The `plot` command: the figures of one or more run directories."""
    for run_dir in args.run_dir:
        if not os.path.exists(os.path.join(run_dir, "config.yaml")):
            args.error(f"{run_dir} is not a run directory of `larq-l1inf train` (no config.yaml)")
    import larq_l1inf  # noqa: F401 - registers the custom objects for loading
    from larq_l1inf import training
    from larq_l1inf._keras import tf

    models, data = {}, None
    for run_dir in args.run_dir:
        config = training.resume_config(run_dir)
        model = None
        if os.path.isdir(os.path.join(run_dir, "model")):
            model = tf.keras.models.load_model(os.path.join(run_dir, "model"), compile=False)
            models[os.path.basename(os.path.normpath(run_dir))] = model
        try:
            data = training.load_data(config)
        except (TypeError, ValueError, OSError) as error:
            log.warning("No feature maps for %s: its dataset cannot be loaded (%s).", run_dir, error)
            data = None
        for path in training.write_plots(run_dir, model, data, config.epsilon, config.seed):
            print(path)
    if len(models) > 1 and data is not None:
        from larq_l1inf import plots
        from larq_l1inf.evaluation import noisy_inputs

        x = data.arrays("test")[0][:1]
        x_noisy = noisy_inputs(x, "environmental", tuple(data.epsilon), 0, 0)
        out = args.out or "feature_maps.png"
        print(plots.feature_maps(models, x[0], x_noisy[0], out))
    return 0


def register_plot(subparsers):
    """`larq-l1inf plot`: PNGs of run directories."""
    parser = subparsers.add_parser(
        "plot", help="training curves, weight histograms and feature maps of `train` runs",
        description="Writes training_curves.png, weight_histograms.png and feature_maps.png "
                    "into each run directory; with several runs (e.g. with and without the "
                    "penalty, same dataset) also one feature-map figure comparing them.")
    parser.add_argument("run_dir", nargs="+", help="run directories of `larq-l1inf train`")
    parser.add_argument("--out", default="",
                        help="the comparison figure of several runs (default feature_maps.png)")
    parser.set_defaults(func=run_plot, error=command_error)
    return parser


# --------------------------------------------------------------------------- evaluate, sweep


def load_model(path):
    """A Keras model (SavedModel folder, `.h5`, `.keras`) or a `.tflite` flatbuffer (bytes).

    # Raises
    CommandError: for a path that does not exist.
    """
    if not os.path.exists(path):
        raise CommandError(f"no such file or folder: {path!r}; give a saved Keras model "
                           "(SavedModel folder, .h5, .keras) or a .tflite flatbuffer")
    if path.endswith(".tflite"):
        from larq_l1inf.deploy import load_flatbuffer

        return load_flatbuffer(path)
    from larq_l1inf._keras import tf

    return tf.keras.models.load_model(path, compile=False)


def load_data(args):
    """The `--dataset` split (NumPy), cut to `--limit` samples."""
    from larq_l1inf import data

    if args.dataset == "digits":
        _, (x, y) = data.load_digits(size=args.size, channels=args.channels, seed=args.seed)
    else:
        x, y = data.load_tfds(args.dataset, split=args.split, data_dir=args.data_dir,
                              as_numpy=True)
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    return x, y


def output_path(args, filename):
    """`--out DIR/filename`, or None with `--out ''`."""
    return os.path.join(args.out, filename) if args.out else None


def run_evaluate(args):
    """The `evaluate` command: clean, noisy and PGD accuracy of a model (and its flatbuffer)."""
    from larq_l1inf.evaluation import evaluate
    from larq_l1inf.utils import write_json

    if len(args.epsilon) > 2:
        raise CommandError(f"argument --epsilon: give one value or LO HI, got "
                           f"{len(args.epsilon)} values")
    epsilon = tuple(args.epsilon) if len(args.epsilon) == 2 else args.epsilon[0]
    if isinstance(epsilon, tuple) and epsilon[0] > epsilon[1]:
        raise CommandError(f"argument --epsilon: needs LO <= HI, got {epsilon[0]} {epsilon[1]}")
    out = output_path(args, "evaluate.json")
    if args.out.endswith(".json"):
        _deprecated_option("--out FILE.json", "--out DIR (writes DIR/evaluate.json)")
        out = args.out
    model = load_model(args.model)
    flatbuffer = load_model(args.flatbuffer) if args.flatbuffer else (True if args.convert
                                                                        else None)
    x, y = load_data(args)
    result = evaluate(model, x, y, flatbuffer=flatbuffer, noise=args.noise, epsilon=epsilon,
                      draws=args.draws, pgd_epsilon=args.pgd_epsilon,
                      pgd_step_size=args.pgd_step_size, pgd_iterations=args.pgd_iterations,
                      seed=args.seed, batch_size=args.batch_size, num_threads=args.threads,
                      verbose=0 if args.quiet else 1)
    print(result.summary())
    if out:
        write_json({"command": "evaluate", "args": _plain_args(args), **result.to_dict()}, out)
        print(f"written to {out}")
    return 0


def run_sweep(args):
    """The `sweep` command: accuracy against noise strength of several models."""
    from larq_l1inf.evaluation import sweep
    from larq_l1inf.utils import write_json

    models = {}
    for name, path in args.model:
        if name in models:
            raise CommandError(f"argument MODEL: the name {name!r} is given twice; name the "
                               "models NAME=PATH")
        models[name] = load_model(path)
    if args.noise == "environmental" and args.lo_fraction is not None:
        epsilons = [(args.lo_fraction * e, e) for e in args.epsilons]
    else:
        epsilons = list(args.epsilons)
    csv_path = args.csv or output_path(args, "sweep.csv")
    png_path = args.png or output_path(args, "sweep.png")
    x, y = load_data(args)
    rows = sweep(models, x, y, epsilons, noise=args.noise, draws=args.draws, seed=args.seed,
                 batch_size=args.batch_size, num_threads=args.threads, csv_path=csv_path,
                 png_path=png_path, title=args.title, verbose=0 if args.quiet else 1)
    for r in rows:
        print(f"{r['model']:<16} [{r['epsilon_lo']:.4g}, {r['epsilon_hi']:.4g}]  "
              f"{100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f}%")
    out = output_path(args, "sweep.json")
    if out:
        write_json({"command": "sweep", "args": _plain_args(args), "rows": rows}, out)
    for path in (csv_path, png_path, out):
        if path:
            print(f"written to {path}")
    return 0


def _plain_args(args):
    return {k: v for k, v in vars(args).items() if k != "func"}


def _data_arguments(parser):
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="digits",
                       help="'digits' (scikit-learn, offline) or a TFDS name prepared on disk")
    group.add_argument("--split", default="test", help="TFDS split")
    group.add_argument("--data-dir", default=None, help="TFDS data directory")
    group.add_argument("--size", type=positive_int, default=32, help="digits image size")
    group.add_argument("--channels", type=positive_int, default=3, help="digits channels")
    group.add_argument("--limit", type=non_negative_int, default=0,
                       help="evaluate the first N samples only (0: all)")
    group = parser.add_argument_group("noise and models")
    group.add_argument("--noise", default="environmental",
                       choices=["environmental", "gaussian", "uniform", "impulse"])
    group.add_argument("--draws", type=positive_int, default=5, help="noise draws")
    group.add_argument("--seed", type=int, default=0, help="noise / attack seed")
    group.add_argument("--batch-size", type=positive_int, default=128, help="Keras batch size")
    group.add_argument("--threads", type=positive_int, default=1, help="LCE interpreter threads")


def register_evaluation(subparsers):
    """Add the `evaluate` and `sweep` commands (`larq_l1inf.evaluation`)."""
    p = subparsers.add_parser(
        "evaluate", help="clean / noisy / PGD accuracy of a Keras model and its flatbuffer",
        description="Clean, noisy (mean +- std over --draws) and PGD accuracy of a Keras "
                    "model and, beside it, of its LCE flatbuffer on identical inputs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", type=existing_path,
                   help="Keras model (SavedModel folder, .h5, .keras) or .tflite file")
    p.add_argument("--flatbuffer", type=existing_path, default=None,
                   help=".tflite of the same model, evaluated beside")
    p.add_argument("--convert", action="store_true", help="convert the Keras model with LCE")
    p.add_argument("--epsilon", type=non_negative_float, nargs="+", default=[0.05, 0.1],
                   metavar=("LO", "HI"),
                   help="noise strength: one value, or LO HI (Algorithm 1: eps ~ U[LO, HI])")
    p.add_argument("--pgd-epsilon", type=non_negative_float, default=None,
                   help="L-inf PGD radius (default: no PGD)")
    p.add_argument("--pgd-step-size", type=positive_float, default=None,
                   help="PGD step (default: PGD epsilon / 4)")
    p.add_argument("--pgd-iterations", type=non_negative_int, default=20, help="PGD steps")
    p.add_argument("--out", default="results", metavar="DIR",
                   help="write DIR/evaluate.json ('' for none)")
    _data_arguments(p)
    p.set_defaults(func=run_evaluate)

    s = subparsers.add_parser(
        "sweep", help="accuracy vs noise strength of several models: CSV, PNG and JSON",
        description="Accuracy against noise strength of several models on identical noisy "
                    "inputs; writes DIR/sweep.csv, DIR/sweep.png and DIR/sweep.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("model", metavar="MODEL", nargs="+", type=model_spec,
                   help="NAME=PATH (Keras model or .tflite), one per curve")
    s.add_argument("--epsilons", type=non_negative_float, nargs="+", metavar="E",
                   default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.4],
                   help="noise strengths (for environmental noise: upper ends of the ranges)")
    s.add_argument("--levels", type=non_negative_float, nargs="+", dest="epsilons",
                   action=deprecated_option("--epsilons"), help=argparse.SUPPRESS)
    s.add_argument("--lo-fraction", type=probability, default=0.5,
                   help="environmental noise: epsilon E means eps ~ U[f*E, E]")
    s.add_argument("--out", default="results", metavar="DIR", help="output folder ('' for none)")
    s.add_argument("--csv", default="", action=deprecated_option("--out DIR"),
                   help=argparse.SUPPRESS)
    s.add_argument("--png", default="", action=deprecated_option("--out DIR"),
                   help=argparse.SUPPRESS)
    s.add_argument("--title", default=None, help="plot title")
    _data_arguments(s)
    s.set_defaults(func=run_sweep)
    return p, s


# --------------------------------------------------------------------------- errors, types


class CommandError(Exception):
    """A mistake on the command line that the user can fix.

    `main` prints it as one line, `larq-l1inf COMMAND: error: MESSAGE`, and returns exit
    status 2 (argparse's status for usage errors); the traceback only with `-v`. Name the
    argument and say what to do: `CommandError("argument --epochs: must be >= 1, got -1")`.
    """


def command_error(message):
    """Raise `CommandError(message)`; what a command's `args.error(...)` calls."""
    raise CommandError(message)


def _number(kind, minimum=None, exclusive=False, maximum=None, what=""):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what or ('an integer' if kind is int else 'a number')}, "
                f"got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if exclusive else '>='} {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {text}")
        return value

    parse.__name__ = what or kind.__name__
    return parse


#: argparse `type=` helpers: a bad value becomes one line naming the argument, exit status 2.
positive_int = _number(int, 1, what="a positive integer")
non_negative_int = _number(int, 0, what="an integer >= 0")
positive_float = _number(float, 0, exclusive=True, what="a positive number")
non_negative_float = _number(float, 0, what="a number >= 0")
probability = _number(float, 0, maximum=1, what="a number in [0, 1]")


def existing_path(text):
    """argparse `type=`: a file or folder that exists."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file or folder: {text!r}; check the path")
    return text


def model_spec(text):
    """argparse `type=`: `NAME=PATH` or `PATH` of an existing model -> `(name, path)`; the
    name defaults to the file name without its extension."""
    name, _, path = text.rpartition("=")
    existing_path(path)
    return name or os.path.splitext(os.path.basename(path.rstrip("/")))[0], path


def _deprecated_option(old, new):
    import warnings

    message = f"{old} is deprecated and will be removed in the next release; use {new}"
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    log.warning(message)


def deprecated_option(new):
    """argparse `action=` for an option renamed in this release: stores the value as the
    new option does, with a `DeprecationWarning` and a logged warning naming `new`."""

    class DeprecatedOption(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            _deprecated_option(option_string, new)
            setattr(namespace, self.dest, values)

    return DeprecatedOption


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line: `PROG: error: MESSAGE (see
    'PROG --help')` on stderr, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- entry point

#: `register(subparsers)` functions, one per subcommand (or group of subcommands).
def register_reproduce(subparsers):
    """`reproduce` (larq_l1inf.reproduce)."""
    from larq_l1inf.reproduce import register_reproduce as register

    return register(subparsers)


COMMANDS = [register_demo, register_evaluation, register_train, register_convert,
            register_plot, register_reproduce]


def _verbosity_arguments(parser, default):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log INFO messages and TensorFlow's; print tracebacks of errors")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="log errors only; no progress bars")


def build_parser():
    """The `larq-l1inf` parser with every command of `COMMANDS`.

    Every subcommand also accepts `-v` / `-q` after its name (`larq-l1inf sweep ... -v`).

    # Returns
    An `ArgumentParser` whose usage errors are one line.
    """
    parser = ArgumentParser(
        prog="larq-l1inf",
        description="L1,inf-norm penalty for robust binarized neural networks (Larq).",
    )
    _verbosity_arguments(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=ArgumentParser)
    subparsers.required = True
    for register in COMMANDS:
        register(subparsers)
    for sub in subparsers.choices.values():
        if "-v" not in sub._option_string_actions:
            # SUPPRESS: `larq-l1inf -v sweep ...` is not undone by the subcommand's default.
            _verbosity_arguments(sub, default=argparse.SUPPRESS)
    parser.choices = subparsers.choices  # command name -> its parser
    return parser


def main(argv=None):
    """Run the command line.

    # Arguments
    argv: the arguments (default `sys.argv[1:]`).

    # Returns
    The exit status: 0 on success, 2 for a command-line error (`CommandError`, a bad
    argument), 1 for another failure (one line; the traceback with `-v`), 130 when
    interrupted.
    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the command's parser, so the message names the command
            parser.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit:  # --help (0) or a usage error (2), already printed
        return exit.code if isinstance(exit.code, int) else 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        _quiet_tensorflow()
    prog = f"{parser.prog} {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure becomes one line (-v: traceback)
        if args.verbose:
            import traceback

            traceback.print_exc()
        usage = isinstance(error, CommandError)
        message = " ".join(str(error).split()) or type(error).__name__
        if not usage:
            message = f"{type(error).__name__}: {message}"
        hint = f"see '{prog} --help'" if usage else "run with -v for the traceback"
        print(f"{prog}: error: {message} ({hint})", file=sys.stderr)
        return 2 if usage else 1


def _quiet_tensorflow():
    """Keep TensorFlow's C++ info logs and AutoGraph notices out of the command's output."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads, if it has not
    from larq_l1inf._keras import tf

    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)


if __name__ == "__main__":
    sys.exit(main())

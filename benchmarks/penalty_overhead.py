"""Train-step time of a binary ResNet-20 with and without the L1,inf penalty.

Both models (same architecture, same initial weights, `L1InfRegularizer` on every binary
conv of the second) are compiled alike and timed in one process, interleaved: every repeat
times `--steps` training steps of each, alternating which goes first, on the same fixed
batch. The figure is the ratio of the median step times (target <= 1.03); per-repeat paired
ratios show the spread a shared machine adds.

    python benchmarks/penalty_overhead.py                      # ~3-5 min on 2 shared cores
    python benchmarks/penalty_overhead.py --repeats 3 --steps 2 --batch-size 32   # quick look
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

import larq_l1inf  # noqa: F401 - sets TF_USE_LEGACY_KERAS before TensorFlow loads
from larq_l1inf import L1InfRegularizer, penalty
from larq_l1inf._keras import tf
from larq_l1inf.backbones import resnet20
from larq_l1inf.utils import write_json

TARGET = 1.03


def build(regularizer, args):
    tf.keras.utils.set_random_seed(args.seed)  # identical initial weights for both models
    model = resnet20(args.variant, num_classes=10, input_shape=(args.size, args.size, 3),
                     kernel_regularizer=regularizer, width=args.width)
    model.compile(
        optimizer=tf.keras.optimizers.SGD(0.1, momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    return model


def time_steps(model, x, y, steps):
    """Seconds per training step, averaged over `steps` synchronous steps."""
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)  # returns a host value: the step has finished
    elapsed = (time.perf_counter() - start) / steps
    if not np.isfinite(loss):
        raise FloatingPointError(f"Training loss of {model.name} became {loss}; lower the lr.")
    return elapsed


def penalty_step_time(model, steps):
    """Seconds to compute the penalty and its gradient alone (what the penalty adds)."""
    weights = model.trainable_weights

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = penalty(model)
        return value, tape.gradient(value, weights, unconnected_gradients="zero")

    step()
    start = time.perf_counter()
    for _ in range(steps):
        value, _ = step()
        value.numpy()
    return (time.perf_counter() - start) / steps


def summary(values):
    values = sorted(values)
    q1, q3 = np.percentile(values, [25, 75])
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": values[0],
        "max": values[-1],
        "iqr": float(q3 - q1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--width", type=int, default=16,
                        help="first-stage channels (16: ResNet-20)")
    parser.add_argument("--variant", default="bnn", help="larq_l1inf.variants name")
    parser.add_argument("--repeats", type=int, default=20, help="interleaved repeats")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per model per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--delta", type=float, default=None, help="default: L1InfRegularizer's")
    parser.add_argument("--reduction", default=None, choices=("log", "sum", "product"),
                        help="default: L1InfRegularizer's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/measurements/penalty_overhead.json")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.repeats, args.steps) < 1 or args.warmup < 0:
        parser.error("--batch-size, --repeats and --steps must be >= 1, --warmup >= 0.")

    options = {k: v for k, v in (("delta", args.delta), ("reduction", args.reduction))
               if v is not None}
    load_before = os.getloadavg()
    rng = np.random.default_rng(args.seed)
    x = tf.constant(rng.uniform(0, 1, (args.batch_size, args.size, args.size, 3)), tf.float32)
    y = tf.constant(rng.integers(0, 10, args.batch_size), tf.int32)
    models = {
        "without": build(None, args),
        "with": build(L1InfRegularizer(**options), args),
    }
    regularizer_config = L1InfRegularizer(**options).get_config()
    if regularizer_config["reduction"] == "product":
        larq_l1inf.attach(models["with"])
    n_penalized = len(larq_l1inf.regularizers.penalized_layers(models["with"]))
    print(f"ResNet-20 BNN ({args.variant}, width {args.width}), batch {args.batch_size}, "
          f"{args.size}x{args.size}x3; penalty on {n_penalized} binary convs: {regularizer_config}")
    for name, model in models.items():
        start = time.perf_counter()
        for _ in range(max(args.warmup, 1)):
            model.train_on_batch(x, y)
        print(f"  warm-up {name:>7}: {time.perf_counter() - start:.1f} s (includes tracing)")

    times = {"without": [], "with": []}
    for repeat in range(args.repeats):
        order = ("without", "with") if repeat % 2 == 0 else ("with", "without")
        for name in order:
            times[name].append(time_steps(models[name], x, y, args.steps))
        ratio = times["with"][-1] / times["without"][-1]
        print(f"  repeat {repeat + 1}/{args.repeats}: without {times['without'][-1] * 1e3:.0f} "
              f"ms/step, with {times['with'][-1] * 1e3:.0f} ms/step, ratio {ratio:.3f}")

    paired = [w / wo for w, wo in zip(times["with"], times["without"])]
    ratio = statistics.median(times["with"]) / statistics.median(times["without"])
    penalty_alone = penalty_step_time(models["with"], args.steps)
    result = {
        "benchmark": "penalty_overhead",
        "config": vars(args),
        "regularizer": regularizer_config,
        "penalized_layers": n_penalized,
        "seconds_per_step": {name: summary(values) for name, values in times.items()},
        "raw_seconds_per_step": times,
        "ratio_of_medians": ratio,
        # The least-disturbed runs on a shared machine: a second estimate of the same ratio.
        "ratio_of_minimums": min(times["with"]) / min(times["without"]),
        "paired_ratios": summary(paired),
        "penalty_and_gradient_alone_seconds": penalty_alone,
        "penalty_alone_fraction_of_step": penalty_alone / statistics.median(times["without"]),
        "target": TARGET,
        "meets_target": ratio <= TARGET,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "python": sys.version.split()[0],
            "tensorflow": tf.__version__,
            "platform": platform.platform(),
        },
    }
    print(f"median step: without {result['seconds_per_step']['without']['median'] * 1e3:.0f} ms, "
          f"with {result['seconds_per_step']['with']['median'] * 1e3:.0f} ms -> ratio "
          f"{ratio:.3f} (target <= {TARGET}), ratio of minimums {result['ratio_of_minimums']:.3f}; "
          f"paired ratios median "
          f"{result['paired_ratios']['median']:.3f}, range {result['paired_ratios']['min']:.3f}-"
          f"{result['paired_ratios']['max']:.3f}; penalty + gradient alone "
          f"{penalty_alone * 1e3:.1f} ms "
          f"({100 * result['penalty_alone_fraction_of_step']:.1f}% of a step without it)")
    if args.out:
        write_json(result, args.out)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

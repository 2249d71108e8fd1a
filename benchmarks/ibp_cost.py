"""Cost of one interval-bound pass (`larq_l1inf.ibp.interval_bounds`) against a forward pass.

An IBP pass is two forward passes in interval form (centre and radius through every affine
layer, both endpoints through the rest), so it should cost at most 3x a forward pass of the
same model (target <= 3). Both are compiled with `tf.function` and timed in one process,
interleaved (alternating which goes first) on the same fixed batch; the figure is the ratio of
the median times, and the per-repeat paired ratios show the spread a shared machine adds.

    python benchmarks/ibp_cost.py                  # ~1-2 min on 2 shared cores
    python benchmarks/ibp_cost.py --repeats 3 --calls 3 --batch-size 32   # quick look
"""

import argparse
import os
import platform
import statistics
import sys

import numpy as np

import larq_l1inf  # noqa: F401 - sets TF_USE_LEGACY_KERAS before TensorFlow loads
from larq_l1inf._keras import tf
from larq_l1inf.backbones import resnet20
from larq_l1inf import ibp
from larq_l1inf.ibp import interval_bounds
from _common import time_calls, write_json  # noqa: E402

TARGET = 3.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="bnn")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epsilon", type=float, default=2 / 255)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("docs", "measurements", "ibp_cost.json"))
    args = parser.parse_args(argv)

    tf.keras.utils.set_random_seed(args.seed)
    model = resnet20(args.variant, num_classes=10, input_shape=(args.size, args.size, 3),
                     width=args.width, logits=True)
    x = tf.constant(np.random.default_rng(args.seed).uniform(
        0, 1, (args.batch_size, args.size, args.size, 3)).astype("float32"))

    forward = tf.function(lambda: model(x, training=False))
    bounds = tf.function(lambda: interval_bounds(model, x, args.epsilon))
    generic = tf.function(lambda: interval_bounds(model, x, args.epsilon))
    time_calls(forward, 1)  # trace and warm up all three
    time_calls(bounds, 1)
    ibp.BINARY_RADIUS = "generic"  # read while tracing: this one keeps |W_b| convolutions
    time_calls(generic, 1)
    ibp.BINARY_RADIUS = "fast"

    fwd, bnd, gen, ratios = [], [], [], []
    for r in range(args.repeats):
        order = [("f", forward), ("b", bounds), ("g", generic)]
        order = order if r % 2 == 0 else order[::-1]
        got = {}
        for key, fn in order:
            got[key] = time_calls(fn, args.calls)
        fwd.append(got["f"])
        bnd.append(got["b"])
        gen.append(got["g"])
        ratios.append(got["b"] / got["f"])
    ratio = statistics.median(bnd) / statistics.median(fwd)
    lower, upper = bounds()
    result = {
        "what": "seconds per call: forward pass vs one interval_bounds pass (default "
                "BINARY_RADIUS='fast', and 'generic' for comparison), tf.function, interleaved "
                "in one process",
        "model": model.name,
        "params": int(model.count_params()),
        "batch_size": args.batch_size,
        "input": [args.size, args.size, 3],
        "epsilon": args.epsilon,
        "repeats": args.repeats,
        "calls_per_repeat": args.calls,
        "forward_median_s": statistics.median(fwd),
        "ibp_median_s": statistics.median(bnd),
        "ibp_generic_radius_median_s": statistics.median(gen),
        "generic_radius_ratio_of_medians": statistics.median(gen) / statistics.median(fwd),
        "ratio_of_medians": ratio,
        "paired_ratios": ratios,
        "target": TARGET,
        "within_target": bool(ratio <= TARGET),
        "mean_bound_width": float(np.mean(upper.numpy() - lower.numpy())),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg(),  # how busy the machine was
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
    }
    print(f"{model.name}, batch {args.batch_size}: forward {result['forward_median_s'] * 1e3:.1f} ms, "
          f"IBP {result['ibp_median_s'] * 1e3:.1f} ms, ratio {ratio:.2f} (target <= {TARGET}; "
          f"generic radius {result['generic_radius_ratio_of_medians']:.2f}); "
          f"paired ratios {min(ratios):.2f}-{max(ratios):.2f}")
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()

"""Benchmark: vectorized Algorithm 1 against its memory-bound floor and the appendix's loop.

On the same n images (default 10,000 of 32x32x3, the CIFAR setting, eps ~ U[1/255, 4/255],
default P = (h-2)*(w-2) draws per image), in one process, interleaved round by round:

- `environmental_noise` (TensorFlow, vectorized);
- the floor: drawing one uniform random tensor of the images' shape and adding it
  (`x + tf.random.stateless_uniform(x.shape)`), which reads and writes the images once, as
  any noise must; target: Algorithm 1 within 3x of it (ratio of medians);
- the appendix's algorithm as written (`environmental_noise_loop`, NumPy), on `--loop-n`
  images and scaled to n (it is linear in n), because it takes minutes.

Writes JSON with the times, the ratios and a statistical cross-check of the two outputs.

    .venv/bin/python benchmarks/noise_vectorization.py               # ~1-2 min on 2 cores
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import larq_l1inf  # noqa: F401 - selects Keras 2 before TensorFlow loads
from larq_l1inf import noise
from larq_l1inf._keras import tf
from larq_l1inf.utils import write_json

TARGET = 3.0


def stats(x, noisy):
    d = (noisy - x)[..., 0]
    inner = d[:, 1:-1, 1:-1]
    return {
        "fraction_of_interior_positions_perturbed": float((inner != 0).mean()),
        "mean_shift_per_image": float(d.sum((1, 2)).mean()),
        "border_max_abs": float(max(np.abs(d[:, 0]).max(), np.abs(d[:, -1]).max(),
                                    np.abs(d[:, :, 0]).max(), np.abs(d[:, :, -1]).max())),
    }


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="images")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds (median reported)")
    p.add_argument("--loop-n", type=int, default=500, help="images for the literal loop")
    p.add_argument("--out", default="docs/measurements/noise_vectorization.json")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.random((args.n, args.size, args.size, args.channels)).astype(np.float32)
    eps = (1 / 255, 4 / 255)
    xt = tf.constant(x)

    def algorithm1(r):
        return noise.environmental_noise(xt, eps, seed=r).numpy()

    def floor(r):
        return (xt + tf.random.stateless_uniform(xt.shape, [r, 1])).numpy()

    algorithm1(99), floor(99)  # warm-up (op registration)
    times = {"algorithm1": [], "uniform_floor": []}
    for r in range(args.repeats):
        order = ("algorithm1", "uniform_floor") if r % 2 == 0 else ("uniform_floor", "algorithm1")
        for name in order:
            seconds, out = timed(lambda: (algorithm1 if name == "algorithm1" else floor)(r))
            times[name].append(seconds)
            if name == "algorithm1":
                y_vec = out
        print(f"round {r + 1}: Algorithm 1 {times['algorithm1'][-1]:.3f} s, "
              f"uniform floor {times['uniform_floor'][-1]:.3f} s")
    loop_seconds, y_loop = timed(lambda: noise.environmental_noise_loop(x[:args.loop_n], eps,
                                                                        rng=0))
    median = {name: float(np.median(ts)) for name, ts in times.items()}
    paired = [a / b for a, b in zip(times["algorithm1"], times["uniform_floor"])]
    loop_scaled = loop_seconds * args.n / args.loop_n
    result = {
        "benchmark": "noise_vectorization",
        "command": "python benchmarks/noise_vectorization.py " + " ".join(argv or sys.argv[1:]),
        "n_images": args.n,
        "image_shape": [args.size, args.size, args.channels],
        "epsilon": list(eps),
        "points_per_image": (args.size - 2) ** 2,
        "seconds": times,
        "median_seconds": median,
        "algorithm1_over_uniform_floor": median["algorithm1"] / median["uniform_floor"],
        "paired_ratios": {"median": float(np.median(paired)), "min": min(paired),
                          "max": max(paired)},
        "target_ratio": TARGET,
        "meets_target": median["algorithm1"] / median["uniform_floor"] <= TARGET,
        "loop_images": args.loop_n,
        "loop_seconds": loop_seconds,
        "loop_seconds_scaled_to_n": loop_scaled,
        "loop_over_algorithm1": loop_scaled / median["algorithm1"],
        "stats_vectorized": stats(x, y_vec),
        "stats_loop": stats(x[:args.loop_n], y_loop),
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "note": "the ratio is of medians measured side by side in one run; "
                "load_average_after tells how busy the machine was",
    }
    print(json.dumps({k: result[k] for k in ("median_seconds", "algorithm1_over_uniform_floor",
                                              "paired_ratios", "loop_over_algorithm1")},
                     indent=2))
    write_json(result, args.out)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: vectorized Algorithm 1 (TensorFlow) vs the appendix's literal per-pixel loop.

Both run on the same n images (default 10,000 of 32x32x3, the CIFAR setting, eps ~
U[1/255, 4/255], default P = (h-2)*(w-2)), interleaved, in one process. The loop is the
appendix's algorithm as written (`larq_l1inf.noise.environmental_noise_loop`). Writes JSON
with both times, the ratio and a statistical cross-check of the two outputs.

    .venv/bin/python benchmarks/noise_vectorization.py               # ~3-5 min on 2 cores
    .venv/bin/python benchmarks/noise_vectorization.py --n 1000      # quick
"""

import argparse
import json
import os
import platform
import time

import numpy as np

from larq_l1inf import noise
from larq_l1inf._keras import tf
from _common import write_json  # noqa: E402


def stats(x, noisy):
    d = (noisy - x)[..., 0]
    inner = d[:, 1:-1, 1:-1]
    return {
        "fraction_of_interior_positions_perturbed": float((inner != 0).mean()),
        "mean_shift_per_image": float(d.sum((1, 2)).mean()),
        "border_max_abs": float(max(np.abs(d[:, 0]).max(), np.abs(d[:, -1]).max(),
                                    np.abs(d[:, :, 0]).max(), np.abs(d[:, :, -1]).max())),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="images (both versions)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="vectorized repeats (min reported)")
    p.add_argument("--loop-repeats", type=int, default=1, help="loop repeats (slow)")
    p.add_argument("--out", default="results/benchmarks/noise_vectorization.json")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    x = rng.random((args.n, args.size, args.size, args.channels)).astype(np.float32)
    eps = (1 / 255, 4 / 255)
    xt = tf.constant(x)
    noise.environmental_noise(xt[:8], eps, seed=0)  # warm-up (op registration)

    vec_times, loop_times = [], []
    rounds = max(args.repeats, args.loop_repeats)
    for r in range(rounds):  # interleaved
        if r < args.repeats:
            t = time.perf_counter()
            y_vec = noise.environmental_noise(xt, eps, seed=r).numpy()
            vec_times.append(time.perf_counter() - t)
            print(f"vectorized: {vec_times[-1]:.3f} s")
        if r < args.loop_repeats:
            t = time.perf_counter()
            y_loop = noise.environmental_noise_loop(x, eps, rng=r)
            loop_times.append(time.perf_counter() - t)
            print(f"loop:       {loop_times[-1]:.3f} s")
    result = {
        "benchmark": "noise_vectorization",
        "n_images": args.n,
        "image_shape": [args.size, args.size, args.channels],
        "epsilon": list(eps),
        "points_per_image": (args.size - 2) ** 2,
        "vectorized_seconds": vec_times,
        "loop_seconds": loop_times,
        "vectorized_best_seconds": min(vec_times),
        "loop_best_seconds": min(loop_times),
        "speedup_loop_over_vectorized": min(loop_times) / min(vec_times),
        "same_n_for_both": True,
        "extrapolated": False,
        "stats_vectorized": stats(x, y_vec),
        "stats_loop": stats(x, y_loop),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
    }
    print(json.dumps({k: result[k] for k in ("vectorized_best_seconds", "loop_best_seconds",
                                              "speedup_loop_over_vectorized")}, indent=2))
    write_json(result, args.out)


if __name__ == "__main__":
    main()

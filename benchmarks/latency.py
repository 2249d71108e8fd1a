"""Benchmark: latency of a binarized LCE flatbuffer vs a float TFLite model of the same
architecture, batch 1, with 1 and 2 interpreter threads.

The binarized model is `larq_l1inf.cli.build_demo_model` (float stem, four binary 3x3
convolutions that become `LceBconv2d`, float head); the float twin is the same model with
the quantizers and weight clipping removed (plain float convolutions). Both are converted
with larq-compute-engine and run by the same `lce.testing.Interpreter`
(`use_indirect_bgemm=True`); the two models and the thread counts are interleaved
round-robin in one process. Writes JSON with median/p90 latencies and the ratios.

Note: LCE's optimized kernels target ARM (aarch64); on x86 this measures LCE's x86 build.

    .venv/bin/python benchmarks/latency.py                     # ~1-2 min
    .venv/bin/python benchmarks/latency.py --size 64 --width 64 --runs 200
"""

import argparse
import json
import os
import platform
import time

import numpy as np

from larq_l1inf import deploy
from larq_l1inf._keras import tf
from larq_l1inf.cli import build_demo_model
from _common import write_json  # noqa: E402


def float_twin(model):
    """The same architecture with every larq quantizer and constraint removed."""
    config = model.get_config()
    for layer in config["layers"]:
        cfg = layer["config"]
        for key in ("input_quantizer", "kernel_quantizer", "kernel_constraint"):
            if key in cfg:
                cfg[key] = None
    twin = tf.keras.Model.from_config(config)
    twin.set_weights(model.get_weights())
    return twin


def measure(interpreter, x, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        interpreter.predict([x])
        times.append(time.perf_counter() - t)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=32, help="input height/width")
    p.add_argument("--width", type=int, default=64, help="channels of the first stage")
    p.add_argument("--runs", type=int, default=100, help="timed runs per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default="results/benchmarks/latency.json")
    args = p.parse_args()

    tf.keras.utils.set_random_seed(0)
    binary = build_demo_model((args.size, args.size, 3), width=args.width, name="binary")
    floating = float_twin(binary)
    flatbuffers = {
        "binary": deploy.convert(binary, binarized="raise"),
        "float": deploy.convert(floating, binarized="ignore"),
    }
    ops = {k: deploy.op_counts(v) for k, v in flatbuffers.items()}
    assert ops["binary"].get("LceBconv2d", 0) == 4 and "LceBconv2d" not in ops["float"], ops

    import larq_compute_engine as lce

    x = np.random.default_rng(0).random((1, args.size, args.size, 3)).astype(np.float32)
    interpreters = {
        (name, t): lce.testing.Interpreter(fb, num_threads=t, use_indirect_bgemm=True).interpreter
        for name, fb in flatbuffers.items() for t in args.threads
    }
    for it in interpreters.values():  # warm-up
        measure(it, x, 5)
    times = {key: [] for key in interpreters}
    for r in range(args.rounds):
        for key, it in interpreters.items():
            times[key] += measure(it, x, args.runs)
        print(f"round {r + 1}/{args.rounds}")
    results = {}
    for (name, t), ts in times.items():
        ms = np.array(ts) * 1e3
        results[f"{name}_threads{t}"] = {
            "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "runs": len(ms),
        }
    ratios = {
        f"float_over_binary_threads{t}": results[f"float_threads{t}"]["median_ms"]
        / results[f"binary_threads{t}"]["median_ms"]
        for t in args.threads
    }
    for name in flatbuffers:
        if 1 in args.threads and 2 in args.threads:
            ratios[f"{name}_threads1_over_threads2"] = (
                results[f"{name}_threads1"]["median_ms"] / results[f"{name}_threads2"]["median_ms"]
            )
    out = {
        "benchmark": "latency",
        "model": "cli.build_demo_model (float stem, 4 binary convs, float head)",
        "input_shape": [1, args.size, args.size, 3],
        "width": args.width,
        "flatbuffer_bytes": {k: len(v) for k, v in flatbuffers.items()},
        "op_counts": ops,
        "results": results,
        "ratios": ratios,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "note": "x86 build of LCE; its optimized kernels target aarch64.",
    }
    print(json.dumps({"results": results, "ratios": ratios}, indent=2))
    write_json(out, args.out)


if __name__ == "__main__":
    main()

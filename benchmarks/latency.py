"""Benchmark: batch-1 latency of a binary ResNet-18 (LCE) beside its float twin (TFLite).

The binary model is `larq_l1inf.backbones.resnet18("bnn", ...)` for 32x32x3 CIFAR inputs
(`--width` 64 as in the paper); the float twin is the same architecture with every larq
quantizer and weight constraint removed. Both are converted with larq-compute-engine
(`larq_l1inf.deploy.convert`) and run by LCE's interpreter in one process, interleaved
round-robin:

- binary, `use_indirect_bgemm` False and True, 1 and 2 threads;
- float, XNNPACK delegate (`use_xnnpack=True`), 1 and 2 threads.

Wall-clock latencies are reported as median, interquartile range and p10/p90 per
configuration, and ratios of medians measured side by side. Wall clock on a shared machine
is noisy, so each configuration is also counted in instructions with valgrind's callgrind
(deterministic): the interpreter runs `1` and `1 + --count-runs` inferences in a child
process that loads only LCE's interpreter extension (no TensorFlow), and the difference
divided by `--count-runs` is the instruction count of one inference, per thread
(`--separate-threads=yes`), so it also shows which threads do the work.

On x86, LCE's indirect BGEMM kernel is its portable kernel, which has no threading: with 2
threads the `LceBconv2d` work stays on one thread (the callgrind per-thread counts show it),
which is why 2 threads were not faster in the earlier measurement.

    .venv/bin/python benchmarks/latency.py                  # ~5 min on 2 shared cores
    .venv/bin/python benchmarks/latency.py --width 32 --rounds 3 --runs 30   # quick look
"""

import argparse
import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import larq_l1inf  # noqa: F401 - selects Keras 2 before TensorFlow loads
from larq_l1inf import deploy
from larq_l1inf._keras import tf
from larq_l1inf.backbones import resnet18
from larq_l1inf.utils import write_json

NOTE = (
    "x86 build of LCE. Its optimized BGEMM kernels target aarch64; on x86 "
    "use_indirect_bgemm=True selects LCE's portable indirect BGEMM kernel, which has no "
    "threading: with 2 threads every LceBconv2d still runs on one thread (see the callgrind "
    "per-thread instruction counts), so 2 threads are not faster for it. Without indirect "
    "BGEMM LCE uses its ruy-based BGEMM, which does use the thread pool."
)

# Run in a child process under valgrind: only LCE's interpreter extension, no TensorFlow.
CHILD = r"""
import importlib.util, sys
import numpy as np
so, fb_path, threads, indirect, xnnpack, runs = sys.argv[1:]
spec = importlib.util.spec_from_file_location("interpreter_wrapper_lite", so)
lite = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lite)
it = lite.LiteInterpreter(open(fb_path, "rb").read(), int(threads), False, indirect == "1",
                          xnnpack == "1")
x = np.random.default_rng(0).random(it.input_shapes[0]).astype(np.float32)
for _ in range(int(runs)):
    it.predict([x])
"""


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
        start = time.perf_counter()
        interpreter.predict([x])
        times.append(time.perf_counter() - start)
    return times


def wrapper_path():
    spec = importlib.util.find_spec("larq_compute_engine")
    path = os.path.join(os.path.dirname(spec.origin), "tflite", "python")
    return glob.glob(os.path.join(path, "interpreter_wrapper_lite*.so"))[0]


def callgrind(fb_path, threads, indirect, xnnpack, runs, workdir):
    """Instructions per thread of `runs` inferences (plus start-up), by callgrind."""
    out = os.path.join(workdir, f"cg.{threads}.{int(indirect)}.{int(xnnpack)}.{runs}")
    script = os.path.join(workdir, "child.py")
    with open(script, "w") as f:
        f.write(CHILD)
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
         sys.executable, script, wrapper_path(), fb_path, str(threads), str(int(indirect)),
         str(int(xnnpack)), str(runs)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": ""},
    )
    counts = {}  # thread number -> instructions (one file per thread: OUT-01, OUT-02, ...)
    for path in sorted(glob.glob(out + "-*")):
        with open(path) as f:
            text = f.read()
        thread = re.search(r"^thread:\s+(\d+)", text, re.M)
        match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
        if thread and match:
            counts[int(thread.group(1))] = int(match.group(1))
    for path in glob.glob(out + "*"):
        os.remove(path)
    return counts


def instructions_per_inference(fb_path, threads, indirect, xnnpack, runs, workdir):
    base = callgrind(fb_path, threads, indirect, xnnpack, 1, workdir)
    more = callgrind(fb_path, threads, indirect, xnnpack, 1 + runs, workdir)
    per_thread = {f"thread{t}": max(more.get(t, 0) - base.get(t, 0), 0) / runs
                  for t in sorted(set(base) | set(more))}
    return {"total": sum(per_thread.values()), "per_thread": per_thread}


def summary(seconds):
    ms = np.asarray(seconds) * 1e3
    q10, q25, q50, q75, q90 = np.percentile(ms, [10, 25, 50, 75, 90])
    return {"median_ms": q50, "iqr_ms": q75 - q25, "p10_ms": q10, "p90_ms": q90,
            "runs": len(ms)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--width", type=int, default=64, help="ResNet-18 first-stage channels")
    p.add_argument("--runs", type=int, default=50, help="timed runs per configuration per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--count-runs", type=int, default=3,
                   help="inferences counted by callgrind (0: skip callgrind)")
    p.add_argument("--out", default="docs/measurements/latency.json")
    args = p.parse_args(argv)

    tf.keras.utils.set_random_seed(0)
    binary = resnet18("bnn", num_classes=10, input_shape=(32, 32, 3), width=args.width)
    models = {"binary": binary, "float": float_twin(binary)}
    flatbuffers, convert_seconds = {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        flatbuffers[name] = deploy.convert(model)
        convert_seconds[name] = time.perf_counter() - start
        print(f"converted {name} in {convert_seconds[name]:.0f} s")
    ops = {name: deploy.op_counts(fb) for name, fb in flatbuffers.items()}
    if not ops["binary"].get("LceBconv2d") or "LceBconv2d" in ops["float"]:
        raise RuntimeError(f"Unexpected conversion: {ops}")

    import larq_compute_engine as lce

    configs = {}
    for t in args.threads:
        for indirect in (False, True):
            configs[f"binary_indirect{int(indirect)}_threads{t}"] = ("binary", t, indirect, False)
        configs[f"float_xnnpack_threads{t}"] = ("float", t, False, True)
    interpreters = {
        key: lce.testing.Interpreter(flatbuffers[name], num_threads=t,
                                     use_indirect_bgemm=indirect, use_xnnpack=xnn).interpreter
        for key, (name, t, indirect, xnn) in configs.items()
    }
    x = np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32)
    for it in interpreters.values():  # warm-up
        measure(it, x, 3)
    times = {key: [] for key in configs}
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for key, it in interpreters.items():
            times[key] += measure(it, x, args.runs)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{key} {1e3 * np.median(times[key]):.2f} ms" for key in configs))
    results = {key: summary(ts) for key, ts in times.items()}
    med = {key: r["median_ms"] for key, r in results.items()}
    ratios = {}
    for t in args.threads:
        ratios[f"float_over_binary_indirect_threads{t}"] = (
            med[f"float_xnnpack_threads{t}"] / med[f"binary_indirect1_threads{t}"])
        ratios[f"float_over_binary_ruy_threads{t}"] = (
            med[f"float_xnnpack_threads{t}"] / med[f"binary_indirect0_threads{t}"])
        ratios[f"ruy_over_indirect_threads{t}"] = (
            med[f"binary_indirect0_threads{t}"] / med[f"binary_indirect1_threads{t}"])
    if 1 in args.threads and 2 in args.threads:
        for key in ("binary_indirect0", "binary_indirect1", "float_xnnpack"):
            ratios[f"{key}_threads1_over_threads2"] = (med[f"{key}_threads1"]
                                                       / med[f"{key}_threads2"])

    instructions = None
    if args.count_runs and shutil.which("valgrind"):
        instructions = {}
        with tempfile.TemporaryDirectory() as workdir:
            paths = {}
            for name, fb in flatbuffers.items():
                paths[name] = os.path.join(workdir, f"{name}.tflite")
                deploy.save_flatbuffer(fb, paths[name])
            for key, (name, t, indirect, xnn) in configs.items():
                start = time.perf_counter()
                instructions[key] = instructions_per_inference(paths[name], t, indirect, xnn,
                                                               args.count_runs, workdir)
                millions = {thread: round(v / 1e6, 1)
                            for thread, v in instructions[key]["per_thread"].items()}
                print(f"callgrind {key}: {instructions[key]['total'] / 1e6:.1f} M instructions "
                      f"per inference, per thread {millions} "
                      f"({time.perf_counter() - start:.0f} s)")
    elif args.count_runs:
        print("valgrind not found: no instruction counts (apt-get install -y valgrind)")

    out = {
        "benchmark": "latency",
        "command": "python benchmarks/latency.py " + " ".join(argv or sys.argv[1:]),
        "model": f"larq_l1inf.backbones.resnet18('bnn', width={args.width}), 32x32x3, batch 1",
        "width": args.width,
        "flatbuffer_bytes": {k: len(v) for k, v in flatbuffers.items()},
        "convert_seconds": convert_seconds,
        "op_counts": ops,
        "results": results,
        "ratios_of_medians": ratios,
        "instructions_per_inference": instructions,
        "rounds": args.rounds,
        "runs_per_round": args.runs,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "timing": "on a shared machine (see the load averages) trust side-by-side ratios and "
                  "instruction counts more than absolute milliseconds",
        "note": NOTE,
    }
    print(json.dumps({"median_ms": med, "ratios": ratios}, indent=2))
    write_json(out, args.out)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cost of one GM robust training step relative to a plain step, interleaved in one run.

Compared on one small BNN (Fashion-MNIST-sized input), same batch, same optimizer: a plain
training step (`model.fit`'s step on the compiled model, cross-entropy + its L1,inf penalty)
and `GMRobustModel` steps with `N` sub-perturbations for each robust term asked for (IBP by
default, also CROWN-IBP, Algorithm 1 noise and PGD on request; CROWN-IBP at `--final-beta`,
default 1, the paper's: the CROWN-IBP bound alone at the end of the ramp-up). Each repeat times
`--steps` steps of every configuration in a shuffled order; the figure is the median over
repeats of the mean step time, reported as a ratio to the plain step; the process CPU time of
the same steps is reported beside it (less sensitive to other jobs on a shared machine). The
target for the IBP term is `ratio <= N + 1.5`; each of the N sub-perturbations is one IBP pass
over the batch (one pass over the batch tiled N times measured no faster on CPU).

    python benchmarks/gm_step_cost.py --ns 1 2 4 --terms ibp crown-ibp noise --repeats 5

The model: float 3x3 stem (16 channels), batch norm, two binary 3x3 convolutions (32 and 64
channels, the second strided; `ste_sign` inputs and kernels, `weight_clip`,
`L1InfRegularizer`), batch norm after each, global average pooling, float Dense head. Data
are random tensors held in memory (the input pipeline is not measured). Adam, as the IBP /
CROWN-IBP recipes the GM paper builds on use. `--jit-compile` compiles every step (plain
and GM alike) with XLA, which fuses the elementwise interval work, and adds the plain step
without XLA (`plain-no-xla`) as the reference in absolute time.
"""

import argparse
import math
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _common import write_json  # noqa: E402

import larq_l1inf  # noqa: E402,I001  (first: Keras 2 before larq imports TF)
import larq as lq  # noqa: E402

from larq_l1inf._keras import tf  # noqa: E402
from larq_l1inf import ibp  # noqa: E402
from larq_l1inf.robust import ROBUST_TERMS, GMRobustModel  # noqa: E402

BINARY = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign",
              kernel_constraint="weight_clip", use_bias=False)


def small_bnn(input_shape=(28, 28, 1), num_classes=10):
    inp = tf.keras.Input(input_shape)
    x = tf.keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inp)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(32, 3, padding="same", pad_values=1.0,
                              kernel_regularizer=larq_l1inf.L1InfRegularizer(), **BINARY)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(64, 3, strides=2, padding="same", pad_values=1.0,
                              kernel_regularizer=larq_l1inf.L1InfRegularizer(), **BINARY)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inp, tf.keras.layers.Dense(num_classes)(x), name="small_bnn")


def build(name, args):
    model = small_bnn((args.size, args.size, 1))
    if "[" in name:  # e.g. "ibp[generic]-N2": IBP with another BINARY_RADIUS mode
        name = name.split("[")[0] + name.split("]")[1]
    if name in ("plain", "plain-no-xla"):
        model.compile(tf.keras.optimizers.Adam(1e-3),
                      tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=args.jit_compile and name == "plain")
        return model
    term, n = name.split("-N")
    gm = GMRobustModel(model, epsilon=args.epsilon, robust=term, robustness_size=int(n),
                       pgd_iterations=args.pgd_iterations, seed=args.seed,
                       final_beta=args.final_beta if term == "crown-ibp" else 1.0)
    gm.compile(tf.keras.optimizers.Adam(1e-3), jit_compile=args.jit_compile)
    return gm


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=28, help="input height = width")
    p.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4], help="robustness sizes N")
    p.add_argument("--terms", nargs="+", default=["ibp"], choices=list(ROBUST_TERMS))
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--pgd-iterations", type=int, default=3)
    p.add_argument("--final-beta", type=float, default=1.0,
                   help="final beta of the crown-ibp term (eq. 17; 1: CROWN-IBP alone)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per config per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after tracing")
    p.add_argument("--binary-radius", nargs="+", default=["fast"],
                   choices=list(ibp.BINARY_RADIUS_MODES),
                   help="larq_l1inf.ibp.BINARY_RADIUS modes to time the IBP term with; the "
                        "first is named ibp-N<n>, the others ibp[<mode>]-N<n>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jit-compile", action="store_true",
                   help="compile every step with XLA (fuses the elementwise interval ops)")
    p.add_argument("--out", default="docs/measurements/gm_step_cost.json")
    args = p.parse_args(argv)
    if min(args.batch, args.size, args.steps, args.repeats, *args.ns) < 1:
        p.error("--batch, --size, --steps, --repeats and every N must be >= 1")

    tf.keras.utils.set_random_seed(args.seed)
    shape = (args.size, args.size, 1)
    x = tf.constant(np.random.RandomState(args.seed).rand(args.batch, *shape), tf.float32)
    y = tf.constant(np.random.RandomState(args.seed + 1).randint(0, 10, args.batch))
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    configs = ["plain"] + [f"{t}-N{n}" for t in args.terms for n in args.ns]
    configs += [f"ibp[{mode}]-N{n}" for mode in args.binary_radius[1:] for n in args.ns
                if "ibp" in args.terms]
    if args.jit_compile:  # the XLA steps' reference in absolute time: the usual plain step
        configs.append("plain-no-xla")

    runners = {}
    for c in configs:
        t0 = time.perf_counter()
        model = build(c, args)
        step = model.make_train_function()
        it = iter(data)
        # The mode is read while tracing (the first call), so each config keeps its own.
        ibp.BINARY_RADIUS = c.split("[")[1].split("]")[0] if "[" in c else args.binary_radius[0]
        for _ in range(1 + args.warmup):  # first call traces
            logs = step(it)
        float(logs["loss"])
        runners[c] = (step, it)
        print(f"built+traced {c:16s} in {time.perf_counter() - t0:6.1f}s", flush=True)

    times = {c: [] for c in configs}
    cpu = {c: [] for c in configs}
    rng = np.random.RandomState(args.seed)
    for r in range(args.repeats):
        for c in rng.permutation(configs):
            step, it = runners[c]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                logs = step(it)
            loss = float(logs["loss"])  # waits for the last step
            if not math.isfinite(loss):
                raise RuntimeError(f"{c}: non-finite loss {loss}")
            times[c].append((time.perf_counter() - t0) / args.steps)
            cpu[c].append((time.process_time() - c0) / args.steps)
        print(f"repeat {r + 1}/{args.repeats}: " + "  ".join(
            f"{c}={times[c][-1] * 1e3:.1f}ms" for c in configs), flush=True)

    base = float(np.median(times["plain"]))
    cpu_base = float(np.median(cpu["plain"]))
    results = {}
    for c in configs:
        med = float(np.median(times[c]))
        n = int(c.split("-N")[1]) if "-N" in c else None
        target = n is not None and c.startswith("ibp")  # the N + 1.5 target is the IBP term's
        results[c] = {
            "seconds_per_step_median": med,
            "seconds_per_step_all": times[c],
            "ratio_to_plain": med / base,
            "cpu_seconds_per_step_median": float(np.median(cpu[c])),
            "cpu_ratio_to_plain": float(np.median(cpu[c])) / cpu_base,
            "bound": n + 1.5 if target else None,
            "within_bound": med / base <= n + 1.5 if target else None,
        }
    report = {
        "benchmark": "gm_step_cost",
        "command": "python benchmarks/gm_step_cost.py " + " ".join(argv or sys.argv[1:]),
        "config": {**vars(args), "configs": configs,
                   "model": "float stem 16 + binary convs 32, 64/2 + BN + GAP + Dense 10, "
                            "L1InfRegularizer on the binary kernels"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__, "loadavg_at_end": os.getloadavg(),
                    "note": "2 cores shared with up to 8 concurrent jobs; ratios are measured "
                            "side by side, interleaved, in one run"},
        "results": results,
        "counted": "one full training step (forward, loss, backward, Adam update) via "
                   "Model.make_train_function; GM steps include the clean pass, N IBP (or "
                   "CROWN-IBP / noise / PGD) passes over the batch, and the penalty; cpu_* is "
                   "process CPU time (all threads) of the same steps",
    }
    write_json(report, args.out)
    print(f"\n{'config':16s} {'ms/step':>8s} {'ratio':>7s} {'cpu':>6s} {'bound':>6s}")
    for c in configs:
        r = results[c]
        bound = "" if r["bound"] is None else f"{r['bound']:6.1f}"
        print(f"{c:16s} {r['seconds_per_step_median'] * 1e3:8.1f} {r['ratio_to_plain']:7.2f} "
              f"{r['cpu_ratio_to_plain']:6.2f} {bound}")
    return report


if __name__ == "__main__":
    main()

"""Training cost per step of the penalties on one binary ResNet-20, interleaved in one run.

Compared (same model, same batch, same optimizer): no penalty, L1,inf (`L1InfRegularizer`,
default settings), L1, L2 (spectral norm), L-inf (Absum), LCR (`LCRModel` with its automatic
stages and official defaults: one student pass with its stage outputs, plus the
full-precision teacher's forward pass up to its last stage, in training mode, no gradient;
the teacher's pass is counted, it is the extra cost LCR pays) and LCR + L1,inf. Each repeat
times `--steps` training steps of every method in a shuffled order; the figure per method is
the median over repeats of the mean step time, reported as a ratio to no penalty. Per-epoch
time is seconds per step times `ceil(--epoch-size / --batch)`.

    python benchmarks/training_cost.py --batch 128 --steps 5 --repeats 3

The model is `larq_l1inf.backbones.resnet20` (variant `bnn`: `ste_sign` inputs and kernels,
`weight_clip`; float stem, shortcuts and head; 18 binary 3x3 convolutions, as in the
ResNet-20 of LCR's CIFAR-10 experiments); the teacher is the same builder with float convs
and a ReLU after each block. Data are random tensors held in memory (the input pipeline is
not measured). SGD with momentum 0.9, as the paper trains.
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
from larq_l1inf.baselines import (  # noqa: E402
    AbsumRegularizer,
    L1Regularizer,
    SpectralNormRegularizer,
)
from larq_l1inf.backbones import resnet20  # noqa: E402
from larq_l1inf.lcr import LCRModel  # noqa: E402
from larq_l1inf.variants import Variant  # noqa: E402

METHODS = ["none", "l1inf", "l1", "l2", "linf", "lcr", "lcr+l1inf"]
#: The teacher: the student's architecture with float convs and a ReLU after each block.
FLOAT = Variant("float", lambda: None, None, lce_binary=False, activation=tf.keras.layers.ReLU)


def build(method, input_shape, num_classes, lcr_lam):
    regs = {
        "none": None,
        "l1inf": larq_l1inf.L1InfRegularizer(5e-3),
        "l1": L1Regularizer(5e-3),
        "l2": SpectralNormRegularizer(5e-3),
        "linf": AbsumRegularizer(5e-3),
        "lcr": None,
        "lcr+l1inf": larq_l1inf.L1InfRegularizer(5e-3),
    }
    common = dict(num_classes=num_classes, input_shape=input_shape, logits=True)
    student = resnet20("bnn", kernel_regularizer=regs[method], **common)
    model = student
    if method.startswith("lcr"):
        teacher = resnet20(FLOAT, **common)
        model = LCRModel(student, teacher, lam=lcr_lam)  # automatic stages
    model.compile(tf.keras.optimizers.SGD(0.1, momentum=0.9),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32, help="input height = width")
    p.add_argument("--steps", type=int, default=5, help="timed steps per method per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after tracing")
    p.add_argument("--epoch-size", type=int, default=50000, help="samples per epoch (CIFAR-10)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--lcr-lam", type=float, default=None,
                   help="LCR weight (default: the official 8 / (batch * 1e4))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/measurements/training_cost.json")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or "none" not in methods:
        p.error(f"--methods must include 'none' and come from {METHODS}; unknown: {unknown}")
    if min(args.batch, args.size, args.steps, args.repeats) < 1:
        p.error("--batch, --size, --steps and --repeats must be >= 1")

    tf.keras.utils.set_random_seed(args.seed)
    shape = (args.size, args.size, 3)
    x = tf.constant(np.random.RandomState(args.seed).rand(args.batch, *shape), tf.float32)
    y = tf.constant(np.random.RandomState(args.seed + 1).randint(0, 10, args.batch))
    data = tf.data.Dataset.from_tensors((x, y)).repeat()

    runners = {}
    for m in methods:
        t0 = time.perf_counter()
        model = build(m, shape, 10, args.lcr_lam)
        step = model.make_train_function()
        it = iter(data)
        for _ in range(1 + args.warmup):  # first call traces
            logs = step(it)
        float(logs["loss"])
        runners[m] = (model, step, it)
        print(f"built+traced {m:10s} in {time.perf_counter() - t0:6.1f}s", flush=True)

    times = {m: [] for m in methods}
    rng = np.random.RandomState(args.seed)
    for r in range(args.repeats):
        order = list(rng.permutation(methods))
        for m in order:
            _, step, it = runners[m]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                logs = step(it)
            loss = float(logs["loss"])  # waits for the last step
            dt = (time.perf_counter() - t0) / args.steps
            if not math.isfinite(loss):
                raise RuntimeError(f"{m}: non-finite loss {loss}")
            times[m].append(dt)
        print(f"repeat {r + 1}/{args.repeats}: " + "  ".join(
            f"{m}={times[m][-1]:.3f}s" for m in methods), flush=True)

    steps_per_epoch = math.ceil(args.epoch_size / args.batch)
    base = float(np.median(times["none"]))
    results = {}
    for m in methods:
        med = float(np.median(times[m]))
        results[m] = {
            "seconds_per_step_median": med,
            "seconds_per_step_all": times[m],
            "ratio_to_none": med / base,
            "seconds_per_epoch": med * steps_per_epoch,
        }
    if "lcr" in results and "l1inf" in results:
        lcr_vs_ours = results["lcr"]["seconds_per_step_median"] / \
            results["l1inf"]["seconds_per_step_median"]
    else:
        lcr_vs_ours = None
    report = {
        "benchmark": "training_cost",
        "command": "python benchmarks/training_cost.py " + " ".join(argv or sys.argv[1:]),
        "config": {**vars(args), "methods": methods, "steps_per_epoch": steps_per_epoch,
                   "model": "larq_l1inf.backbones.resnet20('bnn'), 18 binary 3x3 convs, "
                             "float stem/shortcuts/head; LCR teacher: same with float convs "
                             "+ ReLU, automatic stages"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__, "larq": lq.__version__ if hasattr(
                        lq, "__version__") else "0.14",
                    "loadavg_at_end": os.getloadavg()},
        "results": results,
        "lcr_over_l1inf": lcr_vs_ours,
        "counted": "one full training step (forward, loss, backward, SGD update) via "
                   "Model.make_train_function; LCR includes its teacher forward pass",
    }
    write_json(report, args.out)
    print(f"\n{'method':10s} {'s/step':>8s} {'ratio':>7s} {'s/epoch':>9s}")
    for m in methods:
        r = results[m]
        print(f"{m:10s} {r['seconds_per_step_median']:8.3f} {r['ratio_to_none']:7.3f} "
              f"{r['seconds_per_epoch']:9.1f}")
    if lcr_vs_ours is not None:
        print(f"LCR / L1,inf = {lcr_vs_ours:.3f}  (paper: 66:37 / 56:08 = 1.19)")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()

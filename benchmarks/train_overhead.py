"""What `larq-l1inf train` costs over a plain `model.fit`, and XLA vs graph training.

1. Recipe overhead: the same model (demo BNN or ResNet-20, L1InfRegularizer on every binary
   conv), optimizer and batches trained by `larq_l1inf.training.fit` with a run directory
   (L1InfCallback, TensorBoard, CSVLogger, a checkpoint per epoch, BackupAndRestore; 3,200
   Fashion-MNIST images, 50 steps per epoch) and by a
   plain `model.fit` without callbacks, alternating (the order flips every repeat), in one
   process. Per-step time = time between consecutive epoch starts (so end-of-epoch writing
   counts) / steps; the first epoch (tracing) is dropped. Target: ratio of medians <= 1.05.
   The recipe's cost is per epoch, so the ratio at Fashion-MNIST's full epoch (938 steps of
   64) is extrapolated from the measured seconds per epoch (`extrapolated_full_epoch`).
2. XLA: a binary ResNet-20 compiled with `jit_compile=True` vs graph mode, from identical
   weights on the same batch: first-step loss and weights compared (correctness), then
   step times interleaved (`train_on_batch`, median).
3. The recipe's callbacks, every overridden hook timed in one more recipe run
   (`callback_costs`): what each costs per epoch, after the first.

    python benchmarks/train_overhead.py              # ~10-15 min on 2 shared cores
    python benchmarks/train_overhead.py --skip-xla   # parts 1 and 3; keeps part 2 of --out
    python benchmarks/train_overhead.py --callbacks-only   # part 3 only, into --out
    python benchmarks/train_overhead.py --repeats 1 --epochs 3 --xla-steps 3   # quick look
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

import larq_l1inf  # noqa: F401 - sets TF_USE_LEGACY_KERAS before TensorFlow loads
from larq_l1inf import training
from larq_l1inf._keras import tf
from larq_l1inf.backbones import resnet20
from _common import write_json  # noqa: E402

TARGET = 1.05


class EpochStarts(tf.keras.callbacks.Callback):
    """Wall-clock time at every epoch start and at the end of training."""

    def __init__(self):
        super().__init__()
        self.marks = []

    def on_epoch_begin(self, epoch, logs=None):
        self.marks.append(time.perf_counter())

    def on_train_end(self, logs=None):
        self.marks.append(time.perf_counter())

    def step_times(self, steps):
        gaps = np.diff(self.marks)[1:]  # drop the first epoch: it traces the step
        return [float(g) / steps for g in gaps]


def _steps_per_epoch(data, config):
    return -(-data.splits["train"] // config.batch_size)


def recipe_vs_plain(args, data):
    config = training.TrainConfig(backbone=args.backbone, width=args.width, dataset="fashion_mnist",
                                  regularizer="l1inf", epochs=args.epochs,
                                  batch_size=args.batch_size, seed=0)
    recipe, plain = [], []
    for repeat in range(args.repeats):
        for kind in (("plain", "recipe") if repeat % 2 == 0 else ("recipe", "plain")):
            tf.keras.backend.clear_session()
            timer = EpochStarts()
            if kind == "recipe":
                out = tempfile.mkdtemp(prefix="train_overhead_")
                try:
                    training.fit(config, data, out_dir=out, verbose=0, callbacks=[timer])
                finally:
                    shutil.rmtree(out)
            else:
                tf.keras.utils.set_random_seed(config.seed)
                dataset, steps = training.train_dataset(data, config)
                model, _ = training.build_model(config, data)
                model.compile(training._optimizer(config, steps),
                              "sparse_categorical_crossentropy", metrics=["accuracy"])
                model.fit(dataset, epochs=config.epochs, steps_per_epoch=steps, verbose=0,
                          callbacks=[timer])
            steps = _steps_per_epoch(data, config)
            (recipe if kind == "recipe" else plain).extend(timer.step_times(steps))
            print(f"repeat {repeat} {kind}: {[round(t * 1e3, 1) for t in timer.step_times(steps)]} ms/step",
                  flush=True)
    ratio = statistics.median(recipe) / statistics.median(plain)
    # Epoch i of a recipe run against epoch i of the plain run next to it: the load of the
    # shared box changes slowly, so neighbours see about the same.
    pairs = [r / p for r, p in zip(recipe, plain)]
    extra = (statistics.median(recipe) - statistics.median(plain)) * steps  # s per epoch
    full_steps = -(-60000 // config.batch_size)
    full_ratio = 1 + extra / (full_steps * statistics.median(plain))
    return {
        "config": config.to_dict(),
        "steps_per_epoch": steps,
        "plain_ms_per_step": [t * 1e3 for t in plain],
        "recipe_ms_per_step": [t * 1e3 for t in recipe],
        "ratio_of_medians": ratio,
        "paired_epoch_ratios": pairs,
        "paired_ratio_median": statistics.median(pairs),
        "paired_ratio_range": [min(pairs), max(pairs)],
        "extra_seconds_per_epoch": extra,
        "extrapolated_full_epoch": {
            "steps_per_epoch": full_steps,
            "ratio": full_ratio,
            "how": "1 + extra_seconds_per_epoch / (steps * median plain s/step): the recipe's "
                   "extra cost is per epoch (checkpoints, logs), not per step",
        },
        "target": TARGET,
        "meets_target": ratio <= TARGET,
    }


_HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end")


class _TimedCallbackList(tf.keras.callbacks.CallbackList):
    """A CallbackList that times every hook a callback overrides (Keras's default no-op
    hooks stay unwrapped, so Keras still skips what it skipped)."""

    times = None  # {(callback class, hook): [seconds]}

    def __init__(self, callbacks=None, **kwargs):
        for callback in callbacks or []:
            for hook in _HOOKS:
                method = getattr(callback, hook)
                if getattr(method, "_is_default", False):
                    continue
                setattr(callback, hook, self._timed(type(callback).__name__, hook, method))
        super().__init__(callbacks, **kwargs)

    @classmethod
    def _timed(cls, name, hook, method):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                cls.times.setdefault((name, hook), []).append(time.perf_counter() - start)
        return timed


def callback_costs(args, data):
    """One `training.fit` with a run directory, every recipe callback's hooks timed: per
    callback and hook the median call and the cost per epoch after the first (whose epoch
    end traces L1InfCallback's graph and writes the first checkpoint)."""
    from unittest import mock

    config = training.TrainConfig(backbone=args.backbone, width=args.width, dataset="fashion_mnist",
                                  regularizer="l1inf", epochs=args.epochs + 1,
                                  batch_size=args.batch_size, seed=0)
    _TimedCallbackList.times = {}
    out = tempfile.mkdtemp(prefix="train_overhead_")
    try:
        # Keras builds its CallbackList inside fit; the timed one stands in for it there.
        module = sys.modules[tf.keras.callbacks.CallbackList.__module__]  # what fit reads
        with mock.patch.object(module, "CallbackList", _TimedCallbackList):
            training.fit(config, data, out_dir=out, verbose=0)
    finally:
        shutil.rmtree(out)
    steps = _steps_per_epoch(data, config)
    costs = {}
    for (name, hook), seconds in sorted(_TimedCallbackList.times.items()):
        per_epoch = steps if "batch" in hook else 1
        later = seconds[per_epoch:]  # after the first epoch
        costs[f"{name}.{hook}"] = {
            "calls": len(seconds), "median_ms": statistics.median(seconds) * 1e3,
            "first_call_ms": seconds[0] * 1e3,
            "ms_per_epoch_after_first": sum(later) * 1e3 / max(config.epochs - 1, 1)}
    for key, c in sorted(costs.items(), key=lambda kv: -kv[1]["ms_per_epoch_after_first"]):
        if c["ms_per_epoch_after_first"] >= 0.5:
            print(f"  {key:45s} {c['ms_per_epoch_after_first']:7.1f} ms per epoch "
                  f"(median call {c['median_ms']:.2f} ms, first {c['first_call_ms']:.0f} ms)")
    return {"steps_per_epoch": steps, "epochs": config.epochs, "hooks": costs,
            "ms_per_epoch_after_first": sum(c["ms_per_epoch_after_first"] for c in costs.values())}


def xla_vs_graph(args):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, args.batch_size)
    models = {}
    for jit in (False, True):
        tf.keras.utils.set_random_seed(0)  # identical initial weights
        model = resnet20("bnn", num_classes=10, input_shape=(32, 32, 3), width=16,
                         kernel_regularizer=larq_l1inf.L1InfRegularizer())
        model.compile(tf.keras.optimizers.SGD(0.1, momentum=0.9),
                      "sparse_categorical_crossentropy", jit_compile=jit)
        models["xla" if jit else "graph"] = model
    first = {name: float(m.train_on_batch(x, y)) for name, m in models.items()}
    weights = [m.get_weights() for m in models.values()]
    weight_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*weights))
    preds = [m.predict(x, verbose=0) for m in models.values()]
    times = {name: [] for name in models}
    for repeat in range(args.xla_repeats):
        order = list(models) if repeat % 2 == 0 else list(reversed(models))
        for name in order:
            start = time.perf_counter()
            for _ in range(args.xla_steps):
                loss = models[name].train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / args.xla_steps)
            if not np.isfinite(loss):
                raise FloatingPointError(f"{name} loss became {loss}")
        print(f"xla repeat {repeat}: " + ", ".join(
            f"{n} {1e3 * t[-1]:.0f} ms" for n, t in times.items()), flush=True)
    ratio = statistics.median(times["xla"]) / statistics.median(times["graph"])
    return {
        "model": "resnet20 bnn width 16, 32x32x3, L1InfRegularizer on all binary convs",
        "batch_size": args.batch_size,
        "first_step_loss": first,
        "first_step_max_weight_diff": weight_diff,
        "prediction_max_abs_diff": float(np.max(np.abs(preds[0] - preds[1]))),
        "graph_ms_per_step": [t * 1e3 for t in times["graph"]],
        "xla_ms_per_step": [t * 1e3 for t in times["xla"]],
        "xla_over_graph": ratio,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet20")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--train-size", type=int, default=3200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--xla-steps", type=int, default=5)
    parser.add_argument("--xla-repeats", type=int, default=4)
    parser.add_argument("--callbacks-only", action="store_true",
                        help="time the recipe's callbacks only; keep the other parts of --out")
    parser.add_argument("--skip-xla", action="store_true",
                        help="measure parts 1 and 3 only; keep part 2 from the existing --out")
    parser.add_argument("--out", default="docs/measurements/train_overhead.json")
    args = parser.parse_args(argv)
    from larq_l1inf import data as data_lib

    data = data_lib.load("fashion_mnist", train_size=args.train_size, test_size=100)
    if args.callbacks_only:
        with open(args.out) as f:
            result = json.load(f)
        result["callback_costs"] = {**callback_costs(args, data), "load_average_end": os.getloadavg()}
        write_json(result, args.out)
        return
    started = time.perf_counter()
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg(), "python": sys.version.split()[0],
                    "tensorflow": tf.__version__,
                    "note": "ratios measured side by side; load_average tells how busy the machine was"},
        "recipe_vs_plain_fit": recipe_vs_plain(args, data),
        "callback_costs": callback_costs(args, data),
    }
    if args.skip_xla:
        with open(args.out) as f:
            result["xla_vs_graph"] = {**json.load(f)["xla_vs_graph"],
                                      "note": "carried over from an earlier run (--skip-xla)"}
    else:
        result["xla_vs_graph"] = xla_vs_graph(args)
    result["seconds"] = time.perf_counter() - started
    result["machine"]["load_average_end"] = os.getloadavg()
    r, x = result["recipe_vs_plain_fit"], result["xla_vs_graph"]
    print(f"train / plain fit per step: {r['ratio_of_medians']:.3f} (target <= {TARGET}); "
          f"paired epochs {r['paired_ratio_median']:.3f} "
          f"[{r['paired_ratio_range'][0]:.3f}, {r['paired_ratio_range'][1]:.3f}]; "
          f"{r['extra_seconds_per_epoch']:.2f} s per epoch, extrapolated to "
          f"{r['extrapolated_full_epoch']['steps_per_epoch']} steps "
          f"{r['extrapolated_full_epoch']['ratio']:.3f}")
    print(f"XLA / graph per step: {x['xla_over_graph']:.3f}; first-step losses "
          f"{x['first_step_loss']}, max weight diff {x['first_step_max_weight_diff']:.2e}")
    write_json(result, args.out)


if __name__ == "__main__":
    main()

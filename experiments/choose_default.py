"""Measure which reduction / delta of L1InfRegularizer to make the default.

Trains the demo's residual BNN (`larq_l1inf.backbones.demo_net`) on scikit-learn's digits
with the one training recipe (`larq_l1inf.training.fit`: SGD momentum 0.9, cosine lr, as the
paper) for every setting below and each seed, with identical initial weights and batches per
seed, then evaluates clean accuracy and accuracy
under Algorithm 1 noise at several ranges (mean over noise draws). Writes JSON and prints a
table of mean +- std over seeds.

    python experiments/choose_default.py --out results/choose_default.json
    python experiments/choose_default.py --size 32 --width 32 --epochs 30 --seeds 0 1 2  # larger
"""

import argparse
import json
import os
import time

import numpy as np

import larq_l1inf  # noqa: F401 - sets TF_USE_LEGACY_KERAS before TensorFlow loads
from larq_l1inf import data as data_lib
from larq_l1inf import training
from larq_l1inf.noise import environmental_noise

SETTINGS = {
    "none": None,
    "log 5e-3": dict(delta=5e-3, reduction="log"),
    "log 5e-2": dict(delta=5e-2, reduction="log"),
    "sum 5e-3": dict(delta=5e-3, reduction="sum"),
    "sum 5e-2": dict(delta=5e-2, reduction="sum"),
    "sum/n 5e-3": dict(delta=5e-3, reduction="sum", normalize=True),
    "sum/n 5e-2": dict(delta=5e-2, reduction="sum", normalize=True),
    "sum/n 5e-1": dict(delta=5e-1, reduction="sum", normalize=True),
    "product 5e-3": dict(delta=5e-3, reduction="product"),
    "product/n 5e-3": dict(delta=5e-3, reduction="product", normalize=True),
    "log 5e-3 w/o alpha": dict(delta=5e-3, reduction="log", alpha="none"),
}
NOISE_RANGES = [(0.05, 0.1), (0.2, 0.4), (0.4, 0.8)]


def train_one(setting, data, args, seed):
    config = training.TrainConfig(
        backbone="demo", variant="bnn", width=args.width, dataset="digits",
        regularizer="none" if setting is None else "l1inf", epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=seed, **(setting or {}),
    )
    model, history = training.fit(config, data, verbose=0)
    return model, history.history["loss"]


def evaluate(model, data, args, seed):
    x_test, y_test = data.arrays("test")
    out = {"clean": float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())}
    for lo, hi in NOISE_RANGES:
        accs = []
        for draw in range(args.draws):
            noisy = environmental_noise(x_test, (lo, hi), seed=(1000 * seed + draw, 7))
            accs.append(float((model.predict(noisy, verbose=0).argmax(1) == y_test).mean()))
        out[f"noise {lo}-{hi}"] = float(np.mean(accs))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--out", default="results/choose_default.json")
    args = parser.parse_args(argv)

    data = data_lib.load("digits", size=args.size, channels=args.channels)
    runs = {}
    for name in args.settings:
        runs[name] = []
        for seed in args.seeds:
            start = time.perf_counter()
            model, losses = train_one(SETTINGS[name], data, args, seed)
            metrics = evaluate(model, data, args, seed)
            metrics.update(seed=seed, final_loss=float(losses[-1]), finite=bool(np.isfinite(losses).all()),
                           seconds=time.perf_counter() - start)
            runs[name].append(metrics)
            print(name, metrics, flush=True)
    keys = ["clean"] + [f"noise {lo}-{hi}" for lo, hi in NOISE_RANGES]
    summary = {
        name: {k: [float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs]))] for k in keys}
        for name, rs in runs.items()
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "runs": runs, "summary": summary}, f, indent=2)
    print("\n| setting | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, s in summary.items():
        print(f"| {name} | " + " | ".join(f"{100 * m:.1f} +- {100 * d:.1f}" for m, d in (s[k] for k in keys)) + " |")


if __name__ == "__main__":
    main()

"""Accuracy vs Algorithm 1 noise level: a small BNN trained with and without the L1,inf
penalty on scikit-learn's digits (offline), plotted with `larq_l1inf.evaluation.sweep`.

Both models: `larq_l1inf.backbones.demo_net` (float stem, four binary convolutions,
float head) trained by the one recipe (`larq_l1inf.training.fit`): same seed, same initial
weights and batches, SGD momentum 0.9 with cosine decay (the paper's optimizer). The penalty model adds `L1InfRegularizer(delta, reduction="log")` to its binary
convolutions. Every noise level L means epsilon ~ U[L/2, L] (Algorithm 1, default P), 3
draws per level, identical noisy images for both models. A brief training run on a toy
task: it shows the tool, it is not a reproduction of the paper's tables.

    .venv/bin/python examples/sweep_digits.py            # ~3-6 min on 2 busy cores
    .venv/bin/python examples/sweep_digits.py --epochs 2 --out-dir /tmp/sweep   # quick
"""

import argparse
import json
import os
import time

import larq_l1inf  # noqa: F401 - sets TF_USE_LEGACY_KERAS before TensorFlow loads
from larq_l1inf import data as data_lib
from larq_l1inf import evaluation, training


def train(name, penalty, data, args):
    config = training.TrainConfig(
        backbone="demo", width=args.width, dataset="digits", epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        **(dict(regularizer="l1inf", delta=args.delta, reduction="log") if penalty else {}),
    )
    t = time.perf_counter()
    model, _ = training.fit(config, data, verbose=2)
    print(f"[{name}] trained in {time.perf_counter() - t:.0f} s")
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--delta", type=float, default=5e-3)
    p.add_argument("--levels", type=float, nargs="+",
                   default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0])
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="docs")
    args = p.parse_args()

    data = data_lib.load("digits", size=args.size, channels=3, seed=args.seed)
    models = {
        "baseline": train("baseline", False, data, args),
        f"L1,inf (log, delta={args.delta:g})": train("l1inf", True, data, args),
    }
    x_test, y_test = data.arrays("test")
    levels = [(0.5 * v, v) for v in args.levels]
    rows = evaluation.sweep(
        models, x_test, y_test, levels, draws=args.draws, seed=args.seed,
        csv_path=os.path.join(args.out_dir, "sweep_digits.csv"),
        png_path=os.path.join(args.out_dir, "sweep_digits.png"),
        title=f"digits {args.size}x{args.size}, {len(x_test)} test images, "
              f"{args.epochs} epochs, eps ~ U[L/2, L]",
        progress=True,
    )
    for r in rows:
        print(f"{r['model']:<28} L={r['level_hi']:<5g} {100 * r['accuracy_mean']:6.2f} "
              f"+- {100 * r['accuracy_std']:.2f}%")
    with open(os.path.join(args.out_dir, "sweep_digits.json"), "w") as f:
        json.dump({"config": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()

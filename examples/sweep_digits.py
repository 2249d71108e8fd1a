"""Accuracy vs Algorithm 1 noise level: a small BNN trained with and without the L1,inf
penalty on scikit-learn's digits (offline), plotted with `larq_l1inf.evaluation.sweep`.

Both models: `larq_l1inf.cli.build_demo_model` (float stem, four binary convolutions,
float head), same seed, same batches, SGD momentum 0.9 with cosine decay (the paper's
optimizer). The penalty model adds `L1InfRegularizer(delta, reduction="log")` to its binary
convolutions. Every noise level L means epsilon ~ U[L/2, L] (Algorithm 1, default P), 3
draws per level, identical noisy images for both models. A brief training run on a toy
task: it shows the tool, it is not a reproduction of the paper's tables.

    .venv/bin/python examples/sweep_digits.py            # ~3-6 min on 2 busy cores
    .venv/bin/python examples/sweep_digits.py --epochs 2 --out-dir /tmp/sweep   # quick
"""

import argparse
import json
import math
import os
import time

from larq_l1inf import L1InfRegularizer, evaluation
from larq_l1inf._keras import tf
from larq_l1inf.cli import build_demo_model
from larq_l1inf.data import load_digits


def train(name, regularizer, data, args):
    (x_train, y_train), _ = data
    tf.keras.utils.set_random_seed(args.seed)
    model = build_demo_model(x_train.shape[1:], width=args.width, regularizer=regularizer,
                             name=name)
    steps = args.epochs * math.ceil(len(x_train) / args.batch_size)
    model.compile(
        tf.keras.optimizers.SGD(tf.keras.optimizers.schedules.CosineDecay(args.lr, steps),
                                momentum=0.9),
        "sparse_categorical_crossentropy", metrics=["accuracy"],
    )
    t = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=2)
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

    data = load_digits(size=args.size, channels=3, seed=args.seed)
    models = {
        "baseline": train("baseline", None, data, args),
        f"L1,inf (log, delta={args.delta:g})": train(
            "l1inf", L1InfRegularizer(delta=args.delta, reduction="log"), data, args),
    }
    _, (x_test, y_test) = data
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

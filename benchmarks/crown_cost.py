"""Cost of one CROWN-IBP margin bound against one IBP margin bound and one forward pass.

The three are compiled with `tf.function` and timed in one process on the same fixed batch of
a small binary ResNet-20, interleaved (the order rotates every repeat), so their ratios are
valid on a shared machine even when the absolute times are not. CROWN-IBP =
`larq_l1inf.crown.margin_bounds(beta=1)` (forward interval pass + backward linear pass with one
row per class); IBP = `larq_l1inf.ibp.certified_margin` (the last Dense folded in). Also timed:
the robust loss of a training step, CE(-margins) and its gradient, by both bounds.

    python benchmarks/crown_cost.py                  # ~2 min on 2 shared cores
    python benchmarks/crown_cost.py --repeats 3 --calls 3   # quick look
"""

import argparse
import os
import platform
import statistics
import sys

import numpy as np

import larq_l1inf  # noqa: F401 - sets TF_USE_LEGACY_KERAS before TensorFlow loads
from larq_l1inf._keras import tf
from larq_l1inf.backbones import resnet20
from larq_l1inf.crown import margin_bounds
from larq_l1inf.ibp import certified_margin
from larq_l1inf.utils import write_json
from _common import time_calls  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="bnn")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=2 / 255)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join("docs", "measurements", "crown_cost.json"))
    args = parser.parse_args(argv)

    tf.keras.utils.set_random_seed(args.seed)
    model = resnet20(args.variant, num_classes=args.classes,
                     input_shape=(args.size, args.size, 3), width=args.width, logits=True)
    rng = np.random.default_rng(args.seed)
    x = tf.constant(rng.uniform(0, 1, (args.batch_size, args.size, args.size, 3)), tf.float32)
    y = tf.constant(rng.integers(0, args.classes, args.batch_size), tf.int32)

    def forward():
        return model(x, training=False)

    def ibp():
        return certified_margin(model, x, y, args.epsilon)

    def crown():
        return margin_bounds(model, x, y, args.epsilon, beta=1.0)

    def loss_and_gradient(margins_fn):
        def step():
            with tf.GradientTape() as tape:
                margins = margins_fn()
                loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                    y, -margins, from_logits=True))
            grads = tape.gradient(loss, model.trainable_weights)
            return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None])
        return step

    def ibp_margins():  # all margins with the last Dense folded in: beta = 0
        return margin_bounds(model, x, y, args.epsilon, beta=0.0, training=True)

    def crown_margins():
        return margin_bounds(model, x, y, args.epsilon, beta=1.0, training=True)

    fns = {name: tf.function(fn) for name, fn in
           (("forward", forward), ("ibp", ibp), ("crown_ibp", crown),
            ("ibp_loss_gradient", loss_and_gradient(ibp_margins)),
            ("crown_ibp_loss_gradient", loss_and_gradient(crown_margins)))}
    for fn in fns.values():
        time_calls(fn, 1)  # trace and warm up

    names = list(fns)
    times = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(time_calls(fns[name], args.calls))
    median = {name: statistics.median(t) for name, t in times.items()}

    crown_margin = fns["crown_ibp"]().numpy()
    crown_margin = np.where(np.eye(args.classes, dtype=bool)[y.numpy()], np.inf,
                            crown_margin).min(-1)
    ibp_margin = fns["ibp"]().numpy()
    result = {
        "what": "seconds per call on one batch, tf.function, interleaved in one process: a "
                "forward pass, one IBP certified margin, one CROWN-IBP margin bound (beta=1); "
                "and the robust loss CE(-margins) with its gradient (batch-norm in training "
                "mode) by IBP (beta=0) and by CROWN-IBP (beta=1)",
        "model": model.name,
        "params": int(model.count_params()),
        "batch_size": args.batch_size,
        "input": [args.size, args.size, 3],
        "classes": args.classes,
        "epsilon": args.epsilon,
        "repeats": args.repeats,
        "calls_per_repeat": args.calls,
        "median_s": median,
        "crown_ibp_over_forward": median["crown_ibp"] / median["forward"],
        "crown_ibp_over_ibp": median["crown_ibp"] / median["ibp"],
        "ibp_over_forward": median["ibp"] / median["forward"],
        "training_step_crown_ibp_over_ibp": (median["crown_ibp_loss_gradient"]
                                             / median["ibp_loss_gradient"]),
        "paired_crown_over_ibp": [c / i for c, i in zip(times["crown_ibp"], times["ibp"])],
        "mean_certified_margin": {"ibp": float(np.mean(ibp_margin)),
                                  "crown_ibp": float(np.mean(crown_margin))},
        "crown_not_looser_fraction": float(np.mean(crown_margin >= ibp_margin - 1e-4)),
        "note": "untrained network (random weights): the margins show the bounds' tightness "
                "only, not a verified accuracy",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg(),  # how busy the machine was
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
    }
    print(f"{model.name}, batch {args.batch_size}, {args.classes} classes: forward "
          f"{median['forward'] * 1e3:.1f} ms, IBP {median['ibp'] * 1e3:.1f} ms, CROWN-IBP "
          f"{median['crown_ibp'] * 1e3:.1f} ms; CROWN-IBP/IBP "
          f"{result['crown_ibp_over_ibp']:.2f}, CROWN-IBP/forward "
          f"{result['crown_ibp_over_forward']:.2f}; loss+gradient CROWN-IBP/IBP "
          f"{result['training_step_crown_ibp_over_ibp']:.2f}; mean margin IBP "
          f"{result['mean_certified_margin']['ibp']:.1f} vs CROWN-IBP "
          f"{result['mean_certified_margin']['crown_ibp']:.1f}")
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()

"""Robustness evaluation of Keras models and their LCE flatbuffers under input noise.

- `evaluate`: clean accuracy, noisy accuracy (mean +- std over k noise draws), PGD
  accuracy, each per class, for a Keras model and/or its flatbuffer. Every model sees
  identical noisy (and adversarial) inputs, and the result counts how many predictions
  differ between the Keras model and the flatbuffer.
- `sweep`: accuracy against noise level for several models on identical inputs, written
  as CSV and as a matplotlib plot.
- `register(subparsers)`: the `evaluate` and `sweep` commands of the `larq-l1inf` CLI.
"""

import csv
import dataclasses
import json
import logging
import math
import os

import numpy as np

from larq_l1inf import noise as noise_lib
from larq_l1inf._keras import tf

log = logging.getLogger(__name__)

__all__ = ["EvaluationResult", "evaluate", "noisy_inputs", "plot_sweep", "register", "sweep"]

# Noise is generated in chunks of this many samples, independent of the model batch size,
# so the noisy inputs depend only on (seed, draw) and not on how the models are batched.
NOISE_CHUNK = 2048


# --------------------------------------------------------------------------- helpers


def noisy_inputs(x, noise="environmental", level=None, seed=0, draw=0, noise_kwargs=None):
    """One reproducible noise draw over a whole array, as NumPy.

    Chunk c of draw d uses the stateless seed `fold_in((seed, d), c)`; the result depends
    only on `(seed, draw)`, never on a model's batch size.

    # Arguments
    x: float array (N, H, W, C) or (N, T, C).
    noise: a noise name or callable (see `larq_l1inf.noise.get`).
    level: the noise level (epsilon, `(lo, hi)`, sigma, amount).
    seed: int base seed.
    draw: index of the draw.
    noise_kwargs: further keyword arguments of the noise function.

    # Returns
    A float32 array of the shape of `x`.
    """
    fn = noise_lib.get(noise)
    x = np.asarray(x)
    base = tf.constant([int(seed), int(draw)], dtype=tf.int64)
    out = []
    for c, start in enumerate(range(0, len(x), NOISE_CHUNK)):
        s = tf.random.experimental.stateless_fold_in(base, c)
        out.append(np.asarray(fn(x[start:start + NOISE_CHUNK], level, seed=s,
                                 **(noise_kwargs or {}))))
    if not out:
        return x.astype(np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


class _Predictor:
    """A Keras model or a flatbuffer behind one `predict(x) -> class ids`."""

    def __init__(self, model, batch_size=128, num_threads=1):
        from_bytes = isinstance(model, (bytes, bytearray))
        if isinstance(model, str):
            if not model.endswith(".tflite"):
                raise ValueError(f"Expected a .tflite path, a flatbuffer or a Keras model: {model}")
            from larq_l1inf.deploy import load_flatbuffer

            model, from_bytes = load_flatbuffer(model), True
        self.batch_size = int(batch_size)
        if isinstance(model, tf.keras.Model):
            self.kind, self.model = "keras", model
            self.input_shape = tuple(model.inputs[0].shape[1:]) if model.inputs else None
        else:
            from larq_l1inf.deploy import TFLiteModel

            if from_bytes:
                model = TFLiteModel(model, num_threads=num_threads)
            if not isinstance(model, TFLiteModel):
                raise TypeError(
                    "A model must be a tf.keras.Model, flatbuffer bytes, a TFLiteModel or a "
                    f".tflite path; got {type(model).__name__}."
                )
            self.kind, self.model = "tflite", model
            self.input_shape = tuple(model.input_shape[1:])

    def check(self, x, name):
        if self.input_shape is not None and tuple(x.shape[1:]) != tuple(
            d if d is not None else x.shape[1 + i] for i, d in enumerate(self.input_shape)
        ):
            raise ValueError(
                f"Model '{name}' expects samples of shape {self.input_shape}, but the data has "
                f"{tuple(x.shape[1:])}: evaluate each model on the dataset it was built for."
            )

    def scores(self, x):
        if self.kind == "keras":
            return np.asarray(self.model.predict(x, batch_size=self.batch_size, verbose=0))
        return np.asarray(self.model.predict(x, verbose=False))

    def predict(self, x):
        out = self.scores(x)
        if not np.all(np.isfinite(out)):
            raise FloatingPointError(
                "The model produced NaN or inf outputs; check its weights and the inputs."
            )
        return out.reshape(len(x), -1).argmax(axis=1)


def _check_data(x, y):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"`x` must be floating point (got {x.dtype}); scale it to float first.")
    if x.ndim not in (3, 4):
        raise ValueError(
            f"`x` must be a batch of images (N, H, W, C) or 1-D signals (N, T, C), got shape "
            f"{x.shape}."
        )
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if len(y) != len(x):
        raise ValueError(
            f"Mismatched dataset: {len(x)} inputs but {len(y)} labels; pass x and y of the "
            "same split."
        )
    if len(x) == 0:
        raise ValueError("Empty dataset: nothing to evaluate.")
    return x.astype(np.float32, copy=False), y.astype(np.int64)


def _models_dict(models):
    if isinstance(models, dict):
        if not models:
            raise ValueError("`models` is empty.")
        return dict(models)
    if isinstance(models, (list, tuple)):
        return {f"model_{i}": m for i, m in enumerate(models)}
    return {"model": models}


def _per_class(pred, y, num_classes):
    acc = []
    for c in range(num_classes):
        mask = y == c
        acc.append(float(np.mean(pred[mask] == c)) if mask.any() else float("nan"))
    return acc


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


def _level_bounds(level):
    """(lo, hi) of a level given as a float or a pair."""
    if isinstance(level, (list, tuple)):
        lo, hi = level
        return float(lo), float(hi)
    return float(level), float(level)


# --------------------------------------------------------------------------- evaluate


@dataclasses.dataclass
class EvaluationResult:
    """What `evaluate` measured.

    # Attributes
    n: number of samples.
    num_classes: number of classes (from the labels and the model output).
    config: the noise / attack settings.
    models: per model name (`"keras"`, `"tflite"`): `clean`, `noisy` (one accuracy per
        draw), `noisy_mean`, `noisy_std`, `pgd` (or None) and `per_class` (dict of lists:
        `clean`, `noisy` (mean over draws), `pgd`).
    disagreement: when a Keras model and a flatbuffer were both evaluated, the number of
        samples whose predicted class differs: `clean`, `noisy` (per draw), `pgd`.
    """

    n: int
    num_classes: int
    config: dict
    models: dict
    disagreement: dict = None

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self, path=None):
        text = json.dumps(self.to_dict(), indent=2)
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        return text

    def summary(self):
        """A plain-text table."""
        lines = [f"{'model':<8} {'clean':>8} {'noisy (mean +- std)':>22} {'PGD':>8}"]
        for name, r in self.models.items():
            pgd = "-" if r["pgd"] is None else f"{100 * r['pgd']:.2f}%"
            noisy = f"{100 * r['noisy_mean']:.2f} +- {100 * r['noisy_std']:.2f}%"
            lines.append(f"{name:<8} {100 * r['clean']:>7.2f}% {noisy:>22} {pgd:>8}")
        if self.disagreement:
            d = self.disagreement
            lines.append(
                f"Keras vs flatbuffer: {d['clean']} / {self.n} clean predictions differ, "
                f"{sum(d['noisy'])} / {self.n * len(d['noisy'])} noisy"
                + ("" if d["pgd"] is None else f", {d['pgd']} / {self.n} PGD")
            )
        return "\n".join(lines)


def evaluate(model, x, y, *, flatbuffer=None, noise="environmental", level=None, draws=5,
             noise_kwargs=None, pgd_epsilon=None, pgd_iterations=20, pgd_step=None,
             pgd_clip=None, seed=0, batch_size=128, num_threads=1, progress=None):
    """Evaluate a Keras model and/or its LCE flatbuffer: clean, under noise and under PGD.

    Noise draw k is `noisy_inputs(x, noise, level, seed, draw=k)`: every model sees the
    same noisy inputs. PGD examples are computed on the Keras model (gradients through the
    STE) and fed to every model, the flatbuffer included (it has no gradients).

    !!! example
        ```python
        result = evaluate(model, x_test, y_test, flatbuffer=deploy.convert(model),
                          level=(0.05, 0.1), draws=5, pgd_epsilon=1 / 255)
        print(result.summary())
        ```

    # Arguments
    model: a `tf.keras.Model`, or a flatbuffer (bytes, `TFLiteModel`, `.tflite` path).
    x: float inputs (N, H, W, C) or (N, T, C), in the model's input units.
    y: integer labels (N,) or one-hot.
    flatbuffer: the flatbuffer of `model` to evaluate beside it (bytes, `TFLiteModel`,
        path), or `True` to convert `model` with `larq_l1inf.deploy.convert`.
    noise: noise name or callable (`larq_l1inf.noise.get`); `level` its level. With
        `level=None` the noisy evaluation is skipped.
    draws: number of noise draws k (>= 1).
    noise_kwargs: further arguments of the noise (e.g. `points`, `prob`).
    pgd_epsilon: L-inf radius of PGD; None skips PGD. Needs a Keras model.
    pgd_iterations, pgd_step, pgd_clip: see `larq_l1inf.attacks.pgd`.
    seed: base seed of the noise and of PGD's random start.
    batch_size: Keras batch size.
    num_threads: LCE interpreter threads.
    progress: progress bars; None shows them for 1000+ samples.

    # Returns
    An `EvaluationResult`.

    # Raises
    ValueError: mismatched `x`/`y`, data of the wrong shape for a model, `draws < 1`, PGD
        without a Keras model. TypeError: an unsupported model type or integer inputs.
    """
    x, y = _check_data(x, y)
    draws = int(draws)
    if draws < 1:
        raise ValueError(f"`draws` must be >= 1, got {draws}.")
    models = {}
    keras_model = model if isinstance(model, tf.keras.Model) else None
    models["keras" if keras_model is not None else "tflite"] = _Predictor(
        model, batch_size, num_threads
    )
    if flatbuffer is not None:
        if keras_model is None:
            raise ValueError("`flatbuffer=` is the converted form of a Keras `model`; pass both.")
        if flatbuffer is True:
            from larq_l1inf.deploy import convert

            flatbuffer = convert(keras_model)
        models["tflite"] = _Predictor(flatbuffer, batch_size, num_threads)
    for name, p in models.items():
        p.check(x, name)
    if pgd_epsilon is not None and keras_model is None:
        raise ValueError(
            "PGD needs gradients, so it needs the Keras model: pass the Keras model as "
            "`model` and its flatbuffer as `flatbuffer=`."
        )
    if progress is None:
        progress = len(x) >= 1000

    preds = {name: {"noisy": []} for name in models}
    for name, p in models.items():
        preds[name]["clean"] = p.predict(x)
    num_classes = int(max(y.max() + 1, *(int(preds[n]["clean"].max()) + 1 for n in models)))
    if level is not None:
        for k in _progress(range(draws), draws, "noise draws", progress):
            x_noisy = noisy_inputs(x, noise, level, seed, k, noise_kwargs)
            for name, p in models.items():
                preds[name]["noisy"].append(p.predict(x_noisy))
    if pgd_epsilon is not None:
        from larq_l1inf.attacks import pgd

        x_adv = pgd(keras_model, x, y, pgd_epsilon, step_size=pgd_step,
                    iterations=pgd_iterations, clip=pgd_clip, seed=seed,
                    batch_size=batch_size, progress=progress)
        for name, p in models.items():
            preds[name]["pgd"] = p.predict(x_adv)

    results = {}
    for name, pr in preds.items():
        noisy = [float(np.mean(p == y)) for p in pr["noisy"]]
        per_noisy = (
            np.nanmean([_per_class(p, y, num_classes) for p in pr["noisy"]], axis=0).tolist()
            if noisy else None
        )
        results[name] = {
            "clean": float(np.mean(pr["clean"] == y)),
            "noisy": noisy,
            "noisy_mean": float(np.mean(noisy)) if noisy else None,
            "noisy_std": float(np.std(noisy)) if noisy else None,
            "pgd": float(np.mean(pr["pgd"] == y)) if "pgd" in pr else None,
            "per_class": {
                "clean": _per_class(pr["clean"], y, num_classes),
                "noisy": per_noisy,
                "pgd": _per_class(pr["pgd"], y, num_classes) if "pgd" in pr else None,
            },
        }
    disagreement = None
    if len(models) == 2:
        a, b = preds["keras"], preds["tflite"]
        disagreement = {
            "clean": int(np.sum(a["clean"] != b["clean"])),
            "noisy": [int(np.sum(p != q)) for p, q in zip(a["noisy"], b["noisy"])],
            "pgd": int(np.sum(a["pgd"] != b["pgd"])) if "pgd" in a else None,
        }
    config = {
        "noise": noise if isinstance(noise, str) else getattr(noise, "__name__", str(noise)),
        "level": list(level) if isinstance(level, (list, tuple)) else level,
        "draws": draws if level is not None else 0,
        "noise_kwargs": dict(noise_kwargs or {}),
        "pgd_epsilon": pgd_epsilon,
        "pgd_iterations": pgd_iterations if pgd_epsilon is not None else None,
        "pgd_step": (pgd_step if pgd_step is not None else pgd_epsilon / 4)
        if pgd_epsilon is not None else None,
        "seed": seed,
    }
    return EvaluationResult(len(x), num_classes, config, results, disagreement)


# --------------------------------------------------------------------------- sweep


SWEEP_FIELDS = ["model", "noise", "level_lo", "level_hi", "accuracy_mean", "accuracy_std",
                "draws", "n"]


def sweep(models, x, y, levels, noise="environmental", draws=3, seed=0, noise_kwargs=None,
          batch_size=128, num_threads=1, csv_path=None, png_path=None, title=None,
          progress=None):
    """Accuracy against noise level for several models on identical noisy inputs.

    For every level and draw the noisy inputs are generated once (`noisy_inputs`) and fed
    to every model, so the curves differ only by the models.

    !!! example
        ```python
        rows = sweep({"baseline": base, "l1inf": robust}, x_test, y_test,
                     levels=[0.0, (0.05, 0.1), (0.1, 0.2)], csv_path="sweep.csv",
                     png_path="sweep.png")
        ```

    # Arguments
    models: dict name -> Keras model / flatbuffer / `TFLiteModel` / `.tflite` path (or a
        list, or one model).
    x, y: the evaluation data.
    levels: noise levels; for environmental noise each a float (constant epsilon) or a
        `(lo, hi)` pair. A level of 0 gives the clean accuracy.
    noise: noise name or callable.
    draws: noise draws per level (mean and std over them).
    seed: base seed; level i, draw k uses `noisy_inputs(..., seed=(seed + i), draw=k)`.
    noise_kwargs: further arguments of the noise.
    batch_size, num_threads: Keras batch size, interpreter threads.
    csv_path: write the rows as CSV (columns `SWEEP_FIELDS`).
    png_path: write `plot_sweep` of the rows.
    title: plot title.
    progress: progress bar over levels x draws; None shows it for 1000+ samples.

    # Returns
    A list of dicts, one per (model, level), with the `SWEEP_FIELDS` keys.
    """
    x, y = _check_data(x, y)
    draws = int(draws)
    if draws < 1:
        raise ValueError(f"`draws` must be >= 1, got {draws}.")
    if not levels:
        raise ValueError("`levels` is empty: give at least one noise level.")
    models = {name: _Predictor(m, batch_size, num_threads) for name, m in
              _models_dict(models).items()}
    for name, p in models.items():
        p.check(x, name)
    if progress is None:
        progress = len(x) >= 1000
    acc = {(name, i): [] for name in models for i in range(len(levels))}
    jobs = [(i, k) for i in range(len(levels)) for k in range(draws)]
    for i, k in _progress(jobs, len(jobs), "sweep", progress):
        level = levels[i]
        lo, hi = _level_bounds(level)
        x_noisy = x if hi == 0 and lo == 0 else noisy_inputs(
            x, noise, level, seed + i, k, noise_kwargs
        )
        for name, p in models.items():
            acc[(name, i)].append(float(np.mean(p.predict(x_noisy) == y)))
    noise_name = noise if isinstance(noise, str) else getattr(noise, "__name__", str(noise))
    rows = []
    for name in models:
        for i, level in enumerate(levels):
            lo, hi = _level_bounds(level)
            values = acc[(name, i)]
            rows.append({
                "model": name, "noise": noise_name, "level_lo": lo, "level_hi": hi,
                "accuracy_mean": float(np.mean(values)), "accuracy_std": float(np.std(values)),
                "draws": len(values), "n": int(len(x)),
            })
    if csv_path:
        write_csv(rows, csv_path)
    if png_path:
        plot_sweep(rows, png_path, title=title)
    return rows


def write_csv(rows, path):
    """Write sweep rows as CSV; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SWEEP_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path):
    """Read rows written by `write_csv` (numbers as numbers)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("level_lo", "level_hi", "accuracy_mean", "accuracy_std"):
            r[key] = float(r[key])
        for key in ("draws", "n"):
            r[key] = int(r[key])
    return rows


def plot_sweep(rows, path, title=None):
    """Plot accuracy (mean +- std over draws) against the upper noise level, one line per model.

    # Returns
    The path of the written image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["level_hi"])
        xs = [r["level_hi"] for r in mine]
        ax.errorbar(xs, [100 * r["accuracy_mean"] for r in mine],
                    yerr=[100 * r["accuracy_std"] for r in mine], marker="o", ms=3,
                    capsize=3, label=name)
    ranged = any(r["level_lo"] != r["level_hi"] for r in rows)
    noise_name = rows[0]["noise"] if rows else "noise"
    ax.set_xlabel(f"{noise_name} noise level" + (" (upper end of the epsilon range)"
                                                  if ranged else ""))
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- CLI


def _load_model(path):
    if path.endswith(".tflite"):
        from larq_l1inf.deploy import load_flatbuffer

        return load_flatbuffer(path)
    import larq  # noqa: F401 - registers larq's custom objects for loading

    import larq_l1inf  # noqa: F401 - registers this package's custom objects

    return tf.keras.models.load_model(path, compile=False)


def _load_data(args):
    from larq_l1inf import data

    if args.dataset == "digits":
        _, (x, y) = data.load_digits(size=args.size, channels=args.channels, seed=args.seed)
    else:
        x, y = _tfds_arrays(data.load_tfds(args.dataset, split=args.split, data_dir=args.data_dir))
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    return x, y


def _tfds_arrays(dataset):
    xs, ys = [], []
    for xb, yb in dataset:
        xs.append(np.asarray(xb))
        ys.append(np.asarray(yb))
    x, y = np.asarray(xs), np.asarray(ys)
    if x.ndim == 5:  # batched
        x, y = np.concatenate(xs), np.concatenate(ys)
    return x, y


def _levels(args):
    if args.noise != "environmental" or args.lo_fraction is None:
        return [float(v) for v in args.levels]
    return [(args.lo_fraction * v, v) for v in args.levels]


def run_evaluate(args):
    x, y = _load_data(args)
    model = _load_model(args.model)
    flatbuffer = None
    if args.flatbuffer:
        from larq_l1inf.deploy import load_flatbuffer

        flatbuffer = load_flatbuffer(args.flatbuffer)
    elif args.convert:
        flatbuffer = True
    level = tuple(args.epsilon) if len(args.epsilon) == 2 else args.epsilon[0]
    result = evaluate(model, x, y, flatbuffer=flatbuffer, noise=args.noise, level=level,
                      draws=args.draws, pgd_epsilon=args.pgd_epsilon,
                      pgd_iterations=args.pgd_iterations, seed=args.seed,
                      num_threads=args.threads, progress=True)
    print(result.summary())
    if args.out:
        result.to_json(args.out)
        print(f"written to {args.out}")
    return 0


def run_sweep(args):
    x, y = _load_data(args)
    models = {}
    for spec in args.model:
        name, _, path = spec.rpartition("=")
        models[name or os.path.splitext(os.path.basename(path.rstrip("/")))[0]] = _load_model(path)
    rows = sweep(models, x, y, _levels(args), noise=args.noise, draws=args.draws,
                 seed=args.seed, num_threads=args.threads, csv_path=args.csv,
                 png_path=args.png, title=args.title, progress=True)
    for r in rows:
        print(f"{r['model']:<16} [{r['level_lo']:.4g}, {r['level_hi']:.4g}]  "
              f"{100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f}%")
    return 0


def _common_args(parser):
    parser.add_argument("--dataset", default="digits",
                        help="'digits' (offline) or a TFDS name prepared on disk")
    parser.add_argument("--split", default="test", help="TFDS split")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--size", type=int, default=32, help="digits image size")
    parser.add_argument("--channels", type=int, default=3, help="digits channels")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N samples only")
    parser.add_argument("--noise", default="environmental",
                        choices=["environmental", "gaussian", "uniform", "impulse"])
    parser.add_argument("--draws", type=int, default=5, help="noise draws")
    parser.add_argument("--seed", type=int, default=0, help="noise / attack seed")
    parser.add_argument("--threads", type=int, default=1, help="LCE interpreter threads")


def register(subparsers):
    """Add the `evaluate` and `sweep` commands to the `larq-l1inf` CLI."""
    import argparse

    p = subparsers.add_parser(
        "evaluate", help="clean / noisy / PGD accuracy of a Keras model and its flatbuffer",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="Keras model (SavedModel dir, .h5, .keras) or .tflite file")
    p.add_argument("--flatbuffer", default="", help=".tflite of the same model, evaluated beside")
    p.add_argument("--convert", action="store_true", help="convert the Keras model with LCE")
    p.add_argument("--epsilon", type=float, nargs="+", default=[0.05, 0.1],
                   help="noise level: one value, or LO HI for environmental noise")
    p.add_argument("--pgd-epsilon", type=float, default=None, help="L-inf PGD radius")
    p.add_argument("--pgd-iterations", type=int, default=20, help="PGD steps (step eps/4)")
    p.add_argument("--out", default="", help="write the result as JSON")
    _common_args(p)
    p.set_defaults(func=run_evaluate)

    s = subparsers.add_parser(
        "sweep", help="accuracy vs noise level of several models: CSV and PNG",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("model", nargs="+", help="NAME=PATH (Keras model or .tflite), one per curve")
    s.add_argument("--levels", type=float, nargs="+",
                   default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.4], help="noise levels (upper ends)")
    s.add_argument("--lo-fraction", type=float, default=0.5,
                   help="environmental noise: level L means epsilon ~ U[f*L, L]")
    s.add_argument("--csv", default="results/sweep.csv", help="CSV output")
    s.add_argument("--png", default="results/sweep.png", help="plot output")
    s.add_argument("--title", default=None, help="plot title")
    _common_args(s)
    s.set_defaults(func=run_sweep)
    return p, s

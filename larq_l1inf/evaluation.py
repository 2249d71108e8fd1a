"""Robustness evaluation of Keras models and their LCE flatbuffers under input noise.

- `evaluate`: clean accuracy, noisy accuracy (mean +- std over k noise draws), PGD
  accuracy, each per class, for a Keras model and/or its flatbuffer. Every model sees
  identical noisy (and adversarial) inputs, and the result counts how many predictions
  differ between the Keras model and the flatbuffer.
- `sweep`: accuracy against noise strength for several models on identical inputs,
  written as CSV (`write_csv`, `read_csv`) and as a matplotlib plot (`plot_sweep`).
- `noisy_inputs`: one reproducible noise draw over a whole array.

The `larq-l1inf evaluate` and `sweep` commands (`larq_l1inf.cli`) parse their arguments
and call these functions.
"""

import csv
import dataclasses
import logging
import os
import warnings

import numpy as np

from larq_l1inf import noise as noise_lib
from larq_l1inf._keras import tf
from larq_l1inf.utils import renamed_arguments, resolve_verbose, write_json

log = logging.getLogger(__name__)

__all__ = [
    "EvaluationResult",
    "SWEEP_FIELDS",
    "evaluate",
    "noisy_inputs",
    "plot_sweep",
    "read_csv",
    "sweep",
    "write_csv",
]

# Noise is generated in chunks of this many samples, independent of the model batch size,
# so the noisy inputs depend only on (seed, draw) and not on how the models are batched.
NOISE_CHUNK = 2048


# --------------------------------------------------------------------------- helpers


def noisy_inputs(x, noise="environmental", epsilon=None, seed=0, draw=0, noise_kwargs=None,
                 **deprecated):
    """One reproducible noise draw over a whole array, as NumPy.

    Chunk c of draw d uses the stateless seed `fold_in((seed, d), c)`; the result depends
    only on `(seed, draw)`, never on a model's batch size.

    !!! example
        ```python
        import larq_l1inf  # before TensorFlow: selects Keras 2
        import numpy as np
        from larq_l1inf.evaluation import noisy_inputs

        x = np.random.default_rng(0).random((100, 8, 8, 3)).astype("float32")
        x_noisy = noisy_inputs(x, "environmental", epsilon=(0.05, 0.1), seed=0, draw=0)
        ```

    # Arguments
    x: float array (N, H, W, C) or (N, T, C).
    noise: a noise name or callable (see `larq_l1inf.noise.get`).
    epsilon: the noise strength (Algorithm 1's epsilon or `(lo, hi)`, sigma, amount).
        (`level` is its deprecated name.)
    seed: int base seed.
    draw: index of the draw.
    noise_kwargs: further keyword arguments of the noise function.

    # Returns
    A float32 array of the shape of `x`.
    """
    epsilon = renamed_arguments(deprecated, {"level": "epsilon"}, "noisy_inputs").get(
        "epsilon", epsilon)
    fn = noise_lib.get(noise)
    x = np.asarray(x)
    base = tf.constant([int(seed), int(draw)], dtype=tf.int64)
    out = []
    for c, start in enumerate(range(0, len(x), NOISE_CHUNK)):
        s = tf.random.experimental.stateless_fold_in(base, c)
        out.append(np.asarray(fn(x[start:start + NOISE_CHUNK], epsilon, seed=s,
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
    """Accuracy per class; NaN for a class without samples (None in the result)."""
    acc = []
    for c in range(num_classes):
        mask = y == c
        acc.append(float(np.mean(pred[mask] == c)) if mask.any() else float("nan"))
    return acc


def _nan_to_none(values):
    return None if values is None else [None if np.isnan(v) else float(v) for v in values]


def _progbar(total, verbose, n):
    """A Keras progress bar over `total` steps, or None when silent."""
    verbose = resolve_verbose(verbose, auto=n >= 1000)
    return tf.keras.utils.Progbar(total, verbose=verbose) if verbose else None


def _deprecated(kwargs, renames, function):
    """`renamed_arguments`, with `progress` (a bool or None) turned into `verbose`."""
    if "progress" in kwargs:
        progress = kwargs["progress"]
        kwargs["progress"] = "auto" if progress is None else int(bool(progress))
    return renamed_arguments(kwargs, renames, function, stacklevel=4)


def _epsilon_bounds(epsilon):
    """(lo, hi) of a noise strength given as a number or a pair."""
    if isinstance(epsilon, (list, tuple)):
        lo, hi = epsilon
        return float(lo), float(hi)
    return float(epsilon), float(epsilon)


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
        `clean`, `noisy` (mean over draws), `pgd`; None for a class without samples).
    disagreement: when a Keras model and a flatbuffer were both evaluated, the number of
        samples whose predicted class differs: `clean`, `noisy` (per draw), `pgd`.
    """

    n: int
    num_classes: int
    config: dict
    models: dict
    disagreement: dict = None

    def to_dict(self):
        """The result as plain Python values (write it with `larq_l1inf.utils.write_json`)."""
        return dataclasses.asdict(self)

    def to_json(self, path=None):
        """Deprecated: use `larq_l1inf.utils.write_json(result.to_dict(), path)`."""
        warnings.warn("EvaluationResult.to_json is deprecated and will be removed in the next "
                      "release; use larq_l1inf.utils.write_json(result.to_dict(), path).",
                      DeprecationWarning, stacklevel=2)
        import json

        from larq_l1inf.utils import to_json_value

        if path:
            write_json(self.to_dict(), path)
        return json.dumps(to_json_value(self.to_dict()), indent=2)

    def summary(self):
        """A plain-text table."""
        lines = [f"{'model':<8} {'clean':>8} {'noisy (mean +- std)':>22} {'PGD':>8}"]

        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}%"

        for name, r in self.models.items():
            noisy = ("-" if r["noisy_mean"] is None
                     else f"{100 * r['noisy_mean']:.2f} +- {100 * r['noisy_std']:.2f}%")
            lines.append(f"{name:<8} {pct(r['clean']):>8} {noisy:>22} {pct(r['pgd']):>8}")
        if self.disagreement:
            d = self.disagreement
            parts = ([] if d["clean"] is None else [f"{d['clean']} / {self.n} clean"])
            if d["noisy"]:
                parts.append(f"{sum(d['noisy'])} / {self.n * len(d['noisy'])} noisy")
            if d["pgd"] is not None:
                parts.append(f"{d['pgd']} / {self.n} PGD")
            lines.append("Keras vs flatbuffer predictions that differ: " + ", ".join(parts))
        return "\n".join(lines)


def evaluate(model, x, y, *, flatbuffer=None, noise="environmental", epsilon=None, draws=5,
             noise_kwargs=None, pgd_epsilon=None, pgd_step_size=None, pgd_iterations=20,
             pgd_clip=None, seed=0, batch_size=128, num_threads=1, verbose="auto", clean=True,
             **deprecated):
    """Evaluate a Keras model and/or its LCE flatbuffer: clean, under noise and under PGD.

    Noise draw k is `noisy_inputs(x, noise, epsilon, seed, draw=k)`: every model sees the
    same noisy inputs. PGD examples are computed on the Keras model (gradients through the
    STE) and fed to every model, the flatbuffer included (it has no gradients).

    !!! example
        ```python
        import larq_l1inf  # before TensorFlow: selects Keras 2
        import numpy as np
        import tensorflow as tf
        from larq_l1inf.evaluation import evaluate

        model = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Flatten(),
                                     tf.keras.layers.Dense(10)])
        x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
        y = np.arange(64) % 10
        result = evaluate(model, x, y, flatbuffer=True, epsilon=(0.05, 0.1), draws=5,
                          pgd_epsilon=4 / 255)
        print(result.summary())
        ```

    # Arguments
    model: a `tf.keras.Model`, or a flatbuffer (bytes, `TFLiteModel`, `.tflite` path).
    x: float inputs (N, H, W, C) or (N, T, C), in the model's input units.
    y: integer labels (N,) or one-hot.
    flatbuffer: the flatbuffer of `model` to evaluate beside it (bytes, `TFLiteModel`,
        path), or `True` to convert `model` with `larq_l1inf.deploy.convert`.
    noise: noise name or callable (`larq_l1inf.noise.get`).
    epsilon: its strength (Algorithm 1's epsilon or `(lo, hi)`, sigma, amount); None
        skips the noisy evaluation.
    draws: number of noise draws k (>= 1).
    noise_kwargs: further arguments of the noise (e.g. `points`, `prob`).
    pgd_epsilon: L-inf radius of PGD; None skips PGD. Needs a Keras model.
    pgd_step_size, pgd_iterations, pgd_clip: `step_size`, `iterations` and `clip` of
        `larq_l1inf.attacks.pgd` (step `pgd_epsilon / 4` by default).
    seed: base seed of the noise and of PGD's random start.
    batch_size: Keras batch size.
    num_threads: LCE interpreter threads.
    verbose: 0 silent, 1 Keras progress bars, 2 one line per stage; `"auto"` shows bars
        for 1000+ samples.
    clean: False skips the clean pass (its accuracy, per-class accuracy and disagreement
        are None): for a caller evaluating one model under several noise settings.
    **deprecated: the names of version 0.1.0, `level` (now `epsilon`), `pgd_step` (now
        `pgd_step_size`) and `progress` (now `verbose`), with a `DeprecationWarning`.

    # Returns
    An `EvaluationResult`.

    # Raises
    ValueError: mismatched `x`/`y`, data of the wrong shape for a model, `draws < 1`, PGD
        without a Keras model. TypeError: an unsupported model type or integer inputs.
    """
    renamed = _deprecated(deprecated, {"level": "epsilon", "pgd_step": "pgd_step_size",
                                       "progress": "verbose"}, "evaluate")
    epsilon = renamed.get("epsilon", epsilon)
    pgd_step_size = renamed.get("pgd_step_size", pgd_step_size)
    verbose = renamed.get("verbose", verbose)
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
    preds = {name: {"noisy": []} for name in models}
    if clean:
        for name, p in models.items():
            preds[name]["clean"] = p.predict(x)
    if epsilon is not None:
        bar = _progbar(draws, verbose, len(x))
        for k in range(draws):
            x_noisy = noisy_inputs(x, noise, epsilon, seed, k, noise_kwargs)
            for name, p in models.items():
                preds[name]["noisy"].append(p.predict(x_noisy))
            if bar is not None:
                bar.add(1)
    if pgd_epsilon is not None:
        from larq_l1inf.attacks import pgd

        x_adv = pgd(keras_model, x, y, pgd_epsilon, step_size=pgd_step_size,
                    iterations=pgd_iterations, clip=pgd_clip, seed=seed,
                    batch_size=batch_size, verbose=resolve_verbose(verbose, auto=len(x) >= 1000))
        for name, p in models.items():
            preds[name]["pgd"] = p.predict(x_adv)

    # Classes: the labels' and every predicted one (a model may predict a class absent from y).
    num_classes = int(max([y.max() + 1] + [int(np.max(v)) + 1 for pr in preds.values()
                                            for v in (pr.get("clean"), pr.get("pgd"), *pr["noisy"])
                                            if v is not None]))
    results = {}
    for name, pr in preds.items():
        noisy = [float(np.mean(p == y)) for p in pr["noisy"]]
        # A class is NaN (no samples) in every draw or in none: a plain mean keeps it NaN.
        per_noisy = (
            np.mean([_per_class(p, y, num_classes) for p in pr["noisy"]], axis=0).tolist()
            if noisy else None
        )
        results[name] = {
            "clean": float(np.mean(pr["clean"] == y)) if "clean" in pr else None,
            "noisy": noisy,
            "noisy_mean": float(np.mean(noisy)) if noisy else None,
            "noisy_std": float(np.std(noisy)) if noisy else None,
            "pgd": float(np.mean(pr["pgd"] == y)) if "pgd" in pr else None,
            "per_class": {
                "clean": _nan_to_none(_per_class(pr["clean"], y, num_classes))
                if "clean" in pr else None,
                "noisy": _nan_to_none(per_noisy),
                "pgd": _nan_to_none(_per_class(pr["pgd"], y, num_classes))
                if "pgd" in pr else None,
            },
        }
    disagreement = None
    if len(models) == 2:
        a, b = preds["keras"], preds["tflite"]
        disagreement = {
            "clean": int(np.sum(a["clean"] != b["clean"])) if "clean" in a else None,
            "noisy": [int(np.sum(p != q)) for p, q in zip(a["noisy"], b["noisy"])],
            "pgd": int(np.sum(a["pgd"] != b["pgd"])) if "pgd" in a else None,
        }
    config = {
        "noise": noise if isinstance(noise, str) else getattr(noise, "__name__", str(noise)),
        "epsilon": list(epsilon) if isinstance(epsilon, (list, tuple)) else epsilon,
        "draws": draws if epsilon is not None else 0,
        "noise_kwargs": dict(noise_kwargs or {}),
        "pgd_epsilon": pgd_epsilon,
        "pgd_step_size": (pgd_step_size if pgd_step_size is not None else pgd_epsilon / 4)
        if pgd_epsilon is not None else None,
        "pgd_iterations": pgd_iterations if pgd_epsilon is not None else None,
        "seed": seed,
    }
    return EvaluationResult(len(x), num_classes, config, results, disagreement)


# --------------------------------------------------------------------------- sweep


#: Columns of the sweep rows and CSV files.
SWEEP_FIELDS = ["model", "noise", "epsilon_lo", "epsilon_hi", "accuracy_mean", "accuracy_std",
                "draws", "n"]
# Column names of version 0.1.0's CSV files, read by `read_csv`.
_OLD_FIELDS = {"level_lo": "epsilon_lo", "level_hi": "epsilon_hi"}


def sweep(models, x, y, epsilons=None, noise="environmental", draws=3, seed=0,
          noise_kwargs=None, batch_size=128, num_threads=1, csv_path=None, png_path=None,
          title=None, verbose="auto", **deprecated):
    """Accuracy against noise strength for several models on identical noisy inputs.

    For every epsilon and draw the noisy inputs are generated once (`noisy_inputs`) and fed
    to every model, so the curves differ only by the models.

    !!! example
        ```python
        import larq_l1inf  # before TensorFlow: selects Keras 2
        import numpy as np
        import tensorflow as tf
        from larq_l1inf.evaluation import sweep

        def tiny():
            return tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Flatten(),
                                        tf.keras.layers.Dense(10)])

        x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
        rows = sweep({"a": tiny(), "b": tiny()}, x, np.arange(64) % 10,
                     epsilons=[0.0, (0.05, 0.1), (0.1, 0.2)], csv_path="results/sweep.csv",
                     png_path="results/sweep.png")
        ```

    # Arguments
    models: dict name -> Keras model / flatbuffer / `TFLiteModel` / `.tflite` path (or a
        list, or one model).
    x, y: the evaluation data.
    epsilons: noise strengths; for environmental noise each a float (constant epsilon) or
        a `(lo, hi)` pair. An epsilon of 0 gives the clean accuracy.
    noise: noise name or callable.
    draws: noise draws per epsilon (mean and std over them).
    seed: base seed; epsilon i, draw k uses `noisy_inputs(..., seed=(seed + i), draw=k)`.
    noise_kwargs: further arguments of the noise.
    batch_size, num_threads: Keras batch size, interpreter threads.
    csv_path: write the rows as CSV (columns `SWEEP_FIELDS`).
    png_path: write `plot_sweep` of the rows.
    title: plot title.
    verbose: 0 silent, 1 a Keras progress bar over epsilons x draws, 2 one line at the
        end; `"auto"` shows the bar for 1000+ samples.
    **deprecated: `levels` (now `epsilons`) and `progress` (now `verbose`), the names of
        version 0.1.0, with a `DeprecationWarning`.

    # Returns
    A list of dicts, one per (model, epsilon), with the `SWEEP_FIELDS` keys.

    # Raises
    ValueError: no epsilons, `draws < 1`, mismatched data. TypeError: an unsupported model.
    """
    renamed = _deprecated(deprecated, {"levels": "epsilons", "progress": "verbose"}, "sweep")
    epsilons = renamed.get("epsilons", epsilons)
    verbose = renamed.get("verbose", verbose)
    x, y = _check_data(x, y)
    draws = int(draws)
    if draws < 1:
        raise ValueError(f"`draws` must be >= 1, got {draws}.")
    if not epsilons:
        raise ValueError("`epsilons` is empty: give at least one noise strength.")
    models = {name: _Predictor(m, batch_size, num_threads) for name, m in
              _models_dict(models).items()}
    for name, p in models.items():
        p.check(x, name)
    acc = {(name, i): [] for name in models for i in range(len(epsilons))}
    jobs = [(i, k) for i in range(len(epsilons)) for k in range(draws)]
    bar = _progbar(len(jobs), verbose, len(x))
    for i, k in jobs:
        epsilon = epsilons[i]
        lo, hi = _epsilon_bounds(epsilon)
        x_noisy = x if hi == 0 and lo == 0 else noisy_inputs(
            x, noise, epsilon, seed + i, k, noise_kwargs
        )
        for name, p in models.items():
            acc[(name, i)].append(float(np.mean(p.predict(x_noisy) == y)))
        if bar is not None:
            bar.add(1)
    noise_name = noise if isinstance(noise, str) else getattr(noise, "__name__", str(noise))
    rows = []
    for name in models:
        for i, epsilon in enumerate(epsilons):
            lo, hi = _epsilon_bounds(epsilon)
            values = acc[(name, i)]
            rows.append({
                "model": name, "noise": noise_name, "epsilon_lo": lo, "epsilon_hi": hi,
                "accuracy_mean": float(np.mean(values)), "accuracy_std": float(np.std(values)),
                "draws": len(values), "n": int(len(x)),
            })
    if csv_path:
        write_csv(rows, csv_path)
    if png_path:
        plot_sweep(rows, png_path, title=title)
    return rows


def write_csv(rows, path):
    """Write sweep rows as CSV, creating the folder.

    # Arguments
    rows: the rows of `sweep` (keys `SWEEP_FIELDS`).
    path: the CSV file.

    # Returns
    `path`.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SWEEP_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path):
    """Read rows written by `write_csv` (numbers as numbers).

    Files of version 0.1.0 (columns `level_lo`, `level_hi`) are read with the new names.

    # Arguments
    path: the CSV file.

    # Returns
    A list of dicts with the `SWEEP_FIELDS` keys.
    """
    with open(path, newline="") as f:
        rows = [{_OLD_FIELDS.get(k, k): v for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        for key in ("epsilon_lo", "epsilon_hi", "accuracy_mean", "accuracy_std"):
            r[key] = float(r[key])
        for key in ("draws", "n"):
            r[key] = int(r[key])
    return rows


def plot_sweep(rows, path, title=None):
    """Plot accuracy (mean +- std over draws) against the upper epsilon, one line per model.

    # Arguments
    rows: the rows of `sweep` or `read_csv`.
    path: the image file (its extension selects the format, e.g. `.png`).
    title: plot title.

    # Returns
    `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["epsilon_hi"])
        xs = [r["epsilon_hi"] for r in mine]
        ax.errorbar(xs, [100 * r["accuracy_mean"] for r in mine],
                    yerr=[100 * r["accuracy_std"] for r in mine], marker="o", ms=3,
                    capsize=3, label=name)
    ranged = any(r["epsilon_lo"] != r["epsilon_hi"] for r in rows)
    noise_name = rows[0]["noise"] if rows else "noise"
    ax.set_xlabel(f"{noise_name} noise epsilon" + (" (upper end of the range)"
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

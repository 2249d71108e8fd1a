"""Re-measure the paper's tables with paired seeds: `larq-l1inf reproduce NAME [--quick]`.

Every recipe trains a few *arms* (a `TrainConfig` each: a variant with and without the
penalty, a delta, a baseline penalty, ...) for several seeds through the one training recipe
(`larq_l1inf.training.fit`), evaluates each trained model with
`larq_l1inf.training.evaluate_model` on the clean test set and under Algorithm 1 noise at a
ladder of ranges (several draws each), and compares arms *paired by seed*: the seed fixes the
data subsample, the initial weights, the batch order and the evaluation noise, so within a
seed the arms differ only by the treatment. For each comparison it reports the mean paired
difference with its 95% t-interval over seeds; a direction counts as reproduced only where
the interval excludes zero.

    OUT/NAME/ARM/seed_S/        one run: fit/ (resumable training), result.json when finished
    docs/results/NAME.json      config, versions, per-run numbers, per-arm means, comparisons

A recipe skips runs whose result.json exists (read back), and a run interrupted mid-training
resumes from its last epoch, so `reproduce NAME` continues after an interruption.

!!! example
    ```python
    from larq_l1inf import reproduce
    reproduce.paired_difference([0.80, 0.82, 0.79], [0.78, 0.81, 0.79])  # mean, std, t-interval
    ```
"""

import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import platform
import time

import numpy as np

from larq_l1inf import training
from larq_l1inf.utils import to_json_value, write_json

log = logging.getLogger(__name__)

__all__ = [
    "EPSILON_LADDERS",
    "RECIPES",
    "Recipe",
    "copy_finished_run",
    "find_finished_run",
    "hard_range",
    "initial_fingerprint",
    "paired_difference",
    "register_reproduce",
    "run_recipe",
    "t_quantile_975",
]

# --------------------------------------------------------------------------- statistics

#: Two-sided 95% quantiles of Student's t, t_{0.975, df} (standard tables).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
         16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074,
         23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045,
         30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_quantile_975(df):
    """t_{0.975, df}: exact table values for df <= 30, 40, 60, 120; between them linear in 1/df.

    # Raises
    ValueError: for df < 1 (one seed has no spread: run at least two).
    """
    if df < 1:
        raise ValueError(f"A t-interval needs at least 2 paired seeds (df >= 1), got df={df}.")
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975) + [math.inf]
    values = [_T975[k] for k in sorted(_T975)] + [1.959964]
    for (k0, v0), (k1, v1) in zip(zip(keys, values), zip(keys[1:], values[1:])):
        if k0 < df < k1:
            w = (1 / k0 - 1 / df) / (1 / k0 - (0 if k1 == math.inf else 1 / k1))
            return v0 + w * (v1 - v0)
    return 1.959964


def paired_difference(treatment, reference):
    """Mean paired difference over seeds with its 95% t-interval.

    $$d_s = a_s - b_s, \\quad \\bar d \\pm t_{0.975, n-1} \\, s_d / \\sqrt{n}$$

    # Arguments
    treatment, reference: one number per seed, in seed order (the pairs).

    # Returns
    A dict: `n`, `mean`, `std` (of the differences, ddof 1), `half_width`, `lo`, `hi`,
    `verdict`: "higher" / "lower" when the interval excludes zero, else "unresolved".

    # Raises
    ValueError: for unequal lengths or fewer than 2 pairs.
    """
    a = np.asarray(treatment, dtype=float)
    b = np.asarray(reference, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Paired values need equal 1-D shapes, got {a.shape} and {b.shape}.")
    n = len(a)
    if n < 2:
        raise ValueError(f"A paired interval needs >= 2 seeds, got {n}; run more seeds.")
    d = a - b
    mean = float(d.mean())
    std = float(d.std(ddof=1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    lo, hi = mean - half, mean + half
    verdict = "higher" if lo > 0 else "lower" if hi < 0 else "unresolved"
    return {"n": n, "mean": mean, "std": std, "half_width": half, "lo": lo, "hi": hi,
            "verdict": verdict}


def hard_range(epsilons, clean, noisy, lo=0.10, hi=0.30):
    """Index of the first noise range where the reference loses `lo..hi` of accuracy (else the
    range whose loss is closest to the middle), or None without ranges."""
    if not epsilons:
        return None
    losses = [clean - v for v in noisy]
    for i, loss in enumerate(losses):
        if lo <= loss <= hi:
            return i
    middle = (lo + hi) / 2
    return int(np.argmin([abs(loss - middle) for loss in losses]))


# --------------------------------------------------------------------------- recipes

#: Noise ranges (lo, hi) evaluated per input scale: the paper's ranges first, then harder
#: ones, so the results can name a range where the baseline loses 10-30 points.
EPSILON_LADDERS = {
    # Pixel units in [0, 1]: the paper's CIFAR/ImageNet and MRI ranges, then stronger.
    "pixels": [(1 / 255, 4 / 255), (0.05, 0.1), (0.1, 0.15), (0.15, 0.2), (0.2, 0.3),
               (0.3, 0.4)],
    # MNIST-1D is standardised (std 1); the paper is silent, its default is (0.1, 0.2).
    "mnist1d": [(0.1, 0.2), (0.2, 0.4), (0.4, 0.8), (0.8, 1.6)],
}

#: The paper's noise ranges in pixel units (indices into the "pixels" ladder).
PAPER_RANGES = {"pixels": [0, 1], "mnist1d": [0]}


@dataclasses.dataclass
class Recipe:
    """One table: its arms, which arms are compared, and its default scale.

    # Attributes
    name: the recipe's name (`larq-l1inf reproduce NAME`).
    title: what the paper's table shows.
    claim: the paper's direction, one sentence.
    arms: `{arm: {TrainConfig field: value}}` on top of `base`.
    comparisons: `[(treatment, reference)]` arm pairs.
    base: settings shared by every arm.
    seeds: paired seeds of the full recipe (the quick one uses 2).
    same_architecture: False where arms differ in their weights' shapes (the MBN sweep): then
        a pair shares its seed, data and batches, not its initial weights.
    full, quick: scale settings (`epochs`, `width`, `train_size`, `test_size`, `draws`).
    direction: "higher" when the paper's claim is that the treatment's noisy accuracy is
        higher; None where the paper makes no claim.
    evaluate: more measures per run: `"verified"` (IBP-verified accuracy at these L-inf
        radii), `"pgd_epsilon"` and `"pgd_iterations"` (PGD accuracy), `"bops"` (True: the
        model's bit operations).
    """

    name: str
    title: str
    claim: str
    arms: dict
    comparisons: list
    base: dict
    seeds: int = 3
    full: dict = None
    quick: dict = None
    direction: str = "higher"
    evaluate: dict = None
    same_architecture: bool = True


_IMAGE = {"backbone": "demo", "dataset": "fashion_mnist"}
# A width-16 demo_net trains ~1,300 Fashion-MNIST images/s on 2 cores; 15,000 images x 10
# epochs is ~2 minutes a run, so 40 runs (table 2) fit in about two hours.
_FULL = {"epochs": 10, "width": 16, "train_size": 15000, "test_size": 10000, "draws": 3}
_QUICK = {"epochs": 2, "width": 8, "train_size": 2000, "test_size": 2000, "draws": 2,
          "seeds": 2}


def _with_and_without(variants, **penalty):
    arms, comparisons = {}, []
    for v in variants:
        arms[v] = {"variant": v}
        arms[f"{v}+l1inf"] = {"variant": v, "regularizer": "l1inf", **penalty}
        comparisons.append((f"{v}+l1inf", v))
    return arms, comparisons


def _recipes():
    recipes = {}
    arms, comp = _with_and_without(["dorefa", "bireal", "reactnet", "irnet"])
    recipes["table2"] = Recipe(
        "table2", "Table 2: BNN variants with and without the L1,inf penalty under noise",
        "every variant + L1,inf is more accurate under noise than the variant alone",
        arms, comp, dict(_IMAGE), seeds=5, full=dict(_FULL), quick=dict(_QUICK))
    arms, comp = _with_and_without(["irnet", "bireal", "adabin"])
    recipes["table3"] = Recipe(
        "table3", "Table 3: 1-D signals (MNIST-1D), conv1d backbone",
        "every 1-D variant + L1,inf is more accurate under noise than the variant alone",
        arms, comp, {"backbone": "conv1d", "dataset": "mnist1d"}, seeds=3,
        full={"epochs": 20, "width": 32, "train_size": 10000, "test_size": 10000, "draws": 3},
        quick={"epochs": 3, "width": 16, "train_size": 2000, "test_size": 2000, "draws": 2,
               "seeds": 2})
    arms, comp = {}, []
    for v in ("dorefa", "bireal", "irnet"):
        arms[v] = {"variant": v}
        for delta in (5e-3, 5e-2):
            arms[f"{v}+l1inf@{delta:g}"] = {"variant": v, "regularizer": "l1inf", "delta": delta}
            comp.append((f"{v}+l1inf@{delta:g}", v))
    recipes["table7"] = Recipe(
        "table7", "Table 7: the penalty's coefficient delta (5e-3, 5e-2)",
        "both coefficients improve every variant under noise",
        arms, comp, dict(_IMAGE), seeds=3, full=dict(_FULL, train_size=10000),
        quick=dict(_QUICK))
    arms, comp = _with_and_without(["dorefa", "abc", "irnet"])
    recipes["table10"] = Recipe(
        "table10", "Table 10: clean vs noisy accuracy with the penalty",
        "the penalty changes clean accuracy little while noisy accuracy stays at or above it",
        arms, comp, dict(_IMAGE), seeds=3, full=dict(_FULL), quick=dict(_QUICK))
    arms = {"bireal": {"variant": "bireal"}}
    for reg in ("l1inf", "l1", "spectral", "absum", "lcr"):
        arms[f"bireal+{reg}"] = {"variant": "bireal", "regularizer": reg}
    # LCR distils from a trained full-precision teacher (Shang et al. load a pretrained one).
    arms["bireal+lcr"]["lcr_teacher"] = "train"
    comp = [(f"bireal+{r}", "bireal") for r in ("l1inf", "l1", "spectral", "absum", "lcr")]
    comp += [("bireal+l1inf", f"bireal+{r}") for r in ("l1", "spectral", "absum", "lcr")]
    recipes["table11"] = Recipe(
        "table11", "Table 11: L1,inf vs l1, spectral (L2), absum (L-inf) and LCR",
        "L1,inf is more accurate under noise than every other penalty",
        arms, comp, dict(_IMAGE), seeds=5, full=dict(_FULL, train_size=10000),
        quick=dict(_QUICK))
    # IR-Net is left out: its scale 2^round(log2 mean|W_std|) is 1 for standardized weights
    # (mean|W_std| <= std = 1 and ~0.8 for bell-shaped rows), so "w/o alpha" is the same run.
    arms, comp = {}, []
    for v in ("dorefa", "bireal", "reactnet"):
        arms[v] = {"variant": v}
        arms[f"{v}+l1inf"] = {"variant": v, "regularizer": "l1inf"}
        arms[f"{v}+l1inf(alpha=none)"] = {"variant": v, "regularizer": "l1inf", "alpha": "none"}
        comp += [(f"{v}+l1inf", f"{v}+l1inf(alpha=none)"), (f"{v}+l1inf", v),
                 (f"{v}+l1inf(alpha=none)", v)]
    recipes["tables15_16"] = Recipe(
        "tables15_16", "Tables 15-16: the penalty without the scaling factors (alpha none)",
        "removing alpha from the penalty costs 0.3-1.3 points under noise",
        arms, comp, dict(_IMAGE), seeds=5, full=dict(_FULL), quick=dict(_QUICK))
    # IR-Net's alpha is 1 and its W_b is +-1, so every fan-in-normalised term is exactly 1 and
    # product/n, log, log/n and sum/n give one gradient: DoReFa (alpha = E|W|) separates them.
    arms, comp = {}, []
    for v in ("irnet", "dorefa"):
        arms[v] = {"variant": v}
        for reduction in ("product", "log", "sum"):
            for normalize in (False, True):
                name = f"{v}+{reduction}{'/fan-in' if normalize else ''}"
                arms[name] = {"variant": v, "regularizer": "l1inf", "reduction": reduction,
                              "normalize": normalize}
                if v == "dorefa" and (reduction, normalize) == ("sum", True):
                    # The class default, spelled as table 2's arm so its runs are read back.
                    arms[name] = {"variant": v, "regularizer": "l1inf"}
                comp.append((name, v))
    recipes["reductions"] = Recipe(
        "reductions", "Reductions of the per-layer norms: product, log, sum; fan-in normalised",
        "no paper claim (the paper states the product); which reductions help under noise",
        arms, comp, dict(_IMAGE), seeds=3, full=dict(_FULL), quick=dict(_QUICK),
        direction=None)
    augment = ["environmental", 0.05, 0.1]
    arms = {"irnet": {"variant": "irnet"},
            "irnet+l1inf": {"variant": "irnet", "regularizer": "l1inf"},
            "irnet+noise": {"variant": "irnet", "noise_augment": augment},
            "irnet+noise+l1inf": {"variant": "irnet", "noise_augment": augment,
                                  "regularizer": "l1inf"}}
    recipes["noise_augment"] = Recipe(
        "noise_augment", "Training with Algorithm 1 noise (InputNoise), alone and with the penalty",
        "no paper table; whether the penalty adds robustness beyond noise augmentation",
        arms, [("irnet+noise", "irnet"), ("irnet+noise+l1inf", "irnet+noise"),
               ("irnet+l1inf", "irnet")],
        dict(_IMAGE), seeds=3, full=dict(_FULL), quick=dict(_QUICK), direction=None)
    # Paper 004 trains robust nets with IBP; here a BNN, its L1,inf penalty and both together.
    # GM with N = 3 sub-perturbations up to 0.1 (Fashion-MNIST's usual L-inf radius), after a
    # clean warm-up epoch and a 3-epoch ramp-up, as Gowal et al. and 004 schedule IBP training.
    gm = {"robust": "ibp", "robust_epsilon": 0.1, "gm_n": 3, "gm_warmup_epochs": 1,
          "gm_rampup_epochs": 3}
    arms = {"bnn": {"variant": "bnn"},
            "bnn+l1inf": {"variant": "bnn", "regularizer": "l1inf"},
            # N = 1 is training at the one final epsilon: 004's "local" baseline (LRT).
            "bnn+ibp": {"variant": "bnn", **gm, "gm_n": 1},
            "bnn+gm-ibp": {"variant": "bnn", **gm},
            "bnn+gm-ibp+l1inf": {"variant": "bnn", "regularizer": "l1inf", **gm},
            "bnn+gm-crown-ibp": {"variant": "bnn", **gm, "robust": "crown-ibp"}}
    recipes["certified"] = Recipe(
        "certified", "GM robust training (004) and the L1,inf penalty: verified, noisy, clean",
        "004: global monotonic training (N > 1) is more verifiably robust than training at the "
        "one final epsilon",
        arms, [("bnn+gm-ibp", "bnn+ibp"), ("bnn+gm-ibp", "bnn"), ("bnn+l1inf", "bnn"),
               ("bnn+gm-ibp+l1inf", "bnn+gm-ibp"), ("bnn+gm-crown-ibp", "bnn+gm-ibp")],
        dict(_IMAGE), seeds=3, full=dict(_FULL, train_size=10000),
        quick=dict(_QUICK, epochs=3), direction=None,
        evaluate={"verified": [0.01, 0.05, 0.1], "pgd_epsilon": 0.05, "pgd_iterations": 10})
    # Paper 003's design space: M weight x N activation bases, BOPs next to clean and PGD.
    arms = {f"mbn{m}x{n}": {"variant": "mbn",
                            "variant_options": {"weight_bases": m, "activation_bases": n}}
            for m in (1, 2, 3) for n in (1, 2, 3)}
    recipes["mbn"] = Recipe(
        "mbn", "Multi-bit networks (003): M x N binary bases, BOPs, clean, noisy and PGD accuracy",
        "003: more weight bases (MBN3x1) raise PGD accuracy at fewer BOPs than 2-bit nets",
        arms, [(a, "mbn1x1") for a in arms if a != "mbn1x1"],
        dict(_IMAGE), seeds=3, full=dict(_FULL, train_size=10000, epochs=6),
        quick=dict(_QUICK), direction=None,
        evaluate={"pgd_epsilon": 0.05, "pgd_iterations": 10, "bops": True},
        same_architecture=False)
    return recipes


#: name -> `Recipe`.
RECIPES = _recipes()


# --------------------------------------------------------------------------- runs


def initial_fingerprint(model):
    """SHA-256 of a model's weights (the student of an LCR model, the network a GM robust
    model trains, the network behind an InputNoise layer): equal across a pair means equal
    initial weights."""
    from larq_l1inf._keras import tf
    from larq_l1inf.robust import GMRobustModel

    net = getattr(model, "student", model)
    if isinstance(net, GMRobustModel):
        net = net.model
    nested = [layer for layer in getattr(net, "layers", []) if isinstance(layer, tf.keras.Model)]
    if len(nested) == 1 and any(type(l).__name__ == "InputNoise" for l in net.layers):
        net = nested[0]
    digest = hashlib.sha256()
    for w in net.get_weights():
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()


def batches_fingerprint(data, config):
    """SHA-256 of the first epoch's training batches (inputs and labels, in order)."""
    one_epoch = dataclasses.replace(config, epochs=1)
    dataset, _ = training.train_dataset(data, one_epoch)
    digest = hashlib.sha256()
    for x, y in dataset.as_numpy_iterator():
        digest.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _fingerprint_callback(path):
    from larq_l1inf._keras import tf

    class InitialWeights(tf.keras.callbacks.Callback):
        # Runs before BackupAndRestore restores a resumed run, so it sees the seed's weights.
        def on_train_begin(self, logs=None):
            if not os.path.exists(path):
                write_json({"initial_weights": initial_fingerprint(self.model)}, path)

    return InitialWeights()


def _epoch_seconds_callback(path):
    """Records each epoch's wall seconds in `path` (JSON, epoch -> seconds) as it ends, so a
    resumed run still knows what the epochs before its restart cost; `.earlier_seconds` is
    then the sum over the epochs this process did not train."""
    from larq_l1inf._keras import tf

    class EpochSeconds(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = _read_json(path) if os.path.exists(path) else {}
            self.earlier_seconds = None

        def on_epoch_begin(self, epoch, logs=None):
            if self.earlier_seconds is None:  # the first epoch of this process
                self.earlier_seconds = sum(v for k, v in self.seconds.items() if int(k) < epoch)
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds[str(epoch)] = time.perf_counter() - self.start
            write_json(self.seconds, path)

    return EpochSeconds()


def _accuracies(model, data, epsilons, draws, seed):
    x, y = data.arrays("test")
    clean = training.evaluate_model(model, x, y, epsilon=None, seed=seed).models["keras"]["clean"]
    noisy = []
    for lo, hi in epsilons:
        # Evaluation noise seeded by the run's seed: both arms of a pair see identical draws.
        keras = training.evaluate_model(model, x, y, epsilon=(lo, hi), draws=draws, seed=seed,
                                        clean=False).models["keras"]
        noisy.append({"epsilon": [lo, hi], "draws": list(keras["noisy"]),
                      "mean": float(np.mean(keras["noisy"]))})
    return float(clean), noisy


def extra_measures(model, data, evaluate, seed):
    """The `Recipe.evaluate` measures of a trained model on the test split, as a dict."""
    x, y = data.arrays("test")
    out = {}
    if evaluate.get("pgd_epsilon"):
        epsilon, iterations = float(evaluate["pgd_epsilon"]), int(evaluate.get("pgd_iterations", 20))
        result = training.evaluate_model(model, x, y, epsilon=None, pgd_epsilon=epsilon,
                                         pgd_iterations=iterations, seed=seed, clean=False)
        out["pgd"] = {"epsilon": epsilon, "iterations": iterations,
                      "accuracy": float(result.models["keras"]["pgd"])}
    if evaluate.get("verified"):
        from larq_l1inf import crown, ibp

        # IBP's bound, and CROWN-IBP's (never looser through the float and linear layers).
        out["verified"] = [{"epsilon": float(e), "accuracy": float(ibp.verified_accuracy(model, x, y, e))}
                           for e in evaluate["verified"]]
        out["verified_crown"] = [
            {"epsilon": float(e), "accuracy": float(crown.verified_accuracy(model, x, y, e))}
            for e in evaluate["verified"]]
    if evaluate.get("bops"):
        from larq_l1inf.bops import bops

        report = bops(model)
        out["bops"] = {k: report[k] for k in ("total_bops", "binary_macs", "total_macs")}
    return out


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _same_run(record, config, epsilons, evaluate=None):
    return (not training.config_differences(record["config"], config.to_dict())
            and record["epsilons"] == to_json_value(epsilons)
            and (record.get("evaluate") or {}) == to_json_value(evaluate or {}))


def find_finished_run(root, config, epsilons, evaluate=None):
    """A finished run under `root` (`root/RECIPE/ARM/seed_S/result.json`) of exactly this config
    (seed included) and noise ladder, or None.

    Training and evaluation are deterministic given the config and seed (the same arm in two
    recipes gives identical numbers), so a run one recipe finished is read back by another
    instead of being trained again.
    """
    for path in sorted(glob.glob(os.path.join(glob.escape(root), "*", "*", "seed_*",
                                              "result.json"))):
        try:
            record = _read_json(path)
        except (OSError, ValueError):
            continue
        if record.get("seed") == config.seed and _same_run(record, config, epsilons, evaluate):
            return path
    return None


def copy_finished_run(source, run_dir, root):
    """Copy the finished run `source` (a result.json `find_finished_run` found under `root`) to
    `run_dir`, naming its source in `reused_from`.

    # Returns
    The copied record.
    """
    record = _read_json(source)
    record["reused_from"] = os.path.relpath(os.path.dirname(source), root)
    write_json(record, os.path.join(run_dir, "result.json"))
    log.warning("read back the identical finished run %s", record["reused_from"])
    return record


def run_arm(config, data, run_dir, epsilons, verbose=0, evaluate=None):
    """Train and evaluate one (arm, seed), or read it back when its result.json exists.

    # Returns
    The run's record (also in `run_dir/result.json`).

    # Raises
    training.ConfigMismatchError: `run_dir` holds a run of another config.
    """
    path = os.path.join(run_dir, "result.json")
    if os.path.exists(path):
        record = _read_json(path)
        if not _same_run(record, config, epsilons, evaluate):
            differences = training.config_differences(record["config"], config.to_dict())
            raise training.ConfigMismatchError(
                f"{run_dir} holds a run of another config "
                f"({differences or 'noise ranges or measures'}); choose another --out or "
                "delete that run.")
        return record
    os.makedirs(run_dir, exist_ok=True)
    fingerprint_path = os.path.join(run_dir, "initial_weights.json")
    # A resumed run's training time adds what its earlier processes spent on the epochs it
    # kept (a cut epoch's partial work is lost, and not counted).
    timer = _epoch_seconds_callback(os.path.join(run_dir, "epoch_seconds.json"))
    start = time.perf_counter()
    model, _ = training.fit(config, data, out_dir=os.path.join(run_dir, "fit"), verbose=verbose,
                            callbacks=[_fingerprint_callback(fingerprint_path), timer])
    earlier = timer.earlier_seconds  # None: every epoch had ended before this process
    train_seconds = time.perf_counter() - start + (
        sum(timer.seconds.values()) if earlier is None else earlier)
    start = time.perf_counter()
    clean, noisy = _accuracies(model, data, epsilons, config.draws, config.seed)
    extra = extra_measures(model, data, evaluate or {}, config.seed)
    initial = _read_json(fingerprint_path)["initial_weights"]
    history = training.read_history(os.path.join(run_dir, "fit", "history.csv"))
    record = {
        "config": config.to_dict(), "seed": config.seed, "epsilons": [list(e) for e in epsilons],
        "clean": clean, "noisy": noisy, **extra, "evaluate": evaluate or {},
        "initial_weights": initial,
        "batches": batches_fingerprint(data, config),
        "final_loss": history.get("loss", [None])[-1],
        "final_train_accuracy": history.get("accuracy", [None])[-1],
        "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - start,
        "train_images_per_second": data.splits["train"] * config.epochs / max(train_seconds, 1e-9),
    }
    write_json(record, path)
    return record


def versions():
    """Versions of the software that produced a result."""
    import larq

    import larq_l1inf
    from larq_l1inf._keras import tf

    return {"larq_l1inf": larq_l1inf.__version__, "larq": larq.__version__,
            "tensorflow": tf.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count()}


def recipe_configs(recipe, quick=False, overrides=None):
    """`({arm: TrainConfig without seed}, scale)` of a recipe, with user overrides applied.

    Overrides: `TrainConfig` fields, and `train_size`, `test_size`, `seeds` for the scale.
    """
    scale = dict((recipe.quick if quick else recipe.full) or {})
    scale.setdefault("seeds", recipe.seeds)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in ("train_size", "test_size", "seeds", "epochs", "width", "draws"):
        if key in overrides:
            scale[key] = overrides.pop(key)
    data_options = dict(overrides.pop("data_options", {}) or {})
    for key in ("train_size", "test_size"):
        if scale.get(key) is not None:
            data_options[key] = scale[key]
    configs = {}
    for arm, settings in recipe.arms.items():
        values = {**recipe.base, **settings, **overrides,
                  "epochs": scale["epochs"], "width": scale["width"], "draws": scale["draws"],
                  "data_options": data_options, "convert": False}
        configs[arm] = training.TrainConfig.from_dict(values).validate()
    return configs, scale


def _ladder(dataset):
    return EPSILON_LADDERS["mnist1d" if dataset == "mnist1d" else "pixels"]


def _summary(values):
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


def run_recipe(name, *, quick=False, out_dir="reproduce_runs", results_dir="docs/results",
               overrides=None, arms=None, verbose=0):
    """Run (or continue) one recipe and write its JSON.

    # Arguments
    name: a `RECIPES` name.
    quick: the recipe's minutes-long scale (2 seeds, small training set, 2-3 epochs).
    out_dir: root of the run directories (`OUT/NAME/ARM/seed_S`).
    results_dir: where `NAME.json` (`NAME_quick.json` with `quick`) is written.
    overrides: `TrainConfig` fields (`backbone`, `dataset`, `lr`, ...) and `train_size`,
        `test_size`, `seeds`, `epochs`, `width`, `draws` for every arm.
    arms: run only these arms (None: all); comparisons need both of their arms.
    verbose: Keras verbosity of the training.

    # Returns
    The result dict (as written).

    # Raises
    ValueError: for an unknown recipe or arm, or fewer than 2 seeds.
    """
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; choose one of {sorted(RECIPES)}.")
    recipe = RECIPES[name]
    configs, scale = recipe_configs(recipe, quick, overrides)
    if arms is not None:
        unknown = sorted(set(arms) - set(configs))
        if unknown:
            raise ValueError(f"Unknown arm(s) {unknown} of {name}; its arms are {list(configs)}.")
        configs = {a: c for a, c in configs.items() if a in arms}
    seeds = list(range(int(scale["seeds"])))
    if len(seeds) < 2:
        raise ValueError("A paired comparison needs at least 2 seeds (--seeds 2 or more).")
    if not quick and len(seeds) < 3:
        log.warning("%d seeds: the protocol asks for >= 3 (5 for the headline tables).", len(seeds))
    dataset = next(iter(configs.values())).dataset
    epsilons = _ladder(dataset)
    root = os.path.join(out_dir, name + ("_quick" if quick else ""))
    runs = {arm: [] for arm in configs}
    start = time.perf_counter()
    for seed in seeds:
        data = None  # one load per seed: the seed fixes the subsample for every arm
        for arm, config in configs.items():
            config = dataclasses.replace(config, seed=seed)
            run_dir = os.path.join(root, arm.replace("/", "_"), f"seed_{seed}")
            log.warning("%s: %s seed %d", name, arm, seed)
            finished = os.path.exists(os.path.join(run_dir, "result.json"))
            # Scanned once: a finished identical run of another recipe is copied, not trained.
            source = (None if finished
                      else find_finished_run(out_dir, config, epsilons, recipe.evaluate))
            if source is not None:
                runs[arm].append(copy_finished_run(source, run_dir, out_dir))
                continue
            if data is None and not finished:
                data = training.load_data(config)
            runs[arm].append(run_arm(config, data, run_dir, epsilons, verbose=verbose,
                                     evaluate=recipe.evaluate))
    result = summarize(recipe, configs, runs, epsilons, scale, quick)
    result["wall_seconds"] = time.perf_counter() - start
    # The compute behind the numbers, also when this call only read finished runs back.
    result["run_seconds"] = sum(r.get("train_seconds", 0) + r.get("eval_seconds", 0)
                                for records in runs.values() for r in records)
    os.makedirs(results_dir, exist_ok=True)
    write_json(result, os.path.join(results_dir, name + ("_quick" if quick else "") + ".json"))
    return result


def summarize(recipe, configs, runs, epsilons, scale, quick):
    """The recipe's JSON: settings, per-run numbers, per-arm mean +- std, paired comparisons."""
    ladder = "mnist1d" if next(iter(configs.values())).dataset == "mnist1d" else "pixels"
    arms = {}
    for arm, records in runs.items():
        arms[arm] = {
            "config": {k: v for k, v in configs[arm].to_dict().items() if k != "seed"},
            "runs": records,
            "clean": _summary([r["clean"] for r in records]),
            "noisy": [_summary([r["noisy"][i]["mean"] for r in records])
                      for i in range(len(epsilons))],
        }
        if "pgd" in records[0]:
            arms[arm]["pgd"] = _summary([r["pgd"]["accuracy"] for r in records])
        for key in ("verified", "verified_crown"):
            if key in records[0]:
                arms[arm][key] = [
                    {"epsilon": v["epsilon"],
                     **_summary([r[key][i]["accuracy"] for r in records])}
                    for i, v in enumerate(records[0][key])]
        if "bops" in records[0]:
            arms[arm]["bops"] = records[0]["bops"]  # a property of the architecture
    comparisons, pairing_ok = [], True
    for treatment, reference in recipe.comparisons:
        if treatment not in runs or reference not in runs:
            continue
        a, b = runs[treatment], runs[reference]
        paired = all((x["initial_weights"] == y["initial_weights"]
                      or not recipe.same_architecture) and x["batches"] == y["batches"]
                     for x, y in zip(a, b))
        if not paired:
            pairing_ok = False
            log.warning("%s vs %s: initial weights or batches differ within a seed; the pair "
                        "is not paired.", treatment, reference)
        comparisons.append({
            "treatment": treatment, "reference": reference, "paired": paired,
            "clean": paired_difference([r["clean"] for r in a], [r["clean"] for r in b]),
            "noisy": [paired_difference([r["noisy"][i]["mean"] for r in a],
                                        [r["noisy"][i]["mean"] for r in b])
                      for i in range(len(epsilons))],
            "hard_range": hard_range(epsilons, arms[reference]["clean"]["mean"],
                                     [v["mean"] for v in arms[reference]["noisy"]]),
        })
        if "pgd" in a[0] and "pgd" in b[0]:
            comparisons[-1]["pgd"] = paired_difference([r["pgd"]["accuracy"] for r in a],
                                                       [r["pgd"]["accuracy"] for r in b])
        for key in ("verified", "verified_crown"):
            if key in a[0] and key in b[0]:
                comparisons[-1][key] = [
                    {"epsilon": v["epsilon"],
                     **paired_difference([r[key][i]["accuracy"] for r in a],
                                         [r[key][i]["accuracy"] for r in b])}
                    for i, v in enumerate(a[0][key])]
    return {
        "recipe": recipe.name, "title": recipe.title, "claim": recipe.claim,
        "direction": recipe.direction, "quick": quick, "scale": scale,
        "epsilons": [list(e) for e in epsilons], "paper_ranges": PAPER_RANGES[ladder],
        "seeds": len(next(iter(runs.values()))), "paired_check": pairing_ok,
        "versions": versions(), "arms": arms, "comparisons": comparisons,
    }


# --------------------------------------------------------------------------- CLI


def register_reproduce(subparsers):
    """`larq-l1inf reproduce NAME [--quick]`: the paired re-measurement of a paper table."""
    from larq_l1inf import cli

    p = subparsers.add_parser(
        "reproduce", help="re-measure a table of the paper with paired seeds",
        description="Train every arm of a recipe for several paired seeds (same data, initial "
                    "weights, batches and noise per seed), evaluate clean and noisy accuracy, "
                    "and write the paired differences with 95%% t-intervals to "
                    "RESULTS/NAME.json. Finished runs are read back; rerun to continue. "
                    "Recipes: " + ", ".join(RECIPES) + ".")
    p.add_argument("name", choices=sorted(RECIPES) + ["all"], metavar="NAME",
                   help="a recipe (" + ", ".join(RECIPES) + ") or all")
    p.add_argument("--quick", action="store_true",
                   help="minutes: 2 seeds, 2,000 training images, 2-3 epochs")
    p.add_argument("--out", default="reproduce_runs", help="root of the run directories")
    p.add_argument("--results", default=os.path.join("docs", "results"),
                   help="directory of the recipe JSON files")
    p.add_argument("--seeds", type=cli.positive_int, help="paired seeds (default 3, or 5)")
    p.add_argument("--epochs", type=cli.positive_int)
    p.add_argument("--width", type=cli.positive_int)
    p.add_argument("--train-size", type=cli.positive_int, help="training images (default: "
                   "the recipe's; give a number >= the split for all)")
    p.add_argument("--test-size", type=cli.positive_int)
    p.add_argument("--draws", type=cli.positive_int, help="noise draws per range")
    p.add_argument("--backbone", help="e.g. resnet18 for the paper's scale")
    p.add_argument("--dataset", help="e.g. cifar10 (TFDS) for the paper's scale")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=cli.positive_int)
    p.add_argument("--lr", type=cli.positive_float)
    p.add_argument("--distribute", choices=["none", "mirrored"])
    p.add_argument("--arms", nargs="+", help="run only these arms")
    p.set_defaults(func=_reproduce_command)


def _reproduce_command(args):
    overrides = {"seeds": args.seeds, "epochs": args.epochs, "width": args.width,
                 "train_size": args.train_size, "test_size": args.test_size,
                 "draws": args.draws, "backbone": args.backbone, "dataset": args.dataset,
                 "data_dir": args.data_dir, "batch_size": args.batch_size, "lr": args.lr,
                 "distribute": args.distribute}
    names = list(RECIPES) if args.name == "all" else [args.name]
    verbose = 0 if getattr(args, "quiet", False) else 2
    for name in names:
        result = run_recipe(name, quick=args.quick, out_dir=args.out, results_dir=args.results,
                            overrides=overrides, arms=args.arms, verbose=verbose)
        print(format_result(result))
    return 0


def format_result(result):
    """A plain-text summary of a recipe's comparisons (noisy accuracy at each range, points)."""
    lines = [f"{result['title']} ({result['seeds']} paired seeds, "
             f"{result.get('run_seconds', result.get('wall_seconds', 0)):.0f} s of training and "
             "evaluation)"]
    for c in result["comparisons"]:
        parts = [f"clean {100 * c['clean']['mean']:+.2f} [{100 * c['clean']['lo']:+.2f}, "
                 f"{100 * c['clean']['hi']:+.2f}]"]
        for eps, d in zip(result["epsilons"], c["noisy"]):
            parts.append(f"[{eps[0]:.3g},{eps[1]:.3g}] {100 * d['mean']:+.2f} "
                         f"[{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]")
        lines.append(f"  {c['treatment']} - {c['reference']}: " + "; ".join(parts))
    return "\n".join(lines)

"""The one training recipe: build, compile, fit (resumable, distributable), save, convert, evaluate.

`larq-l1inf train`, `larq-l1inf demo`, `experiments/choose_default.py` and
`examples/sweep_digits.py` all train through `fit`; `train` adds the run directory:

    RUN_DIR/
      config.yaml            every setting of the run (`TrainConfig`), reloadable with --config
      status.json            "running" | "failed" (with the error) | "finished"
      checkpoints/           the weights after every epoch (epoch_001, epoch_002, ...)
      backup/                `tf.keras.callbacks.BackupAndRestore`: weights, optimizer, epoch
      logs/                  TensorBoard (with `L1InfCallback`'s scalars)
      history.csv            one row per epoch (`CSVLogger`)
      model/                 the trained model (SavedModel; loads without custom_objects)
      model.tflite           its LCE flatbuffer (`larq_l1inf.deploy.convert`)
      evaluation.json        clean, noisy (k draws) and optional PGD accuracy of the Keras
                             model and the flatbuffer on identical inputs
      training_curves.png, weight_histograms.png, feature_maps.png   (`larq_l1inf.plots`)

The optimizer is the paper's: SGD with momentum 0.9 and a cosine-decayed learning rate
(0.1 by default). A run is reproducible from its seed: the seed fixes the initial weights
and the batch order, and epoch `e` is shuffled with a seed derived from `(seed, e)`, so a
run with and without the penalty sees identical weights and batches (paired runs), and a
resumed run sees the batches an uninterrupted run would have seen.

!!! example
    ```python
    from larq_l1inf import training
    config = training.TrainConfig(backbone="demo", dataset="digits", width=4, epochs=1,
                                  regularizer="l1inf", data_options={"size": 8})
    model, history = training.fit(config, verbose=0)
    ```
"""

import contextlib
import copy
import dataclasses
import functools
import inspect
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from larq_l1inf._keras import tf
from larq_l1inf.utils import to_json_value, write_atomic, write_json

log = logging.getLogger(__name__)

__all__ = [
    "ArrayData",
    "REGULARIZERS",
    "RUNTIME_KEYS",
    "ConfigMismatchError",
    "EpochTensorBoard",
    "RunResult",
    "TrainConfig",
    "build_model",
    "config_differences",
    "evaluate_model",
    "fit",
    "load_config",
    "load_data",
    "make_regularizer",
    "make_strategy",
    "read_history",
    "save_config",
    "strategy_free_copy",
    "train",
    "train_dataset",
    "worker_dir",
]

#: `--regularizer` name -> what it means (the kernel penalties live in `larq_l1inf.regularizers`
#: and `larq_l1inf.baselines`; "lcr" wraps the model in `larq_l1inf.lcr.LCRModel`).
REGULARIZERS = ("none", "l1inf", "l1", "spectral", "absum", "lcr")

#: Settings that may differ between a run and its resumption: they change how, not what, is
#: trained.
RUNTIME_KEYS = ("out_dir", "verbose", "distribute")
#: `TrainConfig.robust`: no robust training, or GM training with this robust term.
ROBUST = ("none", "ibp", "crown-ibp", "pgd", "noise")


class ConfigMismatchError(ValueError):
    """`--resume DIR` was given settings that differ from the run's saved config."""


# --------------------------------------------------------------------------- config


@dataclasses.dataclass
class TrainConfig:
    """Every setting of one training run, as plain values (written to the run's config.yaml).

    !!! example
        ```python
        from larq_l1inf.training import TrainConfig
        config = TrainConfig(backbone="resnet20", variant="irnet", regularizer="l1inf",
                             dataset="fashion_mnist", epochs=30).validate()
        paired = TrainConfig(**{**config.to_dict(), "regularizer": "none"})
        ```

    # Arguments
    variant: a `larq_l1inf.variants.VARIANTS` name (`bnn`, `xnor`, `irnet`, ...).
    variant_options: the variant's options, e.g. `{"a_bits": 2}` for DoReFa.
    backbone: a `larq_l1inf.backbones.BACKBONES` name (`resnet20`, `demo`, `conv1d`, ...).
    width: channels of the backbone's first stage; None for the builder's default.
    dataset: a dataset name of `larq_l1inf.data.load`.
    data_dir: where the dataset's files are (None: the loader's default).
    data_options: further arguments of the loader (`train_size`, `test_size`, ...).
    augment: the dataset's training augmentation (e.g. random crop + flip for CIFAR).
    regularizer: one of `REGULARIZERS`.
    delta, reduction, normalize, alpha: the penalty's options (None: its class default).
        For `lcr`, `delta` is LCR's `lam` (default: the official `8 / (batch * 1e4)`).
    lcr_teacher: LCR's full-precision teacher (the same architecture without quantizers):
        `"train"` trains it first with the same data, epochs and optimizer (kept in
        `OUT/teacher/`, so a resumed run does not train it again); a path loads its weights
        (a saved Keras model or a weights file); None keeps it untrained, with a warning.
    warmup_epochs: epochs of linear warm-up of the penalty (`L1InfCallback`).
    log_bounds: also log the data-free Theorem 4.2 bound terms every epoch (`L1InfCallback(
        bounds=True)`; seconds per epoch on a ResNet-20, so off by default).
    noise_augment: `[noise, lo, hi]`: train with `larq_l1inf.noise.InputNoise(noise, (lo, hi))`
        in front of the model (training only; not part of the saved model).
    epochs, batch_size: training length and global batch size.
    lr, momentum, lr_schedule: SGD's initial learning rate, momentum and `"cosine"` decay
        to 0 over the run, or `"constant"`.
    seed: initial weights, batch order, noise augmentation and evaluation noise.
    distribute: `"none"` or `"mirrored"` (`MirroredStrategy` over every GPU, or every
        logical CPU when there is no GPU; `MultiWorkerMirroredStrategy` when TF_CONFIG is set).
    jit_compile: compile the train step with XLA.
    epsilon: `(lo, hi)` of the evaluation's Algorithm 1 noise; None for the dataset's range.
    draws: noise draws of the evaluation.
    pgd_epsilon, pgd_iterations: PGD of the evaluation (None: no PGD).
    convert: convert the final model with LCE and evaluate the flatbuffer too.
    robust: `"none"`, or train with GM robust training (`larq_l1inf.robust.GMRobustModel`)
        whose robust term is `"ibp"`, `"crown-ibp"`, `"pgd"` or `"noise"`.
    robust_epsilon: GM's final perturbation size: a number, or `[lo, hi]` (`"noise"` only).
    gm_n, gm_weights, gm_kappa: GM's robustness size N, weighting `c_i` and final kappa.
    gm_warmup_epochs, gm_rampup_epochs: GM's clean-only warm-up and epsilon/kappa ramp-up,
        in epochs (times the steps per epoch give `GMRobustModel`'s step counts).
    gm_final_beta: `"crown-ibp"` only: the weight of the CROWN-IBP bound against the IBP bound
        (eq. 17) at the end of the ramp-up, in [0, 1] (default 1, the paper's).
    """

    variant: str = "bnn"
    variant_options: dict = dataclasses.field(default_factory=dict)
    backbone: str = "resnet20"
    width: int = None
    dataset: str = "digits"
    data_dir: str = None
    data_options: dict = dataclasses.field(default_factory=dict)
    augment: bool = False
    regularizer: str = "none"
    delta: float = None
    lcr_teacher: str = None
    reduction: str = None
    normalize: bool = None
    alpha: str = None
    warmup_epochs: int = 0
    log_bounds: bool = False
    noise_augment: list = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    seed: int = 0
    distribute: str = "none"
    jit_compile: bool = False
    epsilon: list = None
    draws: int = 5
    pgd_epsilon: float = None
    pgd_iterations: int = 20
    convert: bool = True
    robust: str = "none"
    robust_epsilon: list = None
    gm_n: int = 5
    gm_weights: str = "1/sqrt"
    gm_kappa: float = 0.5
    gm_warmup_epochs: int = 0
    gm_rampup_epochs: int = 0
    gm_final_beta: float = 1.0

    @classmethod
    def from_dict(cls, values):
        """A config from a dict, refusing unknown keys (a typo would otherwise be ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"Unknown setting(s) {unknown} in the config; the settings are {sorted(names)}."
            )
        return cls(**values)

    def to_dict(self):
        """The settings as plain JSON/YAML values (tuples become lists); TypeError or
        ValueError names a setting JSON cannot hold (an object, a NaN)."""
        return to_json_value(dataclasses.asdict(self), "TrainConfig")

    def validate(self):
        """Check every setting; raise ValueError saying what to use instead. Returns self."""
        from larq_l1inf.backbones import BACKBONES
        from larq_l1inf.variants import VARIANTS

        if self.variant not in VARIANTS:
            raise ValueError(f"Unknown variant {self.variant!r}; choose one of {sorted(VARIANTS)}.")
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"Unknown backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}."
            )
        names = dataset_names()
        if self.dataset not in names:
            raise ValueError(f"Unknown dataset {self.dataset!r}; choose one of {sorted(names)}.")
        if self.regularizer not in REGULARIZERS:
            raise ValueError(
                f"Unknown regularizer {self.regularizer!r}; choose one of {list(REGULARIZERS)}."
            )
        for name in ("epochs", "batch_size", "draws", "pgd_iterations"):
            _check_int(getattr(self, name), name, 1)
        _check_int(self.warmup_epochs, "warmup_epochs", 0)
        _check_int(self.seed, "seed", 0)
        if self.width is not None:
            _check_int(self.width, "width", 1)
        if not _positive(self.lr):
            raise ValueError(f"`lr` must be a number > 0, got {self.lr!r}.")
        if not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1), got {self.momentum!r}.")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"`lr_schedule` must be 'cosine' or 'constant', got {self.lr_schedule!r}.")
        if self.distribute not in ("none", "mirrored"):
            raise ValueError(f"`distribute` must be 'none' or 'mirrored', got {self.distribute!r}.")
        if self.delta is not None and (not isinstance(self.delta, (int, float)) or self.delta < 0):
            raise ValueError(f"`delta` must be a number >= 0, got {self.delta!r}.")
        if self.regularizer in ("none", "lcr") and any(
            v is not None for v in (self.reduction, self.normalize, self.alpha)
        ):
            raise ValueError(
                f"--reduction/--normalize/--alpha are options of a kernel penalty; the "
                f"regularizer is {self.regularizer!r}. Drop them or choose l1inf, l1, spectral "
                "or absum."
            )
        if self.regularizer == "none" and (self.delta is not None or self.warmup_epochs):
            raise ValueError(
                "--delta/--warmup-epochs need a penalty: add --regularizer l1inf (or l1, "
                "spectral, absum, lcr)."
            )
        if self.lcr_teacher is not None and self.regularizer != "lcr":
            raise ValueError("--lcr-teacher is an option of --regularizer lcr; drop it or add "
                             "--regularizer lcr.")
        if self.lcr_teacher not in (None, "train") and not os.path.exists(str(self.lcr_teacher)):
            raise ValueError(f"--lcr-teacher {self.lcr_teacher!r}: no such file or directory; give "
                             "'train' or the path of the full-precision twin's saved weights.")
        if self.regularizer == "lcr" and self.noise_augment is not None:
            raise ValueError("--regularizer lcr cannot be combined with --noise-augment yet.")
        if self.noise_augment is not None:
            if len(self.noise_augment) != 3:
                raise ValueError(
                    f"`noise_augment` must be [noise, lo, hi], got {self.noise_augment!r}."
                )
            noise, lo, hi = self.noise_augment
            from larq_l1inf import noise as noise_lib

            noise_lib.get(noise)  # raises for an unknown noise, listing the known ones
            if not 0 <= float(lo) <= float(hi):
                raise ValueError(f"--noise-augment needs 0 <= LO <= HI, got {lo} {hi}.")
        if self.epsilon is not None:
            lo, hi = _pair(self.epsilon, "epsilon")
            if not 0 <= lo <= hi:
                raise ValueError(f"--epsilon needs 0 <= LO <= HI, got {lo} {hi}.")
        if self.pgd_epsilon is not None and not _positive(self.pgd_epsilon):
            raise ValueError(f"`pgd_epsilon` must be > 0, got {self.pgd_epsilon!r}.")
        self._validate_robust()
        return self

    def _validate_robust(self):
        if self.robust not in ROBUST:
            raise ValueError(f"`robust` must be one of {list(ROBUST)}, got {self.robust!r}.")
        gm_set = [k for k in ("robust_epsilon", "gm_n", "gm_weights", "gm_kappa",
                              "gm_warmup_epochs", "gm_rampup_epochs", "gm_final_beta")
                  if getattr(self, k) != getattr(TrainConfig, k, None)]
        if self.robust == "none":
            if gm_set:
                raise ValueError(
                    f"{gm_set} are settings of GM robust training; add --robust ibp, crown-ibp, "
                    "pgd or noise (or drop them)."
                )
            return
        if self.robust_epsilon is None:
            raise ValueError(f"--robust {self.robust} needs --robust-epsilon E (or LO HI for noise).")
        values = self.robust_epsilon if isinstance(self.robust_epsilon, (list, tuple)) \
            else [self.robust_epsilon]
        if len(values) not in (1, 2) or not all(_positive(v) for v in values):
            raise ValueError(f"`robust_epsilon` must be one or two numbers > 0, got {values!r}.")
        if len(values) == 2 and self.robust != "noise":
            raise ValueError("--robust-epsilon LO HI (a range) is for --robust noise only; "
                             f"give one radius for --robust {self.robust}.")
        if self.regularizer == "lcr" or self.noise_augment is not None:
            raise ValueError("--robust cannot be combined with --regularizer lcr or "
                             "--noise-augment yet.")
        _check_int(self.gm_n, "gm_n", 1)
        _check_int(self.gm_warmup_epochs, "gm_warmup_epochs", 0)
        _check_int(self.gm_rampup_epochs, "gm_rampup_epochs", 0)
        if not isinstance(self.gm_kappa, (int, float)) or not 0 < self.gm_kappa < 1:
            raise ValueError(f"`gm_kappa` must be in (0, 1), got {self.gm_kappa!r}.")
        beta = self.gm_final_beta
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
            raise ValueError(f"`gm_final_beta` must be in [0, 1] (1: CROWN-IBP only, the "
                             f"paper's; 0: IBP at the end of the ramp-up), got {beta!r}.")
        if beta != 1 and self.robust != "crown-ibp":
            raise ValueError(f"--gm-final-beta weighs the CROWN-IBP bound of --robust crown-ibp; "
                             f"drop it for --robust {self.robust}.")


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def _positive(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 \
        and math.isfinite(value)


def _pair(value, name):
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if len(value) != 2:
        raise ValueError(f"`{name}` must be a number or (lo, hi), got {value!r}.")
    return float(value[0]), float(value[1])


def dataset_names():
    """The dataset names `larq_l1inf.data.load` knows."""
    from larq_l1inf import data

    return tuple(data.DATASETS)


def load_config(path):
    """A `TrainConfig` dict from a JSON or YAML file (by extension; YAML otherwise)."""
    with open(path) as f:
        text = f.read()
    if str(path).endswith(".json"):
        values = json.loads(text)
    else:
        import yaml

        values = yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(values).__name__}.")
    return values


def save_config(config, path):
    """Write a config as YAML (or JSON for a .json path), atomically."""
    values = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    if str(path).endswith(".json"):
        text = json.dumps(values, indent=2)
    else:
        import yaml

        text = yaml.safe_dump(values, sort_keys=False)
    write_atomic(path, text)


def config_differences(saved, given):
    """`{key: (saved, given)}` for every non-runtime setting of `given` that differs."""
    # A setting missing from an older config.yaml has its default value.
    saved = {**TrainConfig().to_dict(), **saved}
    out = {}
    for key, value in given.items():
        if key in RUNTIME_KEYS:
            continue
        if to_json_value(saved.get(key), key) != to_json_value(value, key):
            out[key] = (saved.get(key), value)
    return out


# --------------------------------------------------------------------------- data


class ArrayData:
    """In-memory arrays behind the interface of `larq_l1inf.data.Data` (train on your own arrays).

    !!! example
        ```python
        import numpy as np
        from larq_l1inf.training import ArrayData
        rng = np.random.default_rng(0)
        data = ArrayData((rng.random((64, 8, 8, 1)), rng.integers(0, 3, 64)),
                         (rng.random((16, 8, 8, 1)), rng.integers(0, 3, 16)),
                         epsilon=(0.05, 0.1), num_classes=3)
        ```

    # Arguments
    train, test: `(x, y)` pairs: float inputs in the model's units (channels last) and int labels.
    name: a name for logs.
    epsilon: `(lo, hi)` default Algorithm 1 noise range for the evaluation.
    num_classes: defaults to `max(y) + 1` over both splits.
    class_names: defaults to the class indices as strings.
    config: plain values that describe the data (written into a run's config).
    """

    def __init__(self, train, test, name="arrays", epsilon=None, num_classes=None,
                 class_names=None, config=None):
        self._splits = {}
        for split, (x, y) in (("train", train), ("test", test)):
            x = np.asarray(x, dtype=np.float32)
            y = np.asarray(y).astype(np.int64).reshape(-1)
            if len(x) != len(y) or len(x) == 0:
                raise ValueError(
                    f"The {split} split has {len(x)} inputs and {len(y)} labels; give a "
                    "non-empty (x, y) of equal length."
                )
            self._splits[split] = (x, y)
        self.name = name
        self.input_shape = tuple(self._splits["train"][0].shape[1:])
        labels = np.concatenate([y for _, y in self._splits.values()])
        self.num_classes = int(num_classes or labels.max() + 1)
        self.class_names = list(class_names or [str(i) for i in range(self.num_classes)])
        self.epsilon = None if epsilon is None else tuple(float(v) for v in epsilon)
        self.splits = {split: len(x) for split, (x, _) in self._splits.items()}
        self.config = dict(config or {"name": name})

    def arrays(self, split):
        if split not in self._splits:
            raise ValueError(f"No split {split!r}; the splits are {sorted(self._splits)}.")
        return self._splits[split]

    def dataset(self, split, batch_size, *, shuffle=False, seed=0, augment=False,
                drop_remainder=False):
        x, y = self.arrays(split)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=False)
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def load_data(config):
    """The dataset of a config: `larq_l1inf.data.load(dataset, data_dir, seed, **data_options)`.

    # Raises
    ValueError, TypeError, `larq_l1inf.data.DatasetUnavailableError`: as `data.load`.
    """
    from larq_l1inf import data

    _multi_worker_strategy_of(config)  # loading may run the first TensorFlow op
    return data.load(config.dataset, data_dir=config.data_dir, seed=config.seed,
                     **dict(config.data_options))


def epoch_seed(seed, epoch):
    """The shuffle seed of one epoch: a function of the run's seed and the epoch only."""
    return int(seed) * 1_000_003 + int(epoch)


def train_dataset(data, config, initial_epoch=0):
    """The training batches of epochs `initial_epoch .. epochs - 1`, one epoch after another.

    Epoch `e` is `data.dataset("train", shuffle=True, seed=epoch_seed(seed, e))`, so the order
    of every epoch depends only on the seed and the epoch, never on how many epochs this
    process has run: a resumed run sees the same batches as an uninterrupted one.

    # Returns
    `(dataset, steps_per_epoch)`.
    """
    n = data.splits["train"]
    steps = math.ceil(n / config.batch_size)
    parts = [
        data.dataset("train", config.batch_size, shuffle=True, seed=epoch_seed(config.seed, e),
                     augment=config.augment)
        for e in range(initial_epoch, config.epochs)
    ]
    if not parts:  # nothing left to train; fit with initial_epoch == epochs returns at once
        parts = [data.dataset("train", config.batch_size).take(1)]
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    return dataset.prefetch(tf.data.AUTOTUNE), steps


def _iterated_once(dataset):
    """`dataset` for `Model.fit(steps_per_epoch=...)`: endless, so Keras iterates it once.

    Keras makes an iterator before the first epoch and, for a dataset of exactly
    `steps_per_epoch` batches (one epoch left: a one-epoch run, or a resume into the last
    epoch), makes a new one every epoch; a pipeline that reshuffles on every iteration
    (`Data.dataset(shuffle=True)`) then trains on its second order, not the order an
    uninterrupted run sees. An endless dataset is never re-iterated; `fit` stops after
    `epochs * steps_per_epoch` batches, before the repetition.
    """
    return dataset.repeat()


# --------------------------------------------------------------------------- model


def make_regularizer(config):
    """The kernel penalty of a config (None for `none` and `lcr`)."""
    from larq_l1inf import baselines, regularizers

    classes = {
        "l1inf": regularizers.L1InfRegularizer,
        "l1": baselines.L1Regularizer,
        "spectral": baselines.SpectralNormRegularizer,
        "absum": baselines.AbsumRegularizer,
    }
    if config.regularizer not in classes:
        return None
    options = {
        k: getattr(config, k)
        for k in ("delta", "reduction", "normalize", "alpha")
        if getattr(config, k) is not None
    }
    return classes[config.regularizer](**options)


def _normalization(data, builder):
    """The backbone's input normalization: the dataset's standard statistics where the backbone
    knows them, else per-channel mean and std of the training inputs."""
    from larq_l1inf.backbones import NORMALIZATIONS

    if "normalization" not in inspect.signature(builder).parameters:
        return {}
    name = str(getattr(data, "name", ""))
    key = "imagenet" if name.startswith("imagenet") else name
    if key in NORMALIZATIONS:
        return {"normalization": key}
    try:
        x, _ = data.arrays("train")
    except Exception:  # noqa: BLE001 - a split too large for memory: no normalization
        log.warning("No input normalization for %s (training split not in memory).", name)
        return {"normalization": None}
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes, dtype=np.float64)
    # Constant channels (std 0) keep std 1 so the layer stays finite.
    std = np.where(x.std(axis=axes, dtype=np.float64) > 0, x.std(axis=axes, dtype=np.float64), 1.0)
    return {"normalization": (mean.astype(float).tolist(), std.astype(float).tolist())}


def build_model(config, data, kernel_regularizer="auto"):
    """The backbone of a config with its variant and penalty, and the deployable model.

    # Returns
    `(training_model, deploy_model)`: with `noise_augment` the training model puts
    `InputNoise` in front of the deploy model (sharing its weights); otherwise both are the
    same model.
    """
    from larq_l1inf.backbones import BACKBONES

    builder = BACKBONES[config.backbone]
    if kernel_regularizer == "auto":
        kernel_regularizer = make_regularizer(config)
    kwargs = dict(num_classes=data.num_classes, input_shape=tuple(data.input_shape),
                  kernel_regularizer=kernel_regularizer, **_normalization(data, builder))
    if config.width is not None:
        kwargs["width"] = config.width
    model = builder(config.variant, **kwargs, **config.variant_options)
    if config.noise_augment is None:
        return model, model
    from larq_l1inf.noise import InputNoise

    noise, lo, hi = config.noise_augment
    inputs = tf.keras.Input(tuple(data.input_shape))
    x = InputNoise(noise, (float(lo), float(hi)), seed=config.seed, name="input_noise")(inputs)
    return tf.keras.Model(inputs, model(x), name=f"{model.name}_noise_augmented"), model


def full_precision_clone(model):
    """The same architecture (layer names included) with every quantizer removed: LCR's teacher."""
    config = model.get_config()
    for layer in config["layers"]:
        for key in ("input_quantizer", "kernel_quantizer", "depthwise_quantizer"):
            if key in layer["config"]:
                layer["config"][key] = None
        if "kernel_constraint" in layer["config"]:
            layer["config"]["kernel_constraint"] = None
    return tf.keras.Model.from_config(config)


# --------------------------------------------------------------------------- fit


#: The process's `MultiWorkerMirroredStrategy`: TensorFlow configures collective ops once.
_multi_worker_strategy = None


def make_strategy(name):
    """`tf.distribute` strategy for `--distribute`: None for "none".

    "mirrored" is `MirroredStrategy` over the local GPUs (or logical CPUs), or, when
    TF_CONFIG is set, `MultiWorkerMirroredStrategy`, created once per process and reused.

    # Raises
    RuntimeError: TF_CONFIG is set and TensorFlow ran an op before this call.
    """
    global _multi_worker_strategy
    if name == "none":
        if "TF_CONFIG" in os.environ:
            _warn_tf_config_unused()
        return None
    if "TF_CONFIG" in os.environ:
        if _multi_worker_strategy is None:
            try:
                _multi_worker_strategy = tf.distribute.MultiWorkerMirroredStrategy()
            except RuntimeError as error:
                raise RuntimeError(
                    "TF_CONFIG is set, and MultiWorkerMirroredStrategy must be created before "
                    "TensorFlow runs its first op: call larq_l1inf.training.make_strategy("
                    "'mirrored') (or load_data) at the start of the program."
                ) from error
        return _multi_worker_strategy
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    # With no GPU, mirror over the logical CPUs (MirroredStrategy() alone would use CPU:0 only).
    devices = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        log.warning("--distribute mirrored: only one device (%s); training on it.", devices)
    return tf.distribute.MirroredStrategy(devices=devices)


def _multi_worker_strategy_of(config):
    """`make_strategy(config.distribute)` when TF_CONFIG is set, else None: the strategy that
    must exist before TensorFlow's first op and decides which worker writes (see
    `worker_dir`). A local `MirroredStrategy` (one process, which writes everything) is made
    by `fit` alone."""
    return make_strategy(config.distribute) if "TF_CONFIG" in os.environ else None


@functools.lru_cache(maxsize=None)
def _warn_tf_config_unused():
    log.warning("TF_CONFIG is set but --distribute is 'none': every worker trains alone (into "
                "the same --out if given); use --distribute mirrored for multi-worker training.")


@contextlib.contextmanager
def worker_dir(out_dir, strategy):
    """The directory this worker writes the files of `out_dir` to.

    Under `MultiWorkerMirroredStrategy` every worker runs the same code, since saving a
    model or reading a synced variable is a collective op all workers must join, but only
    the chief writes `out_dir`; another worker writes to a temporary directory of its own,
    removed on exit (what Keras's own callbacks do). Without a strategy, with
    `MirroredStrategy` and on the chief it is `out_dir` itself.

    # Arguments
    out_dir: the run directory, or None.
    strategy: the strategy of `make_strategy`, or None.

    # Returns
    A context manager giving the directory (None when `out_dir` is None).
    """
    if out_dir is None or strategy is None or strategy.extended.should_checkpoint:
        yield out_dir
        return
    resolver = strategy.cluster_resolver
    tmp = tempfile.mkdtemp(prefix=f"larq-l1inf-{resolver.task_type}{resolver.task_id}-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _any_worker(strategy, flag):
    """Whether `flag` is true on any worker (with a strategy, a collective all must join).

    Workers that agree before one of them writes take the same branch: a check of a file
    the chief writes next could otherwise see it on a slower worker.
    """
    if strategy is None:
        return bool(flag)
    flags = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(int(bool(flag))))
    return bool(strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None).numpy())


def _optimizer(config, steps_per_epoch):
    lr = config.lr
    if config.lr_schedule == "cosine":
        lr = tf.keras.optimizers.schedules.CosineDecay(
            config.lr, decay_steps=max(config.epochs * steps_per_epoch, 1))
    # SGD with momentum as the paper; Adam rescales the penalty's push (docs/method.md).
    return tf.keras.optimizers.SGD(lr, momentum=config.momentum)


class ResumeSchedules(tf.keras.callbacks.Callback):
    """Puts step-counting schedule callbacks (CycleBNN's) at the restored optimizer step.

    `BackupAndRestore` restores weights, optimizer and epoch; a schedule that counts steps in
    Python would restart at 0. Before the first batch this sets its `step` to the optimizer's
    `iterations`.
    """

    def __init__(self, schedules):
        super().__init__()
        self.schedules = [s for s in schedules if hasattr(s, "step")]
        self._synced = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._synced:
            step = int(self.model.optimizer.iterations.numpy())
            for schedule in self.schedules:
                schedule.step = step
            self._synced = True


class AverageReplicaStatistics(tf.keras.callbacks.Callback):
    """Sets every replica's on-read variables (BatchNorm's moving statistics) to their
    aggregate over replicas at the end of every epoch.

    A checkpoint holds an on-read variable's aggregate (the mean over replicas), and a
    restore gives every replica that value. An uninterrupted run that kept per-replica values
    would average them in another order, and its statistics would differ from a resumed
    run's by float rounding; averaged at every epoch end, as the backup is, both runs
    compute alike. Training uses batch statistics, so this changes no trained weight.
    """

    def on_epoch_end(self, epoch, logs=None):
        strategy = self.model.distribute_strategy
        with strategy.scope():
            on_read = tf.VariableSynchronization.ON_READ
            for variable in self.model.non_trainable_weights:
                if getattr(variable, "synchronization", None) == on_read:
                    variable.assign(variable.read_value())


class EpochTensorBoard(tf.keras.callbacks.TensorBoard):
    """Keras's `TensorBoard` writing epoch scalars only, without its per-batch work.

    At `update_freq="epoch"` Keras's callback still calls `tf.summary.scalar` for every log
    after every batch, inside a record condition that is false: nothing is written, and it
    cost 0.42 ms a step on 2 CPU cores (`benchmarks/train_overhead.py --callbacks-only`;
    0.5% of a ResNet-20 BNN step at batch 64, more on the small models this package
    trains). This callback writes what the parent writes at that frequency, so it refuses
    the options that need the batch hooks.
    """

    #: The settings under which Keras's TensorBoard does nothing after a batch.
    EPOCH_ONLY = {"update_freq": "epoch", "write_graph": False, "profile_batch": 0,
                  "write_steps_per_second": False}

    def __init__(self, log_dir="logs", **kwargs):
        wrong = {k: kwargs[k] for k, v in self.EPOCH_ONLY.items() if kwargs.get(k, v) != v}
        if wrong:
            raise ValueError(f"EpochTensorBoard writes epoch scalars only; {wrong} needs "
                             "the batch hooks: use tf.keras.callbacks.TensorBoard.")
        super().__init__(log_dir, **{**self.EPOCH_ONLY, **kwargs})

    def _implements_train_batch_hooks(self):
        return False

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass


def _backup_epoch(backup_dir):
    """The number of epochs a BackupAndRestore checkpoint holds (0 without one)."""
    path = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
    if path is None:
        return 0
    saved = int(tf.train.load_variable(path, "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    return max(saved + 1, 0)


def _truncate_csv(path, epochs_done):
    """Drop history rows of epochs a resumed run repeats (written after its last backup)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines:
        return
    keep = [lines[0]] + [line for line in lines[1:] if int(line.split(",")[0]) < epochs_done]
    write_atomic(path, "\n".join(keep) + "\n")


def fit_verbosity():
    """Keras's `verbose`: a progress bar on a terminal, one line per epoch in logs and pipes."""
    return 1 if sys.stdout.isatty() else 2


def fit(config, data=None, *, out_dir=None, verbose=None, callbacks=(), build=None):
    """Build, compile and train the model of a config: the one training recipe.

    With `out_dir` the run is resumable: per-epoch checkpoints, `BackupAndRestore`,
    TensorBoard logs and `history.csv` go there, and calling `fit` again with the same
    `out_dir` continues from the last completed epoch (weights, optimizer state, epoch,
    schedules and batch order), ending with the weights of an uninterrupted run.

    Multi-worker (`distribute="mirrored"` with TF_CONFIG set): every worker calls `fit` with
    the same arguments; only the chief writes `out_dir` (see `worker_dir`), which must be a
    directory all workers see, since they all resume from the chief's backup.

    # Arguments
    config: a `TrainConfig` (validated here).
    data: a `larq_l1inf.data.Data` (or `ArrayData`); None loads `config.dataset`.
    out_dir: the run directory, or None for no files.
    verbose: Keras verbosity; None for `fit_verbosity()`.
    callbacks: more Keras callbacks (after the recipe's penalty and schedule callbacks).
    build: optional `(config, data) -> (training_model, deploy_model)` replacing
        `build_model` (e.g. a custom architecture).

    # Returns
    `(deploy_model, history)`: the trained model (without training-only noise layers) and
    the `History` of this call (only the epochs it ran).

    # Raises
    ValueError: for a bad config. FloatingPointError: when the loss became NaN or inf.
    """
    config.validate()
    if data is None:
        data = load_data(config)
    if config.epsilon is None and getattr(data, "epsilon", None) is None:
        log.warning("The dataset %s has no default noise range; set `epsilon`.", data.name)
    verbose = fit_verbosity() if verbose is None else verbose
    strategy = make_strategy(config.distribute)
    with worker_dir(out_dir, strategy) as write_dir:
        return _fit(config, data, strategy, out_dir, write_dir, verbose, callbacks, build)


def _fit(config, data, strategy, out_dir, write_dir, verbose, callbacks, build):
    # Every worker resumes from the chief's backup; each writes its files to `write_dir`.
    initial_epoch = _backup_epoch(os.path.join(out_dir, "backup")) if out_dir else 0
    # Same seed, same initial weights and batches (tf.data's shuffle seeds combine with the
    # global seed): paired runs with and without the penalty start equal.
    tf.keras.utils.set_random_seed(config.seed)
    dataset, steps = train_dataset(data, config, initial_epoch)
    scope = strategy.scope() if strategy is not None else _null_scope()
    with scope:
        model, deploy_model = (build or build_model)(config, data)
        if config.regularizer == "lcr":
            model = _lcr_model(model, config, data, out_dir, verbose, write_dir)
        if config.robust != "none":
            model = gm_model(model, config, steps)
        model.compile(
            optimizer=_optimizer(config, steps),
            # GMRobustModel brings its own cross-entropy (from logits or softmax).
            loss=None if config.robust != "none" else tf.keras.losses.SparseCategoricalCrossentropy(
                from_logits=_outputs_logits(deploy_model)),
            metrics=["accuracy"],
            jit_compile=bool(config.jit_compile),
        )
    from larq_l1inf import L1InfCallback
    from larq_l1inf.regularizers import penalized_layers
    from larq_l1inf.variants import get_variant

    schedules = get_variant(config.variant, **config.variant_options).callbacks(config.epochs, steps)
    recipe = [ResumeSchedules(schedules)]
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        recipe.append(AverageReplicaStatistics())
    if penalized_layers(model):
        # Before TensorBoard, which then logs its scalars; it also attaches product penalties.
        recipe.append(L1InfCallback(warmup_epochs=config.warmup_epochs,
                                    bounds=bool(config.log_bounds)))
    recipe += schedules + list(callbacks) + [tf.keras.callbacks.TerminateOnNaN()]
    if out_dir:
        os.makedirs(write_dir, exist_ok=True)
        csv_path = os.path.join(write_dir, "history.csv")
        _truncate_csv(csv_path, initial_epoch)
        recipe += [
            # Epoch scalars only: the graph write cost seconds at the first batch (profiling
            # and per-batch summaries stay off too); `L1InfCallback`'s scalars are epoch logs.
            EpochTensorBoard(os.path.join(write_dir, "logs")),
            tf.keras.callbacks.CSVLogger(csv_path, append=initial_epoch > 0),
            tf.keras.callbacks.ModelCheckpoint(
                os.path.join(write_dir, "checkpoints", "epoch_{epoch:03d}"),
                save_weights_only=True),
            # Last, so an epoch counts as done only after everything above has been written.
            # `out_dir` on every worker: all restore the chief's backup (Keras sends the
            # other workers' writes to temporary directories).
            tf.keras.callbacks.BackupAndRestore(os.path.join(out_dir, "backup"),
                                                delete_checkpoint=False),
        ]
    if initial_epoch >= config.epochs:
        log.warning("%s: all %d epochs are trained; nothing left to fit.", out_dir, config.epochs)
    elif initial_epoch:
        log.warning("Resuming %s at epoch %d of %d.", out_dir, initial_epoch + 1, config.epochs)
    history = model.fit(_iterated_once(dataset), epochs=config.epochs, steps_per_epoch=steps,
                        initial_epoch=initial_epoch, callbacks=recipe, verbose=verbose)
    losses = history.history.get("loss", [])
    if losses and not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(
            f"The training loss became {losses[-1]} at epoch {initial_epoch + len(losses)}: "
            "training diverged. Lower --lr (or --delta) and run again."
        )
    return deploy_model, history


class _null_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _outputs_logits(model):
    """Whether a model ends in logits (no softmax): the backbones' `logits=True`."""
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") != "softmax"


def gm_model(model, config, steps_per_epoch):
    """`model` wrapped in `larq_l1inf.robust.GMRobustModel` with the config's GM settings;
    warm-up and ramp-up epochs become steps (times `steps_per_epoch`)."""
    from larq_l1inf.robust import GMRobustModel

    epsilon = config.robust_epsilon
    if isinstance(epsilon, (list, tuple)):
        epsilon = float(epsilon[0]) if len(epsilon) == 1 else tuple(float(e) for e in epsilon)
    return GMRobustModel(
        model, epsilon=epsilon, robust=config.robust, robustness_size=config.gm_n,
        weighting=config.gm_weights, kappa=float(config.gm_kappa),
        warmup_steps=config.gm_warmup_epochs * steps_per_epoch,
        rampup_steps=config.gm_rampup_epochs * steps_per_epoch, seed=config.seed,
        final_beta=float(config.gm_final_beta))


def _lcr_model(model, config, data, out_dir=None, verbose=0, write_dir=None):
    from larq_l1inf.lcr import LCRModel

    # Stages found from the graph (lcr.find_stages); delta None is the official lam 8 / (B * 1e4).
    teacher = lcr_teacher(model, config, data, out_dir, verbose, write_dir=write_dir)
    return LCRModel(model, teacher, lam=config.delta)


def lcr_teacher(model, config, data, out_dir=None, verbose=0, *, write_dir=None):
    """LCR's full-precision teacher of `model` as `config.lcr_teacher` asks (see `TrainConfig`).

    A trained teacher is loaded from `out_dir/teacher/` when there, else saved to
    `write_dir/teacher/` (default `out_dir`; see `worker_dir`).

    # Returns
    The teacher, a `full_precision_clone(model)`: trained, loaded or untrained.
    """
    teacher = full_precision_clone(model)
    source = config.lcr_teacher
    if source is None:
        log.warning("LCR: the full-precision teacher is untrained (same architecture, fresh "
                    "weights); LCR expects a pretrained teacher: use --lcr-teacher train or PATH.")
        return teacher
    if source != "train":
        try:
            loaded = tf.keras.models.load_model(source, compile=False)
            teacher.set_weights(loaded.get_weights())
        except (OSError, ValueError, ImportError):
            teacher.load_weights(source)
        return teacher
    path = os.path.join(out_dir, "teacher", "weights.h5") if out_dir else None
    if path and os.path.exists(path):
        teacher.load_weights(path)
        return teacher
    dataset, steps = train_dataset(data, config)
    teacher.compile(optimizer=_optimizer(config, steps), metrics=["accuracy"],
                    loss=tf.keras.losses.SparseCategoricalCrossentropy(
                        from_logits=_outputs_logits(teacher)))
    log.warning("LCR: training the full-precision teacher (%d epochs).", config.epochs)
    teacher.fit(_iterated_once(dataset), epochs=config.epochs, steps_per_epoch=steps,
                verbose=verbose)
    if path:
        path = os.path.join(write_dir or out_dir, "teacher", "weights.h5")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        teacher.save_weights(path)
    return teacher


# --------------------------------------------------------------------------- evaluate


def evaluate_model(model, x, y, *, flatbuffer=None, epsilon=None, draws=5, pgd_epsilon=None,
                   pgd_iterations=20, seed=0, clean=True):
    """`larq_l1inf.evaluation.evaluate` with the recipe's settings: the one place that calls it.

    # Returns
    An `EvaluationResult`.
    """
    from larq_l1inf import evaluation

    return evaluation.evaluate(
        model, x, y, flatbuffer=flatbuffer, draws=draws, seed=seed, pgd_epsilon=pgd_epsilon,
        pgd_iterations=pgd_iterations, verbose=0, clean=clean,
        epsilon=None if epsilon is None else tuple(float(v) for v in epsilon))


# --------------------------------------------------------------------------- train


@dataclasses.dataclass
class RunResult:
    """What `train` produced.

    # Attributes
    out_dir: the run directory.
    model: the trained (deployable) Keras model.
    history: per-epoch logs of the whole run (from history.csv).
    evaluation: the evaluation as a dict (also in evaluation.json).
    flatbuffer: the LCE flatbuffer bytes, or None without `convert`.
    """

    out_dir: str
    model: object
    history: dict
    evaluation: dict
    flatbuffer: bytes = None


def _set_status(out_dir, state, **extra):
    write_json({"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **extra}, os.path.join(out_dir, "status.json"))


def read_history(path):
    """A run's history.csv as `{metric: [per-epoch floats]}`.

    `CSVLogger` adds a `val_` column of "NA" for every metric when there is no validation
    data; those columns are dropped (an "NA" elsewhere becomes NaN).
    """
    import csv

    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    history = {}
    for key in (rows[0] if rows else {}):
        if key == "epoch":
            continue
        values = [row[key] for row in rows]
        if all(v == "NA" for v in values):
            continue
        history[key] = [float("nan") if v == "NA" else float(v) for v in values]
    return history


def resume_config(out_dir, given=None):
    """The saved config of a run directory, checked against the settings given now.

    # Raises
    FileNotFoundError: when `out_dir` holds no config.yaml (not a run directory).
    ConfigMismatchError: when a given setting differs from the saved one.
    """
    path = os.path.join(out_dir, "config.yaml")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{out_dir} is not a run directory (no config.yaml); start a run with "
            f"`larq-l1inf train --out {out_dir}` first."
        )
    saved = load_config(path)
    differences = config_differences(saved, given or {})
    if differences:
        listed = ", ".join(f"{k}: run has {a!r}, given {b!r}" for k, (a, b) in differences.items())
        raise ConfigMismatchError(
            f"{out_dir} was trained with another config ({listed}). Resume it without these "
            "settings, or start a new run with another --out."
        )
    values = {**saved, **{k: v for k, v in (given or {}).items() if k in RUNTIME_KEYS}}
    values.pop("out_dir", None)
    values.pop("verbose", None)
    return TrainConfig.from_dict(values)


def train(config, out_dir, *, data=None, resume=False, verbose=None, plots=True,
          convert_in_process=False):
    """Train a config into a run directory and leave the deployed model evaluated there.

    `fit`, then save the model (SavedModel), convert it with LCE, evaluate the Keras model and
    the flatbuffer on identical clean and noisy test inputs (and PGD with `pgd_epsilon`),
    and plot the training curves. Every file is written atomically; `status.json` says
    "failed" with the error if anything raised (the checkpoints stay, resume with
    `resume=True`). Multi-worker: every worker calls `train` alike; only the chief writes
    `out_dir` (see `fit`).

    # Arguments
    config: a `TrainConfig`.
    out_dir: the run directory. Without `resume` it must not hold another run.
    data: the dataset (None: `load_data(config)`).
    resume: continue the run in `out_dir` (its saved config must equal `config`).
    verbose: Keras verbosity (None: progress bar on a terminal, else one line per epoch).
    plots: write training_curves.png and weight_histograms.png.
    convert_in_process: run the LCE converter in this process.

    # Returns
    A `RunResult`.

    # Raises
    FileExistsError: `out_dir` holds a run and `resume` is False.
    ConfigMismatchError: `resume` with a config that differs from the saved one.
    """
    config.validate()
    strategy = _multi_worker_strategy_of(config)  # before data loading runs the first op
    if resume:
        resume_config(out_dir, config.to_dict())
    # Agreed by all workers before the chief writes config.yaml, which a slower one would see.
    elif _any_worker(strategy, os.path.exists(os.path.join(out_dir, "config.yaml"))):
        raise FileExistsError(
            f"{out_dir} already holds a run; continue it with --resume {out_dir}, or choose "
            "another --out."
        )
    if data is None:  # before any file is written: a missing dataset leaves no run behind
        data = load_data(config)
    with worker_dir(out_dir, strategy) as run_dir:
        if not resume:
            save_config(config, os.path.join(run_dir, "config.yaml"))
        _set_status(run_dir, "running")
        try:
            model, _ = fit(config, data, out_dir=out_dir, verbose=verbose)
            result = _finish(config, data, model, out_dir, run_dir, plots, convert_in_process)
        except BaseException as error:
            _set_status(run_dir, "failed", error=f"{type(error).__name__}: {error}")
            raise
        _set_status(run_dir, "finished")
    return result


def save_model(model, path):
    """Save a SavedModel atomically: into a temporary sibling directory, then renamed."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-model-", dir=parent)
    try:
        model.save(tmp, save_format="tf", include_optimizer=False)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def strategy_free_copy(model):
    """`model` itself, or, for a model built under a `tf.distribute` strategy, a copy of it
    with plain variables: what the saved model holds.

    Under a strategy `predict` reads each replica's own batch-norm moving statistics (synced
    only on read) and gathers the outputs of all workers; the copy, made on every worker
    (reading the synced values is a collective), predicts alone like the saved model.
    """
    if model.distribute_strategy is tf.distribute.get_strategy():
        return model
    copy = tf.keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _finish(config, data, model, out_dir, run_dir, plots, convert_in_process):
    """Save, convert, evaluate and plot into `run_dir` (this worker's `out_dir`)."""
    from larq_l1inf import deploy

    model = strategy_free_copy(model)
    save_model(model, os.path.join(run_dir, "model"))
    flatbuffer = None
    if config.convert:
        flatbuffer = deploy.convert(model, in_process=convert_in_process)
        write_atomic(os.path.join(run_dir, "model.tflite"), bytes(flatbuffer))
        # Variants LCE keeps float (DoReFa, ABC, AdaBin, 1-D convs) still deploy; say so.
        deploy.check_binarized(flatbuffer, model, on_failure="warn")
    x, y = data.arrays("test")
    epsilon = config.epsilon if config.epsilon is not None else data.epsilon
    result = evaluate_model(model, x, y, flatbuffer=flatbuffer, epsilon=epsilon,
                            draws=config.draws, pgd_epsilon=config.pgd_epsilon,
                            pgd_iterations=config.pgd_iterations, seed=config.seed)
    evaluation = result.to_dict()
    evaluation["dataset"] = dict(getattr(data, "config", {}) or {"name": data.name})
    if flatbuffer is not None:
        evaluation["flatbuffer"] = {"bytes": len(flatbuffer), "op_counts": deploy.op_counts(flatbuffer)}
    write_json(evaluation, os.path.join(run_dir, "evaluation.json"))
    # The chief's history on every worker: `fit` wrote it before the collective backups.
    history = read_history(os.path.join(out_dir, "history.csv"))
    if plots:
        write_plots(run_dir, model, data, epsilon, config.seed)
    print(result.summary())
    return RunResult(out_dir, model, history, evaluation, flatbuffer)


def write_plots(out_dir, model=None, data=None, epsilon=None, seed=0):
    """The figures of a run directory (`larq_l1inf.plots`).

    training_curves.png from history.csv; with a model weight_histograms.png; with a model
    and its data feature_maps.png (first binary conv on a clean and an Algorithm 1 noisy test
    input at `epsilon`, default the dataset's).

    # Returns
    The paths written.
    """
    from larq_l1inf import plots

    written = []
    history = read_history(os.path.join(out_dir, "history.csv"))
    if history:
        written.append(plots.training_curves(history, os.path.join(out_dir, "training_curves.png")))
    if model is not None:
        written.append(plots.weight_histograms(model, os.path.join(out_dir, "weight_histograms.png")))
        if data is not None and plots.binary_layers(model):
            try:
                plots.first_binary_conv(model)
            except ValueError as error:
                # e.g. a model whose only binary layers are dense.
                log.warning("No feature_maps.png: %s", error)
                return [os.fspath(p) for p in written]
            from larq_l1inf.evaluation import noisy_inputs

            x = data.arrays("test")[0][:1]
            epsilon = tuple(epsilon if epsilon is not None else data.epsilon)
            x_noisy = noisy_inputs(x, "environmental", epsilon, seed, 0)
            written.append(plots.feature_maps({model.name: model}, x[0], x_noisy[0],
                                              os.path.join(out_dir, "feature_maps.png")))
    return [os.fspath(p) for p in written]


def deepcopy_config(config, **changes):
    """A copy of a config with some settings changed (e.g. the paired run without penalty)."""
    return dataclasses.replace(copy.deepcopy(config), **changes)

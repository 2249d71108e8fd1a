"""larq-l1inf: the L1,inf-norm penalty for robust binarized neural networks in Larq.

Importing this package sets `TF_USE_LEGACY_KERAS=1` when TensorFlow is not imported yet
(larq and Larq Compute Engine need Keras 2) and fails clearly when Keras 3 is active.
"""

import importlib

from larq_l1inf._keras import ensure_legacy_keras as _ensure_legacy_keras

_ensure_legacy_keras()

# Modules that register Keras objects load eagerly, so saved models load without custom_objects.
from larq_l1inf import (  # noqa: E402
    baselines,
    callbacks,
    kernels,
    layers,
    lcr,
    mbn,
    noise,
    quantizers,
    regularizers,
    robust,
    variants,
)
from larq_l1inf.baselines import (  # noqa: E402
    AbsumRegularizer,
    L1Regularizer,
    SpectralNormRegularizer,
)
from larq_l1inf.callbacks import L1InfCallback  # noqa: E402
from larq_l1inf.lcr import LCRModel  # noqa: E402
from larq_l1inf.robust import GMRobustModel  # noqa: E402
from larq_l1inf.noise import InputNoise, environmental_noise  # noqa: E402
from larq_l1inf.regularizers import (  # noqa: E402
    KernelPenalty,
    L1InfRegularizer,
    attach,
    l1inf_norm,
    penalty,
)

# Heavier modules (LCE, matplotlib, TFDS) load on first use: `larq_l1inf.deploy.convert(...)`.
_LAZY_MODULES = (
    "attacks", "backbones", "bops", "bounds", "cli", "crown", "data", "deploy", "evaluation",
    "flatbuffer", "ibp", "plots", "reproduce", "training", "utils",
)

__all__ = [
    "AbsumRegularizer",
    "GMRobustModel",
    "InputNoise",
    "KernelPenalty",
    "L1InfCallback",
    "L1InfRegularizer",
    "L1Regularizer",
    "LCRModel",
    "SpectralNormRegularizer",
    "attach",
    "baselines",
    "callbacks",
    "environmental_noise",
    "kernels",
    "l1inf_norm",
    "layers",
    "lcr",
    "mbn",
    "noise",
    "penalty",
    "quantizers",
    "regularizers",
    "robust",
    "variants",
]

__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"larq_l1inf.{name}")
    raise AttributeError(f"module 'larq_l1inf' has no attribute {name!r}")

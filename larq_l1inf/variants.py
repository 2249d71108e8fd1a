"""BNN variants: how each published method builds one binary convolution.

A variant is the distinctive part of a published BNN method and a recipe (`Variant`) that
tells a backbone (`larq_l1inf.backbones`) how to build one binary convolution with it. The
quantizers live in `larq_l1inf.quantizers`, the extra layers in `larq_l1inf.layers` and the
schedules in `larq_l1inf.callbacks`; this module is the registry.

| name | paper | weights | activations | block |
|---|---|---|---|---|
| `bnn` | Hubara et al. NeurIPS 2016 | `ste_sign` | `ste_sign` | basic |
| `xnor` | Rastegari et al. ECCV 2016 | `XnorSign` (alpha per channel) | `ste_sign` | basic |
| `dorefa` | Zhou et al. 2016 | `DoReFaWeight(k)` | `lq.quantizers.DoReFa(k)` | basic |
| `bireal` | Liu et al. ECCV 2018 | `MagnitudeSign` | `approx_sign` | shortcut per conv |
| `reactnet` | Liu et al. ECCV 2020 | `MagnitudeSign` | `RSign`, `RPReLU` | shortcut per conv |
| `irnet` | Qin et al. CVPR 2020 | `LibraPBSign` (EDE) | `EDESign` | basic |
| `abc` | Lin et al. NeurIPS 2017 | `ABCWeight(M)` | `ABCActivation(N)` | basic |
| `adabin` | Tu et al. ECCV 2022 | `AdaBinWeight` | `AdaBinActivation`, `Maxout` | basic |
| `cyclebnn` | Fontana et al. 2024 | `CyclicSign` | `CyclicSign`, `GradientQuantizer` | basic |
| `mbn` | Frickenstein et al. IntelliSys 2023 | M bases `ste_sign(W + u_m std W)` | N bases `ste_sign(x + v_n)` | basic (`larq_l1inf.mbn` layers) |

!!! example
    ```python
    from larq_l1inf import L1InfRegularizer
    from larq_l1inf._keras import tf
    from larq_l1inf.variants import get_variant
    variant = get_variant("irnet")
    x = tf.keras.Input((8, 8, 4))
    y = variant.binary_conv(x, 8, 3, kernel_regularizer=L1InfRegularizer(5e-3))
    callbacks = variant.callbacks(epochs=10)  # [EDESchedule(10)]
    ```
"""

import importlib
import warnings

import larq as lq

# Modules, not names: the old names must reach __getattr__ (and its warning).
from larq_l1inf import callbacks, layers, quantizers

__all__ = ["VARIANTS", "Variant", "get_variant"]

#: Names importable from this module in larq-l1inf 0.1.0 -> their new module. They still
#: work, with a DeprecationWarning, until 0.3.0.
MOVED = {
    **{name: "quantizers" for name in (
        "ABCWeight", "AdaBinWeight", "CyclicSign", "DoReFaActivation", "DoReFaWeight", "EDESign",
        "LibraPBSign", "MagnitudeSign", "XnorSign", "abc_shifts", "minmax_quantize")},
    **{name: "layers" for name in (
        "ABCActivation", "AdaBinActivation", "GradientQuantizer", "Maxout", "RPReLU", "RSign")},
    **{name: "callbacks" for name in (
        "CyclicPrecisionSchedule", "EDESchedule", "cyclic_bits", "ede_parameters")},
}


def __getattr__(name):
    if name in MOVED:
        module = MOVED[name]
        warnings.warn(
            f"larq_l1inf.variants.{name} moved to larq_l1inf.{module}.{name}; the old import "
            "stops working in larq-l1inf 0.3.0.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(f"larq_l1inf.{module}"), name)
    raise AttributeError(f"module 'larq_l1inf.variants' has no attribute {name!r}")


class Variant:
    """How one BNN method builds a binary convolution, for `larq_l1inf.backbones`.

    A backbone calls `binary_conv` for every binary convolution, puts BatchNormalization after
    it and calls `activation` where the block has its nonlinearity. `per_conv_shortcut`
    asks for a real-valued shortcut around every binary conv (Bi-Real, ReActNet) instead of one
    per basic block.

    # Arguments
    name: the variant's name.
    kernel_quantizer, input_quantizer: zero-argument factories of the conv's quantizers.
    pre: zero-argument factory of a layer applied before the conv (`RSign`, `ABCActivation`...).
    post: zero-argument factory of a layer applied to the conv output (`GradientQuantizer`).
    activation: zero-argument factory of the block nonlinearity (`RPReLU`, `Maxout`), or None.
    schedules: names of the schedules it trains with (`"ede"`, `"cyclic"`), see `callbacks`.
    per_conv_shortcut: real-valued shortcut around every binary conv.
    kernel_constraint: the conv's kernel constraint (e.g. "weight_clip").
    lce_binary: whether LCE can run this conv as `LceBconv2d`; `lce_note` says why not.
    lce_convs: how many `LceBconv2d` one binary conv becomes (M x N for a multi-bit conv).
    """

    def __init__(
        self,
        name,
        kernel_quantizer,
        input_quantizer,
        pre=None,
        post=None,
        activation=None,
        per_conv_shortcut=False,
        kernel_constraint=None,
        lce_binary=True,
        lce_note="",
        schedules=(),
        lce_convs=1,
    ):
        self.name = name
        self._kernel_quantizer = kernel_quantizer
        self._input_quantizer = input_quantizer
        self._pre, self._post, self._activation = pre, post, activation
        self.per_conv_shortcut = per_conv_shortcut
        self.kernel_constraint = kernel_constraint
        self.lce_binary = lce_binary
        self.lce_note = lce_note
        self.lce_convs = int(lce_convs)
        self.schedules = tuple(schedules)

    def __repr__(self):
        return f"Variant({self.name!r})"

    def binary_conv(self, x, filters, kernel_size, strides=1, kernel_regularizer=None, name=None):
        """Build one binary conv (1-D or 2-D from `x`'s rank) on `x`; no BatchNormalization."""
        rank = x.shape.rank - 2
        if rank not in (1, 2):
            raise ValueError(f"binary_conv needs a 1-D or 2-D feature map, got shape {x.shape}.")
        if self._pre is not None:
            x = self._pre()(x)
        conv = lq.layers.QuantConv2D if rank == 2 else lq.layers.QuantConv1D
        kwargs = {}
        if rank == 2:
            # LCE pads binary convs with +1; only valid when the input quantizer is a sign.
            kwargs["pad_values"] = 1.0 if self.lce_binary else 0.0
        x = conv(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            input_quantizer=self._input_quantizer() if self._input_quantizer else None,
            kernel_quantizer=self._kernel_quantizer(),
            kernel_constraint=self.kernel_constraint,
            kernel_regularizer=kernel_regularizer,
            kernel_initializer="glorot_normal",
            name=name,
            **kwargs,
        )(x)
        if self._post is not None:
            x = self._post()(x)
        return x

    def activation(self, x):
        """The block nonlinearity after BatchNormalization (identity for most variants)."""
        return self._activation()(x) if self._activation is not None else x

    def callbacks(self, epochs=None, steps_per_epoch=None):
        """The schedules this variant trains with (`EDESchedule`, `CyclicPrecisionSchedule`).

        # Raises
        ValueError: when the variant has a schedule and `epochs` (and for CycleBNN
            `steps_per_epoch`) are not given.
        """
        found = []
        for schedule in self.schedules:
            if schedule == "ede":
                if not epochs:
                    raise ValueError(f"Variant {self.name!r} needs `epochs` for its EDE schedule.")
                found.append(callbacks.EDESchedule(epochs))
            elif schedule == "cyclic":
                if not epochs or not steps_per_epoch:
                    raise ValueError(
                        f"Variant {self.name!r} needs `epochs` and `steps_per_epoch` for its "
                        "cyclic precision schedule."
                    )
                found.append(callbacks.CyclicPrecisionSchedule(total_steps=epochs * steps_per_epoch))
        return found


_SYMMETRIC = "binary weights (+-1 or +-scale per channel) and sign activations"


def _bnn(**_):
    return Variant(
        "bnn", lambda: lq.quantizers.SteSign(), lambda: lq.quantizers.SteSign(),
        kernel_constraint="weight_clip", lce_note=_SYMMETRIC,
    )


def _xnor(**_):
    return Variant(
        "xnor", lambda: quantizers.XnorSign(), lambda: lq.quantizers.SteSign(),
        kernel_constraint="weight_clip", lce_note=_SYMMETRIC,
    )


def _dorefa(w_bits=1, a_bits=2, **_):
    return Variant(
        "dorefa",
        lambda: quantizers.DoReFaWeight(w_bits),
        lambda: lq.quantizers.DoReFa(a_bits, mode="activations"),
        lce_binary=False,
        lce_note=(
            f"activations quantize to {a_bits}-bit levels in [0, 1] (not a +-1 sign), so the "
            "conv stays a float Conv2D"
        ),
    )


def _bireal(**_):
    return Variant(
        "bireal", lambda: quantizers.MagnitudeSign(), lambda: lq.quantizers.ApproxSign(),
        per_conv_shortcut=True, kernel_constraint="weight_clip", lce_note=_SYMMETRIC,
    )


def _reactnet(**_):
    return Variant(
        "reactnet",
        lambda: quantizers.MagnitudeSign(),
        lambda: lq.quantizers.SteSign(),
        pre=layers.RSign,
        activation=layers.RPReLU,
        per_conv_shortcut=True,
        kernel_constraint="weight_clip",
        lce_note=_SYMMETRIC + " (RSign's threshold is a float subtraction before the conv)",
    )


def _irnet(**_):
    return Variant(
        "irnet", quantizers.LibraPBSign, quantizers.EDESign, schedules=("ede",),
        lce_note=_SYMMETRIC + " (power-of-two scale per channel)",
    )


def _abc(weight_bases=3, activation_bases=3, **_):
    binary = weight_bases == 1 and activation_bases == 1
    return Variant(
        "abc",
        lambda: quantizers.ABCWeight(weight_bases),
        lq.quantizers.SteSign if binary else None,
        pre=(lambda: layers.ABCActivation(activation_bases)) if not binary else None,
        lce_binary=binary,
        lce_note=(
            _SYMMETRIC if binary else
            f"{weight_bases} weight bases x {activation_bases} activation bases give multi-level "
            "weights and activations in one conv; LCE has no multi-base binary conv, so it stays float"
        ),
    )


def _adabin(**_):
    return Variant(
        "adabin",
        quantizers.AdaBinWeight,
        None,
        pre=layers.AdaBinActivation,
        activation=layers.Maxout,
        lce_binary=False,
        lce_note=(
            "the adaptive binary sets {b - a, b + a} are not symmetric around 0 (learned center), "
            "which LceBconv2d (+-1 x scale only) cannot represent, so the conv stays float"
        ),
    )


def _cyclebnn(**_):
    return Variant(
        "cyclebnn",
        lambda: quantizers.CyclicSign("weights"),
        lambda: quantizers.CyclicSign("activations"),
        post=layers.GradientQuantizer,
        schedules=("cyclic",),
        lce_note=_SYMMETRIC + " (after training the schedule leaves bits = 0, plain sign)",
    )


def _mbn(weight_bases=3, activation_bases=1, **_):
    # Imported here: larq_l1inf.mbn imports this module (its variant subclasses `Variant`).
    from larq_l1inf import mbn

    return mbn.mbn_variant(weight_bases, activation_bases)


#: Variant name -> factory taking the variant's options (e.g. `dorefa`: w_bits, a_bits).
VARIANTS = {
    "bnn": _bnn,
    "xnor": _xnor,
    "dorefa": _dorefa,
    "bireal": _bireal,
    "reactnet": _reactnet,
    "irnet": _irnet,
    "abc": _abc,
    "adabin": _adabin,
    "cyclebnn": _cyclebnn,
    "mbn": _mbn,
}


def get_variant(identifier, **options):
    """A `Variant` from its name (see `VARIANTS`) or the instance itself.

    # Arguments
    identifier: a name such as `"irnet"` or a `Variant`.
    options: the variant's options, e.g. `get_variant("dorefa", a_bits=1)`,
        `get_variant("abc", weight_bases=5, activation_bases=1)`,
        `get_variant("mbn", weight_bases=3, activation_bases=1)`.

    # Raises
    ValueError: for an unknown name.
    """
    if isinstance(identifier, Variant):
        return identifier
    key = str(identifier).lower().replace("-", "").replace("_", "")
    aliases = {"xnornet": "xnor", "birealnet": "bireal", "react": "reactnet", "ir": "irnet",
               "abcnet": "abc", "dorefanet": "dorefa", "cycle": "cyclebnn",
               "multibit": "mbn"}
    key = aliases.get(key, key)
    if key not in VARIANTS:
        raise ValueError(f"Unknown BNN variant {identifier!r}; choose one of {sorted(VARIANTS)}.")
    return VARIANTS[key](**options)

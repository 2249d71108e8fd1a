"""A Keras callback that logs the L1,inf penalty, per-layer norms and alphas, and warms up delta."""

import logging
import math

from larq_l1inf._keras import tf
from larq_l1inf.kernels import binary_kernel, is_multi_base, l1inf_norm, scaling_factor
from larq_l1inf.regularizers import attach, kernel_term, penalized_layers, penalty

log = logging.getLogger(__name__)

__all__ = ["L1InfCallback"]


def _data_free_bound_terms(model):
    """log10 terms of the Theorem 4.2 bound that need no data, if `larq_l1inf.bounds` has them."""
    try:
        from larq_l1inf import bounds
    except ImportError:  # pragma: no cover - the bounds module ships with the package
        return {}
    compute = getattr(bounds, "data_free_log10_terms", None)
    return dict(compute(model)) if compute is not None else {}


def _epoch_values(model, entries, per_layer):
    """`[(log key, scalar tensor)]`: the total penalty, then per layer its norm, alpha and term.

    Plain TF ops, traced once by `L1InfCallback.logged_values`.
    """
    pairs = [("l1inf_penalty", penalty(model))]
    if not per_layer:
        return pairs
    for entry in entries:
        name, reg = entry.layer.name, entry.regularizer
        if is_multi_base(entry.layer):  # MBN: the combined kernel, alpha = its learned |alpha_m|
            scales = tf.abs(tf.convert_to_tensor(entry.layer.weight_scale))
            pairs += [(f"l1inf_norm/{name}", l1inf_norm(entry.layer.combined_kernel())),
                      (f"l1inf_alpha/{name}", tf.reduce_mean(scales)),
                      (f"l1inf_alpha_max/{name}", tf.reduce_max(scales)),
                      (f"l1inf_term/{name}", kernel_term(entry))]
            continue
        w_b = binary_kernel(entry.weight, entry.depthwise)
        pairs.append((f"l1inf_norm/{name}", l1inf_norm(w_b, entry.depthwise)))
        alpha = scaling_factor(entry.weight, reg.alpha, entry.depthwise)
        pairs.append((f"l1inf_alpha/{name}", tf.reduce_mean(alpha)))
        if alpha.shape.rank == 1:
            pairs.append((f"l1inf_alpha_max/{name}", tf.reduce_max(alpha)))
        pairs.append((f"l1inf_term/{name}", kernel_term(entry)))
    return pairs


class L1InfCallback(tf.keras.callbacks.Callback):
    """Log the penalty per epoch into `logs`, attach the product penalty, warm up delta.

    Every epoch it adds to `logs` (so `History` and a `TensorBoard` callback listed *after*
    this one record them): `l1inf_penalty`, the total penalty of `larq_l1inf.penalty`; per
    penalized layer `l1inf_norm/<layer>` ($\\|W_b\\|_{1,\\infty}$ of the unscaled `W_b`),
    `l1inf_alpha/<layer>` (the alpha the layer's penalty uses, its `alpha` mode through
    `larq_l1inf.kernels.scaling_factor`; for a per-channel alpha its mean, with the largest
    channel's in `l1inf_alpha_max/<layer>`) and `l1inf_term/<layer>` (the layer's term $t_j$
    before delta and the reduction). For a multi-bit layer (`larq_l1inf.mbn`) the norm is
    that of its combined kernel $\\sum_m \\alpha_m W_b^m$ (its term before normalisation) and the
    alpha is the mean (max) of its learned $|\\alpha_m|$. With `bounds=True`, it logs the
    log10 of the Theorem 4.2 bound terms that need no data (`bound/...`). With
    `warmup_epochs=k`, the penalty's delta rises linearly from 0 at epoch 0 to its full value
    at epoch k (logged as `l1inf_warmup`).

    It also calls `larq_l1inf.attach(model)`, which `L1InfRegularizer(reduction="product")`
    needs.

    # Arguments
    warmup_epochs: epochs of linear warm-up of delta; 0 for none.
    per_layer: log per-layer norms, alphas and terms.
    bounds: log the data-free Theorem 4.2 terms.

    !!! example
        ```python
        model.fit(x, y, epochs=10, callbacks=[L1InfCallback(warmup_epochs=2),
                                              tf.keras.callbacks.TensorBoard("logs")])
        ```
    """

    def __init__(self, warmup_epochs=0, per_layer=True, bounds=True):
        super().__init__()
        if not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"`warmup_epochs` must be an int >= 0, got {warmup_epochs!r}.")
        self.warmup_epochs = warmup_epochs
        self.per_layer = per_layer
        self.bounds = bounds
        self._traced = None  # (key, tf.function, names) of `logged_values`

    def set_model(self, model):
        super().set_model(model)
        if not penalized_layers(model):
            log.warning("L1InfCallback: the model has no layer with an L1InfRegularizer.")
        attach(model)

    def _set_factor(self, factor):
        """Scale every penalty; a changed factor needs a new train function (it is a constant
        of the traced step, not a variable, so saved models never capture it)."""
        changed = False
        for entry in penalized_layers(self.model):
            reg = entry.regularizer
            changed |= reg.warmup_factor != factor
            reg.warmup_factor = factor
        if changed:
            self.model.make_train_function(force=True)
            self.model.test_function = None

    def factor(self, epoch):
        """The warm-up factor of delta at an epoch (0-based)."""
        if not self.warmup_epochs:
            return 1.0
        return min(1.0, epoch / self.warmup_epochs)

    def on_epoch_begin(self, epoch, logs=None):
        if self.warmup_epochs:
            self._set_factor(self.factor(epoch))

    def logged_values(self):
        """The epoch's penalty logs as `{key: float}`, computed in one traced graph.

        One `tf.function` over every penalized layer (retraced only when the layers or the
        warm-up factors change) instead of a few eager ops per layer: eager dispatch cost
        seconds per epoch on a ResNet-20, the graph a few milliseconds.
        """
        entries = penalized_layers(self.model)
        key = (tuple(id(e.weight) for e in entries),
               tuple(e.regularizer.warmup_factor for e in entries), bool(self.per_layer))
        if self._traced is None or self._traced[0] != key:
            names = []

            @tf.autograph.experimental.do_not_convert
            def compute():
                del names[:]
                pairs = _epoch_values(self.model, entries, self.per_layer)
                names.extend(name for name, _ in pairs)
                return [value for _, value in pairs]

            self._traced = (key, tf.function(compute, autograph=False), names)
        _, function, names = self._traced
        values = function()
        return {name: float(value) for name, value in zip(names, values)}

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        values = self.logged_values()
        value = values["l1inf_penalty"]
        if not math.isfinite(value):
            log.warning("L1InfCallback: the penalty is %s at epoch %d.", value, epoch)
        logs["l1inf_penalty"] = value
        if self.warmup_epochs:
            logs["l1inf_warmup"] = self.factor(epoch)
        for name, value in values.items():
            if name != "l1inf_penalty":
                logs[name] = value
        if self.bounds:
            for key, term in _data_free_bound_terms(self.model).items():
                logs[f"bound/{key}"] = float(term)

    def on_train_end(self, logs=None):
        if self.warmup_epochs:
            self._set_factor(1.0)


# ============================================================================================
# Schedules of BNN variants (IR-Net's EDE, CycleBNN's cyclic precision).
# This block belongs to the variants (larq_l1inf.quantizers / larq_l1inf.layers); the
# L1InfCallback above does not depend on it.
# ============================================================================================

import logging as _logging  # noqa: E402
import math as _math  # noqa: E402

import numpy as np  # noqa: E402

from larq_l1inf._keras import tf as _tf  # noqa: E402
from larq_l1inf.layers import GradientQuantizer  # noqa: E402
from larq_l1inf.quantizers import CyclicSign, EDEMixin  # noqa: E402

_schedule_log = _logging.getLogger(__name__)

__all__ = [  # extends the list above
    *__all__,
    "CyclicPrecisionSchedule",
    "EDESchedule",
    "cyclic_bits",
    "ede_parameters",
    "model_quantizers",
    "set_cyclic_bits",
]

#: Layer attributes that hold a larq quantizer.
QUANTIZER_ATTRIBUTES = ("kernel_quantizer", "input_quantizer", "depthwise_quantizer", "pointwise_quantizer")


def model_quantizers(model):
    """Every layer of `model` and every quantizer attached to one, each once, in model order.

    # Arguments
    model: a Keras model.

    # Returns
    A list of layers and quantizer objects.
    """
    seen, found = set(), []
    for layer in [model, *model.submodules]:
        for obj in [layer, *(getattr(layer, attr, None) for attr in QUANTIZER_ATTRIBUTES)]:
            if obj is not None and id(obj) not in seen:
                seen.add(id(obj))
                found.append(obj)
    return found


def ede_parameters(epoch, epochs, t_min=0.1, t_max=10.0):
    r"""IR-Net's EDE schedule at an epoch, $t = T_{min} 10^{\frac{i}{N}\log_{10}
    \frac{T_{max}}{T_{min}}}$, $k = \max(1/t, 1)$ (Qin et al. CVPR 2020, eq. 14).

    # Returns
    The pair `(t, k)`.
    """
    t = t_min * 10.0 ** (epoch / epochs * _math.log10(t_max / t_min))
    return t, max(1.0 / t, 1.0)


class EDESchedule(_tf.keras.callbacks.Callback):
    r"""Keras callback: IR-Net's Error Decay Estimator schedule, assigned at every epoch start.

    Sets `t` and `k` of every `EDESign` / `LibraPBSign` in the model to
    $t = T_{min} 10^{\frac{i}{N}\log_{10}\frac{T_{max}}{T_{min}}}$, $k = \max(1/t, 1)$ at
    epoch $i$ of $N$ (`ede_parameters`), and logs `ede_t` into the epoch logs.

    # Arguments
    epochs: the number of training epochs N of the schedule.
    t_min, t_max: the paper's 0.1 and 10.

    # Raises
    ValueError: for epochs < 1 or t_min/t_max not positive and ordered.

    !!! example
        ```python
        model.fit(x, y, epochs=10, callbacks=[EDESchedule(epochs=10)])
        ```

    # References
    - H. Qin et al. Forward and Backward Information Retention for Accurate Binary Neural
      Networks. CVPR 2020, sec. 3.3, eq. 13-14.
    """

    def __init__(self, epochs, t_min=0.1, t_max=10.0):
        super().__init__()
        if int(epochs) < 1:
            raise ValueError(f"`epochs` must be >= 1, got {epochs!r}.")
        if not 0 < t_min < t_max:
            raise ValueError(f"Need 0 < t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}.")
        self.epochs, self.t_min, self.t_max = int(epochs), float(t_min), float(t_max)
        self.t = None

    def on_train_begin(self, logs=None):
        if not any(isinstance(obj, EDEMixin) for obj in model_quantizers(self.model)):
            _schedule_log.warning("EDESchedule: the model has no EDESign/LibraPBSign quantizer; it does nothing.")

    def on_epoch_begin(self, epoch, logs=None):
        self.t, k = ede_parameters(epoch, self.epochs, self.t_min, self.t_max)
        for obj in model_quantizers(self.model):
            if isinstance(obj, EDEMixin):
                obj.set_ede(self.t, k)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.t is not None:
            logs["ede_t"] = self.t


def cyclic_bits(step, period, low, high):
    r"""CycleBNN's cosine cycle, $\mathrm{rint}(b_{min} + \frac{b_{max} - b_{min}}{2}
    (1 + \cos(\pi \frac{i \bmod T}{T} + \pi)))$: rises from `low` to `high` in every period.

    # Returns
    The bit width at step `step` (a float).
    """
    phase = (step % period) / period
    return float(np.rint(low + 0.5 * (high - low) * (1.0 + _math.cos(_math.pi * phase + _math.pi))))


def set_cyclic_bits(model, bits, grad_bits=0):
    """Assign the bit width of every `CyclicSign` and `GradientQuantizer` in `model`.

    `set_cyclic_bits(model, 0)` leaves the plain 1-bit network that is deployed (what
    `CyclicPrecisionSchedule` does at the end of training).

    # Returns
    The number of objects assigned.
    """
    count = 0
    for obj in model_quantizers(model):
        if isinstance(obj, CyclicSign):
            obj.bits.assign(float(bits))
            count += 1
        elif isinstance(obj, GradientQuantizer):
            obj.bits.assign(float(grad_bits))
            count += 1
    return count


class CyclicPrecisionSchedule(_tf.keras.callbacks.Callback):
    r"""Keras callback: CycleBNN's cyclic precision, assigned before every training batch.

    At step $i$, with period $T$ = `total_steps / cycles`, the forward bit width is
    `cyclic_bits(i, T, *bits)` and the gradient bit width `cyclic_bits(i, T, *grad_bits)`
    (Fontana et al. 2024, sec. 3; Fu et al. ICLR 2021, eq. 1). It assigns every `CyclicSign`
    and `GradientQuantizer` in the model; at the end of training it sets `final_bits`
    (default 0: plain sign, the deployed 1-bit network).

    # Arguments
    total_steps: training steps the cycles are spread over.
    cycles: number of cosine cycles (the paper's `num_cyclic_period`).
    bits: (b_min, b_max) for weights and activations; grad_bits likewise for gradients.
    final_bits: bit width left in the quantizers after training (0 = plain sign).

    # Raises
    ValueError: for total_steps or cycles < 1, or bit ranges that are not 1 <= min <= max.

    !!! example
        ```python
        model.fit(x, y, epochs=2, batch_size=32,
                  callbacks=[CyclicPrecisionSchedule(total_steps=2 * len(x) // 32)])
        ```

    # References
    - F. Fontana et al. CycleBNN: Cyclic Precision Training in Binary Neural Networks.
      ECCV 2024 Workshops (arXiv:2410.00050), sec. 3.
    - Y. Fu et al. CPT: Efficient Deep Neural Network Training via Cyclic Precision.
      ICLR 2021, sec. 3.
    """

    def __init__(self, total_steps, cycles=8, bits=(2, 8), grad_bits=(6, 8), final_bits=0):
        super().__init__()
        if int(total_steps) < 1 or int(cycles) < 1:
            raise ValueError(f"Need total_steps >= 1 and cycles >= 1, got {total_steps!r}, {cycles!r}.")
        for name, pair in (("bits", bits), ("grad_bits", grad_bits)):
            if len(pair) != 2 or not 1 <= pair[0] <= pair[1]:
                raise ValueError(f"`{name}` must be (min, max) with 1 <= min <= max, got {pair!r}.")
        self.total_steps, self.cycles = int(total_steps), int(cycles)
        self.bits, self.grad_bits, self.final_bits = tuple(bits), tuple(grad_bits), final_bits
        self.step = 0

    @property
    def period(self):
        return max(self.total_steps / self.cycles, 1.0)

    def on_train_begin(self, logs=None):
        if not any(isinstance(obj, (CyclicSign, GradientQuantizer)) for obj in model_quantizers(self.model)):
            _schedule_log.warning("CyclicPrecisionSchedule: the model has no CyclicSign/GradientQuantizer; it does nothing.")

    def on_train_batch_begin(self, batch, logs=None):
        set_cyclic_bits(
            self.model,
            cyclic_bits(self.step, self.period, *self.bits),
            cyclic_bits(self.step, self.period, *self.grad_bits),
        )
        self.step += 1

    def on_train_end(self, logs=None):
        set_cyclic_bits(self.model, self.final_bits, 0)

"""A Keras callback that logs the L1,inf penalty, per-layer norms and alphas, and warms up delta."""

import logging
import math

from larq_l1inf._keras import tf
from larq_l1inf.kernels import binary_kernel, l1inf_norm, scaling_factor
from larq_l1inf.regularizers import attach, penalized_layers, penalty

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


class L1InfCallback(tf.keras.callbacks.Callback):
    """Log the penalty per epoch into `logs`, attach the product penalty, warm up delta.

    Every epoch it adds to `logs` (so `History` and a `TensorBoard` callback listed *after*
    this one record them): `l1inf_penalty`, the total penalty of `larq_l1inf.penalty`; per
    penalized layer `l1inf_norm/<layer>` ($\\|W_b\\|_{1,\\infty}$ of the unscaled `W_b`),
    `l1inf_alpha/<layer>` (the alpha the layer's penalty uses, its `alpha` mode through
    `larq_l1inf.kernels.scaling_factor`; for a per-channel alpha its mean, with the largest
    channel's in `l1inf_alpha_max/<layer>`) and `l1inf_term/<layer>` (the layer's term $t_j$
    before delta and the reduction); and, with `bounds=True`, the log10 of the Theorem 4.2
    bound terms that need no data (`bound/...`). With `warmup_epochs=k`, the penalty's delta rises
    linearly from 0 at epoch 0 to its full value at epoch k (logged as `l1inf_warmup`).

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

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        value = float(penalty(self.model))
        if not math.isfinite(value):
            log.warning("L1InfCallback: the penalty is %s at epoch %d.", value, epoch)
        logs["l1inf_penalty"] = value
        if self.warmup_epochs:
            logs["l1inf_warmup"] = self.factor(epoch)
        if self.per_layer:
            for entry in penalized_layers(self.model):
                name, reg = entry.layer.name, entry.regularizer
                w_b = binary_kernel(entry.weight, entry.depthwise)
                logs[f"l1inf_norm/{name}"] = float(l1inf_norm(w_b, entry.depthwise))
                alpha = scaling_factor(entry.weight, reg.alpha, entry.depthwise)
                logs[f"l1inf_alpha/{name}"] = float(tf.reduce_mean(alpha))
                if alpha.shape.rank == 1:
                    logs[f"l1inf_alpha_max/{name}"] = float(tf.reduce_max(alpha))
                logs[f"l1inf_term/{name}"] = float(reg.term(entry.weight, entry.depthwise))
        if self.bounds:
            for key, term in _data_free_bound_terms(self.model).items():
                logs[f"bound/{key}"] = float(term)

    def on_train_end(self, logs=None):
        if self.warmup_epochs:
            self._set_factor(1.0)

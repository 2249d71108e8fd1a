"""Give larq-zoo models the L1,inf penalty on their binary convolutions, weights preserved.

Nothing of larq-zoo is copied: a patched model is larq-zoo's own model with a
`kernel_regularizer` (e.g. `L1InfRegularizer`) set on every binary layer, picked as larq
does (kernel quantizer with `precision == 1`, not `NoOp`; `larq.layers_base._is_binary`).

Two ways, both exact (same weights, same outputs, the model trains, saves, loads and converts):

- `patch_model(model, regularizer)` (default, in place): sets `layer.kernel_regularizer` and
  registers the layer loss exactly as Keras' `add_weight(regularizer=...)` would have at build
  time, so `model.losses` carries the penalty now and `get_config` (hence save/load) carries the
  regularizer afterwards. No variable is created or copied, so weights are untouched by
  construction, also for a model the user built and trained already.
- `patch_model(model, regularizer, clone=True)`: a new model rebuilt from the layers' configs
  with the regularizer set (`tf.keras.models.clone_model`), then `set_weights` from the old
  one. Use it to keep the original model unpenalized, or to replace a regularizer a layer
  already has.

`zoo_patches.literature.<Model>` and `zoo_patches.sota.<Model>` wrap every larq-zoo model
factory: same arguments plus `kernel_regularizer=`.

Saving: larq-zoo's QuickNet models build their blur pool with a plain function initializer
(`blurpool_initializer`), which Keras' h5 format cannot load back ("Unknown initializer:
'function'") even unpatched. `patch_model` and the wrappers replace such an initializer by a
registered `FunctionInitializer` naming the same function (`make_loadable`), so a patched
model loads from h5, SavedModel and `.keras` alike (`import zoo_patches` before loading).

!!! example
    ```python
    import larq_l1inf
    import zoo_patches
    model = zoo_patches.sota.QuickNetSmall(
        input_shape=(32, 32, 3), num_classes=10, weights=None,
        kernel_regularizer=larq_l1inf.L1InfRegularizer(5e-3),
    )
    assert larq_l1inf.penalty(model).shape == ()
    ```
"""

import logging
import types

import larq as lq
import larq_l1inf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before larq imports TensorFlow)

from larq_l1inf._keras import tf
from larq_l1inf import kernels

log = logging.getLogger(__name__)

__all__ = [
    "FunctionInitializer",
    "ZOO_MODELS",
    "binary_layers",
    "literature",
    "make_loadable",
    "patch_model",
    "sota",
]


def binary_layers(model):
    """`(layer, weight_attr, regularizer_attr)` for every binary kernel of a model.

    Binary = the kernel's quantizer has `precision == 1` (and is not `NoOp`), the rule larq
    uses (`larq_l1inf.kernels.binary_kernels`); nested models are searched too.

    # Arguments
        model: a Keras model.

    # Returns
        List of `(layer, weight attribute, regularizer attribute)`, e.g.
        `(conv, "kernel", "kernel_regularizer")`.
    """
    found = []
    for entry in kernels.binary_kernels(model):
        weight_attr, reg_attr = (("depthwise_kernel", "depthwise_regularizer") if entry.depthwise
                                 else ("kernel", "kernel_regularizer"))
        if hasattr(entry.layer, reg_attr):
            found.append((entry.layer, weight_attr, reg_attr))
    return found


@lq.utils.register_keras_custom_object
class FunctionInitializer(tf.keras.initializers.Initializer):
    """A registered function initializer as a Keras `Initializer`, so that h5 can save it.

    Keras serializes a plain function initializer as `{"class_name": "function", ...}`,
    which only the `.keras` and SavedModel loaders resolve; the h5 loader raises
    "Unknown initializer: 'function'". This object stores the function's registered name
    and calls the function itself, so the values are the same in every format.

    # Arguments
        name: the name the function is registered under (e.g. `"blurpool_initializer"`,
            registered by larq-zoo with `larq.utils.register_keras_custom_object`).

    # Raises
        ValueError: when called and no function is registered under `name`.
    """

    def __init__(self, name):
        self.name = str(name)

    def __call__(self, shape, dtype=None, **kwargs):
        function = tf.keras.utils.get_registered_object(self.name)
        if function is None:
            raise ValueError(
                f"No initializer function is registered as {self.name!r}: import the module "
                "that defines it (for larq-zoo's blur pool: `import larq_zoo`) before loading."
            )
        return function(shape, dtype=dtype or tf.keras.backend.floatx())

    def get_config(self):
        return {"name": self.name}


def make_loadable(model):
    """Replace every registered function initializer of a model's layers by a
    `FunctionInitializer`, in place, so that the model loads from h5 as well.

    Initializers only act when a layer is built, so weights and outputs are untouched; a
    model rebuilt from the config gets the same initial values.

    # Arguments
        model: a Keras model.

    # Returns
        List of `(layer name, attribute)` that were replaced.
    """
    replaced = []
    for layer in kernels.model_layers(model):
        for attr, value in list(vars(layer).items()):
            if not attr.endswith("_initializer") or not isinstance(value, types.FunctionType):
                continue
            name = tf.keras.utils.get_registered_name(value)
            if tf.keras.utils.get_registered_object(name) is not value:
                log.warning(
                    "Layer '%s' has the unregistered function initializer %s=%s: the model will "
                    "not load from h5. Save it as .keras or SavedModel, or register the function "
                    "(larq.utils.register_keras_custom_object) before patching.",
                    layer.name, attr, getattr(value, "__name__", value),
                )
                continue
            setattr(layer, attr, FunctionInitializer(name))
            replaced.append((layer.name, attr))
    return replaced


def _check(model, regularizer):
    if not isinstance(model, tf.keras.Model):
        raise TypeError(f"patch_model needs a tf.keras.Model (tf_keras), got {type(model).__name__}.")
    if not callable(regularizer):
        raise TypeError(
            f"`regularizer` must be a Keras regularizer such as L1InfRegularizer(5e-3), got {regularizer!r}."
        )
    if not model.built:
        raise ValueError("The model is not built; build it (call it once or give an Input) before patching.")


def _patch_in_place(model, regularizer, layers):
    for layer, weight_attr, reg_attr in layers:
        existing = getattr(layer, reg_attr)
        if existing is regularizer:
            continue
        if existing is not None:
            raise ValueError(
                f"Layer '{layer.name}' already has {reg_attr}={existing!r}; patching in place "
                "cannot remove its loss. Use patch_model(model, regularizer, clone=True) to "
                "rebuild the model with the new regularizer instead."
            )
        setattr(layer, reg_attr, regularizer)
        # What Keras' add_weight(regularizer=...) does at build time: register the layer loss.
        layer._handle_weight_regularization(weight_attr, getattr(layer, weight_attr), regularizer)
    # Compiled train/test functions traced before the patch would miss the new losses.
    model.train_function = model.test_function = model.predict_function = None
    return model


def _patch_clone(model, regularizer, layers):
    targets = {id(layer): reg_attr for layer, _, reg_attr in layers}

    def clone_function(layer):
        config = layer.get_config()
        if id(layer) in targets:
            config[targets[id(layer)]] = tf.keras.regularizers.serialize(regularizer)
        return layer.__class__.from_config(config)

    clone = tf.keras.models.clone_model(model, clone_function=clone_function)
    clone.set_weights(model.get_weights())
    return clone


def patch_model(model, regularizer, clone=False):
    """Put `regularizer` on every binary kernel of a built Keras model (e.g. a larq-zoo model).

    # Arguments
    model: a built `tf.keras.Model`.
    regularizer: the kernel regularizer, e.g. `larq_l1inf.L1InfRegularizer(5e-3)`; one
        instance is shared by all binary layers.
    clone: False to patch in place (weights untouched); True to return a rebuilt copy with
        the weights copied (functional and Sequential models only, as `clone_model`).

    Function initializers of `model` are made serializable in place (`make_loadable`), so
    the patched model saves to and loads from h5, SavedModel and `.keras`.

    # Returns
    The patched model (the same object unless `clone=True`).

    # Raises
    TypeError: for a non-Keras model or a non-callable regularizer.
    ValueError: for an unbuilt model, or (in place) a binary layer that already has another
        regularizer.
    """
    _check(model, regularizer)
    make_loadable(model)
    layers = binary_layers(model)
    if not layers:
        log.warning("patch_model: '%s' has no binary layer (precision == 1); nothing to patch.", model.name)
        return model
    if clone:
        return _patch_clone(model, regularizer, layers)
    return _patch_in_place(model, regularizer, layers)


from zoo_patches import literature, sota  # noqa: E402

#: "literature.BiRealNet" / "sota.QuickNet" ... -> patched factory.
ZOO_MODELS = {
    **{f"literature.{name}": getattr(literature, name) for name in literature.__all__},
    **{f"sota.{name}": getattr(sota, name) for name in sota.__all__},
}

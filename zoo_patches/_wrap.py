"""Build patched wrappers of larq-zoo factories without copying them."""

import functools


def patched(factory):
    """Wrap a larq-zoo factory: same arguments plus `kernel_regularizer=` (None: unpatched)."""

    @functools.wraps(factory)
    def build(*args, kernel_regularizer=None, **kwargs):
        from zoo_patches import binary_layers, make_loadable, patch_model

        model = factory(*args, **kwargs)
        make_loadable(model)  # QuickNet's blur pool initializer: loadable from h5 too
        if kernel_regularizer is None:
            return model

        # Some zoo models (XNORNet) already put an L2 on their binary kernels: replace it by
        # rebuilding (in-place patching cannot remove a layer loss).
        existing = any(getattr(layer, attr) is not None for layer, _, attr in binary_layers(model))
        return patch_model(model, kernel_regularizer, clone=existing)

    build.__doc__ = (
        f"larq-zoo's `{factory.__module__}.{factory.__name__}` with `kernel_regularizer` on every "
        "binary layer (see `zoo_patches.patch_model`). Takes larq-zoo's arguments plus "
        "`kernel_regularizer=`; weights are larq-zoo's, untouched; the model loads from h5, "
        "SavedModel and .keras.\n\n" + (factory.__doc__ or "")
    )
    return build


def wrap_module(source, namespace):
    """Put a patched wrapper of every name in `source.__all__` into `namespace`."""
    for name in source.__all__:
        namespace[name] = patched(getattr(source, name))
    return list(source.__all__)

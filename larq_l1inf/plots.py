"""Figures of a run: training curves, first-binary-conv feature maps (the paper's fig. 4) and
latent weight histograms (fig. 7), written as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display, no change of
the user's matplotlib backend) and written atomically: a failed plot leaves no file behind.
"""

import csv
import logging
import math
import os
import tempfile

import numpy as np

from larq_l1inf._keras import tf
from larq_l1inf import kernels

log = logging.getLogger(__name__)

__all__ = ["binary_layers", "feature_maps", "first_binary_conv", "first_binary_conv_outputs",
           "read_history",
           "training_curves", "weight_histograms"]


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    """Write the figure as PNG to `path` via a temporary file, so no partial file remains."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".png", dir=directory)
    os.close(handle)
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def binary_layers(model):
    """The layers of a model with a binary kernel quantizer, in the model's order.

    "Binary" is decided as larq does (`larq_l1inf.kernels.is_binary`: the kernel
    quantizer's `precision == 1`); nested models are searched too.

    # Arguments
    model: a Keras model.

    # Returns
    A list of layers.
    """
    return [layer for layer in kernels.model_layers(model) if kernels.is_binary(layer)]


def first_binary_conv(model):
    """The first convolution of a model whose kernel quantizer is binary (`precision == 1`).

    A convolution is a layer with a spatial `kernel_size`: larq's `QuantConv*` and also the
    multi-bit `larq_l1inf.mbn.MBNConv1D`/`MBNConv2D`, whose output (the sum of its base-pair
    convolutions) is then the feature map.

    # Arguments
    model: a Keras model.

    # Returns
    The layer.

    # Raises
    ValueError: when the model has no binary convolution.
    """
    convolutions = (tf.keras.layers.Conv1D, tf.keras.layers.Conv2D, tf.keras.layers.Conv3D,
                    tf.keras.layers.DepthwiseConv2D, tf.keras.layers.SeparableConv1D,
                    tf.keras.layers.SeparableConv2D)
    for layer in binary_layers(model):
        if isinstance(layer, convolutions) or len(getattr(layer, "kernel_size", None) or ()) >= 1:
            return layer
    raise ValueError(f"Model {model.name!r} has no binary convolution (no conv layer with a "
                     "kernel quantizer of precision 1, e.g. larq's ste_sign, and no MBN conv); "
                     "feature maps need one.")


def first_binary_conv_outputs(model, x):
    """The outputs of a model's first binary convolution (before batch norm), at inference.

    # Arguments
    model: a functional or Sequential Keras model.
    x: a batch of inputs.

    # Returns
    `(layer, outputs)`: the layer (`first_binary_conv`) and a NumPy array of its outputs.

    # Raises
    ValueError: when the model has no binary convolution, or the layer cannot be reached
        from the model's input.
    """
    layer = first_binary_conv(model)
    try:
        probe = tf.keras.Model(model.inputs, layer.output)
    except (ValueError, AttributeError) as error:
        raise ValueError(f"Cannot read the output of {layer.name!r} from model "
                         f"{model.name!r} ({error}); the first binary conv must be reachable "
                         "from the model's input (a functional or Sequential model).") from error
    return layer, probe(np.asarray(x, np.float32), training=False).numpy()


# --------------------------------------------------------------------------- training curves


def read_history(history):
    """Per-epoch metrics from a Keras `History`, its `.history` dict or a `CSVLogger` file.

    # Arguments
    history: a `tf.keras.callbacks.History`, a dict metric -> list of per-epoch values, or
        the path of a CSV written by `tf.keras.callbacks.CSVLogger`.

    # Returns
    A dict metric -> float64 array, all of one length (the number of epochs); an `epoch`
    column of a CSV is dropped.

    # Raises
    ValueError: for an empty history, metrics of different lengths or non-numeric values.
    """
    if isinstance(history, tf.keras.callbacks.History):
        history = history.history
    if isinstance(history, (str, os.PathLike)):
        with open(history, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            raise ValueError(f"{os.fspath(history)} holds no epochs; train for at least one "
                             "epoch with tf.keras.callbacks.CSVLogger.")
        history = {key: [row[key] for row in rows] for key in rows[0] if key != "epoch"}
    if not isinstance(history, dict):
        raise TypeError("`history` must be a Keras History, a dict of per-epoch lists or a "
                        f"CSVLogger file, got {type(history).__name__}.")
    try:
        metrics = {str(k): np.asarray(v, dtype=np.float64).reshape(-1) for k, v in history.items()}
    except ValueError as error:
        raise ValueError(f"`history` has non-numeric values ({error}).") from error
    metrics = {k: v for k, v in metrics.items() if v.size}
    if not metrics:
        raise ValueError("`history` is empty: no metric has a value; pass model.fit(...)'s "
                         "History after at least one epoch.")
    lengths = {len(v) for v in metrics.values()}
    if len(lengths) > 1:
        raise ValueError(f"`history`'s metrics have different lengths {sorted(lengths)}; "
                         "pass one run's per-epoch values.")
    return metrics


def training_curves(history, path):
    """Plot loss, accuracy and (if logged) the L1,inf penalty per epoch, train and validation.

    One panel per quantity: `loss`, every accuracy metric (`accuracy`, `sparse_categorical_
    accuracy`, ...) and `l1inf_penalty` (logged by `larq_l1inf.L1InfCallback`), each with
    its `val_` counterpart where present; other metrics get panels of their own.

    !!! example
        ```python
        from larq_l1inf.plots import training_curves
        history = {"loss": [1.2, 0.8, 0.6], "val_loss": [1.3, 1.0, 0.9],
                   "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.45, 0.6, 0.7],
                   "l1inf_penalty": [40.0, 35.0, 33.0]}
        training_curves(history, "curves.png")
        ```

    # Arguments
    history: a Keras `History`, its `.history` dict, or a `CSVLogger` CSV file.
    path: the PNG file to write (directories are created).

    # Returns
    `path`.

    # Raises
    ValueError: for an empty history or one without any metric to plot.
    """
    from matplotlib.ticker import MaxNLocator

    metrics = read_history(history)
    names = [k for k in metrics if not k.startswith("val_") and k not in ("lr", "learning_rate")]
    names += [k[4:] for k in metrics if k.startswith("val_") and k[4:] not in metrics]
    order = {"loss": 0, "l1inf_penalty": 2}
    names = sorted(dict.fromkeys(names), key=lambda k: (order.get(k, 1), k))
    if not names:
        raise ValueError(f"`history` has no metric to plot (keys {sorted(metrics)}).")
    epochs = np.arange(1, len(next(iter(metrics.values()))) + 1)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = _figure(4.2 * columns, 3.2 * rows)
    for k, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, k + 1)
        for key, label, style in ((name, "train", "-o"), ("val_" + name, "validation", "--s")):
            if key in metrics:
                values = metrics[key]
                if not np.all(np.isfinite(values)):
                    log.warning("training_curves: %s has non-finite values (not drawn).", key)
                axes.plot(epochs, values, style, markersize=3, label=label)
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "l1inf_penalty":
            positive = metrics[name][np.isfinite(metrics[name])]
            if positive.size and positive.min() > 0 and positive.max() / positive.min() > 100:
                axes.set_yscale("log")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


# --------------------------------------------------------------------------- feature maps


def _single_input(x, input_shape, what):
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == len(input_shape):
        x = x[None]
    if x.shape[0] != 1 or tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"`{what}` must be one input of shape {tuple(input_shape)} (or a "
                         f"batch of one), got {x.shape}.")
    return x


def _show_input(axes, image):
    if image.ndim <= 2:  # a signal (time, channels)
        axes.plot(image.reshape(image.shape[0], -1), linewidth=0.8)
        axes.set_xticks([])
        return
    image = image[..., 0] if image.shape[-1] == 1 else image
    axes.imshow(np.clip(image, 0, 1), cmap="gray" if image.ndim == 2 else None,
                vmin=0, vmax=1)
    axes.set_xticks([])
    axes.set_yticks([])


def _show_map(axes, fmap, vmin, vmax, cmap):
    if fmap.ndim == 1:  # 1-D conv: a signal over time
        axes.plot(fmap, linewidth=0.8)
        axes.set_ylim(vmin, vmax)
        axes.set_xticks([])
        return None
    image = axes.imshow(fmap, cmap=cmap, vmin=vmin, vmax=vmax)
    axes.set_xticks([])
    axes.set_yticks([])
    return image


def feature_maps(models, x, x_noisy, path, channels=4):
    """Feature maps of each model's first binary convolution for a clean and a noisy input.

    For every model, three rows: the clean input and its feature maps, the noisy input and
    its feature maps (same colour scale per channel), and the absolute change
    `|f(x_noisy) - f(x)|`, where the noise shows up. A robust model changes little (the
    paper's fig. 4 compares them on CIFAR-100). The feature maps are the convolution's
    outputs (before batch normalisation), at inference.

    !!! example
        ```python
        from larq_l1inf.plots import feature_maps  # first: sets up Keras 2 for larq
        import larq as lq
        import numpy as np
        import tensorflow as tf
        inputs = tf.keras.Input((16, 16, 1))
        y = lq.layers.QuantConv2D(4, 3, kernel_quantizer="ste_sign",
                                  kernel_constraint="weight_clip")(inputs)
        model = tf.keras.Model(inputs, y)
        x = np.random.rand(16, 16, 1)
        feature_maps({"baseline": model}, x, x + 0.1, "fmaps.png")
        ```

    # Arguments
    models: a dict name -> Keras model (e.g. `{"baseline": m1, "l1inf": m2}`), or one model.
    x: one clean input, shape = the models' input shape (a batch of one also works).
    x_noisy: the same input with noise.
    path: the PNG file to write.
    channels: how many channels to show (the first ones), or a list of channel indices.

    # Returns
    `path`.

    # Raises
    ValueError: when a model has no binary convolution or an input has the wrong shape.
    """
    if isinstance(models, tf.keras.Model):
        models = {models.name: models}
    if not models:
        raise ValueError("`models` is empty; pass a dict name -> Keras model.")
    rows = []
    for name, model in models.items():
        input_shape = model.inputs[0].shape[1:]
        clean = _single_input(x, input_shape, "x")
        noisy = _single_input(x_noisy, input_shape, "x_noisy")
        layer, maps = first_binary_conv_outputs(model, np.concatenate([clean, noisy]))
        count = maps.shape[-1]
        picked = list(range(min(channels, count))) if isinstance(channels, int) else list(channels)
        if not picked or min(picked) < 0 or max(picked) >= count:
            raise ValueError(f"`channels` must pick some of the {count} channels of "
                             f"{layer.name!r}, got {channels!r}.")
        rows.append((name, layer.name, clean[0], noisy[0], maps[0], maps[1], picked))
    columns = 1 + max(len(r[-1]) for r in rows)
    figure = _figure(1.9 * columns + 0.6, 1.9 * 3 * len(rows))
    grid = figure.add_gridspec(3 * len(rows), columns)
    for m, (name, layer_name, clean, noisy, f_clean, f_noisy, picked) in enumerate(rows):
        change = np.abs(f_noisy - f_clean)
        for r, (label, image, fmaps) in enumerate((("clean", clean, f_clean),
                                                   ("noisy", noisy, f_noisy),
                                                   ("|change|", noisy - clean, change))):
            row = 3 * m + r
            axes = figure.add_subplot(grid[row, 0])
            if r < 2:
                _show_input(axes, image)
            else:
                _show_input(axes, np.abs(image) / max(float(np.abs(image).max()), 1e-12))
            axes.set_ylabel(f"{name}\n{label}", fontsize="small")
            for c, channel in enumerate(picked):
                both = np.stack([f_clean[..., channel], f_noisy[..., channel]])
                if r < 2:
                    vmin, vmax, cmap = float(both.min()), float(both.max()), "viridis"
                else:
                    vmin, vmax, cmap = 0.0, max(float(change[..., channel].max()), 1e-12), "magma"
                axes = figure.add_subplot(grid[row, c + 1])
                _show_map(axes, fmaps[..., channel], vmin, vmax, cmap)
                if row == 3 * m:
                    axes.set_title(f"{layer_name}\nchannel {channel}", fontsize="small")
            if r == 2:
                total = float(change[..., picked].mean())
                figure.axes[-1].set_xlabel(f"mean |change| {total:.3g}", fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


# --------------------------------------------------------------------------- weight histograms


def _latent_kernels(layer):
    """(attribute, latent weights) of a layer's binary kernels."""
    return [("depthwise_kernel" if entry.depthwise else "kernel",
             np.asarray(kernels.latent_kernel(entry.weight)).ravel())
            for entry in kernels.layer_kernels(layer, binary=True)]


def weight_histograms(model, path, bins=60):
    """Histograms of the latent (real-valued) weights of every binary layer.

    The latent weights are what the optimiser updates and `sign` binarizes; their spread
    shows how a penalty shapes training (the paper's fig. 7 compares IR-Net with and
    without the L1,inf constraint on CIFAR-10).

    !!! example
        ```python
        from larq_l1inf.plots import weight_histograms  # first: sets up Keras 2 for larq
        import larq as lq
        import tensorflow as tf
        model = tf.keras.Sequential([
            tf.keras.Input((8, 8, 1)),
            lq.layers.QuantConv2D(4, 3, kernel_quantizer="ste_sign",
                                  kernel_constraint="weight_clip"),
        ])
        weight_histograms(model, "weights.png")
        ```

    # Arguments
    model: a Keras model with larq binary layers.
    path: the PNG file to write.
    bins: number of histogram bins.

    # Returns
    `path`.

    # Raises
    ValueError: when the model has no binary layer.
    """
    layers = binary_layers(model)
    if not layers:
        raise ValueError(f"Model {model.name!r} has no binary layer (no kernel quantizer of "
                         "precision 1, e.g. larq's ste_sign): no latent weights to plot.")
    panels = [(f"{layer.name}" + ("" if attr == "kernel" else f" ({attr})"), w)
              for layer in layers for attr, w in _latent_kernels(layer)]
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = _figure(3.3 * columns, 2.6 * rows)
    for k, (title, weights) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, k + 1)
        axes.hist(weights, bins=bins, color="tab:blue", alpha=0.85)
        axes.set_title(title, fontsize="small")
        axes.text(0.02, 0.97, f"n={weights.size}\nmean={weights.mean():.3g}\n"
                  f"std={weights.std():.3g}", transform=axes.transAxes, va="top",
                  fontsize="x-small")
        axes.set_xlabel("latent weight")
    figure.suptitle(f"{model.name}: latent weights of the binary layers")
    figure.tight_layout()
    return _save(figure, path)

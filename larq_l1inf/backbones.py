"""Backbones for binary networks: ResNet-18/34/20, VGG-small and a 1-D conv net for signals.

One builder per backbone, each taking the BNN variant (`larq_l1inf.variants`), `num_classes`,
`input_shape` and the `kernel_regularizer` that every binary conv gets (e.g.
`L1InfRegularizer(5e-3)`). Inputs are in raw units ([0, 1] pixels); normalisation is the
model's first layer. As in the BNN literature, the first conv, the downsampling shortcuts and
the classifier stay full precision. Builders only build: no training settings.

!!! example
    ```python
    from larq_l1inf import L1InfRegularizer
    from larq_l1inf.backbones import resnet18
    model = resnet18("irnet", num_classes=10, input_shape=(32, 32, 3),
                     kernel_regularizer=L1InfRegularizer(5e-3), width=16)
    ```
"""

import larq as lq  # noqa: F401  (registers the quantizers the variants use)
import numpy as np

from larq_l1inf._keras import tf
from larq_l1inf.variants import get_variant

__all__ = [
    "BACKBONES",
    "NORMALIZATIONS",
    "conv1d_net",
    "demo_net",
    "resnet18",
    "resnet20",
    "resnet34",
    "vgg_small",
]

#: Per-channel (mean, std) of the training sets, in [0, 1] pixel units.
NORMALIZATIONS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _check_common(num_classes, input_shape, rank, width):
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r}.")
    if len(input_shape) != rank + 1 or any(d is not None and d < 1 for d in input_shape):
        kind = "(height, width, channels)" if rank == 2 else "(time, channels)"
        raise ValueError(f"`input_shape` must be {kind}, got {input_shape!r}.")
    if int(width) != width or width < 1:
        raise ValueError(f"`width` must be a positive integer, got {width!r}.")


def _normalize(x, normalization):
    """A fixed Normalization layer from a dataset name or (mean, std); None for no layer."""
    if normalization is None:
        return x
    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"Unknown normalization {normalization!r}; use one of {sorted(NORMALIZATIONS)}, "
                "a (mean, std) pair, or None."
            )
        normalization = NORMALIZATIONS[normalization]
    mean, std = (np.asarray(v, dtype=np.float32) for v in normalization)
    channels = x.shape[-1]
    mean, std = np.broadcast_to(mean, (channels,)), np.broadcast_to(std, (channels,))
    if np.any(std <= 0):
        raise ValueError(f"Normalization std must be > 0, got {std.tolist()}.")
    return tf.keras.layers.Normalization(
        mean=mean.tolist(), variance=(std**2).tolist(), name="normalization"
    )(x)


def _head(x, num_classes, logits):
    x = (tf.keras.layers.GlobalAveragePooling2D if x.shape.rank == 4 else tf.keras.layers.GlobalAveragePooling1D)()(x)
    x = tf.keras.layers.Dense(num_classes, name="logits")(x)
    return x if logits else tf.keras.layers.Activation("softmax", dtype="float32", name="softmax")(x)


def _bn(x):
    return tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)


def _shortcut(x, filters, strides):
    """Identity, or full-precision AvgPool + 1x1 conv + BN when the shape changes (Bi-Real)."""
    if strides == 1 and x.shape[-1] == filters:
        return x
    two_d = x.shape.rank == 4
    if strides > 1:
        pool = tf.keras.layers.AveragePooling2D if two_d else tf.keras.layers.AveragePooling1D
        x = pool(strides, strides=strides, padding="same")(x)
    conv = tf.keras.layers.Conv2D if two_d else tf.keras.layers.Conv1D
    return _bn(conv(filters, 1, use_bias=False)(x))


def _basic_block(x, variant, filters, strides, regularizer):
    """Two 3x3 binary convs; one shortcut per block, or one per conv (Bi-Real, ReActNet)."""
    if variant.per_conv_shortcut:
        out = _bn(variant.binary_conv(x, filters, 3, strides, regularizer))
        out = variant.activation(tf.keras.layers.Add()([out, _shortcut(x, filters, strides)]))
        res = _bn(variant.binary_conv(out, filters, 3, 1, regularizer))
        return variant.activation(tf.keras.layers.Add()([res, out]))
    out = variant.activation(_bn(variant.binary_conv(x, filters, 3, strides, regularizer)))
    out = _bn(variant.binary_conv(out, filters, 3, 1, regularizer))
    return variant.activation(tf.keras.layers.Add()([out, _shortcut(x, filters, strides)]))


def _stem(x, width, stem):
    """Full-precision first conv: CIFAR 3x3/1, or ImageNet 7x7/2 + 3x3/2 max-pool."""
    if stem == "cifar":
        return _bn(tf.keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(x))
    if stem == "imagenet":
        x = _bn(tf.keras.layers.Conv2D(width, 7, strides=2, padding="same", use_bias=False, name="stem_conv")(x))
        return tf.keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    raise ValueError(f"`stem` must be 'cifar' or 'imagenet', got {stem!r}.")


def _resnet(name, blocks, widths, variant, num_classes, input_shape, kernel_regularizer,
            stem, normalization, logits, width, options):
    _check_common(num_classes, input_shape, 2, width)
    variant = get_variant(variant, **options)
    inputs = tf.keras.Input(input_shape)
    x = _stem(_normalize(inputs, normalization), widths[0], stem)
    for stage, (count, filters) in enumerate(zip(blocks, widths)):
        for block in range(count):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, variant, filters, strides, kernel_regularizer)
    return tf.keras.Model(inputs, _head(x, num_classes, logits), name=f"{name}_{variant.name}")


def resnet18(variant="bnn", num_classes=10, input_shape=(32, 32, 3), kernel_regularizer=None,
             stem="cifar", normalization="cifar10", logits=False, width=64, **variant_options):
    """Binary ResNet-18: basic blocks [2, 2, 2, 2] of widths `width * (1, 2, 4, 8)`.

    # Arguments
    variant: a `larq_l1inf.variants` name (`"bnn"`, `"xnor"`, `"dorefa"`, `"bireal"`,
        `"reactnet"`, `"irnet"`, `"abc"`, `"adabin"`, `"cyclebnn"`) or a `Variant`.
    num_classes: number of classes.
    input_shape: `(height, width, channels)`, raw [0, 1] pixels.
    kernel_regularizer: the regularizer of every binary conv (e.g. `L1InfRegularizer`).
    stem: `"cifar"` (3x3 conv, stride 1) or `"imagenet"` (7x7/2 conv + 3x3/2 max-pool).
    normalization: dataset name in `NORMALIZATIONS`, `(mean, std)`, or None.
    logits: end with the Dense logits instead of a softmax.
    width: channels of the first stage (64 in the paper; small values for tests).
    variant_options: the variant's options, e.g. `a_bits=2` for DoReFa.

    # Returns
    A `tf.keras.Model`.

    # Raises
    ValueError: for an unknown variant, stem or normalization, or a bad shape.

    # References
    - K. He, X. Zhang, S. Ren, J. Sun. Deep Residual Learning for Image Recognition. CVPR 2016.
    """
    return _resnet("resnet18", (2, 2, 2, 2), [width * m for m in (1, 2, 4, 8)], variant,
                   num_classes, input_shape, kernel_regularizer, stem, normalization, logits,
                   width, variant_options)


def resnet34(variant="bnn", num_classes=10, input_shape=(32, 32, 3), kernel_regularizer=None,
             stem="cifar", normalization="cifar10", logits=False, width=64, **variant_options):
    """Binary ResNet-34: basic blocks [3, 4, 6, 3] of widths `width * (1, 2, 4, 8)`.

    Arguments as `resnet18`.
    """
    return _resnet("resnet34", (3, 4, 6, 3), [width * m for m in (1, 2, 4, 8)], variant,
                   num_classes, input_shape, kernel_regularizer, stem, normalization, logits,
                   width, variant_options)


def resnet20(variant="bnn", num_classes=10, input_shape=(32, 32, 3), kernel_regularizer=None,
             normalization="cifar10", logits=False, width=16, **variant_options):
    """Binary ResNet-20 for CIFAR (the LCR comparison's backbone): [3, 3, 3] blocks of 16/32/64.

    Arguments as `resnet18` (CIFAR stem only; `width` is the first stage's, 16 by default).

    # References
    - K. He et al. Deep Residual Learning for Image Recognition. CVPR 2016, sec. 4.2.
    """
    return _resnet("resnet20", (3, 3, 3), [width * m for m in (1, 2, 4)], variant, num_classes,
                   input_shape, kernel_regularizer, "cifar", normalization, logits, width,
                   variant_options)


def vgg_small(variant="bnn", num_classes=10, input_shape=(32, 32, 3), kernel_regularizer=None,
              normalization="cifar10", logits=False, width=128, **variant_options):
    """Binary VGG-small: (w)C3 - (w)C3-MP - (2w)C3 - (2w)C3-MP - (4w)C3 - (4w)C3-MP - FC.

    The first conv is full precision; the other five are binary, each followed by
    max-pooling (where the stage ends), BatchNormalization and the variant's activation. It
    has no shortcuts, so `per_conv_shortcut` variants get none either.

    Arguments as `resnet18` (`width` = 128 in the literature).

    # References
    - D. Zhang, J. Yang, D. Ye, G. Hua. LQ-Nets. ECCV 2018 (the VGG-small of BNN papers).
    """
    _check_common(num_classes, input_shape, 2, width)
    variant = get_variant(variant, **variant_options)
    inputs = tf.keras.Input(input_shape)
    x = _bn(tf.keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(
        _normalize(inputs, normalization)))
    for filters, pool in ((width, True), (2 * width, False), (2 * width, True), (4 * width, False), (4 * width, True)):
        x = variant.binary_conv(x, filters, 3, 1, kernel_regularizer)
        if pool:
            x = tf.keras.layers.MaxPooling2D(2, padding="same")(x)
        x = variant.activation(_bn(x))
    x = tf.keras.layers.Flatten()(x)
    x = tf.keras.layers.Dense(num_classes, name="logits")(x)
    if not logits:
        x = tf.keras.layers.Activation("softmax", dtype="float32", name="softmax")(x)
    return tf.keras.Model(inputs, x, name=f"vgg_small_{variant.name}")


def conv1d_net(variant="bnn", num_classes=6, input_shape=(128, 3), kernel_regularizer=None,
               normalization=None, logits=False, width=32, **variant_options):
    """A small binary 1-D conv net for signals (the paper's accelerometer task).

    Full-precision Conv1D(w, 5) + BN, then binary Conv1D(w, 3), Conv1D(2w, 3, stride 2),
    Conv1D(2w, 3), each + BN + activation (with a real-valued shortcut where shapes match for
    `per_conv_shortcut` variants), global average pooling and a Dense classifier. The paper
    only says it replaced the convs of a shallow full-precision net by binary ones; this
    architecture is ours.

    # Arguments
    input_shape: `(time, channels)`.
    normalization: `(mean, std)` per channel, or None (signals have no standard statistics).
    Others as `resnet18` (`width` = 32 by default).
    """
    _check_common(num_classes, input_shape, 1, width)
    variant = get_variant(variant, **variant_options)
    inputs = tf.keras.Input(input_shape)
    x = _bn(tf.keras.layers.Conv1D(width, 5, padding="same", use_bias=False, name="stem_conv")(
        _normalize(inputs, normalization)))
    for filters, strides in ((width, 1), (2 * width, 2), (2 * width, 1)):
        out = _bn(variant.binary_conv(x, filters, 3, strides, kernel_regularizer))
        if variant.per_conv_shortcut:
            out = tf.keras.layers.Add()([out, _shortcut(x, filters, strides)])
        x = variant.activation(out)
    return tf.keras.Model(inputs, _head(x, num_classes, logits), name=f"conv1d_net_{variant.name}")


def demo_net(variant="bnn", num_classes=10, input_shape=(32, 32, 3), kernel_regularizer=None,
             normalization=None, logits=False, width=32, name=None, **variant_options):
    """The demo's small residual BNN: float stem, four binary 3x3 convs, a shortcut around each.

    Float stem (3x3 conv, BatchNormalization, 2x2 max-pool); two binary convs at `width`
    channels; one strided to `2 * width` (shortcut: 2x2 average pool, float 1x1 conv, BN);
    one more at `2 * width`; each binary conv is followed by BN, added to its shortcut
    (Bi-Real style) and passed through the variant's activation; global average pooling and a
    float Dense classifier. With the default `"bnn"` variant LCE turns all four binary convs
    into `LceBconv2d`. It is `larq-l1inf demo`'s model, small enough to train on a CPU.

    !!! example
        ```python
        from larq_l1inf import L1InfRegularizer
        from larq_l1inf.backbones import demo_net
        model = demo_net("bnn", num_classes=10, input_shape=(16, 16, 1),
                         kernel_regularizer=L1InfRegularizer(), width=8)
        ```

    # Arguments
    variant: a `larq_l1inf.variants` name or a `Variant`.
    num_classes: number of classes.
    input_shape: `(height, width, channels)`, height and width divisible by 4.
    kernel_regularizer: the regularizer of every binary conv (e.g. `L1InfRegularizer`).
    normalization: dataset name in `NORMALIZATIONS`, `(mean, std)`, or None (the demo's
        digits are used unnormalised).
    logits: end with the Dense logits instead of a softmax.
    width: channels of the first stage.
    name: model name (default `demo_<variant>`).
    variant_options: the variant's options.

    # Returns
    A `tf.keras.Model`.

    # Raises
    ValueError: for an unknown variant, a bad shape, or height/width not divisible by 4.
    """
    _check_common(num_classes, input_shape, 2, width)
    if any(d is not None and d % 4 for d in input_shape[:2]):
        raise ValueError(
            f"demo_net needs height and width divisible by 4 (one max-pool and one strided "
            f"conv), got input_shape {tuple(input_shape)!r}; resize the images (e.g. 8, 16, 32)."
        )
    variant = get_variant(variant, **variant_options)
    layers = tf.keras.layers
    inputs = tf.keras.Input(input_shape)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(
        _normalize(inputs, normalization))
    x = layers.MaxPool2D(2)(_bn(x))
    for _ in range(2):
        out = _bn(variant.binary_conv(x, width, 3, 1, kernel_regularizer))
        x = variant.activation(layers.add([x, out]))
    out = _bn(variant.binary_conv(x, 2 * width, 3, 2, kernel_regularizer))
    x = variant.activation(layers.add([_shortcut(x, 2 * width, 2), out]))
    out = _bn(variant.binary_conv(x, 2 * width, 3, 1, kernel_regularizer))
    x = variant.activation(layers.add([x, out]))
    return tf.keras.Model(inputs, _head(x, num_classes, logits), name=name or f"demo_{variant.name}")


#: Backbone name -> builder.
BACKBONES = {
    "demo": demo_net,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet20": resnet20,
    "vgg_small": vgg_small,
    "conv1d": conv1d_net,
}

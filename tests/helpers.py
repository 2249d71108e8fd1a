"""Shared test helpers: toy BNNs, NumPy references and a larq-style layer round trip.

Test modules import from here (`from helpers import toy_bnn, ...`; pytest puts `tests/` on
`sys.path`) instead of keeping private copies of the same model or reference.
"""

import os

import larq as lq
import numpy as np

from larq_l1inf._keras import tf

#: A binary conv LCE turns into `LceBconv2d`: sign input and kernel, weight clip, no bias.
BINARY = dict(
    input_quantizer="ste_sign",
    kernel_quantizer="ste_sign",
    kernel_constraint="weight_clip",
    use_bias=False,
)


def toy_bnn(input_shape=(8, 8, 3), num_classes=5, width=8, kernel_regularizer=None,
            float_stem=True, softmax=False, name="toy_bnn"):
    """Float stem (optional), two binary 3x3 convs (one `same` with `pad_values=1`), batch
    norm after each, global average pooling and a float Dense head."""
    inputs = tf.keras.Input(input_shape)
    x = inputs
    if float_stem:
        x = tf.keras.layers.Conv2D(width // 2 or 1, 3, padding="same", use_bias=False)(x)
        x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(width, 3, padding="same", pad_values=1.0,
                              kernel_regularizer=kernel_regularizer, **BINARY)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(width, 3, kernel_regularizer=kernel_regularizer, **BINARY)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(num_classes, activation="softmax" if softmax else None)(x)
    return tf.keras.Model(inputs, outputs, name=name)


def trained_like_batchnorm(model):
    """Give every BatchNormalization non-trivial moving statistics (as after training), so
    comparisons are not of near-constant outputs."""
    for layer in model.submodules:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.3, 0.3, n).astype("float32"))
            layer.moving_variance.assign(np.linspace(0.5, 2.0, n).astype("float32"))
    return model


def random_batchnorm(model, seed=0):
    """Random non-trivial batch-norm statistics and affine parameters (negative scales too),
    as after training: bounds are then checked away from the identity-like initial BN."""
    rng = np.random.default_rng(seed)
    for layer in model.submodules:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, n).astype("float32"))
            layer.gamma.assign(rng.normal(0, 1, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, n).astype("float32"))
    return model


def uniform_inputs(shape, seed=1):
    """Inputs in [0, 1] (the model's pixel units), float32."""
    return np.random.default_rng(seed).uniform(0, 1, shape).astype("float32")


def numpy_rows(w, depthwise=False):
    """A kernel as one row per output channel, by explicit loops (independent of the code)."""
    w = np.asarray(w, np.float64)
    if depthwise:
        kh, kw, c_in, m = w.shape
        return np.array([[w[i, j, c, k] for i in range(kh) for j in range(kw)]
                         for c in range(c_in) for k in range(m)])
    c_out = w.shape[-1]
    return np.array([w[..., o].ravel() for o in range(c_out)])


def numpy_l1inf(w, depthwise=False):
    """max over output channels of the L1 norm of the channel's weights, by loops."""
    best = 0.0
    for row in numpy_rows(w, depthwise):
        best = max(best, sum(abs(v) for v in row))
    return best


def layer_test(layer_cls, kwargs, input_shape, tmp_path, x=None, loss="mse"):
    """larq's `testing_utils.layer_test`, extended: functional model, `from_config`, one
    training step, Sequential, then h5 and SavedModel round trips with equal outputs.

    # Returns
    The functional model's output on `x` (NumPy).
    """
    x = uniform_inputs((2, *input_shape)) if x is None else x
    layer = layer_cls(**kwargs)
    inputs = tf.keras.Input(input_shape)
    model = tf.keras.Model(inputs, layer(inputs))
    expected = model.predict(x, verbose=0)
    clone = layer_cls.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    model.compile("sgd", loss)
    model.train_on_batch(x, expected)
    expected = model.predict(x, verbose=0)
    sequential = tf.keras.Sequential([tf.keras.Input(input_shape), layer_cls(**kwargs)])
    assert sequential.predict(x, verbose=0).shape == expected.shape
    for name in ("model.h5", "saved_model"):
        path = os.path.join(str(tmp_path), name)
        model.save(path)
        loaded = tf.keras.models.load_model(path)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    return expected


def subprocess_env(**extra):
    """The environment of a child Python process running this checkout's `larq_l1inf` on
    CPU, quiet, with Keras 2: `os.environ` plus `extra`."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="",
                TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)

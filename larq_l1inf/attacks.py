"""Gradient attacks for robustness evaluation: FGSM and L-inf PGD, for any Keras model.

Gradients are taken with respect to the input through the model as it trains, so larq's
straight-through estimators (STE) carry them past `sign`-type quantizers. A BNN evaluated
this way is not falsely "robust" because `sign` has zero derivative almost everywhere
(gradient masking; Frickenstein et al., "Adversarial Robustness of Multi-bit Convolutional
Neural Networks", IntelliSys 2023, section 3.2).

Inputs are batches of images (N, H, W, C), of 1-D signals (N, T, C) or of vectors: the
attacks never look at the layout.
"""

import logging

import numpy as np

from larq_l1inf._keras import tf
from larq_l1inf.utils import ends_in_softmax, renamed_arguments, resolve_verbose

log = logging.getLogger(__name__)

__all__ = ["fgsm", "pgd", "input_gradient"]


def _labels(y, n):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)  # one-hot
    y = y.reshape(-1)
    if len(y) != n:
        raise ValueError(f"`x` has {n} samples but `y` has {len(y)} labels; pass matching arrays.")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("`y` must hold integer class labels or one-hot rows.")
        y = y.astype(np.int64)
    return y


def _loss_fn(model, from_logits):
    if from_logits is None:
        from_logits = not ends_in_softmax(model)
    ce = tf.keras.losses.SparseCategoricalCrossentropy(
        from_logits=from_logits, reduction=tf.keras.losses.Reduction.NONE
    )
    # Summed over the batch: every sample's gradient is its own loss's gradient.
    return lambda y, out: tf.reduce_sum(ce(y, out))


def _check_inputs(model, x, epsilon):
    if not isinstance(model, tf.keras.Model):
        raise TypeError(
            f"Attacks need a Keras model to differentiate, got {type(model).__name__}. "
            "For a flatbuffer, attack its Keras model and evaluate the flatbuffer on the "
            "adversarial inputs (evaluation.evaluate does this)."
        )
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"`x` must be floating point, got {x.dtype}; cast it first.")
    epsilon = float(epsilon)
    if not epsilon >= 0:
        raise ValueError(f"`epsilon` must be >= 0, got {epsilon}.")
    return x.astype(np.float32, copy=False), epsilon


def _clip(x, clip):
    if clip is None:
        return x
    lo, hi = clip
    return tf.clip_by_value(x, lo, hi)


def _progress_to_verbose(progress):
    return "auto" if progress is None else int(bool(progress))


def input_gradient(model, x, y, from_logits=None):
    """Gradient of the summed cross-entropy with respect to the input `x`.

    Taken in inference mode (`training=False`, BatchNorm uses its moving statistics) and
    through larq's STE pseudo-gradients.

    # Arguments
    model: a Keras classifier (logits or softmax output, auto-detected).
    x: float inputs (N, ...).
    y: integer labels (N,) or one-hot (N, classes).
    from_logits: whether the outputs are logits; None detects a final softmax.

    # Returns
    A NumPy array of the shape of `x`.

    # Raises
    TypeError: for a model that is not a Keras model, or non-float inputs.
    ValueError: for mismatched `x` and `y`.
    """
    x, _ = _check_inputs(model, x, 0.0)
    y = _labels(y, len(x))
    loss_fn = _loss_fn(model, from_logits)
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = loss_fn(y, model(x, training=False))
    return tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO).numpy()


def _make_step(model, loss_fn, step_size, epsilon, clip):
    @tf.function(reduce_retracing=True)
    def step(x_adv, x0, y):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = loss_fn(y, model(x_adv, training=False))
        grad = tape.gradient(loss, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        flat = tf.reshape(tf.abs(grad), [tf.shape(grad)[0], -1])
        zero = tf.reduce_sum(tf.cast(tf.reduce_max(flat, axis=1) == 0, tf.int32))
        x_adv = x_adv + step_size * tf.sign(grad)
        x_adv = tf.clip_by_value(x_adv, x0 - epsilon, x0 + epsilon)
        return _clip(x_adv, clip), zero

    return step


def pgd(model, x, y, epsilon, step_size=None, iterations=20, random_start=True, clip=None,
        from_logits=None, seed=None, batch_size=128, verbose="auto", **deprecated):
    r"""L-inf projected gradient descent (Madry et al.), batched, for any Keras model.

    $$x^{t+1} = \Pi_{\|x' - x\|_\infty \le \epsilon}\left(x^t + \alpha\,
    \mathrm{sign}(\nabla_x \mathcal{L}(f(x^t), y))\right),\quad
    x^0 = x + U(-\epsilon, \epsilon)$$

    Gradients flow through larq's STE pseudo-gradients (inference mode), see the module
    docstring. The protocol of Frickenstein et al. (section 4.1): uniform random start,
    step `epsilon / 4`, 20 or 50 iterations.

    !!! example
        ```python
        import larq_l1inf  # before TensorFlow: selects Keras 2
        import numpy as np
        import tensorflow as tf
        from larq_l1inf.attacks import pgd

        model = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Flatten(),
                                     tf.keras.layers.Dense(10)])
        x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
        x_adv = pgd(model, x, np.arange(16) % 10, epsilon=4 / 255, iterations=20, seed=0)
        ```

    # Arguments
    model: a Keras classifier (logits or softmax output, auto-detected).
    x: float inputs: images (N, H, W, C), 1-D signals (N, T, C), or any (N, ...).
    y: integer labels (N,) or one-hot (N, classes).
    epsilon: L-inf radius.
    step_size: step `alpha`; default `epsilon / 4`.
    iterations: number of steps (PGD-20 or PGD-50 in Frickenstein et al.).
    random_start: start from a uniform random point of the ball (True) or from `x`.
    clip: optional `(lo, hi)` valid input range to project onto as well (e.g. `(0, 1)`);
        None does not clip (as the environmental noise).
    from_logits: whether the outputs are logits; None detects a final softmax.
    seed: int seed of the random start.
    batch_size: samples per gradient computation.
    verbose: 0 silent, 1 a Keras progress bar over batches, 2 one line at the end;
        `"auto"` shows the bar for more than 10 batches. (`progress` is its deprecated name.)

    # Returns
    Adversarial inputs, a float32 NumPy array with `|x_adv - x| <= epsilon`.

    # Raises
    TypeError: for a model that is not a Keras model, or non-float inputs.
    ValueError: for negative epsilon / iterations / step, or mismatched `x` and `y`.

    # References
    - [Towards Deep Learning Models Resistant to Adversarial Attacks](
      https://arxiv.org/abs/1706.06083) (Madry et al., 2018)
    - [Adversarial Robustness of Multi-bit Convolutional Neural Networks](
      https://doi.org/10.1007/978-3-031-47715-7_12) (Frickenstein et al., IntelliSys 2023):
      STE gradients without gradient obfuscation (section 3.2), the worst-case step
      `epsilon / 4` (section 4.1).
    """
    if "progress" in deprecated:
        deprecated["progress"] = _progress_to_verbose(deprecated["progress"])
    verbose = renamed_arguments(deprecated, {"progress": "verbose"}, "pgd").get("verbose",
                                                                                verbose)
    x, epsilon = _check_inputs(model, x, epsilon)
    y = _labels(y, len(x))
    iterations = int(iterations)
    if iterations < 0:
        raise ValueError(f"`iterations` must be >= 0, got {iterations}.")
    step_size = epsilon / 4 if step_size is None else float(step_size)
    if step_size < 0:
        raise ValueError(f"`step_size` must be >= 0, got {step_size}.")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    verbose = resolve_verbose(verbose, auto=len(x) > 10 * batch_size)
    step = _make_step(model, _loss_fn(model, from_logits), step_size, epsilon, clip)
    rng = np.random.default_rng(seed)
    out = np.empty_like(x)
    zero_gradient = 0
    bar = tf.keras.utils.Progbar(len(x), verbose=verbose, unit_name="sample") if verbose else None
    for start in range(0, len(x), batch_size):
        x0 = x[start:start + batch_size]
        yb = tf.constant(y[start:start + batch_size])
        x_adv = x0
        if random_start and epsilon > 0:
            x_adv = x0 + rng.uniform(-epsilon, epsilon, size=x0.shape).astype(np.float32)
        x0_t = tf.constant(x0)
        x_adv = _clip(tf.constant(x_adv), clip)
        for i in range(iterations):
            x_adv, zero = step(x_adv, x0_t, yb)
            if i == 0:
                zero_gradient += int(zero)
        out[start:start + batch_size] = x_adv.numpy()
        if bar is not None:
            bar.add(len(x0))
    if iterations and zero_gradient > len(x) // 2:
        log.warning(
            "PGD: the input gradient was exactly zero for %d of %d samples, so the attack "
            "could not move them and its accuracy overstates robustness (gradient masking). "
            "Use quantizers with straight-through gradients (larq's ste_sign) rather than "
            "tf.sign, and check that inputs lie where the STE passes gradients (|x| <= 1).",
            zero_gradient, len(x),
        )
    return out


def fgsm(model, x, y, epsilon, clip=None, from_logits=None, batch_size=128, verbose="auto",
         **deprecated):
    r"""Fast gradient sign method: one step of size epsilon.

    $$x' = x + \epsilon\,\mathrm{sign}(\nabla_x \mathcal{L}(f(x), y))$$

    Same arguments and gradient path as `pgd` (it is `pgd` with one step of size epsilon
    and no random start). `progress` is the deprecated name of `verbose`.

    # Returns
    Adversarial inputs, a float32 NumPy array with `|x_adv - x| <= epsilon`.

    # References
    - [Explaining and Harnessing Adversarial Examples](https://arxiv.org/abs/1412.6572)
      (Goodfellow et al., 2015)
    """
    if "progress" in deprecated:
        deprecated["progress"] = _progress_to_verbose(deprecated["progress"])
    verbose = renamed_arguments(deprecated, {"progress": "verbose"}, "fgsm").get("verbose",
                                                                                 verbose)
    return pgd(model, x, y, epsilon, step_size=epsilon, iterations=1, random_start=False,
               clip=clip, from_logits=from_logits, batch_size=batch_size, verbose=verbose)

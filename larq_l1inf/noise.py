"""Input noise for robustness evaluation and noise-augmented training.

Algorithm 1 of the paper's appendix ("environmental noise") plus Gaussian, uniform
(L-inf bounded) and impulse (salt-and-pepper) noise, all with the same interface
`noise(x, epsilon, *, seed=None, **kwargs) -> tf.Tensor`, for batches of images (NHWC) and
of 1-D signals (NWC). `epsilon` is the noise strength: Algorithm 1's shift (a number or a
`(lo, hi)` range), the Gaussian sigma, the uniform radius, the impulse amount. Every
function is vectorized in TensorFlow, draws with stateless random ops, and is reproducible:
the same seed gives the same noise.

The same noises are available as a `tf.data` transformation (`noisy_dataset`) and as a
Keras preprocessing layer (`InputNoise`).
"""

import logging
import numbers

import numpy as np
from larq.utils import register_keras_custom_object

from larq_l1inf._keras import tf
from larq_l1inf.utils import renamed_arguments

log = logging.getLogger(__name__)

__all__ = [
    "environmental_noise",
    "seed_pair",
    "environmental_noise_loop",
    "gaussian_noise",
    "uniform_noise",
    "impulse_noise",
    "get",
    "noisy_dataset",
    "InputNoise",
    "NOISE_RANGES",
]

#: Algorithm 1 epsilon ranges of the paper (method.md), in the model's input units.
NOISE_RANGES = {
    "cifar10": (1 / 255, 4 / 255),
    "cifar100": (1 / 255, 4 / 255),
    "imagenet": (1 / 255, 4 / 255),
    "mri": (0.05, 0.1),
    "accelerometer": (0.4, 0.8),
}


# --------------------------------------------------------------------------- helpers


def seed_pair(seed):
    """A stateless seed tensor `[2]`: turn `None`, an int, a pair or a shape-[2] tensor into a stateless seed tensor."""
    if seed is None:
        # Not reproducible on purpose: the caller asked for fresh noise.
        seed = np.random.randint(0, 2**31 - 1, size=2)
    if isinstance(seed, numbers.Integral):
        return tf.constant([int(seed), 0], dtype=tf.int64)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise TypeError(f"`seed` must be an int, a pair of ints or None, got dtype {seed.dtype}.")
    if seed.shape.rank == 0:
        return tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    if seed.shape.rank != 1 or (seed.shape[0] is not None and seed.shape[0] != 2):
        raise ValueError(f"`seed` must be an int or a pair of ints, got shape {seed.shape}.")
    return tf.cast(seed, tf.int64)


def _sub_seeds(seed, n):
    """`n` independent stateless seeds derived from one seed."""
    return tf.unstack(tf.random.experimental.stateless_split(seed_pair(seed), num=n))


def _as_float_input(x, name="x"):
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise TypeError(
            f"`{name}` must be a floating point tensor (got {x.dtype.name}); cast it first, "
            "e.g. `tf.cast(x, tf.float32) / 255.0` for 8-bit images."
        )
    rank = x.shape.rank
    if rank not in (3, 4):
        raise ValueError(
            f"`{name}` must be a batch of images (N, H, W, C) or of 1-D signals (N, T, C); "
            f"got rank {rank} with shape {x.shape}. Add the batch axis with "
            "`x[None]` for a single sample and the channel axis with `x[..., None]`."
        )
    return x


def _spatial_dims(x):
    """Static spatial sizes (H, W) for images or (T,) for signals; checks they have an interior."""
    dims = list(x.shape[1:-1])
    if any(d is None for d in dims):
        raise ValueError(
            f"The spatial size of `x` must be known statically, got shape {x.shape}; "
            "set it with `x = tf.ensure_shape(x, ...)` or batch a dataset with known shapes."
        )
    if any(d < 3 for d in dims):
        kind = "image" if len(dims) == 2 else "signal"
        raise ValueError(
            f"Algorithm 1 perturbs only interior positions, so every spatial size must be "
            f">= 3; got a {kind} of spatial shape {tuple(dims)}."
        )
    return dims


def _check_epsilon(epsilon):
    """Return (lo, hi, is_range) for a float or a (lo, hi) pair."""
    if isinstance(epsilon, numbers.Real):
        return float(epsilon), float(epsilon), False
    try:
        lo, hi = epsilon
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise TypeError(
            f"`epsilon` must be a float or a (lo, hi) pair of floats, got {epsilon!r}."
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"`epsilon` must be finite, got ({lo}, {hi}).")
    if lo > hi:
        raise ValueError(f"`epsilon` range must have lo <= hi, got ({lo}, {hi}); swap them.")
    return lo, hi, True


def _check_prob(prob, name="prob"):
    prob = float(prob)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1], got {prob}.")
    return prob


def _default_points(dims):
    return int(np.prod([d - 2 for d in dims]))


def _check_points(points, dims):
    if points is None:
        return _default_points(dims)
    if isinstance(points, bool) or not isinstance(points, numbers.Integral):
        raise TypeError(f"`points` must be a non-negative int or None, got {points!r}.")
    if points < 0:
        raise ValueError(f"`points` must be >= 0 (number of draws per sample), got {points}.")
    return int(points)


# ------------------------------------------------------------------ Algorithm 1 core


def _draw_environmental(n, dims, points, lo, hi, prob, seed, dtype):
    """Draw Algorithm 1's random quantities for `n` samples.

    # Returns
    `(cells, shifts)`: `cells` is an int32 `(n, points)` tensor of interior cells, the
    row-major index into the interior grid of shape `[d - 2 for d in dims]`; `shifts` a
    `(n, points)` tensor, equal to the drawn epsilon where the draw is kept and 0 where it
    is dropped.
    """
    s_cell, s_keep = _sub_seeds(seed, 2)
    shape = tf.stack([n, points])
    # One uniform cell of the interior grid = independent uniform row 1..h-2 and col 1..w-2.
    cells = tf.random.stateless_uniform(
        shape, s_cell, minval=0, maxval=int(np.prod([d - 2 for d in dims])), dtype=tf.int32
    )
    if prob == 0.0:
        return cells, tf.zeros(shape, dtype)
    # keep: u < prob (`np.random.random() <= 0.5` in the appendix). Given keep, u / prob is
    # U[0, 1) and independent of the keep decision, so it draws epsilon ~ U[lo, hi] per kept
    # draw (method.md) from the same uniform, saving a random tensor of n * P values.
    u = tf.random.stateless_uniform(shape, s_keep, dtype=dtype)
    eps = lo + (hi - lo) * tf.minimum(u / prob, 1.0)
    shifts = tf.where(u < prob, eps, tf.zeros_like(eps))
    return cells, shifts


def _cells_to_positions(cells, dims):
    """Per-axis positions (1..d-2) of interior cells, as NumPy arrays."""
    inner = [d - 2 for d in dims]
    return [p + 1 for p in np.unravel_index(np.asarray(cells), inner)]


def _apply_point_shifts(x, cells, shifts):
    """Add `shifts[i, p]` to every channel of sample i at interior cell `cells[i, p]`.

    Vectorized scatter-add into the interior grid, then padded by the untouched border: a
    cell drawn twice is shifted twice, as the appendix's loop does. No clipping (method.md).
    """
    x = tf.convert_to_tensor(x)
    dims = list(x.shape[1:-1])
    inner = [d - 2 for d in dims]
    size = int(np.prod(inner))
    n = tf.shape(x)[0]
    # Half-precision sums would lose small shifts; accumulate in float32 at least.
    acc = x.dtype if x.dtype in (tf.float32, tf.float64) else tf.float32
    weights = tf.reshape(tf.cast(shifts, acc), [-1])
    if x.shape[0] is not None and x.shape[0] * size < 2**31:
        # bincount on int32 indices is several times faster than an int64 segment sum.
        flat = tf.cast(cells, tf.int32) + tf.range(n)[:, None] * size
        delta = tf.math.bincount(tf.reshape(flat, [-1]), weights=weights,
                                 minlength=x.shape[0] * size, maxlength=x.shape[0] * size,
                                 dtype=acc)
    else:  # unknown batch size (inside tf.data) or more than 2**31 cells
        flat = tf.cast(cells, tf.int64) + tf.cast(tf.range(n), tf.int64)[:, None] * size
        delta = tf.math.unsorted_segment_sum(weights, tf.reshape(flat, [-1]),
                                             tf.cast(n, tf.int64) * size)
    delta = tf.reshape(tf.cast(delta, x.dtype), tf.concat([[n], inner, [1]], axis=0))
    delta = tf.pad(delta, [[0, 0]] + [[1, 1]] * len(dims) + [[0, 0]])
    return x + delta


def _apply_point_shifts_loop(x, positions, shifts):
    """Literal per-point loop of `_apply_point_shifts` (NumPy); the test reference."""
    x = np.array(x, copy=True)
    positions = [np.asarray(p) for p in positions]
    shifts = np.asarray(shifts)
    for i in range(x.shape[0]):
        for p in range(shifts.shape[1]):
            idx = tuple(int(pos[i, p]) for pos in positions)
            x[(i,) + idx] = x[(i,) + idx] + shifts[i, p]
    return x


def environmental_noise(x, epsilon, points=None, prob=0.5, seed=None):
    r"""Environmental noise of the paper's Algorithm 1, vectorized.

    For every sample, draw `points` positions uniformly from the interior (rows `1..h-2`,
    columns `1..w-2`, i.e. `randint(1, h - 1)`), with replacement; keep each draw with
    probability `prob`; add epsilon to every channel of a kept position. A position drawn
    twice is perturbed twice, as the appendix's loop does.

    $$x'_{n, r, c, :} = x_{n, r, c, :} + \sum_{p:\ (r_p, c_p) = (r, c)} k_p\, \epsilon_p,
    \quad k_p \sim \mathrm{Bernoulli}(\mathrm{prob}),\ \epsilon_p \sim U[lo, hi]$$

    Decisions where the paper is silent (see `method.md`): epsilon is drawn per kept
    position, no clipping, noise in the model's input units, and `points` defaults to
    `(h-2)*(w-2)`, so about half of the interior positions are kept. For 1-D signals
    (N, T, C) the same happens on the time axis with interior `1..T-2`.

    !!! example
        ```python
        import larq_l1inf  # before TensorFlow: selects Keras 2
        import tensorflow as tf
        from larq_l1inf.noise import environmental_noise

        x = tf.random.uniform((8, 32, 32, 3))
        x_noisy = environmental_noise(x, (1 / 255, 4 / 255), seed=0)
        ```

    # Arguments
    x: float tensor (N, H, W, C) (images) or (N, T, C) (1-D signals). H, W, T >= 3.
    epsilon: a float (constant shift) or a pair `(lo, hi)` with `lo <= hi`
        (a shift drawn from `U[lo, hi]` for every kept draw).
    points: number of draws `P` per sample (>= 0); default `(h-2)*(w-2)` or `T-2`.
    prob: probability of keeping a draw (the appendix uses 0.5).
    seed: int, pair of ints, or None (fresh, non-reproducible noise).

    # Returns
    The noisy tensor, same shape and dtype as `x`.

    # Raises
    ValueError: for a wrong rank, a spatial size below 3, `lo > hi`, negative `points` or
        a `prob` outside [0, 1]. TypeError: for a non-float `x`.

    # References
    - Appendix A, Algorithm 1 ("Model with Environmental Noise Perturbations during
      Inference") of the L1,inf-norm BNN robustness paper.
    """
    x = _as_float_input(x)
    dims = _spatial_dims(x)
    lo, hi, _ = _check_epsilon(epsilon)
    points = _check_points(points, dims)
    prob = _check_prob(prob)
    cells, shifts = _draw_environmental(tf.shape(x)[0], dims, points, lo, hi, prob, seed, x.dtype)
    return _apply_point_shifts(x, cells, shifts)


def environmental_noise_loop(x, epsilon, points=None, prob=0.5, rng=None):
    """The appendix's Algorithm 1 as written: a NumPy loop over samples and draws.

    Slow by design: it is the literal reference for tests and the baseline of
    `benchmarks/noise_vectorization.py`. It draws with `rng` in the appendix's order
    (row, column, keep, epsilon), so it cannot reproduce the TensorFlow stream of
    `environmental_noise`; both follow the same distribution.

    # Arguments
    x: array (N, H, W, C) or (N, T, C).
    epsilon: float or `(lo, hi)` pair, as in `environmental_noise`.
    points: draws per sample, default `(h-2)*(w-2)` or `T-2`.
    prob: keep probability.
    rng: a `numpy.random.Generator` or an int seed.

    # Returns
    A new NumPy array with the noise added.
    """
    x = np.array(x, copy=True)
    if x.ndim not in (3, 4):
        raise ValueError(f"`x` must have rank 3 or 4, got shape {x.shape}.")
    dims = list(x.shape[1:-1])
    if min(dims) < 3:
        raise ValueError(f"Spatial sizes must be >= 3, got {tuple(dims)}.")
    lo, hi, _ = _check_epsilon(epsilon)
    points = _check_points(points, dims)
    prob = _check_prob(prob)
    rng = np.random.default_rng(rng)
    for j in range(x.shape[0]):
        for _ in range(points):
            idx = tuple(int(rng.integers(1, d - 1)) for d in dims)
            if rng.random() < prob:
                eps = lo if lo == hi else rng.uniform(lo, hi)
                x[(j,) + idx] = x[(j,) + idx] + eps
    return x


# ------------------------------------------------------------------- other families


def gaussian_noise(x, sigma, seed=None):
    r"""Additive Gaussian noise, independent per element: $x' = x + \sigma z$, $z \sim N(0, 1)$.

    # Arguments
    x: float tensor (N, H, W, C) or (N, T, C).
    sigma: standard deviation (>= 0).
    seed: int, pair of ints, or None.

    # Returns
    The noisy tensor (no clipping).
    """
    x = _as_float_input(x)
    sigma = float(sigma)
    if sigma < 0:
        raise ValueError(f"`sigma` must be >= 0, got {sigma}.")
    z = tf.random.stateless_normal(tf.shape(x), seed_pair(seed), dtype=x.dtype)
    return x + sigma * z


def uniform_noise(x, epsilon, seed=None):
    r"""Additive uniform noise in the L-inf ball: $x' = x + u$, $u \sim U[-\epsilon, \epsilon]$.

    # Arguments
    x: float tensor (N, H, W, C) or (N, T, C).
    epsilon: radius of the L-inf ball (>= 0).
    seed: int, pair of ints, or None.

    # Returns
    The noisy tensor; `|x' - x| <= epsilon` elementwise (no clipping).
    """
    x = _as_float_input(x)
    epsilon = float(epsilon)
    if epsilon < 0:
        raise ValueError(f"`epsilon` must be >= 0, got {epsilon}.")
    u = tf.random.stateless_uniform(
        tf.shape(x), seed_pair(seed), minval=-epsilon, maxval=epsilon, dtype=x.dtype
    )
    return x + u


def impulse_noise(x, amount, seed=None, low=0.0, high=1.0, salt_ratio=0.5):
    """Impulse (salt-and-pepper) noise: a fraction `amount` of positions set to `low`/`high`.

    A hit position has all its channels set (a dead or saturated pixel / sample), to `high`
    with probability `salt_ratio` and to `low` otherwise.

    # Arguments
    x: float tensor (N, H, W, C) or (N, T, C).
    amount: probability in [0, 1] that a position is hit.
    seed: int, pair of ints, or None.
    low: "pepper" value (input units, e.g. 0.0 for pixels in [0, 1]).
    high: "salt" value.
    salt_ratio: probability in [0, 1] that a hit is salt.

    # Returns
    The noisy tensor.
    """
    x = _as_float_input(x)
    amount = _check_prob(amount, "amount")
    salt_ratio = _check_prob(salt_ratio, "salt_ratio")
    s_hit, s_salt = _sub_seeds(seed, 2)
    shape = tf.concat([tf.shape(x)[:-1], [1]], axis=0)
    hit = tf.random.stateless_uniform(shape, s_hit, dtype=x.dtype) < amount
    salt = tf.random.stateless_uniform(shape, s_salt, dtype=x.dtype) < salt_ratio
    value = tf.where(salt, tf.constant(high, x.dtype), tf.constant(low, x.dtype))
    return tf.where(hit, value, x)


_NOISES = {
    "environmental": environmental_noise,
    "gaussian": gaussian_noise,
    "uniform": uniform_noise,
    "impulse": impulse_noise,
}


def get(identifier):
    """A noise function by name, or a callable passed through.

    # Arguments
    identifier: `"environmental"`, `"gaussian"`, `"uniform"`, `"impulse"`, or a callable
        `f(x, epsilon, seed=None, **kwargs)`.

    # Returns
    The noise function.

    # Raises
    ValueError: for an unknown name.
    """
    if callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier in _NOISES:
        return _NOISES[identifier]
    raise ValueError(
        f"Unknown noise {identifier!r}; use one of {sorted(_NOISES)} or a callable "
        "`f(x, epsilon, seed=None)`."
    )


# ---------------------------------------------------------------- tf.data and Keras


def noisy_dataset(dataset, noise="environmental", epsilon=None, seed=0, batched=True, **kwargs):
    """Add noise to the inputs of a `tf.data.Dataset`, reproducibly.

    The element with index i gets the stateless seed `(seed, i)`, so the noise does not
    depend on parallelism, and two passes over the dataset see the same noise.

    !!! example
        ```python
        import larq_l1inf  # before TensorFlow: selects Keras 2
        import numpy as np
        import tensorflow as tf
        from larq_l1inf.noise import noisy_dataset

        x = np.random.default_rng(0).random((64, 8, 8, 3)).astype("float32")
        ds = tf.data.Dataset.from_tensor_slices((x, np.arange(64))).batch(32)
        ds = noisy_dataset(ds, "environmental", epsilon=(0.05, 0.1), seed=1)
        ```

    # Arguments
    dataset: elements `x` or tuples `(x, y, ...)` whose first entry is the input.
    noise: name or callable, see `get`.
    epsilon: the noise strength (Algorithm 1's epsilon or `(lo, hi)`, sigma, radius, amount).
    seed: int; the base seed.
    batched: whether elements are batches (N, ...); if False each element is one
        sample and gets a batch axis added and removed around the noise.
    **kwargs: further keyword arguments of the noise function (e.g. `points`, `prob`).
        `level` is the deprecated name of `epsilon`.

    # Returns
    The mapped dataset.

    # Raises
    ValueError: without `epsilon`. TypeError: for a seed that is not an int.
    """
    if "level" in kwargs:
        epsilon = renamed_arguments({"level": kwargs.pop("level")}, {"level": "epsilon"},
                                    "noisy_dataset")["epsilon"]
    if epsilon is None:
        raise ValueError("`epsilon` is required: the strength of the noise (epsilon, "
                         "`(lo, hi)`, sigma, amount).")
    fn = get(noise)
    if not isinstance(seed, numbers.Integral):
        raise TypeError(f"`seed` must be an int for a dataset, got {seed!r}.")

    def add(i, element):
        x, rest = (element[0], element[1:]) if isinstance(element, tuple) else (element, None)
        s = tf.stack([tf.constant(int(seed), tf.int64), tf.cast(i, tf.int64)])
        if batched:
            x = fn(x, epsilon, seed=s, **kwargs)
        else:
            x = fn(x[None], epsilon, seed=s, **kwargs)[0]
        return x if rest is None else (x, *rest)

    def unpack(i, *element):
        return add(i, element if len(element) > 1 else element[0])

    return dataset.enumerate().map(unpack, num_parallel_calls=tf.data.AUTOTUNE)


@register_keras_custom_object
class InputNoise(tf.keras.layers.Layer):
    """Keras preprocessing layer that adds one of this module's noises to its input.

    With `training_only=True` (default) the noise is applied only when the layer is called
    with `training=True` (noise-augmented training) and the layer is the identity at
    inference; with `training_only=False` it is always applied (e.g. to evaluate a model
    under noise end-to-end). Each call draws a fresh seed from a generator created from
    `seed`, so a run is reproducible.

    !!! example
        ```python
        import larq_l1inf  # before TensorFlow: selects Keras 2
        import tensorflow as tf
        from larq_l1inf.noise import InputNoise

        model = tf.keras.Sequential([
            tf.keras.layers.Input((8, 8, 1)),
            InputNoise("environmental", epsilon=(0.05, 0.1), seed=0),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(10),
        ])
        ```

    # Arguments
    noise: `"environmental"`, `"gaussian"`, `"uniform"` or `"impulse"`.
    epsilon: the noise strength (Algorithm 1's epsilon or `(lo, hi)`, sigma, radius,
        amount).
    seed: int or None.
    training_only: apply only in training (True) or always (False).
    noise_kwargs: dict of further keyword arguments of the noise function.
    **kwargs: Keras layer arguments (`name`, `dtype`, ...). `level` is the deprecated
        name of `epsilon` (configurations saved by version 0.1.0 use it).

    # Raises
    TypeError: for a `noise` that is not a name. ValueError: without `epsilon`, or an
        Algorithm 1 range with `lo > hi`.
    """

    def __init__(
        self, noise="environmental", epsilon=None, seed=None, training_only=True,
        noise_kwargs=None, **kwargs,
    ):
        if "level" in kwargs:
            epsilon = renamed_arguments({"level": kwargs.pop("level")}, {"level": "epsilon"},
                                        "InputNoise")["epsilon"]
        super().__init__(**kwargs)
        if not isinstance(noise, str):
            raise TypeError("`noise` must be a name for a serializable layer, e.g. 'gaussian'.")
        self._fn = get(noise)
        if epsilon is None:
            raise ValueError("`epsilon` is required: the strength of the noise (epsilon, "
                             "`(lo, hi)`, sigma, amount).")
        self.noise = noise
        self.epsilon = (tuple(float(v) for v in epsilon) if isinstance(epsilon, (list, tuple))
                        else float(epsilon))
        self.seed = None if seed is None else int(seed)
        self.training_only = bool(training_only)
        self.noise_kwargs = dict(noise_kwargs or {})
        if noise == "environmental":
            _check_epsilon(self.epsilon)
        self._generator = (
            tf.random.Generator.from_seed(self.seed)
            if self.seed is not None
            else tf.random.Generator.from_non_deterministic_state()
        )

    def call(self, inputs, training=None):
        def noisy():
            s = self._generator.make_seeds(1)[:, 0]
            return self._fn(inputs, self.epsilon, seed=s, **self.noise_kwargs)

        if not self.training_only:
            return noisy()
        if training is None:
            training = tf.keras.backend.learning_phase()
        if isinstance(training, bool) or isinstance(training, int):
            return noisy() if training else tf.identity(inputs)
        return tf.cond(tf.cast(training, tf.bool), noisy, lambda: tf.identity(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        epsilon = list(self.epsilon) if isinstance(self.epsilon, tuple) else self.epsilon
        return {
            **super().get_config(),
            "noise": self.noise,
            "epsilon": epsilon,
            "seed": self.seed,
            "training_only": self.training_only,
            "noise_kwargs": self.noise_kwargs,
        }

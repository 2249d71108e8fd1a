r"""Global and monotonically decreasing (GM) robust training for larq / Keras models.

Liang et al. train against many perturbation sizes at once: instead of the single-epsilon
robust loss of IBP training (eq. 15-16)

$$\mathcal{L} = \kappa\,\mathcal{L}(\mathcal{N}(x); y) + (1 - \kappa)\,
\mathcal{L}(-\underline{m}(x, \epsilon); y),$$

the robust term is taken over `N` sub-perturbations on a uniform grid (eq. 19) and combined
with weights that decrease as the sub-perturbation grows (eq. 20):

$$\mathcal{L}_{rob} = \sum_{i=1}^{N} c_i\, \mathcal{L}(-\underline{m}(x, r_i); y),\quad
r_i = \frac{i}{N}\epsilon,\quad c_1 \ge c_2 \ge \dots \ge c_N,\quad \sum_i c_i = 1.$$

`GMRobustModel` wraps a model and computes this loss in its `train_step`, with the robust
term `\mathcal{L}(-\underline{m}(x, r); y)` taken from one of four sources:

- `"ibp"`: the margin bounds $\underline{m}$ of interval bound propagation, with the last
  Dense layer folded into the margin as IBP training does (Gowal et al.'s elision of the last
  layer; `larq_l1inf.crown.margin_bounds` with `beta=0`), in the cross-entropy (eq. 16);
- `"crown-ibp"`: the mixed margin bounds of eq. 17,
  $\beta_t \underline{m}_{\mathrm{CROWN\text{-}IBP}} + (1 - \beta_t) \underline{m}_{\mathrm{IBP}}$
  (`larq_l1inf.crown.margin_bounds`), with $\beta_t$ moving from 1 to `final_beta` during
  the epsilon ramp-up as in CROWN-IBP's code (one $\beta_t$ for all sub-perturbations);
- `"pgd"`: an L-inf PGD adversary of radius `r_i` (Madry et al.), run inside the graph
  (`pgd_perturbation`; `larq_l1inf.attacks.pgd` works on NumPy batches and cannot run
  inside a `tf.function` train step);
- `"noise"`: the environmental noise of the L1,inf paper's Algorithm 1
  (`larq_l1inf.noise.environmental_noise`) at strength `r_i`, one fresh draw per
  sub-perturbation and sample: not a worst case, but the noise our users face.

# References
- Z. Liang, T. Wu, W. Liu, B. Xue, W. Yang, J. Wang, Z. Pang. Towards robust neural networks
  via a global and monotonically decreasing robustness training strategy. Frontiers of
  Information Technology & Electronic Engineering, 2023 (doi:10.1631/FITEE.2300059),
  eq. 15-16 and 18-20, section 4.3.
- S. Gowal et al. On the Effectiveness of Interval Bound Propagation for Training Verifiably
  Robust Models. arXiv:1810.12715, 2018.
- H. Zhang et al. Towards Stable and Efficient Training of Verifiably Robust Neural Networks
  (CROWN-IBP). ICLR 2020, sec. 3-4 (the beta schedule).
- A. Madry et al. Towards Deep Learning Models Resistant to Adversarial Attacks. ICLR 2018.
"""

import logging
import math
import numbers

import numpy as np
from larq import utils as lq_utils

from larq_l1inf import noise as noise_lib
from larq_l1inf._keras import tf
from larq_l1inf.noise import seed_pair
from larq_l1inf.utils import ends_in_softmax

log = logging.getLogger(__name__)

__all__ = [
    "GMRobustModel",
    "ROBUST_TERMS",
    "WEIGHTINGS",
    "gm_weights",
    "pgd_perturbation",
    "sub_perturbations",
    "worst_case_logits",
]

#: The five weight choices of section 4.3 (before normalisation), as functions of i = 1..N.
WEIGHTINGS = {
    "1/sqrt": lambda i, n: 1.0 / math.sqrt(i),
    "1/i": lambda i, n: 1.0 / i,
    "1/i^2": lambda i, n: 1.0 / i**2,
    "1/ln": lambda i, n: 1.0 / math.log(i + 1),
    "constant": lambda i, n: 1.0 / n,
}

#: Sources of the robust term.
ROBUST_TERMS = ("ibp", "crown-ibp", "pgd", "noise")
#: The robust terms computed from certified margin bounds (`larq_l1inf.crown.margin_bounds`).
BOUND_TERMS = ("ibp", "crown-ibp")


def _check_size(robustness_size):
    if isinstance(robustness_size, bool) or not isinstance(robustness_size, numbers.Integral):
        raise TypeError(
            f"`robustness_size` (N, the number of sub-perturbations) must be an int >= 1, got "
            f"{robustness_size!r}."
        )
    if robustness_size < 1:
        raise ValueError(
            f"`robustness_size` (N, the number of sub-perturbations) must be >= 1, got "
            f"{robustness_size}. N = 1 is single-epsilon training; the paper uses 5-20."
        )
    return int(robustness_size)


def gm_weights(robustness_size, weighting="1/sqrt"):
    r"""Robustness weights $c_1..c_N$ of GM training, normalised to sum to one.

    $$c_i = \frac{w(i)}{\sum_{j=1}^N w(j)},\quad w(i) \in \left\{\tfrac{1}{\sqrt i},
    \tfrac{1}{i}, \tfrac{1}{i^2}, \tfrac{1}{\ln(i+1)}, \tfrac{1}{N}\right\}$$

    `c_i` weighs the loss at sub-perturbation $r_i = \frac{i}{N}\epsilon$; "monotonically
    decreasing" means the larger the sub-perturbation, the smaller (never larger) its weight.
    The constant choice gives eq. 19's average; with `N = 1` every choice gives `c_1 = 1`,
    the single-epsilon loss of eq. 15.

    !!! example
        ```python
        from larq_l1inf.robust import gm_weights
        c = gm_weights(4, "1/i")  # [0.48, 0.24, 0.16, 0.12]
        assert abs(c.sum() - 1) < 1e-12
        ```

    # Arguments
        robustness_size: `N >= 1`, the number of sub-perturbations ("robustness size").
        weighting: one of `"1/sqrt"`, `"1/i"`, `"1/i^2"`, `"1/ln"`, `"constant"` (the five
            choices of section 4.3), a callable `w(i)` evaluated at `i = 1..N`, or a
            sequence of `N` weights. Callables and sequences must give finite, non-negative
            weights with a positive sum; weights that increase somewhere are allowed (the
            paper's ablation) but logged as a warning.

    # Returns
        float64 NumPy array of shape `(N,)`, summing to 1.

    # Raises
        ValueError: for `N < 1`, an unknown weighting name, or invalid weights.

    # References
        - Liang et al., FITEE 2023, eq. 19-20 and section 4.3 (the five weight types).
    """
    n = _check_size(robustness_size)
    if isinstance(weighting, str):
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"Unknown weighting {weighting!r}; use one of {list(WEIGHTINGS)}, a callable "
                "w(i) for i = 1..N, or a list of N weights."
            )
        raw = [WEIGHTINGS[weighting](i, n) for i in range(1, n + 1)]
    elif callable(weighting):
        raw = [float(weighting(i)) for i in range(1, n + 1)]
    else:
        try:
            raw = [float(v) for v in weighting]
        except (TypeError, ValueError):
            raise TypeError(
                f"`weighting` must be a name, a callable or a sequence of numbers, got "
                f"{weighting!r}."
            ) from None
        if len(raw) != n:
            raise ValueError(
                f"Got {len(raw)} weights for robustness_size N = {n}; give exactly N weights."
            )
    raw = np.asarray(raw, np.float64)
    if not np.all(np.isfinite(raw)) or np.any(raw < 0) or not raw.sum() > 0:
        raise ValueError(
            f"GM weights must be finite, >= 0 and not all zero, got {raw.tolist()}."
        )
    if np.any(np.diff(raw) > 0):
        log.warning(
            "GM weights %s increase with the sub-perturbation size; Liang et al. (FITEE 2023, "
            "fig. 4a) found increasing weights no better than random ones. Use a decreasing "
            "weighting such as '1/sqrt' unless this is an ablation.", raw.tolist(),
        )
    # Paper silent beyond "c_i proportional to": sum 1, so "constant" is eq. 19 and N = 1 eq. 15.
    return raw / raw.sum()


def sub_perturbations(epsilon, robustness_size):
    r"""The uniform grid of sub-perturbations $r_i = \frac{i}{N}\epsilon$, $i = 1..N$ (eq. 19).

    # Arguments
        epsilon: the (current) perturbation size, a number >= 0.
        robustness_size: `N >= 1`.

    # Returns
        float64 NumPy array `(N,)`, increasing, its last entry `epsilon`.

    # Raises
        ValueError: for a negative or non-finite `epsilon`, or `N < 1`.
    """
    n = _check_size(robustness_size)
    eps = float(epsilon)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"`epsilon` must be a finite number >= 0, got {epsilon!r}.")
    return np.arange(1, n + 1, dtype=np.float64) / n * eps


def _labels(y, num_classes):
    """Integer class labels `(B,)` from sparse `(B,)`/`(B, 1)` or one-hot `(B, C)` targets."""
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2 and y.shape[-1] == num_classes and num_classes > 1:
        return tf.argmax(y, axis=-1, output_type=tf.int32)
    return tf.reshape(tf.cast(y, tf.int32), [-1])


def worst_case_logits(lower, upper, y):
    r"""IBP's worst-case logits: the true class at its lower bound, every other at its upper.

    $$\hat z_j = \begin{cases}\underline{z}_y & j = y\\ \bar z_j & j \ne y\end{cases},\qquad
    \mathrm{CE}(\hat z, y) = \mathcal{L}(-\underline{m}(x, \epsilon); y)$$

    since softmax is shift-invariant and $\hat z_j - \hat z_y = -\underline{m}_j$ with the
    margin bound $\underline{m}_j = \underline{z}_y - \bar z_j$ of the specification matrix.

    # Arguments
        lower, upper: logit bounds `(B, C)`.
        y: labels, integer `(B,)` or one-hot `(B, C)`.

    # Returns
        Tensor `(B, C)`.

    GM training's `"ibp"` term uses the tighter margin bounds with the last Dense layer folded
    in (`larq_l1inf.crown.margin_bounds` with `beta=0`); these worst-case logits are for
    bounds of the logits alone (`larq_l1inf.ibp.interval_bounds`).

    # References
        - Gowal et al. 2018, eq. 6-7; Liang et al., FITEE 2023, eq. 4 and 16.
    """
    lower = tf.convert_to_tensor(lower)
    upper = tf.cast(upper, lower.dtype)
    labels = _labels(y, lower.shape[-1])
    is_true = tf.equal(tf.range(tf.shape(lower)[-1])[None, :], labels[:, None])
    return tf.where(is_true, lower, upper)


def _sample_ce(y, out, from_logits):
    """Per-sample cross-entropy (eq. 14) for sparse or one-hot targets."""
    y = tf.convert_to_tensor(y)
    if y.shape.rank == out.shape.rank and y.shape[-1] == out.shape[-1] and out.shape[-1] > 1:
        return tf.keras.losses.categorical_crossentropy(
            tf.cast(y, out.dtype), out, from_logits=from_logits)
    return tf.keras.losses.sparse_categorical_crossentropy(
        tf.reshape(y, [-1]), out, from_logits=from_logits)


def pgd_perturbation(model, x, y, epsilon, step_size=None, iterations=7, random_start=True,
                     clip=(0.0, 1.0), from_logits=True, seed=None):
    r"""L-inf PGD inside the graph: adversarial inputs for a training step.

    $$x^{t+1} = \Pi_{\|x' - x\|_\infty \le \epsilon,\ c_0 \le x' \le c_1}\left(x^t +
    \alpha\,\mathrm{sign}\,\nabla_x \mathrm{CE}(f(x^t), y)\right)$$

    The same iteration as `larq_l1inf.attacks.pgd` (inference mode, summed cross-entropy,
    gradients through larq's straight-through estimators), but in TensorFlow ops only, with
    one radius per sample, so it runs inside `train_step`. The result is a constant
    (`stop_gradient`), as in Madry et al.'s adversarial training.

    # Arguments
        model: Keras classifier.
        x: input batch.
        y: labels, integer `(B,)` or one-hot.
        epsilon: radius, a number or a tensor broadcastable to `x` (e.g. `(B, 1, 1, 1)`).
        step_size: step `alpha`, same shapes as `epsilon`; default `epsilon / 4`.
        iterations: number of steps (Python int, unrolled).
        random_start: start from a uniform point of the ball.
        clip: `(lo, hi)` valid input range, or None.
        from_logits: whether the model outputs logits.
        seed: stateless seed (int or pair) of the random start; None draws one.

    # Returns
        Tensor of `x`'s shape with `|x_adv - x| <= epsilon`.

    # References
        - Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks,
          ICLR 2018.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    eps = tf.cast(epsilon, x.dtype)
    step = eps / 4.0 if step_size is None else tf.cast(step_size, x.dtype)
    x_adv = x
    if random_start:
        u = tf.random.stateless_uniform(tf.shape(x), seed_pair(seed),
                                        minval=-1.0, maxval=1.0, dtype=x.dtype)
        x_adv = x + u * eps
    if clip is not None:
        x_adv = tf.clip_by_value(x_adv, clip[0], clip[1])
    for _ in range(int(iterations)):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            # Inference mode, as attacks.pgd: the attack must not move batch-norm statistics.
            loss = tf.reduce_sum(_sample_ce(y, model(x_adv, training=False), from_logits))
        grad = tape.gradient(loss, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        x_adv = tf.clip_by_value(x_adv + step * tf.sign(grad), x - eps, x + eps)
        if clip is not None:
            x_adv = tf.clip_by_value(x_adv, clip[0], clip[1])
    return tf.stop_gradient(x_adv)


def _check_epsilon(epsilon, robust):
    """`(value, hi)`: a float, or for the noise term also a `(lo, hi)` range."""
    if isinstance(epsilon, (list, tuple)):
        if robust != "noise":
            raise ValueError(
                f"robust={robust!r} needs one L-inf radius `epsilon`, got the range {epsilon!r}; "
                "a (lo, hi) range is for robust='noise' (Algorithm 1's eps ~ U[lo, hi])."
            )
        try:
            lo, hi = (float(v) for v in epsilon)
        except (TypeError, ValueError):
            raise TypeError(
                f"`epsilon` must be a number or a (lo, hi) pair, got {epsilon!r}.") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
            raise ValueError(
                f"`epsilon` range must be finite with 0 <= lo <= hi, got {epsilon!r}."
            )
        return (lo, hi), hi
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise TypeError(f"`epsilon` must be a number, got {epsilon!r}.") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"`epsilon` must be a finite number >= 0 (the largest perturbation, in the model's "
            f"input units, e.g. 0.1 for pixels in [0, 1]), got {epsilon!r}."
        )
    return value, value


def _check_final_beta(final_beta):
    if isinstance(final_beta, bool) or not isinstance(final_beta, numbers.Real) or not (
            0.0 <= final_beta <= 1.0):
        raise ValueError(
            f"`final_beta` must be a number in [0, 1]: the weight of the CROWN-IBP bound against "
            f"the IBP bound (eq. 17) at the end of the ramp-up (1 = CROWN-IBP only, as in all of "
            f"Liang et al.'s runs; 0 = IBP at the end), got {final_beta!r}.")
    return float(final_beta)


def _int_labels(y):
    """Integer labels `(B,)` of sparse `(B,)`/`(B, 1)` or one-hot `(B, C)` targets."""
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2 and y.shape[-1] is not None and y.shape[-1] > 1:
        return tf.argmax(y, axis=-1, output_type=tf.int32)
    return tf.reshape(tf.cast(y, tf.int32), [-1])


def _check_steps(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0 (optimizer steps), got {value!r}.")
    return int(value)


@lq_utils.register_keras_custom_object
class GMRobustModel(tf.keras.Model):
    r"""Train a model with global, monotonically decreasing (GM) robust training, inside `fit`.

    One training step computes (Liang et al., eq. 15 with eq. 20's robust term)

    $$\mathcal{L} = \kappa_t\, \mathrm{CE}(f(x), y) + (1 - \kappa_t) \sum_{i=1}^{N} c_i\,
    \mathcal{L}_{rob}(x, y, r_i) + \sum \text{model.losses},\qquad
    r_i = \frac{i}{N}\, \epsilon_t$$

    with `c_i = gm_weights(N, weighting)` and the robust term from IBP, CROWN-IBP, PGD or
    Algorithm 1 noise (module docstring); for the two bound terms
    $\mathcal{L}_{rob}(x, y, r) = \mathrm{CE}(-\underline{m}(x, r), y)$ with the margin
    bounds of `larq_l1inf.crown.margin_bounds`. The wrapped model's own losses (e.g. an
    `L1InfRegularizer` on its binary kernels) are added unweighted, so GM training composes
    with the L1,inf penalty. Each sub-perturbation is one pass of the batch (IBP, CROWN-IBP,
    PGD or a noisy forward).

    Schedule, driven by the optimizer's step counter `t` (so it resumes with the optimizer):
    a warm-up of `warmup_steps` steps trains on the clean loss only ("training without
    Loss_rob", section 3.1); then, over `rampup_steps` steps, $\epsilon_t$ grows linearly
    from $\epsilon/$`rampup_steps` to `epsilon` and, with `ramp_kappa`, $\kappa_t$ falls
    linearly from 1 to `kappa` (as the CROWN-IBP code the paper builds on does); for
    `"crown-ibp"` the weight of eq. 17 moves from 1 to `final_beta` alike,
    $\beta_t = 1 - (1 - \beta_{final})\,\epsilon_t / \epsilon$; after that all stay at
    their final values.

    `fit` logs `loss` (the total), `clean_loss`, `robust_loss` ($\sum_i c_i
    \mathcal{L}_{rob}$), `penalty` (the model's own losses), `epsilon` ($\epsilon_t$, the
    upper end for a noise range), `kappa` ($\kappa_t$) and for `"crown-ibp"` `beta`
    ($\beta_t$), each averaged over the epoch, and
    the compiled metrics on the clean outputs. `evaluate` computes the same at the final
    `epsilon` and `kappa` with the model in inference mode. `predict` and `call` run the
    wrapped model. Save, convert or deploy `gm_model.model` (an ordinary larq/Keras model, any
    format); the wrapper itself saves in Keras' native format (`gm_model.save("gm.keras")`,
    through `get_config` / `from_config`), not as a TF SavedModel directory.

    !!! example
        ```python
        import larq_l1inf
        import larq as lq
        import numpy as np
        import tensorflow as tf
        from larq_l1inf import L1InfRegularizer
        from larq_l1inf.robust import GMRobustModel

        inner = tf.keras.Sequential([
            tf.keras.Input((8, 8, 1)),
            lq.layers.QuantConv2D(4, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                  kernel_constraint="weight_clip", use_bias=False,
                                  kernel_regularizer=L1InfRegularizer()),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(3),
        ])
        model = GMRobustModel(inner, epsilon=0.1, robust="noise", robustness_size=4,
                              weighting="1/sqrt", kappa=0.5, warmup_steps=2, rampup_steps=4)
        model.compile(optimizer="adam", metrics=["accuracy"])
        x = np.random.rand(32, 8, 8, 1).astype("float32")
        y = np.random.randint(0, 3, 32)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        inner.save("gm_inner.h5")
        ```

    # Arguments
        model: the Keras model to train (larq layers welcome); outputs logits or a softmax.
        epsilon: the final perturbation size $\epsilon$, in the model's input units: an
            L-inf radius for `"ibp"`, `"crown-ibp"` and `"pgd"`; for `"noise"` Algorithm 1's
            shift, a number or a `(lo, hi)` range (then sub-perturbation `i` draws from
            $U[r\,lo, r\,hi]$, $r = i t / N$).
        robust: source of the robust term, `"ibp"`, `"crown-ibp"`, `"pgd"` or `"noise"`.
        robustness_size: `N >= 1`, the number of sub-perturbations (the paper's "robustness
            size"; it used 5, 10, 20, with little difference, fig. 4c).
        weighting: the weights `c_i`, see `gm_weights`: `"1/sqrt"` (default; with `"1/ln"`
            the best in fig. 4b), `"1/i"`, `"1/i^2"`, `"1/ln"`, `"constant"` (eq. 19's
            average), a callable `w(i)` or a list of `N` numbers; normalised to sum to 1.
        kappa: final balance of clean and robust loss, `0 < kappa < 1` (paper: 0.5).
        warmup_steps: optimizer steps of clean-only training first (>= 0).
        rampup_steps: optimizer steps over which epsilon (and kappa) move to their final
            values after the warm-up (>= 0; 0 jumps at once).
        ramp_kappa: move kappa from 1 to `kappa` during the ramp-up (True) or keep it at
            `kappa` from the end of the warm-up (False).
        clip: `(lo, hi)` valid input range for the IBP box and the PGD iterates, or None.
            Never applied to the noise term (Algorithm 1 does not clip).
        pgd_step_size: PGD step; None uses $r_i/4$ for sub-perturbation `i`.
        pgd_iterations: PGD steps per training step (>= 1).
        noise_kwargs: further arguments of `environmental_noise` (`points`, `prob`).
        seed: int seed of the noise draws and PGD random starts, or None.
        final_beta: for `"crown-ibp"`, the weight $\beta$ of the CROWN-IBP bound against the
            IBP bound (eq. 17) at the end of the ramp-up, in [0, 1]; default 1 (CROWN-IBP
            only, Liang et al.'s setting for all runs). Ignored, with a warning, by the
            other terms.

    # Raises
        ValueError: for a negative epsilon, a range outside `"noise"`, `kappa` outside
            (0, 1), `final_beta` outside [0, 1], `N < 1`, an unknown robust term or
            weighting, negative schedule steps, and, for `"ibp"` and `"crown-ibp"`, a model
            IBP cannot bound (`larq_l1inf.ibp`'s
            `UnsupportedLayerError`, naming the layer).
        TypeError: for a model that is not a Keras model.

    # References
        - Z. Liang, T. Wu, W. Liu, B. Xue, W. Yang, J. Wang, Z. Pang. Towards robust neural
          networks via a global and monotonically decreasing robustness training strategy.
          Frontiers of Information Technology & Electronic Engineering, 2023, eq. 15-16,
          17-20, section 3.1 (warm-up / ramp-up), section 4.3 (weights) and appendix
          (final kappa 0.5, final beta 1).
        - H. Zhang et al. Towards Stable and Efficient Training of Verifiably Robust Neural
          Networks. ICLR 2020, sec. 3-4 (beta from 1 to its final value with epsilon).
    """

    def __init__(self, model, epsilon, robust="ibp", robustness_size=5, weighting="1/sqrt",
                 kappa=0.5, warmup_steps=0, rampup_steps=0, ramp_kappa=True,
                 clip=(0.0, 1.0), pgd_step_size=None, pgd_iterations=7, noise_kwargs=None,
                 seed=None, final_beta=1.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(model, tf.keras.Model):
            raise TypeError(
                f"GMRobustModel wraps a Keras model, got {type(model).__name__}."
            )
        if robust not in ROBUST_TERMS:
            raise ValueError(f"Unknown robust term {robust!r}; use one of {list(ROBUST_TERMS)}.")
        self.model = model
        self.robust = robust
        self.epsilon, self._epsilon_max = _check_epsilon(epsilon, robust)
        if self._epsilon_max == 0:
            log.warning("GMRobustModel: epsilon = 0, so the robust term is the clean loss.")
        self.robustness_size = _check_size(robustness_size)
        self.gm_weights = gm_weights(self.robustness_size, weighting)
        # A callable is stored as the weights it gave, so the config stays plain Python.
        self.weighting = (weighting if isinstance(weighting, str)
                          else [float(v) for v in self.gm_weights])
        kappa = float(kappa)
        if not 0.0 < kappa < 1.0:
            raise ValueError(
                f"`kappa` must lie strictly between 0 and 1 (eq. 15: kappa weighs the clean "
                f"loss, 1 - kappa the robust loss), got {kappa}. The paper uses 0.5."
            )
        self.kappa = kappa
        self.warmup_steps = _check_steps(warmup_steps, "warmup_steps")
        self.rampup_steps = _check_steps(rampup_steps, "rampup_steps")
        self.ramp_kappa = bool(ramp_kappa)
        if clip is not None:
            clip = (float(clip[0]), float(clip[1]))
            if not clip[0] <= clip[1]:
                raise ValueError(f"`clip` must be (lo, hi) with lo <= hi, or None; got {clip}.")
        self.clip = clip
        if pgd_step_size is not None and not float(pgd_step_size) > 0:
            raise ValueError(f"`pgd_step_size` must be > 0 or None, got {pgd_step_size!r}.")
        self.pgd_step_size = None if pgd_step_size is None else float(pgd_step_size)
        if isinstance(pgd_iterations, bool) or int(pgd_iterations) < 1:
            raise ValueError(f"`pgd_iterations` must be an int >= 1, got {pgd_iterations!r}.")
        self.pgd_iterations = int(pgd_iterations)
        self.noise_kwargs = dict(noise_kwargs or {})
        self.seed = None if seed is None else int(seed)
        self.final_beta = _check_final_beta(final_beta)
        if self.final_beta != 1.0 and robust != "crown-ibp":
            log.warning("GMRobustModel: final_beta=%s is ignored by robust=%r; it weighs the "
                        "CROWN-IBP bound of robust='crown-ibp'.", self.final_beta, robust)
        self._from_logits = not ends_in_softmax(model)
        self._check_model()
        self._generator = (tf.random.Generator.from_seed(self.seed) if self.seed is not None
                           else tf.random.Generator.from_non_deterministic_state())
        self._trackers = {
            name: tf.keras.metrics.Mean(name=name)
            for name in ("loss", "clean_loss", "robust_loss", "penalty", "epsilon", "kappa")
            + (("beta",) if robust == "crown-ibp" else ())
        }
        # Metric attributes are tracked by Keras: they appear in `metrics` and reset per epoch.
        self.loss_tracker = self._trackers["loss"]
        self.clean_loss_tracker = self._trackers["clean_loss"]
        self.robust_loss_tracker = self._trackers["robust_loss"]
        self.penalty_tracker = self._trackers["penalty"]
        self.epsilon_tracker = self._trackers["epsilon"]
        self.kappa_tracker = self._trackers["kappa"]
        if robust == "crown-ibp":
            self.beta_tracker = self._trackers["beta"]

    def _check_model(self):
        """Fail at construction, not in the first step: bound / perturb one dummy input."""
        shape = getattr(self.model, "input_shape", None)
        if not isinstance(shape, tuple) or any(d is None for d in shape[1:]):
            return
        x0 = tf.zeros((1,) + tuple(shape[1:]))
        if self.robust in BOUND_TERMS:
            from larq_l1inf import crown, ibp

            try:
                # beta 0.5 runs both passes of eq. 17 (0: the IBP pass only).
                crown.margin_bounds(self.model, x0, tf.zeros((1,), tf.int32), 0.0,
                                    clip=self.clip, beta=0.5 if self.robust == "crown-ibp" else 0.0)
            except ibp.UnsupportedLayerError as e:
                raise type(e)(
                    f"{e} GM training with robust={self.robust!r} needs bounds through every "
                    "layer; use robust='pgd' or robust='noise' for this model."
                ) from e
        elif self.robust == "noise":
            noise_lib.environmental_noise(x0, self.epsilon, seed=0, **self.noise_kwargs)

    # ------------------------------------------------------------------ the loss

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Keras `compile`; the loss is GM's cross-entropy (eq. 14), so `loss` is not used."""
        if loss is not None:
            log.warning(
                "GMRobustModel.compile: `loss=%r` is ignored; GM training uses the "
                "cross-entropy of Liang et al. eq. 14-20 (from logits or a softmax output).",
                loss,
            )
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def schedule(self, step=None):
        """`(ramp, kappa_t)` at an optimizer step: the fraction of `epsilon` reached and kappa.

        # Arguments
            step: optimizer step (int or tensor); default `self.optimizer.iterations`.

        # Returns
            Two float32 scalar tensors. In the warm-up `ramp = 0`; after the ramp-up 1.
        """
        if step is None:
            step = self.optimizer.iterations
        step = tf.cast(step, tf.float32)
        warm, ramp_len = float(self.warmup_steps), float(self.rampup_steps)
        if ramp_len > 0:
            ramp = tf.clip_by_value((step - warm + 1.0) / ramp_len, 0.0, 1.0)
        else:
            ramp = tf.cast(step >= warm, tf.float32)
        if self.ramp_kappa:
            # Paper silent; its CROWN-IBP recipe ramps kappa from 1 with epsilon (final 0.5).
            kappa = 1.0 - ramp * (1.0 - self.kappa)
        else:
            kappa = tf.where(step >= warm, self.kappa, 1.0)
        return ramp, kappa

    def beta_schedule(self, ramp):
        r"""Eq. 17's weight of the CROWN-IBP bound at a point of the ramp-up:

        $$\beta_t = 1 - (1 - \beta_{final})\,\rho_t$$

        with $\rho_t$ = `ramp` the fraction of `epsilon` reached: CROWN-IBP only while epsilon
        is small, `final_beta` once it is reached (CROWN-IBP's code; the same $\beta_t$ for
        all sub-perturbations of a step).

        # Arguments
            ramp: a number or float scalar tensor in [0, 1] (`schedule`'s first output).

        # Returns
            A Python float for a number `ramp` or `final_beta = 1`, else a float32 scalar
            tensor (so a compiled step is traced once).
        """
        if self.final_beta == 1.0:
            return 1.0  # a Python 1: margin_bounds then skips the IBP pass
        if not tf.is_tensor(ramp):
            return 1.0 - (1.0 - self.final_beta) * float(ramp)
        return 1.0 - (1.0 - self.final_beta) * tf.cast(ramp, tf.float32)

    def penalty(self):
        """The wrapped model's own losses (kernel regularizers, e.g. the L1,inf penalty)."""
        losses = self.model.losses
        if not losses:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(v, tf.float32) for v in losses])

    @staticmethod
    def _mean(per_sample, sample_weight):
        """Keras' `sum_over_batch_size`: sum of weighted per-sample losses / batch size."""
        if sample_weight is not None:
            per_sample = per_sample * tf.reshape(tf.cast(sample_weight, per_sample.dtype), [-1])
        return tf.reduce_mean(per_sample, axis=-1)

    # Plain TF ops with Python-level control flow only: AutoGraph conversion of the IBP walk
    # would only slow the trace down.
    @tf.autograph.experimental.do_not_convert
    def sub_losses(self, x, y, ramp=1.0, sample_weight=None, training=False, seed=None,
                   beta=None):
        r"""Robust losses $\mathcal{L}_{rob}(x, y, r_i)$ for the `N` sub-perturbations.

        Sub-perturbation `i` has radius $r_i = \frac{i}{N}$ `ramp` `epsilon` and its own
        pass over the batch (in training mode each has its own batch statistics, as in
        single-epsilon IBP training; one pass over the batch tiled `N` times measured no
        faster on CPU: N = 2 equal, N = 4 about 14% slower, forward and backward).

        # Arguments
            x, y: a batch and its labels (integer or one-hot).
            ramp: fraction of `epsilon` reached (schedule), in [0, 1].
            sample_weight: optional per-sample weights `(B,)`.
            training: run the model (and IBP's batch norm) in training mode.
            seed: stateless seed (int or pair) of the noise / PGD starts; None draws one
                from the model's generator. Noise: one draw
                `u = environmental_noise(zeros((N * B, ...)), epsilon, seed=seed)`, and
                sub-perturbation `i` adds $\frac{i}{N}$ `ramp` times its `i`-th block of `B`
                rows (Algorithm 1 at the scaled epsilon: the noise is linear in epsilon).
                PGD: sub-perturbation `i` starts from the seed
                `tf.random.experimental.stateless_fold_in(seed, i - 1)`.
            beta: for `"crown-ibp"`, eq. 17's weight (number or scalar tensor); default
                `beta_schedule(ramp)`.

        # Returns
            float32 tensor `(N,)`.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.convert_to_tensor(y)
        n = self.robustness_size
        batch = tf.shape(x)[0]
        seed = self._generator.make_seeds(1)[:, 0] if seed is None else seed_pair(seed)
        if self.robust in BOUND_TERMS:
            from larq_l1inf import crown

            labels = _int_labels(y)
            if self.robust == "ibp":
                beta = 0.0
            elif beta is None:
                beta = self.beta_schedule(ramp)
        if self.robust == "noise":
            tiled = tf.concat([tf.shape(x)[:1] * n, tf.shape(x)[1:]], 0)
            unit = noise_lib.environmental_noise(tf.zeros(tiled, x.dtype), self.epsilon,
                                                 seed=seed, **self.noise_kwargs)
        losses = []
        for i in range(1, n + 1):
            fraction = tf.cast(ramp, tf.float32) * (i / n)
            if self.robust in BOUND_TERMS:
                # One rule for both bound terms: eq. 16's CE of the logits -m (0 at y).
                margins = crown.margin_bounds(self.model, x, labels, fraction * self._epsilon_max,
                                              clip=self.clip, beta=beta, training=training)
                ce = _sample_ce(labels, -margins, from_logits=True)
            else:
                if self.robust == "pgd":
                    x_rob = pgd_perturbation(
                        self.model, x, y, fraction * self._epsilon_max, self.pgd_step_size,
                        self.pgd_iterations, random_start=True, clip=self.clip,
                        from_logits=self._from_logits,
                        seed=tf.random.experimental.stateless_fold_in(seed, i - 1))
                else:
                    x_rob = x + fraction * unit[(i - 1) * batch:i * batch]
                ce = _sample_ce(y, self.model(x_rob, training=training), self._from_logits)
            losses.append(self._mean(ce, sample_weight))
        return tf.stack(losses)

    @tf.autograph.experimental.do_not_convert
    def gm_loss(self, x, y, sample_weight=None, training=False, ramp=1.0, kappa=None,
                seed=None, beta=None):
        r"""The GM loss of one batch and its parts.

        $$\mathcal{L} = \kappa\,\mathrm{CE}(f(x), y) + (1 - \kappa)\sum_i c_i
        \mathcal{L}_{rob}(x, y, r_i) + \text{penalty}$$

        # Arguments
            x, y, sample_weight, training, seed, beta: as `sub_losses`.
            ramp: fraction of `epsilon` reached (default 1: the final epsilon).
            kappa: blend (default: the final `kappa`).

        # Returns
            dict with scalar `loss`, `clean_loss`, `robust_loss`, `penalty` and the `(N,)`
            tensor `sub_losses`.
        """
        kappa = self.kappa if kappa is None else kappa
        out = self.model(x, training=training)
        clean = self._mean(_sample_ce(y, out, self._from_logits), sample_weight)
        sub = self.sub_losses(x, y, ramp, sample_weight, training, seed, beta)
        robust = tf.reduce_sum(tf.constant(self.gm_weights, tf.float32) * sub)
        penalty = self.penalty()
        kappa = tf.cast(kappa, tf.float32)
        loss = kappa * clean + (1.0 - kappa) * robust + penalty
        return {"loss": loss, "clean_loss": clean, "robust_loss": robust, "penalty": penalty,
                "sub_losses": sub, "outputs": out}

    # ------------------------------------------------------------------ Keras hooks

    def _update(self, parts, ramp, kappa, y, sample_weight):
        for name in ("loss", "clean_loss", "robust_loss", "penalty"):
            self._trackers[name].update_state(parts[name])
        self.epsilon_tracker.update_state(ramp * self._epsilon_max)
        self.kappa_tracker.update_state(kappa)
        if self.robust == "crown-ibp":
            self.beta_tracker.update_state(self.beta_schedule(ramp))
        self.compiled_metrics.update_state(y, parts["outputs"], sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        step = self.optimizer.iterations
        ramp, kappa = self.schedule(step)
        beta = self.beta_schedule(ramp)
        seed = self._generator.make_seeds(1)[:, 0]
        with tf.GradientTape() as tape:
            if self.warmup_steps > 0:
                warm = step < self.warmup_steps
                out = self.model(x, training=True)
                clean = self._mean(_sample_ce(y, out, self._from_logits), sample_weight)
                # Warm-up: clean loss only, and the robust passes are not even run.
                weights = tf.constant(self.gm_weights, tf.float32)
                robust = tf.cond(
                    warm, lambda: tf.constant(0.0),
                    lambda: tf.reduce_sum(weights * self.sub_losses(
                        x, y, ramp, sample_weight, training=True, seed=seed, beta=beta)))
                kappa = tf.where(warm, 1.0, kappa)
                penalty = self.penalty()
                parts = {"loss": kappa * clean + (1.0 - kappa) * robust + penalty,
                         "clean_loss": clean, "robust_loss": robust, "penalty": penalty,
                         "outputs": out}
            else:
                parts = self.gm_loss(x, y, sample_weight, training=True, ramp=ramp,
                                     kappa=kappa, seed=seed, beta=beta)
        self.optimizer.minimize(parts["loss"], self.model.trainable_variables, tape=tape)
        return self._update(parts, ramp, kappa, y, sample_weight)

    def test_step(self, data):
        # The final objective (full epsilon and kappa), so `val_loss` is comparable across epochs.
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        parts = self.gm_loss(x, y, sample_weight, training=False)
        return self._update(parts, tf.constant(1.0), tf.constant(self.kappa), y, sample_weight)

    def get_config(self):
        return {
            "model": tf.keras.layers.serialize(self.model),
            "epsilon": list(self.epsilon) if isinstance(self.epsilon, tuple) else self.epsilon,
            "robust": self.robust,
            "robustness_size": self.robustness_size,
            "weighting": self.weighting,
            "kappa": self.kappa,
            "warmup_steps": self.warmup_steps,
            "rampup_steps": self.rampup_steps,
            "ramp_kappa": self.ramp_kappa,
            "clip": None if self.clip is None else list(self.clip),
            "pgd_step_size": self.pgd_step_size,
            "pgd_iterations": self.pgd_iterations,
            "noise_kwargs": dict(self.noise_kwargs),
            "seed": self.seed,
            "final_beta": self.final_beta,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = tf.keras.layers.deserialize(config.pop("model"), custom_objects=custom_objects)
        return cls(model, **config)

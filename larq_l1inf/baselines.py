"""Baseline kernel penalties of the paper's comparison (Zheng et al. 2025, table 11): L1, L2
(spectral), L-inf (Absum).

Each is a `KernelPenalty`, so it sees exactly what `L1InfRegularizer` sees: the layer's own
unscaled quantized kernel `W_b` (STE gradient) and the scaling factor alpha (`"auto"`,
`"layer"`, `"channel"` or `"none"`), both from `larq_l1inf.kernels`, with one row per output
filter. String names: `"l1_baseline"`, `"spectral_norm"`, `"absum"`. Put them on `kernel_regularizer` of larq layers exactly as `L1InfRegularizer`.
Per layer they add `delta * t_j` (`reduction="sum"`, the usual form of these regularizers)
or `delta * log t_j` (`reduction="log"`, the same per-layer form as L1InfRegularizer's
`"log"`, for a like-for-like comparison). LCR, which needs activations, is
`larq_l1inf.lcr.LCRModel`.
"""

import logging

from larq_l1inf._keras import tf
from larq_l1inf.kernels import kernel_rows
from larq_l1inf.regularizers import KernelPenalty, register_penalty, scale_rows

log = logging.getLogger(__name__)

__all__ = [
    "L1Regularizer",
    "SpectralNormRegularizer",
    "AbsumRegularizer",
    "spectral_norm",
    "BASELINE_REGULARIZERS",
]

# Seed of the fixed start vector of the power iteration (see `spectral_norm`).
_POWER_SEED = 1234


def spectral_norm(matrix, iterations=10):
    """Largest singular value of a matrix by power iteration, differentiable.

    The iteration starts from a fixed pseudo-random unit vector (a stateless draw seeded by
    the matrix width, so the same kernel shape always starts from the same vector) and runs
    `iterations` steps `v <- normalize(A^T A v)` without gradient; the returned value is
    `u^T A v` with `u = normalize(A v)`, whose gradient with respect to `A` is `u v^T`, the
    exact gradient of `sigma_max` once the iteration has converged (as in spectral
    normalization, Miyato et al. 2018).

    Decision: fresh iterations at every call rather than a persistent `u` per layer: a
    Keras regularizer may be shared by several layers and holds no per-layer state; the
    cost is `2 * iterations` matrix-vector products on a `(c_out, fan_in)` matrix.

    # Arguments
        matrix: 2-D tensor `(m, n)`.
        iterations: power-iteration steps, >= 1. The estimate is a lower bound of
            `sigma_max` that increases towards it with more steps.

    # Returns
        Scalar float32 tensor.

    # Raises
        ValueError: if `matrix` is not 2-D or `iterations < 1`.
    """
    a = tf.cast(tf.convert_to_tensor(matrix), tf.float32)
    if a.shape.rank != 2:
        raise ValueError(f"spectral_norm needs a 2-D matrix, got shape {a.shape}.")
    if int(iterations) < 1:
        raise ValueError(f"`iterations` must be >= 1, got {iterations}.")
    n = a.shape[1]
    v = tf.random.stateless_normal((n, 1), seed=(_POWER_SEED, int(n)))
    v = v / tf.norm(v)
    a_ng = tf.stop_gradient(a)
    for _ in range(int(iterations)):
        u = tf.math.l2_normalize(tf.matmul(a_ng, v), axis=0)
        v = tf.math.l2_normalize(tf.matmul(a_ng, u, transpose_a=True), axis=0)
    u = tf.math.l2_normalize(tf.matmul(a_ng, v), axis=0)
    return tf.reshape(tf.matmul(u, tf.matmul(a, v), transpose_a=True), ())


@register_penalty("l1_baseline")
class L1Regularizer(KernelPenalty):
    """Plain L1 penalty of the scaled quantized kernel (Zheng et al. 2025, table 11, "L1").

    $$t_j = \\|\\mathrm{diag}(\\alpha_j) W_b^j\\|_1 = \\sum_{i,k} \\alpha_{j,i} |(W_b^j)_{ik}|$$

    For exact +-1 weights and a layer alpha this equals `||W_F^j||_1`, the usual L1 of the
    latent weights; for full-precision layers it is the usual L1 of the kernel.

    # Arguments
        delta, reduction, alpha, normalize, alpha_gradient, quantizer_gradient: as
            `L1InfRegularizer`, with `reduction` `"sum"` (default) or `"log"`.
    """

    def layer_term(self, w_b, alpha, depthwise):
        return tf.reduce_sum(tf.abs(scale_rows(kernel_rows(w_b, depthwise), alpha)))


@register_penalty("spectral_norm")
class SpectralNormRegularizer(KernelPenalty):
    """L2 / spectral-norm penalty (Zheng et al. 2025, table 11, "L2"; Li et al. 2019).

    $$t_j = \\sigma_{\\max}\\left(\\mathrm{diag}(\\alpha_j) W_b^j\\right),\\quad
      W_b^j \\text{ reshaped to } c_{out} \\times (k_h k_w c_{in})$$

    computed by `spectral_norm` (power iteration, fresh each call from a fixed start).
    As `method.md` decides, the matrix is the reshaped kernel, not the convolution operator.

    # Arguments
        delta, reduction, alpha, normalize, alpha_gradient, quantizer_gradient: as
            `L1InfRegularizer`, with `reduction` `"sum"` (default) or `"log"`.
        power_iterations: power-iteration steps per call (>= 1).

    # References
        - Q. Li, S. Haque, C. Anil et al. Preventing gradient attenuation in Lipschitz
          constrained convolutional networks. NeurIPS 2019.
    """

    def __init__(self, delta=5e-3, reduction="sum", alpha="auto", normalize=False,
                 alpha_gradient=True, quantizer_gradient=True, power_iterations=10):
        super().__init__(delta, reduction, alpha, normalize, alpha_gradient, quantizer_gradient)
        if int(power_iterations) < 1:
            raise ValueError(f"`power_iterations` must be >= 1, got {power_iterations}.")
        self.power_iterations = int(power_iterations)

    def layer_term(self, w_b, alpha, depthwise):
        return spectral_norm(scale_rows(kernel_rows(w_b, depthwise), alpha), self.power_iterations)

    def get_config(self):
        return {**super().get_config(), "power_iterations": self.power_iterations}


@register_penalty("absum")
class AbsumRegularizer(KernelPenalty):
    """Absum (Kanai et al. 2020), the paper's "L-inf" baseline (Zheng et al. 2025, table 11).

    Absum penalizes the absolute value of the *sum* of the weights of each 2-D filter,
    one filter per (input channel, output channel) pair:

    $$t_j = \\sum_{o=1}^{c_{out}} \\sum_{c=1}^{c_{in}} \\alpha_{j,o}
      \\left|\\sum_{p=1}^{k_h k_w} (W_b^j)_{p,c,o}\\right|$$

    For one channel a convolution is a circulant matrix whose singular value at the zero
    frequency is `|sum_p k_p|`; Absum bounds that sensitivity with a looser constraint than
    L1 (`|sum_p k_p| <= sum_p |k_p|`). Dense kernels have one spatial position, so there
    Absum equals L1; a depthwise kernel has one filter per row.

    Decision: the term is added to the loss (its subgradient reaches the latent weights
    through the STE), as the paper under reproduction compares penalties; Kanai et al.
    minimise it with a proximal-gradient step instead.

    # Arguments
        delta, reduction, alpha, normalize, alpha_gradient, quantizer_gradient: as
            `L1InfRegularizer`, with `reduction` `"sum"` (default) or `"log"`.

    # References
        - S. Kanai, Y. Ida, Y. Fujiwara, M. Yamada, S. Adachi. Absum: Simple regularization
          method for reducing structural sensitivity of convolutional neural networks.
          AAAI 2020 (arXiv:1909.08830).
    """

    def layer_term(self, w_b, alpha, depthwise):
        if depthwise or w_b.shape.rank == 2:
            # A depthwise row is one 2-D filter; a Dense kernel has one spatial position.
            sums = kernel_rows(w_b, depthwise) if w_b.shape.rank == 2 else tf.reduce_sum(
                kernel_rows(w_b, depthwise), axis=1, keepdims=True)
        else:
            # (*k, c_in, c_out) -> per (c_out, c_in) filter: the sum over the spatial positions.
            per_filter = tf.reshape(w_b, (-1, w_b.shape[-2], w_b.shape[-1]))
            sums = tf.transpose(tf.reduce_sum(per_filter, axis=0))  # (c_out, c_in)
        return tf.reduce_sum(tf.abs(scale_rows(sums, alpha)))


#: Table 11 name -> baseline penalty class.
BASELINE_REGULARIZERS = {
    "l1": L1Regularizer,
    "l2": SpectralNormRegularizer,
    "linf": AbsumRegularizer,
}

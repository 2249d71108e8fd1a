"""Lipschitz Continuity Retention (LCR, Shang et al. 2022), the paper's main baseline.

LCR needs activations, not only kernels, so it is a model wrapper rather than a kernel
regularizer: `LCRModel` wraps a binary *student* and a full-precision *teacher* of the same
architecture and adds the LCR loss in its `train_step`. It composes with `fit`, and with any
kernel regularizer of the student (e.g. `L1InfRegularizer`): the student's own `losses` are
added to the loss, which gives the paper's "LCR_Bireal + ours" (000, table 11).

What is computed follows the official code (github.com/42Shawn/LCR_BNN, `LCR/imagenet/LCR.py`),
not the paper's eq. 11, where the two differ:

- stage outputs `F_1..F_S` of student and teacher; for each pair of consecutive stages a
  per-sample retention matrix `RM = P(F_k)^T F_{k+1} / (H W)` of shape `(C_k, C_{k+1})`,
  where `P` average-pools the earlier stage to the later stage's spatial size;
- `K = RM RM^T`, its top eigenvalue by power iteration from a ones vector, and the per-sample
  value `sqrt(lambda_max(K))` (the top singular value of `RM`);
- per pair, the mean squared difference over the batch between student and (stop-gradient)
  teacher values, weighted `beta^-(S-1-k)` for pair `k = 0..S-2` (the code's `1/2^(S-1-k)`,
  i.e. 1/8, 1/4, 1/2 for four stages), summed and scaled by `lam`;
- optionally (the code's `scaleable_feature`) a learnable scale per student stage.

Two differences to the official training script, both deliberate: the student's stage
outputs come from the *same* forward pass as its logits (the official script runs the
binary trunk twice), and `lam` is the plain multiplier of the sum (the script multiplies its
`alpha` by `1 / (batch_size * 10000)`; use `lam = alpha / (batch_size * 1e4)` to match it).
"""

import logging

from larq_l1inf import _keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF import)

import tensorflow as tf
from larq import utils as lq_utils

__all__ = ["LCRModel", "retention_matrix", "top_eigenvalue", "lcr_loss"]

log = logging.getLogger(__name__)


def _spatial_flatten(x):
    """`(B, *spatial, C)` -> `(B, prod(spatial), C)` for 1-D and 2-D feature maps."""
    shape = tf.shape(x)
    return tf.reshape(x, tf.stack([shape[0], -1, shape[-1]]))


def _pool_to(front, back):
    """Average-pool `front` to `back`'s spatial size (both channels-last, rank 3 or 4)."""
    if front.shape.rank != back.shape.rank:
        raise ValueError(
            f"Stage outputs of ranks {front.shape.rank} and {back.shape.rank} cannot form a "
            "retention matrix: choose stages that are all 2-D (B, H, W, C) or all 1-D "
            "(B, T, C) feature maps."
        )
    if front.shape.rank not in (3, 4):
        raise ValueError(
            f"A stage output must be a channels-last feature map of rank 3 or 4, got shape "
            f"{front.shape}. Pick the output of a convolutional stage (a residual block)."
        )
    f_sp, b_sp = front.shape[1:-1], back.shape[1:-1]
    if None in f_sp or None in b_sp:
        raise ValueError(
            "Retention matrices need static spatial sizes; build the model with a fixed "
            f"input shape (got stage shapes {front.shape} and {back.shape})."
        )
    if tuple(f_sp) == tuple(b_sp):
        return front
    factors = []
    for f, b in zip(f_sp, b_sp):
        if f < b or f % b:
            raise ValueError(
                f"Stage of spatial size {tuple(f_sp)} cannot be average-pooled to "
                f"{tuple(b_sp)}: list the stages from input to output, and use stages whose "
                "sizes divide each other (as the strided stages of a ResNet do)."
            )
        factors.append(f // b)
    if front.shape.rank == 4:
        return tf.nn.avg_pool2d(front, ksize=factors, strides=factors, padding="VALID")
    return tf.nn.avg_pool1d(front, ksize=factors, strides=factors, padding="VALID")


def retention_matrix(front, back):
    """Per-sample LCR retention matrix of two consecutive stage outputs.

    $$\\mathrm{RM} = \\frac{1}{HW} P(F_f)^\\top F_b \\in \\mathbb{R}^{C_f \\times C_b}$$

    with `P` the average pooling of the front stage to the back stage's spatial size
    `H x W` and the feature maps flattened to `(HW, C)`.

    # Arguments
        front: earlier stage output, `(B, H_f, W_f, C_f)` (or `(B, T_f, C_f)`).
        back: later stage output, `(B, H, W, C_b)` (or `(B, T, C_b)`); `H_f` a multiple of `H`.

    # Returns
        Tensor `(B, C_f, C_b)`.

    # Raises
        ValueError: if the shapes cannot be paired (rank, non-divisible sizes).

    # References
        - [Shang et al., Lipschitz Continuity Retained Binary Neural Network, ECCV 2022,
          eq. 10](https://arxiv.org/abs/2207.06540)
    """
    front = tf.convert_to_tensor(front)
    back = tf.cast(tf.convert_to_tensor(back), front.dtype)
    front = _pool_to(front, back)
    f = _spatial_flatten(front)
    b = _spatial_flatten(back)
    hw = tf.cast(tf.shape(f)[1], f.dtype)
    return tf.einsum("bsc,bsd->bcd", f, b) / hw


def top_eigenvalue(k, iterations=1):
    """Top eigenvalue of a batch of symmetric PSD matrices by power iteration, LCR style.

    Starts, as the official LCR code does, from the (unnormalised) ones vector `v_0 = 1`,
    iterates `v_{i+1} = K v_i / ||K v_i||`, and returns `||K v_{n-1}||`. It converges to
    `lambda_max(K)` as `iterations` grows; with one iteration it is `||K 1||`, which can
    exceed `lambda_max` by up to `sqrt(C)` (the code's default of one iteration keeps that
    scale, the same for student and teacher).

    # Arguments
        k: Tensor `(B, C, C)`, symmetric positive semi-definite (`RM RM^T`).
        iterations: number of power-iteration steps, >= 1.

    # Returns
        Tensor `(B,)`.

    # Raises
        ValueError: if `iterations < 1`.
    """
    if int(iterations) < 1:
        raise ValueError(f"`iterations` must be >= 1, got {iterations}.")
    k = tf.convert_to_tensor(k)
    v = tf.ones(tf.stack([tf.shape(k)[0], tf.shape(k)[1], 1]), dtype=k.dtype)
    norm = None
    for _ in range(int(iterations)):
        m = tf.matmul(k, v)
        norm = tf.norm(m, axis=1, keepdims=True)
        # A zero feature map gives K = 0: keep v finite instead of 0/0 (the value stays 0).
        v = tf.math.divide_no_nan(m, norm)
    return tf.reshape(norm, [-1])


def lcr_loss(student_stages, teacher_stages, beta=2.0, iterations=1):
    """LCR loss between student and teacher stage outputs (before the `lam` factor).

    $$\\mathcal{L}_{LCR} = \\sum_{k=0}^{S-2} \\beta^{-(S-1-k)}\\,
      \\frac{1}{B}\\sum_b \\left(\\sigma_k^{(b)}(\\text{student}) -
      \\sigma_k^{(b)}(\\text{teacher})\\right)^2,\\quad
      \\sigma_k = \\sqrt{\\lambda_{\\max}(\\mathrm{RM}_k \\mathrm{RM}_k^\\top)}$$

    Teacher values are computed under `stop_gradient`.

    # Arguments
        student_stages: list of `S >= 2` stage outputs of the binary model, input to output.
        teacher_stages: the teacher's outputs at the same stages (same shapes).
        beta: weighting base (> 0; the official code uses 2).
        iterations: power-iteration steps (the official code uses 1).

    # Returns
        Scalar tensor.

    # Raises
        ValueError: for fewer than two stages, mismatched lists or shapes, or `beta <= 0`.
    """
    if len(student_stages) != len(teacher_stages):
        raise ValueError(
            f"Got {len(student_stages)} student and {len(teacher_stages)} teacher stage "
            "outputs: pass the same stages of both models."
        )
    if len(student_stages) < 2:
        raise ValueError("LCR needs at least two stages (one retention matrix per pair).")
    if not beta > 0:
        raise ValueError(f"`beta` must be > 0, got {beta}.")
    n = len(student_stages)
    total = 0.0
    for i in range(n - 1):
        s_f = tf.convert_to_tensor(student_stages[i])
        s_b = tf.convert_to_tensor(student_stages[i + 1])
        t_f = tf.stop_gradient(teacher_stages[i])
        t_b = tf.stop_gradient(teacher_stages[i + 1])
        for s, t in ((s_f, t_f), (s_b, t_b)):
            if s.shape[1:] != t.shape[1:]:
                raise ValueError(
                    f"Student stage shape {s.shape} differs from teacher stage shape "
                    f"{t.shape}: the teacher must have the student's architecture."
                )
        rm_s = retention_matrix(s_f, s_b)
        rm_t = retention_matrix(t_f, t_b)
        sig_s = tf.sqrt(top_eigenvalue(tf.matmul(rm_s, rm_s, transpose_b=True), iterations))
        sig_t = tf.sqrt(top_eigenvalue(tf.matmul(rm_t, rm_t, transpose_b=True), iterations))
        weight = float(beta) ** (-(n - 1 - i))
        total = total + weight * tf.reduce_mean(tf.square(sig_s - tf.cast(sig_t, sig_s.dtype)))
    return total


def _stage_outputs(model, stages, role):
    outs = []
    for s in stages:
        try:
            layer = model.get_layer(index=s) if isinstance(s, int) else model.get_layer(s)
        except ValueError as e:
            names = [layer.name for layer in model.layers]
            raise ValueError(
                f"The {role} has no layer {s!r} to use as an LCR stage. Its layers are: "
                f"{names}. Pass `stages` (and `teacher_stages` if the teacher's names differ)."
            ) from e
        if len(layer.inbound_nodes) != 1:
            raise ValueError(
                f"Layer {layer.name!r} of the {role} is called {len(layer.inbound_nodes)} "
                "times; a stage must be a layer with a single output (call it once)."
            )
        outs.append(layer.output)
    return outs


@lq_utils.register_keras_custom_object
class LCRModel(tf.keras.Model):
    """Train a binary model with the LCR loss of a full-precision teacher, inside `fit`.

    One training step runs the student once (a tap model returns its logits *and* its stage
    outputs from the same pass) and the teacher once, truncated at its last stage (no
    gradient; its weights are never updated). The loss is

    `compiled loss(y, logits) + sum(student.losses) + lam * lcr_loss(...)`

    so kernel regularizers of the student, e.g. `L1InfRegularizer`, are active in the same
    `fit` ("LCR + ours"). `fit` logs `loss` (the total), `lcr_loss` (`lam * L_LCR`) and
    `penalty` (`sum(student.losses)`); `evaluate` computes the same three (student in
    inference mode). `predict` and `call` run only the student; save or convert
    `lcr_model.student`.

    !!! example
        ```python
        # Sketch: `student`/`teacher` are your functional models of one architecture
        # (binary / full precision, teacher ideally pretrained) with named stage layers.
        model = LCRModel(student, teacher, stages=["stage1", "stage2", "stage3"], lam=1e-4)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=128, epochs=1)
        ```

    # Arguments
        student: functional Keras model (the binary network being trained).
        teacher: functional Keras model of the same architecture in full precision. Its
            forward pass is LCR's extra training cost.
        stages: names (or indices) of the student layers whose outputs are the stage
            activations, input to output (at least two), e.g. the last layer of each
            residual stage.
        teacher_stages: the corresponding teacher layers; defaults to `stages`.
        lam: LCR loss coefficient (>= 0).
        beta: weighting base, pair `k` of `S-1` pairs weighted `beta^-(S-1-k)` (> 0).
        power_iterations: power-iteration steps per eigenvalue (official code: 1).
        stage_scales: learn one scale per student stage (official `scaleable_feature`).

    # Raises
        ValueError: for models without a single input, unknown stages, negative `lam`.

    # References
        - [Shang et al., Lipschitz Continuity Retained Binary Neural Network, ECCV 2022](
          https://arxiv.org/abs/2207.06540); code: github.com/42Shawn/LCR_BNN
    """

    def __init__(
        self,
        student,
        teacher,
        stages,
        teacher_stages=None,
        lam=1e-4,
        beta=2.0,
        power_iterations=1,
        stage_scales=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for m, role in ((student, "student"), (teacher, "teacher")):
            if not isinstance(m, tf.keras.Model) or not getattr(m, "_is_graph_network", False):
                raise ValueError(
                    f"The {role} must be a functional (or Sequential) Keras model so that its "
                    "stage outputs can be tapped in the same forward pass; got "
                    f"{type(m).__name__}."
                )
        if float(lam) < 0:
            raise ValueError(f"`lam` must be >= 0, got {lam}.")
        if not float(beta) > 0:
            raise ValueError(f"`beta` must be > 0, got {beta}.")
        if int(power_iterations) < 1:
            raise ValueError(f"`power_iterations` must be >= 1, got {power_iterations}.")
        stages = list(stages)
        teacher_stages = list(stages if teacher_stages is None else teacher_stages)
        if len(stages) < 2 or len(stages) != len(teacher_stages):
            raise ValueError(
                "Give at least two stages, and as many teacher stages as student stages "
                f"(got {len(stages)} and {len(teacher_stages)})."
            )
        if teacher is student:
            log.warning(
                "LCRModel: the teacher is the student itself; the LCR loss is then always 0. "
                "Pass a separate full-precision model of the same architecture."
            )
        self.student = student
        self.teacher = teacher
        self.stages = stages
        self.teacher_stages = teacher_stages
        self.lam = float(lam)
        self.beta = float(beta)
        self.power_iterations = int(power_iterations)
        self.use_stage_scales = bool(stage_scales)
        self._student_taps = tf.keras.Model(
            student.inputs,
            [student.output] + _stage_outputs(student, stages, "student"),
            name=f"{student.name}_lcr_taps",
        )
        self._teacher_taps = tf.keras.Model(
            teacher.inputs,
            _stage_outputs(teacher, teacher_stages, "teacher"),
            name=f"{teacher.name}_lcr_taps",
        )
        self.stage_scale = None
        if self.use_stage_scales:
            self.stage_scale = self.add_weight(
                name="lcr_stage_scale",
                shape=(len(stages),),
                initializer="ones",
                trainable=True,
            )
        # Metric attributes are tracked by Keras: they appear in `metrics` and reset per epoch.
        self._lcr_tracker = tf.keras.metrics.Mean(name="lcr_loss")
        self._penalty_tracker = tf.keras.metrics.Mean(name="penalty")

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def lcr_forward(self, x, training=True):
        """One student pass (logits and stage outputs) and one teacher pass.

        # Returns
            `(logits, lcr)` with `lcr = lam * lcr_loss(...)`.
        """
        outs = self._student_taps(x, training=training)
        logits, s_stages = outs[0], list(outs[1:])
        if self.stage_scale is not None:
            s_stages = [s * tf.cast(self.stage_scale[i], s.dtype) for i, s in enumerate(s_stages)]
        t_stages = self._teacher_taps(x, training=False)
        if not isinstance(t_stages, (list, tuple)):
            t_stages = [t_stages]
        lcr = lcr_loss(s_stages, list(t_stages), self.beta, self.power_iterations)
        return logits, self.lam * tf.cast(lcr, logits.dtype)

    def _student_penalty(self):
        losses = self.student.losses
        if not losses:
            return tf.constant(0.0)
        return tf.add_n([tf.cast(v, tf.float32) for v in losses])

    def train_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            logits, lcr = self.lcr_forward(x, training=True)
            penalty = self._student_penalty()
            loss = self.compiled_loss(
                y,
                logits,
                sample_weight,
                regularization_losses=list(self.student.losses) + [lcr],
            )
        variables = self.student.trainable_variables
        if self.stage_scale is not None:
            variables = variables + [self.stage_scale]
        self.optimizer.minimize(loss, variables, tape=tape)
        self._lcr_tracker.update_state(lcr)
        self._penalty_tracker.update_state(penalty)
        self.compiled_metrics.update_state(y, logits, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        # Same loss as training (so `val_loss` is comparable), with the student in inference mode.
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        logits, lcr = self.lcr_forward(x, training=False)
        self.compiled_loss(
            y, logits, sample_weight, regularization_losses=list(self.student.losses) + [lcr]
        )
        self._lcr_tracker.update_state(lcr)
        self._penalty_tracker.update_state(self._student_penalty())
        self.compiled_metrics.update_state(y, logits, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        return {
            "student": tf.keras.layers.serialize(self.student),
            "teacher": tf.keras.layers.serialize(self.teacher),
            "stages": list(self.stages),
            "teacher_stages": list(self.teacher_stages),
            "lam": self.lam,
            "beta": self.beta,
            "power_iterations": self.power_iterations,
            "stage_scales": self.use_stage_scales,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        student = tf.keras.layers.deserialize(config.pop("student"), custom_objects=custom_objects)
        teacher = tf.keras.layers.deserialize(config.pop("teacher"), custom_objects=custom_objects)
        return cls(student, teacher, **config)

"""Lipschitz Continuity Retention (LCR, Shang et al., ECCV 2022), the paper's main baseline.

LCR needs activations, not only kernels, so it is a model wrapper rather than a kernel
regularizer: `LCRModel` wraps a binary *student* and a full-precision *teacher* of the same
architecture and adds the LCR loss in its `train_step`. It composes with `fit`, and with any
kernel regularizer of the student (e.g. `L1InfRegularizer`): the student's own `losses` are
added to the loss ("LCR + ours").

What is computed follows the official code (github.com/42Shawn/LCR_BNN, `LCR/imagenet/LCR.py`
and `main.py`), not the paper's eq. 11, where the two differ:

- stage outputs `F_1..F_S` (the output of each resolution stage, after the block's
  activation), passed through each network's own nonlinearity as the official
  `extract_feature(preReLU=False)` does: hardtanh for the binary student, ReLU for the
  full-precision teacher (idempotent when the block already ends with it);
- the teacher runs in training mode (batch statistics), in `fit` and in `evaluate` alike:
  the official script never switches it to eval mode;
- for each pair of consecutive stages a per-sample retention matrix
  `RM = P(F_k)^T F_{k+1} / (H W)` of shape `(C_k, C_{k+1})`, `P` the adaptive average
  pooling of the earlier stage to the later stage's spatial size;
- `K = RM RM^T`, its top eigenvalue by power iteration from a ones vector, and the
  per-sample value `sqrt(lambda_max(K))` (the top singular value of `RM`);
- per pair, the mean squared difference over the batch between student and (stop-gradient)
  teacher values, weighted `beta^-(S-1-k)` for pair `k = 0..S-2` (1/8, 1/4, 1/2 for four
  stages), summed and scaled by `lam`, by default the official `8 / (batch_size * 1e4)`;
- optionally (the code's `scaleable_feature`) a learnable scale per student stage.

One deliberate difference: the student's stage outputs come from the *same* forward pass
as its logits (the official script runs the binary trunk twice).
"""

import logging

from larq_l1inf import _keras  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF import)

import numpy as np
import tensorflow as tf
from larq import utils as lq_utils

from larq_l1inf import kernels

__all__ = [
    "LCRModel",
    "OFFICIAL_ALPHA",
    "find_stages",
    "lcr_loss",
    "official_lam",
    "retention_matrix",
    "top_eigenvalue",
]

log = logging.getLogger(__name__)

#: The official training script's `--alpha` default (ImageNet ResNet-18, `utils/options.py`).
OFFICIAL_ALPHA = 8.0


def official_lam(batch_size, alpha=OFFICIAL_ALPHA):
    """The LCR weight the official script applies: `alpha / (batch_size * 1e4)`.

    `main.py` multiplies the summed LCR loss by `args.alpha / args.batch_size / 10000`; with
    the default `alpha = 8` that is 6.25e-6 at batch 128.

    # Arguments
        batch_size: training batch size (> 0).
        alpha: the official `--alpha` (>= 0; 8 for ImageNet, its README used 3.2 before).

    # Returns
        The effective weight `lam` of `LCRModel` (a float).

    # Raises
        ValueError: for `batch_size <= 0` or `alpha < 0`.
    """
    if not batch_size > 0:
        raise ValueError(f"`batch_size` must be > 0, got {batch_size}.")
    if float(alpha) < 0:
        raise ValueError(f"`alpha` must be >= 0, got {alpha}.")
    return float(alpha) / (float(batch_size) * 1e4)


def _spatial_flatten(x):
    """`(B, *spatial, C)` -> `(B, prod(spatial), C)`; `(B, C)` -> `(B, 1, C)`."""
    shape = tf.shape(x)
    return tf.reshape(x, tf.stack([shape[0], -1, shape[-1]]))


def adaptive_pool_matrix(n_in, n_out):
    """`(n_out, n_in)` averaging matrix of adaptive average pooling along one axis.

    Output `i` averages inputs `floor(i n_in / n_out) .. ceil((i + 1) n_in / n_out) - 1`, the
    windows of PyTorch's `adaptive_avg_pool2d` (which the official code uses); for
    `n_in % n_out == 0` it is plain average pooling of size `n_in / n_out`.
    """
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def _pool_to(front, back):
    """Adaptive-average-pool `front` to `back`'s spatial size (channels-last, rank 2-4)."""
    if front.shape.rank != back.shape.rank:
        raise ValueError(
            f"Stage outputs of ranks {front.shape.rank} and {back.shape.rank} cannot form a "
            "retention matrix: choose stages that are all 2-D (B, H, W, C), all 1-D "
            "(B, T, C) feature maps, or all vectors (B, C)."
        )
    if front.shape.rank not in (2, 3, 4):
        raise ValueError(
            f"A stage output must be a channels-last feature map of rank 2 to 4, got shape "
            f"{front.shape}. Pick the output of a convolutional stage (a residual block)."
        )
    f_sp, b_sp = tuple(front.shape[1:-1]), tuple(back.shape[1:-1])
    if None in f_sp or None in b_sp:
        raise ValueError(
            "Retention matrices need static spatial sizes; build the model with a fixed "
            f"input shape (got stage shapes {front.shape} and {back.shape})."
        )
    if f_sp == b_sp:
        return front
    if any(f < b for f, b in zip(f_sp, b_sp)):
        raise ValueError(
            f"Stage of spatial size {f_sp} cannot be average-pooled to the larger {b_sp}: "
            "list the stages from input to output."
        )
    for axis, (f, b) in enumerate(zip(f_sp, b_sp), start=1):
        if f != b:
            pool = tf.constant(adaptive_pool_matrix(f, b), front.dtype)
            front = tf.tensordot(front, pool, axes=[[axis], [1]])  # pooled axis goes last
            perm = list(range(axis)) + [front.shape.rank - 1] + list(
                range(axis, front.shape.rank - 1))
            front = tf.transpose(front, perm)
    return front


def retention_matrix(front, back):
    """Per-sample LCR retention matrix of two consecutive stage outputs.

    $$\\mathrm{RM} = \\frac{1}{HW} P(F_f)^\\top F_b \\in \\mathbb{R}^{C_f \\times C_b}$$

    with `P` the adaptive average pooling of the front stage to the back stage's spatial
    size `H x W` and the feature maps flattened to `(HW, C)`.

    # Arguments
        front: earlier stage output, `(B, H_f, W_f, C_f)` (or `(B, T_f, C_f)`, `(B, C_f)`).
        back: later stage output, `(B, H, W, C_b)` (or `(B, T, C_b)`, `(B, C_b)`), no larger.

    # Returns
        Tensor `(B, C_f, C_b)`.

    # Raises
        ValueError: if the shapes cannot be paired (rank, front smaller than back).

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

    # References
        - [Shang et al., Lipschitz Continuity Retained Binary Neural Network, ECCV 2022,
          supplementary Algorithm 2](https://arxiv.org/abs/2207.06540)
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

    # References
        - [Shang et al., Lipschitz Continuity Retained Binary Neural Network, ECCV 2022,
          eq. 11](https://arxiv.org/abs/2207.06540)
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


# ---------------------------------------------------------------------------------------------
# Stage discovery
# ---------------------------------------------------------------------------------------------


def _is_quantized(layer):
    """A binary layer (larq's rule), or any layer with a weight or input quantizer set: the
    part of a BNN that is not the full-precision stem or head."""
    kernel_quantized = any(entry.quantizer is not None for entry in kernels.layer_kernels(layer))
    return kernel_quantized or getattr(layer, "input_quantizer", None) is not None


def _has_kernel(layer):
    return bool(kernels.layer_kernels(layer))


def _layer_graph(model):
    """Layers of a functional model in topological order and their parents (by id)."""
    if not isinstance(model, tf.keras.Model) or not getattr(model, "_is_graph_network", False):
        raise ValueError(
            "Automatic LCR stages need a functional (or Sequential) Keras model; got "
            f"{type(model).__name__}. Pass `stages=[layer names]` instead."
        )
    layers = [layer for layer in model.layers
              if not isinstance(layer, tf.keras.layers.InputLayer)]
    ids = {id(layer) for layer in layers}
    parents = {}
    for layer in layers:
        if len(layer.inbound_nodes) != 1:
            raise ValueError(
                f"Layer {layer.name!r} of {model.name!r} is called "
                f"{len(layer.inbound_nodes)} times; automatic LCR stages need every layer "
                "called once. Pass `stages=[layer names]` instead."
            )
        inbound = layer.inbound_nodes[0].inbound_layers
        inbound = inbound if isinstance(inbound, (list, tuple)) else [inbound]
        parents[id(layer)] = [id(p) for p in inbound if id(p) in ids]
    order, done = [], set()
    pending = list(layers)
    while pending:  # model.layers is topological for Functional; this also covers Sequential
        rest = []
        for layer in pending:
            if all(p in done for p in parents[id(layer)]):
                order.append(layer)
                done.add(id(layer))
            else:
                rest.append(layer)
        if len(rest) == len(pending):
            raise ValueError(f"Could not order the layers of {model.name!r}.")
        pending = rest
    return order, parents


def _trunk(order, parents):
    """Layers every input-to-output path passes through (the chain of block outputs)."""
    children = {id(layer): [] for layer in order}
    for layer in order:
        for p in parents[id(layer)]:
            children[p].append(id(layer))
    sources = [id(layer) for layer in order if not parents[id(layer)]]
    sinks = {id(layer) for layer in order if not children[id(layer)]}

    def reaches_sink(removed):
        seen, stack = set(), [s for s in sources if s != removed]
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in sinks:
                return True
            stack.extend(c for c in children[n] if c != removed)
        return False

    return [layer for layer in order if not reaches_sink(id(layer))], children


def _stage_candidates(model, counts):
    """`(layer, spatial shape)` of the last qualifying trunk feature map of each run of
    equal spatial size, input to output. A trunk layer qualifies if it lies after a layer
    `counts` accepts and feeds one (within the segment up to the next trunk layer), or is
    the last feature map before the head."""
    order, parents = _layer_graph(model)
    trunk, children = _trunk(order, parents)
    position = {id(layer): i for i, layer in enumerate(order)}
    counted = {id(layer) for layer in order if counts(layer)}
    downstream, stack = set(), list(counted)
    while stack:
        n = stack.pop()
        if n not in downstream:
            downstream.add(n)
            stack.extend(children[n])
    # A weighted layer feeding only a quantized layer is that layer's input binarizer
    # (ReActNet's RSign, ABC-Net's and AdaBin's activations), not a block output.
    binarizers = {
        id(layer) for layer in order
        if layer.weights and not isinstance(layer, tf.keras.layers.BatchNormalization)
        and len(children[id(layer)]) == 1 and children[id(layer)][0] in counted
    }
    maps = [layer for layer in trunk if id(layer) in downstream and _rank(layer) in (3, 4)
            and id(layer) not in binarizers]
    picked = []
    for i, layer in enumerate(maps):
        qualifies = i == len(maps) - 1
        if not qualifies:
            j = trunk.index(layer) + 1
            while j < len(trunk) - 1 and id(trunk[j]) in binarizers:
                j += 1
            nxt = trunk[j]
            segment = order[position[id(layer)] + 1:position[id(nxt)] + 1]
            qualifies = any(id(s) in counted for s in segment)
        if qualifies:
            picked.append((layer, tuple(layer.output.shape[1:-1])))
    runs = []
    for layer, spatial in picked:
        if runs and runs[-1][1] == spatial:
            runs[-1] = (layer, spatial)
        else:
            runs.append((layer, spatial))
    return runs


def _rank(layer):
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError, TypeError):  # multi-output layers
        return None


def find_stages(model, like=None):
    """Names of the layers whose outputs are a model's LCR stages, found from its graph.

    A stage is a run of the trunk (the layers every input-to-output path passes through, i.e.
    the block outputs) at one spatial resolution; its output is the last trunk feature map
    of the run that feeds the next quantized layer or the head, so it is taken after the
    block's activation, as the official code taps the output of each ResNet `layer1..4`.
    Runs before the first quantized layer (the full-precision stem) are not stages.

    # Arguments
        model: functional or Sequential Keras model, each layer called once.
        like: stage output shapes of the student (without the batch axis), to find the
            same stages in a full-precision teacher that has no quantized layers: then every
            layer with a kernel counts, and each student stage is matched by spatial size.

    # Returns
        List of layer names, input to output.

    # Raises
        ValueError: for a subclassed model or shared layers, or (with `like`) when the
            teacher has no stage of a student stage's shape.

    !!! example
        ```python
        from larq_l1inf.backbones import resnet20
        from larq_l1inf.lcr import find_stages
        model = resnet20("bnn", input_shape=(16, 16, 3), width=4)
        assert len(find_stages(model)) == 3  # one per stage of 16, 32, 64 channels
        ```
    """
    if like is None:
        runs = _stage_candidates(model, _is_quantized)
        if not runs:
            runs = _stage_candidates(model, _has_kernel)
            log.warning(
                "find_stages: %r has no quantized layer; stages are taken after its first "
                "layer with a kernel instead (the stem counts as a stage).", model.name
            )
        return [layer.name for layer, _ in runs]
    runs = _stage_candidates(model, _has_kernel)
    names = []
    for shape in like:
        shape = tuple(shape)
        match = [layer for layer, spatial in runs if spatial == shape[:-1]]
        if not match or tuple(match[-1].output.shape[1:]) != shape:
            found = [tuple(layer.output.shape[1:]) for layer, _ in runs]
            raise ValueError(
                f"{model.name!r} has no stage of shape {shape} (its stages have shapes "
                f"{found}); the teacher must have the student's architecture, or pass "
                "`teacher_stages=[layer names]`."
            )
        names.append(match[-1].name)
    return names


def _stage_outputs(model, stages, role):
    outs = []
    for s in stages:
        try:
            layer = model.get_layer(index=s) if isinstance(s, int) else model.get_layer(s)
        except ValueError as e:
            names = [layer.name for layer in model.layers]
            raise ValueError(
                f"The {role} has no layer {s!r} to use as an LCR stage. Its layers are: "
                f"{names}. Pass `stages` (and `teacher_stages` if the teacher's names differ), "
                "or leave them None for automatic stages."
            ) from e
        if len(layer.inbound_nodes) != 1:
            raise ValueError(
                f"Layer {layer.name!r} of the {role} is called {len(layer.inbound_nodes)} "
                "times; a stage must be a layer with a single output (call it once)."
            )
        outs.append(layer.output)
    return outs


def _matching_stages(student, teacher, stages, student_outs):
    """The teacher's stages: the same names, else the same positions in a layer-for-layer
    twin (same layer classes), else `find_stages(teacher, like=...)`."""
    names = {layer.name for layer in teacher.layers}
    if all(isinstance(s, str) and s in names for s in stages):
        return list(stages)
    s_layers, t_layers = student.layers, teacher.layers
    if [type(a) for a in s_layers] == [type(b) for b in t_layers]:
        index = {id(layer): i for i, layer in enumerate(s_layers)}
        picked = [t_layers[index[id(student.get_layer(index=s) if isinstance(s, int)
                                      else student.get_layer(s))]] for s in stages]
        if all(p.output.shape[1:] == o.shape[1:] for p, o in zip(picked, student_outs)):
            return [p.name for p in picked]
    return find_stages(teacher, like=[o.shape[1:] for o in student_outs])


def _stage_activation(name, role):
    """The nonlinearity applied to tapped stage outputs: "hardtanh", a Keras activation
    name, or None."""
    if name is None or name == "linear":
        return lambda x: x
    if name == "hardtanh":
        return lambda x: tf.clip_by_value(x, -1.0, 1.0)
    if isinstance(name, str):
        try:
            return tf.keras.activations.get(name)
        except ValueError as e:
            raise ValueError(
                f"Unknown {role}_activation {name!r}: use 'hardtanh', a Keras activation "
                "name such as 'relu', or None."
            ) from e
    raise ValueError(
        f"`{role}_activation` must be a string ('hardtanh', 'relu', ...) or None so that the "
        f"model stays serializable, got {name!r}."
    )


# ---------------------------------------------------------------------------------------------
# The model wrapper
# ---------------------------------------------------------------------------------------------


@lq_utils.register_keras_custom_object
class LCRModel(tf.keras.Model):
    """Train a binary model with the LCR loss of a full-precision teacher, inside `fit`.

    One training step runs the student once (a tap model returns its logits *and* its stage
    outputs from the same pass) and the teacher once, truncated at its last stage, in training
    mode (batch statistics, as the official code runs it; its batch-norm moving statistics
    are updated as PyTorch's train mode does, its weights are never trained). The loss is

    $$\\mathcal{L} = \\mathcal{L}_{compiled}(y, \\hat y) + \\sum \\text{student.losses}
      + \\lambda\\,\\mathcal{L}_{LCR},\\qquad
      \\lambda = \\frac{\\alpha}{B \\cdot 10^4}\\ (\\alpha = 8)\\ \\text{by default}$$

    so kernel regularizers of the student, e.g. `L1InfRegularizer`, are active in the same
    `fit` ("LCR + ours"). `fit` logs `loss` (the total), `lcr_loss` (`lam * L_LCR`) and
    `penalty` (`sum(student.losses)`); `evaluate` computes the same three (student in
    inference mode, teacher in training mode as in the official validation). `predict` and
    `call` run only the student; save or convert `lcr_model.student`.

    !!! example
        ```python
        import larq_l1inf  # first: selects Keras 2 (tf_keras), which larq needs
        import numpy as np
        import tensorflow as tf
        from larq_l1inf import L1InfRegularizer
        from larq_l1inf.backbones import resnet20
        from larq_l1inf.lcr import LCRModel
        from larq_l1inf.variants import Variant

        student = resnet20("bnn", input_shape=(16, 16, 3), width=4, logits=True,
                           kernel_regularizer=L1InfRegularizer(5e-3))
        # Same architecture in full precision: float convs, ReLU after each block.
        full_precision = Variant("float", lambda: None, None, lce_binary=False,
                                 activation=tf.keras.layers.ReLU)
        teacher = resnet20(full_precision, input_shape=(16, 16, 3), width=4, logits=True)
        model = LCRModel(student, teacher)  # stages found automatically, official lam
        model.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x, y = np.random.rand(8, 16, 16, 3), np.random.randint(0, 10, 8)
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        ```

    # Arguments
        student: functional Keras model (the binary network being trained).
        teacher: functional Keras model of the same architecture in full precision
            (pretrained, as the official ImageNet teacher is). Its forward pass is LCR's
            extra training cost.
        stages: names (or indices) of the student layers whose outputs are the stage
            activations, input to output (at least two); None finds them (`find_stages`).
        teacher_stages: the corresponding teacher layers; None takes the `stages` names if
            the teacher has them all, else the layers at the same positions if the teacher
            is a layer-for-layer twin, else finds the teacher stages of the same shapes.
        lam: the effective LCR weight (>= 0); None for the official
            `8 / (batch_size * 1e4)` (`official_lam`) with each step's batch size.
        beta: weighting base, pair `k` of `S-1` pairs weighted `beta^-(S-1-k)` (> 0).
        power_iterations: power-iteration steps per eigenvalue (official code: 1).
        stage_scales: learn one scale per student stage (official `scaleable_feature`).
        student_activation: applied to the student's stage outputs: "hardtanh" (official),
            a Keras activation name, or None.
        teacher_activation: likewise for the teacher: "relu" (official), a name, or None.

    # Raises
        ValueError: for models without a single input, unknown stages, negative `lam`.

    # References
        - [Shang et al., Lipschitz Continuity Retained Binary Neural Network, ECCV 2022,
          eqs. 9-12](https://arxiv.org/abs/2207.06540); code: github.com/42Shawn/LCR_BNN
    """

    def __init__(
        self,
        student,
        teacher,
        stages=None,
        teacher_stages=None,
        lam=None,
        beta=2.0,
        power_iterations=1,
        stage_scales=True,
        student_activation="hardtanh",
        teacher_activation="relu",
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
        if lam is not None and not float(lam) >= 0:
            raise ValueError(
                f"`lam` must be >= 0, or None for the official 8 / (batch_size * 1e4); got {lam}."
            )
        if not float(beta) > 0:
            raise ValueError(f"`beta` must be > 0, got {beta}.")
        if int(power_iterations) < 1:
            raise ValueError(f"`power_iterations` must be >= 1, got {power_iterations}.")
        self._student_act = _stage_activation(student_activation, "student")
        self._teacher_act = _stage_activation(teacher_activation, "teacher")
        stages = find_stages(student) if stages is None else list(stages)
        if len(stages) < 2:
            raise ValueError(
                f"LCR needs at least two stages, got {stages}: give at least two stage layers "
                "(one retention matrix per pair of consecutive stages)."
            )
        student_outs = _stage_outputs(student, stages, "student")
        if teacher_stages is None:
            teacher_stages = _matching_stages(student, teacher, stages, student_outs)
        teacher_stages = list(teacher_stages)
        if len(stages) != len(teacher_stages):
            raise ValueError(
                "Give as many teacher stages as student stages "
                f"(got {len(stages)} and {len(teacher_stages)})."
            )
        if teacher is student:
            log.warning(
                "LCRModel: the teacher is the student itself; the LCR loss is then always 0. "
                "Pass a separate full-precision model of the same architecture."
            )
        frozen = [layer.name for layer in teacher.submodules
                  if isinstance(layer, tf.keras.layers.BatchNormalization) and not layer.trainable]
        if frozen:
            log.warning(
                "LCRModel: the teacher's batch norms %s are not trainable, so Keras runs them "
                "in inference mode; the official LCR teacher uses batch statistics. Leave the "
                "teacher trainable (LCRModel never updates its weights).", frozen[:3]
            )
        self.student = student
        self.teacher = teacher
        self.stages = stages
        self.teacher_stages = teacher_stages
        self.lam = None if lam is None else float(lam)
        self.beta = float(beta)
        self.power_iterations = int(power_iterations)
        self.use_stage_scales = bool(stage_scales)
        self.student_activation = student_activation
        self.teacher_activation = teacher_activation
        self._student_taps = tf.keras.Model(
            student.inputs,
            [student.output] + student_outs,
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

    def effective_lam(self, batch_size):
        """The weight applied to `L_LCR` for a batch of `batch_size` samples (a tensor or
        number): `lam`, or `official_lam(batch_size)` when `lam` is None."""
        if self.lam is not None:
            return tf.constant(self.lam, tf.float32)
        return OFFICIAL_ALPHA / (tf.cast(batch_size, tf.float32) * 1e4)

    def lcr_forward(self, x, training=True):
        """One student pass (logits and stage outputs) and one teacher pass (training mode).

        # Returns
            `(logits, lcr)` with `lcr = lam * lcr_loss(...)`.
        """
        outs = self._student_taps(x, training=training)
        logits, s_stages = outs[0], [self._student_act(s) for s in outs[1:]]
        if self.stage_scale is not None:
            s_stages = [s * tf.cast(self.stage_scale[i], s.dtype) for i, s in enumerate(s_stages)]
        # Official code: the teacher never leaves PyTorch's train mode (batch statistics).
        t_stages = self._teacher_taps(x, training=True)
        if not isinstance(t_stages, (list, tuple)):
            t_stages = [t_stages]
        t_stages = [self._teacher_act(t) for t in t_stages]
        lcr = lcr_loss(s_stages, t_stages, self.beta, self.power_iterations)
        lam = self.effective_lam(tf.shape(logits)[0])
        return logits, tf.cast(lam, logits.dtype) * tf.cast(lcr, logits.dtype)

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
            "student_activation": self.student_activation,
            "teacher_activation": self.teacher_activation,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        student = tf.keras.layers.deserialize(config.pop("student"), custom_objects=custom_objects)
        teacher = tf.keras.layers.deserialize(config.pop("teacher"), custom_objects=custom_objects)
        return cls(student, teacher, **config)

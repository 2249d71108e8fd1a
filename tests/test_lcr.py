"""LCR (Shang et al. 2022) as the official code computes it, and LCRModel inside fit."""

import logging

import larq_l1inf  # noqa: F401,I001  (first: sets TF_USE_LEGACY_KERAS before larq imports TF)
import larq as lq
import numpy as np
import pytest
from helpers import BINARY, toy_bnn, trained_like_batchnorm, uniform_inputs

from larq_l1inf import backbones
from larq_l1inf._keras import tf
from larq_l1inf.lcr import (
    LCRModel,
    adaptive_pool_matrix,
    find_stages,
    lcr_loss,
    official_lam,
    retention_matrix,
    top_eigenvalue,
)
from larq_l1inf.variants import Variant

STAGES = ["stage1", "stage2", "stage3"]
#: Same architecture in full precision: float convs and a ReLU after each block (the
#: official teacher is a float ResNet). Kept here: variants.py has no float variant yet.
FLOAT = Variant("float", lambda: None, None, lce_binary=False, activation=tf.keras.layers.ReLU)


class CallCounter(tf.keras.layers.Layer):
    """Identity that counts how often it runs (to check the trunk runs once per step)."""

    def build(self, input_shape):
        self.count = self.add_weight(name="count", shape=(), initializer="zeros",
                                     trainable=False)

    def call(self, x):
        self.count.assign_add(1.0)
        return x


def tiny_resnet(binary, regularizer=None, counter=False, seed=0, stage_activation="linear"):
    """Stem, three convs (8x8, 4x4, 2x2) each + BN + a named stage activation, GAP, Dense.

    helpers.toy_bnn has no full-precision twin, which a teacher needs; the linear stage
    activation lets stage outputs leave [-1, 1] and go negative (to see the tap nonlinearity).
    """
    tf.keras.utils.set_random_seed(seed)
    q = dict(BINARY, kernel_regularizer=regularizer) if binary else dict(use_bias=False)
    x = inp = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="stem")(x)
    if counter:
        x = CallCounter(name="counter")(x)
    for i, (filters, stride) in enumerate([(4, 1), (8, 2), (8, 2)]):
        x = lq.layers.QuantConv2D(filters, 3, strides=stride, padding="same", pad_values=1.0,
                                  name=f"conv{i + 1}", **q)(x)
        x = tf.keras.layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = tf.keras.layers.Activation(stage_activation, name=STAGES[i])(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(3, name="logits")(x)
    return tf.keras.Model(inp, out, name="bnn" if binary else "fp")


def np_adaptive_pool(x, h, w):
    """PyTorch adaptive_avg_pool2d by loops: window floor(i*H/h) .. ceil((i+1)*H/h)."""
    b, hf, wf, c = x.shape
    out = np.zeros((b, h, w, c))
    for i in range(h):
        for j in range(w):
            i0, i1 = (i * hf) // h, -(-((i + 1) * hf) // h)
            j0, j1 = (j * wf) // w, -(-((j + 1) * wf) // w)
            out[:, i, j] = x[:, i0:i1, j0:j1].mean(axis=(1, 2))
    return out


def np_retention(front, back):
    """Loops: pool front to back's size, then RM[c, d] = mean_s front[s, c] back[s, d]."""
    b, _, _, cf = front.shape
    _, h, w, cb = back.shape
    pooled = np_adaptive_pool(front, h, w)
    rm = np.zeros((b, cf, cb))
    for n in range(b):
        for c in range(cf):
            for d in range(cb):
                rm[n, c, d] = sum(pooled[n, i, j, c] * back[n, i, j, d]
                                  for i in range(h) for j in range(w)) / (h * w)
    return rm


def np_lcr(student, teacher, beta=2.0, iterations=1):
    total = 0.0
    s_count = len(student)
    for k in range(s_count - 1):
        sq = []
        for feats in (student, teacher):
            rm = np_retention(feats[k], feats[k + 1])
            vals = []
            for r in rm:
                kk = r @ r.T
                v = np.ones(kk.shape[0])
                for _ in range(iterations):
                    m = kk @ v
                    nrm = np.linalg.norm(m)
                    v = m / nrm
                vals.append(np.sqrt(nrm))
            sq.append(np.array(vals))
        total += beta ** (-(s_count - 1 - k)) * np.mean((sq[0] - sq[1]) ** 2)
    return total


def taps(model, stages, x, training):
    """Stage outputs from an independent tap model (not LCRModel's)."""
    tap = tf.keras.Model(model.inputs, [model.get_layer(s).output for s in stages])
    return [t.numpy().astype(np.float64) for t in tap(x, training=training)]


class TestFunctions:
    @pytest.mark.parametrize("front_hw,back_hw", [((4, 4), (4, 4)), ((8, 8), (4, 4)),
                                                  ((6, 4), (3, 2)), ((7, 7), (4, 4)),
                                                  ((8, 6), (6, 4))])
    def test_retention_matrix(self, front_hw, back_hw):
        rng = np.random.RandomState(0)
        front = rng.randn(2, *front_hw, 3).astype(np.float32)
        back = rng.randn(2, *back_hw, 5).astype(np.float32)
        np.testing.assert_allclose(retention_matrix(front, back).numpy(),
                                   np_retention(front, back), rtol=1e-4, atol=1e-5)

    def test_retention_matrix_1d_and_vectors(self):
        rng = np.random.RandomState(1)
        front, back = rng.randn(2, 6, 3), rng.randn(2, 3, 4)
        expect = np_retention(front[:, :, None], back[:, :, None])  # a 1-D map is H x 1
        np.testing.assert_allclose(retention_matrix(front, back).numpy(), expect, rtol=1e-6)
        f, b = rng.randn(2, 3), rng.randn(2, 4)
        np.testing.assert_allclose(retention_matrix(f, b).numpy(),
                                   np.einsum("bc,bd->bcd", f, b), rtol=1e-6)

    def test_adaptive_pool_matrix_is_average_pooling_when_divisible(self):
        np.testing.assert_allclose(adaptive_pool_matrix(6, 3),
                                   np.kron(np.eye(3), [[0.5, 0.5]]), rtol=1e-7)
        assert np.allclose(adaptive_pool_matrix(7, 4).sum(axis=1), 1.0)

    def test_retention_matrix_rejects_bad_shapes(self):
        with pytest.raises(ValueError, match="larger"):  # wrong order
            retention_matrix(np.ones((1, 2, 2, 2), np.float32), np.ones((1, 4, 4, 2), np.float32))
        with pytest.raises(ValueError, match="rank"):
            retention_matrix(np.ones((1, 4, 4, 2), np.float32), np.ones((1, 4), np.float32))

    @pytest.mark.parametrize("c", [2, 5, 16])
    def test_top_eigenvalue_against_numpy(self, c):
        rng = np.random.RandomState(c)
        rm = rng.randn(3, c, c + 2)
        k = np.einsum("bij,bkj->bik", rm, rm)
        exact = np.array([np.linalg.eigvalsh(m).max() for m in k])
        # One step from the unnormalised ones vector: ||K 1|| (the official code's value).
        np.testing.assert_allclose(top_eigenvalue(k, 1).numpy(),
                                   np.linalg.norm(k @ np.ones(c), axis=1), rtol=1e-6)
        err = [np.abs(top_eigenvalue(k, it).numpy() - exact).max() for it in (2, 10, 200)]
        assert err[-1] <= 1e-6 * exact.max()
        assert err[-1] <= err[0]
        # sqrt(lambda_max(RM RM^T)) is the top singular value of RM.
        np.testing.assert_allclose(np.sqrt(top_eigenvalue(k, 200).numpy()),
                                   [np.linalg.norm(r, 2) for r in rm], rtol=1e-6)

    def test_top_eigenvalue_zero_matrix_is_finite(self):
        assert np.all(top_eigenvalue(np.zeros((2, 3, 3)), 3).numpy() == 0)

    @pytest.mark.parametrize("beta,iterations", [(2.0, 1), (3.0, 4)])
    def test_lcr_loss_against_numpy(self, beta, iterations):
        rng = np.random.RandomState(1)
        shapes = [(2, 8, 8, 3), (2, 4, 4, 4), (2, 3, 3, 5)]
        s = [rng.randn(*sh).astype(np.float32) for sh in shapes]
        t = [rng.randn(*sh).astype(np.float32) for sh in shapes]
        np.testing.assert_allclose(float(lcr_loss(s, t, beta, iterations)),
                                   np_lcr(s, t, beta, iterations), rtol=1e-4)

    def test_official_weights(self):
        """Four stages: only the last pair differs, so the loss is 1/2 of its MSE (beta = 2)."""
        rng = np.random.RandomState(2)
        shapes = [(2, 4, 4, 2)] * 4
        s = [rng.randn(*sh).astype(np.float32) for sh in shapes]
        t = [x.copy() for x in s]
        t[3] = rng.randn(*shapes[3]).astype(np.float32)
        last_pair = np_lcr(s[2:], t[2:], beta=2.0)  # one pair: weight 1/2
        assert last_pair > 0
        np.testing.assert_allclose(float(lcr_loss(s, t)), last_pair, rtol=1e-4)

    def test_official_lam(self):
        assert official_lam(128) == pytest.approx(8 / 128 / 1e4)
        assert official_lam(128) == pytest.approx(6.25e-6)
        assert official_lam(256, alpha=3.2) == pytest.approx(1.25e-6)
        with pytest.raises(ValueError, match="batch_size"):
            official_lam(0)

    def test_lcr_loss_errors(self):
        x = np.ones((1, 2, 2, 2), np.float32)
        with pytest.raises(ValueError, match="two stages"):
            lcr_loss([x], [x])
        with pytest.raises(ValueError, match="same stages"):
            lcr_loss([x, x], [x])
        with pytest.raises(ValueError, match="architecture"):
            lcr_loss([x, x], [x, np.ones((1, 2, 2, 3), np.float32)])


def data(n=8, seed=0):
    return uniform_inputs((n, 8, 8, 3), seed), np.random.RandomState(seed).randint(0, 3, n)


def compile_(model, run_eagerly=True):
    # Eager: one or two tiny steps run faster than tracing the train function on a busy box.
    model.compile(tf.keras.optimizers.SGD(0.01),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=run_eagerly)
    return model


def pair(**kwargs):
    """A binary student and a float teacher with trained-looking batch-norm statistics."""
    student = trained_like_batchnorm(tiny_resnet(True, **kwargs))
    teacher = trained_like_batchnorm(tiny_resnet(False, seed=1))
    return student, teacher


def official_value(student, teacher, x, student_training=True):
    """lam * L_LCR computed as the official code does, from independent taps and NumPy."""
    s = [np.clip(a, -1, 1) for a in taps(student, STAGES, x, student_training)]  # hardtanh
    t = [np.maximum(a, 0) for a in taps(teacher, STAGES, x, True)]  # ReLU, batch statistics
    return official_lam(len(x)) * np_lcr(s, t)


class TestOfficialCode:
    """Each test fails on the first version (teacher in inference mode, lam = 1e-4, raw taps)."""

    def test_teacher_uses_batch_statistics(self):
        student, teacher = pair()
        model = LCRModel(student, teacher, STAGES, lam=1.0, student_activation=None,
                         teacher_activation=None)
        x, _ = data()
        s = taps(student, STAGES, x, True)
        batch = np_lcr(s, taps(teacher, STAGES, x, True))
        moving = np_lcr(s, taps(teacher, STAGES, x, False))
        assert abs(batch - moving) > 0.05 * batch  # the mode matters for this teacher
        np.testing.assert_allclose(float(model.lcr_forward(x)[1]), batch, rtol=1e-4)

    def test_evaluate_keeps_teacher_in_training_mode(self):
        student, teacher = pair()
        model = compile_(LCRModel(student, teacher, STAGES))
        x, y = data()
        _, lcr, _ = model.evaluate(x, y, batch_size=8, verbose=0)
        np.testing.assert_allclose(lcr, official_value(student, teacher, x, False), rtol=1e-4)

    def test_default_lam_is_official(self):
        student, teacher = pair()
        model = LCRModel(student, teacher, STAGES, student_activation=None,
                         teacher_activation=None)
        assert model.lam is None
        x, _ = data()
        raw = np_lcr(taps(student, STAGES, x, True), taps(teacher, STAGES, x, True))
        np.testing.assert_allclose(float(model.lcr_forward(x)[1]), 8 / (8 * 1e4) * raw,
                                   rtol=1e-4)
        np.testing.assert_allclose(float(model.lcr_forward(x[:4])[1]),
                                   official_lam(4) * np_lcr(
                                       taps(student, STAGES, x[:4], True),
                                       taps(teacher, STAGES, x[:4], True)), rtol=1e-4)

    def test_taps_after_each_networks_activation(self):
        """Student stages through hardtanh, teacher stages through ReLU (preReLU=False)."""
        student, teacher = pair()
        model = LCRModel(student, teacher, STAGES, lam=1.0)
        x, _ = data()
        s, t = taps(student, STAGES, x, True), taps(teacher, STAGES, x, True)
        assert max(np.abs(a).max() for a in s) > 1 and min(a.min() for a in t) < 0
        expect = np_lcr([np.clip(a, -1, 1) for a in s], [np.maximum(a, 0) for a in t])
        assert abs(expect - np_lcr(s, t)) > 0.05 * expect
        np.testing.assert_allclose(float(model.lcr_forward(x)[1]), expect, rtol=1e-4)

    def test_everything_together(self):
        student, teacher = pair()
        model = LCRModel(student, teacher)  # automatic stages, official defaults
        assert model.stages == STAGES and model.teacher_stages == STAGES
        x, _ = data()
        np.testing.assert_allclose(float(model.lcr_forward(x)[1]),
                                   official_value(student, teacher, x), rtol=1e-4)


def backbone_inputs(name):
    return (16, 3) if name.startswith("conv1d") else (8, 8, 3)


def all_backbones():
    names = dict(backbones.BACKBONES)
    if hasattr(backbones, "demo_net") and backbones.demo_net not in names.values():
        names["demo_net"] = backbones.demo_net
    return names


BACKBONES = all_backbones()
#: Stages found at 8x8 (16 steps for conv1d): one per resolution stage of the backbone.
STAGE_COUNT = {"resnet18": 4, "resnet34": 4, "resnet20": 3, "vgg_small": 3, "conv1d": 2,
               "demo_net": 2}


class TestAutomaticStages:
    @pytest.mark.parametrize("name", sorted(BACKBONES))
    def test_one_step_on_every_backbone(self, name):
        build = BACKBONES[name]
        shape = backbone_inputs(name)
        kwargs = dict(num_classes=3, input_shape=shape, width=2, logits=True,
                      normalization=None)
        student = build("bnn", **kwargs)
        teacher = build(FLOAT, **kwargs)
        model = compile_(LCRModel(student, teacher, lam=1.0))
        spatial = [student.get_layer(s).output.shape[1:-1] for s in model.stages]
        assert len(model.stages) == STAGE_COUNT.get(name, len(model.stages)) >= 2
        assert all(a[0] > b[0] for a, b in zip(spatial, spatial[1:]))  # one per resolution
        for s, t in zip(model.stages, model.teacher_stages):
            assert student.get_layer(s).output.shape == teacher.get_layer(t).output.shape
            assert isinstance(teacher.get_layer(t), tf.keras.layers.ReLU)  # after activation
        x = uniform_inputs((4, *shape))
        y = np.arange(4) % 3
        before = [w.numpy().copy() for w in student.trainable_weights]
        hist = model.fit(x, y, batch_size=4, epochs=1, verbose=0).history
        assert np.isfinite(hist["loss"][0]) and hist["lcr_loss"][0] > 0
        assert any(not np.array_equal(b, w.numpy())
                   for b, w in zip(before, student.trainable_weights))

    @pytest.mark.parametrize("variant,block_end", [("bnn", "BatchNormalization"),
                                                   ("reactnet", "RPReLU"),
                                                   ("adabin", "Maxout"),
                                                   ("abc", "BatchNormalization")])
    def test_stage_is_the_block_output_not_the_next_binarizer(self, variant, block_end):
        """VGG-small has no shortcut: RSign / AdaBin / ABC activations sit on the trunk
        before the next binary conv, but the stage output is the block's activation."""
        model = backbones.vgg_small(variant, input_shape=(8, 8, 3), width=2,
                                    normalization=None)
        stages = find_stages(model)
        assert [type(model.get_layer(s)).__name__ for s in stages] == [block_end] * 3

    def test_stages_of_resnet_are_block_outputs(self):
        model = backbones.resnet20("reactnet", input_shape=(8, 8, 3), width=2)
        stages = [model.get_layer(s) for s in find_stages(model)]
        assert [type(s).__name__ for s in stages] == ["RPReLU"] * 3
        # Each is the last layer at its resolution before the next stage / the head.
        consumers = [layer for layer in model.layers
                     if any(s in _parents(layer) for s in stages[-1:])]
        assert [type(c).__name__ for c in consumers] == ["GlobalAveragePooling2D"]

    def test_teacher_twin_matched_by_position(self):
        """Two builds of one architecture: automatic names differ, positions do not."""
        student, twin = toy_bnn(), toy_bnn(name="twin")
        model = LCRModel(student, twin)
        assert len(model.stages) == 2 and model.stages != model.teacher_stages
        index = [[layer.name for layer in m.layers].index(s)
                 for m, stages in ((student, model.stages), (twin, model.teacher_stages))
                 for s in stages]
        assert index[:2] == index[2:]
        assert all(isinstance(student.get_layer(s), tf.keras.layers.BatchNormalization)
                   for s in model.stages)

    def test_mismatched_teacher_needs_teacher_stages(self):
        student = backbones.resnet20("bnn", input_shape=(8, 8, 3), width=2)
        teacher = backbones.resnet20(FLOAT, input_shape=(8, 8, 3), width=4)
        with pytest.raises(ValueError, match="teacher_stages"):
            LCRModel(student, teacher)

    def test_subclassed_model_rejected(self):
        class Sub(tf.keras.Model):
            def call(self, x):
                return x
        with pytest.raises(ValueError, match="functional"):
            find_stages(Sub())


def _parents(layer):
    inbound = layer.inbound_nodes[0].inbound_layers
    return inbound if isinstance(inbound, list) else [inbound]


class TestLCRModel:
    def test_fit_with_l1inf_decomposes(self):
        """LCR and the L1,inf penalty in one fit: loss = CE + penalty + lam * LCR."""
        reg = larq_l1inf.L1InfRegularizer(5e-2, reduction="sum")
        student = tiny_resnet(True, reg)
        teacher = tiny_resnet(False, seed=1)
        model = compile_(LCRModel(student, teacher, STAGES, lam=10.0))
        x, y = data()
        logits, lcr = model.lcr_forward(x, training=True)
        ce = float(tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits))
        pen = float(larq_l1inf.penalty(student))
        hist = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False).history
        assert pen > 0 and float(lcr) > 0
        np.testing.assert_allclose(hist["penalty"][0], pen, rtol=1e-5)
        np.testing.assert_allclose(hist["lcr_loss"][0], float(lcr), rtol=1e-4)
        np.testing.assert_allclose(hist["loss"][0], ce + pen + float(lcr), rtol=1e-4)

    def test_gradient_has_both_parts(self):
        reg = larq_l1inf.L1InfRegularizer(5e-2, reduction="sum")
        student = tiny_resnet(True, reg)
        model = LCRModel(student, tiny_resnet(False, seed=1), STAGES, lam=10.0,
                         stage_scales=False)
        x, _ = data()
        kernel = student.get_layer("conv2").kernel.latent_variable
        with tf.GradientTape(persistent=True) as tape:
            _, lcr = model.lcr_forward(x)
            pen = tf.add_n(student.losses)
            total = lcr + pen
        g_lcr, g_pen, g_tot = (tape.gradient(v, kernel).numpy() for v in (lcr, pen, total))
        assert np.abs(g_lcr).sum() > 0 and np.abs(g_pen).sum() > 0
        np.testing.assert_allclose(g_tot, g_lcr + g_pen, rtol=1e-4, atol=1e-7)
        assert not np.allclose(g_tot, g_lcr) and not np.allclose(g_tot, g_pen)

    def test_student_trunk_runs_once_per_step(self):
        student = tiny_resnet(True, counter=True)
        model = compile_(LCRModel(student, tiny_resnet(False, seed=1), STAGES, lam=1.0),
                         run_eagerly=False)  # count inside the traced train_step
        x, y = data()
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # two steps
        assert float(student.get_layer("counter").count) == 2.0

    def test_teacher_weights_not_trained_scales_trained(self):
        student, teacher = pair()
        before = [w.numpy().copy() for w in teacher.trainable_weights]
        moving = teacher.get_layer("bn1").moving_mean.numpy().copy()
        model = compile_(LCRModel(student, teacher, STAGES, lam=10.0))
        x, y = data()
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        for b, w in zip(before, teacher.trainable_weights):
            np.testing.assert_array_equal(b, w.numpy())
        # Training mode tracks the batches, as PyTorch's train mode does in the official code.
        assert not np.allclose(moving, teacher.get_layer("bn1").moving_mean.numpy())
        assert not np.allclose(model.stage_scale.numpy(), 1.0)

    def test_frozen_teacher_batch_norm_warns(self, caplog):
        student, teacher = pair()
        teacher.get_layer("bn1").trainable = False
        with caplog.at_level(logging.WARNING, logger="larq_l1inf.lcr"):
            LCRModel(student, teacher, STAGES)
        assert "inference mode" in caplog.text

    def test_evaluate_and_predict_use_student(self):
        student = tiny_resnet(True)
        model = compile_(LCRModel(student, tiny_resnet(False, seed=1), STAGES))
        x, y = data()
        np.testing.assert_allclose(model.predict(x, verbose=0), student.predict(x, verbose=0),
                                   rtol=1e-5, atol=1e-6)
        loss, lcr, pen = model.evaluate(x, y, verbose=0)
        assert model.metrics_names == ["loss", "lcr_loss", "penalty"]
        assert np.isfinite(loss) and lcr > 0 and pen == 0

    def test_config_roundtrip(self):
        model = LCRModel(tiny_resnet(True), tiny_resnet(False, seed=1), STAGES, lam=0.5,
                         beta=3.0, power_iterations=2, stage_scales=False,
                         student_activation="tanh", teacher_activation=None)
        config = model.get_config()
        restored = LCRModel.from_config(config)
        assert restored.get_config()["lam"] == 0.5
        for key in ("stages", "teacher_stages", "beta", "power_iterations",
                    "student_activation", "teacher_activation"):
            assert restored.get_config()[key] == config[key]
        assert restored.stage_scale is None
        default = LCRModel.from_config(LCRModel(tiny_resnet(True), tiny_resnet(False)).get_config())
        assert default.lam is None and default.stages == STAGES

    @pytest.mark.parametrize("kwargs,match", [
        (dict(stages=["nope", "stage2"]), "no layer"),
        (dict(stages=["stage1"]), "at least two"),
        (dict(stages=STAGES, lam=-1.0), "lam"),
        (dict(stages=STAGES, beta=0.0), "beta"),
        (dict(stages=STAGES, power_iterations=0), "power_iterations"),
        (dict(stages=STAGES, student_activation="nope"), "student_activation"),
        (dict(stages=STAGES, teacher_activation=abs), "teacher_activation"),
    ])
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            LCRModel(tiny_resnet(True), tiny_resnet(False, seed=1), **kwargs)

    def test_subclassed_model_rejected(self):
        class Sub(tf.keras.Model):
            def call(self, x):
                return x
        with pytest.raises(ValueError, match="functional"):
            LCRModel(Sub(), tiny_resnet(False), STAGES)

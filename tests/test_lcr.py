"""LCR (Shang et al. 2022) as the official code computes it, and LCRModel inside fit."""

import larq_l1inf  # noqa: F401,I001  (first: sets TF_USE_LEGACY_KERAS before larq imports TF)
import larq as lq
import numpy as np
import pytest

from larq_l1inf._keras import tf
from larq_l1inf.lcr import LCRModel, lcr_loss, retention_matrix, top_eigenvalue

STAGES = ["stage1", "stage2", "stage3"]


class CallCounter(tf.keras.layers.Layer):
    """Identity that counts how often it runs (to check the trunk runs once per step)."""

    def build(self, input_shape):
        self.count = self.add_weight(name="count", shape=(), initializer="zeros",
                                     trainable=False)

    def call(self, x):
        self.count.assign_add(1.0)
        return x


def tiny_resnet(binary, regularizer=None, counter=False, seed=0):
    tf.keras.utils.set_random_seed(seed)
    q = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign",
             kernel_constraint="weight_clip") if binary else {}
    x = inp = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="stem")(x)
    if counter:
        x = CallCounter(name="counter")(x)
    for i, (filters, stride) in enumerate([(4, 1), (8, 2), (8, 2)]):
        x = lq.layers.QuantConv2D(filters, 3, strides=stride, padding="same", pad_values=1.0,
                                  use_bias=False, kernel_regularizer=regularizer,
                                  name=f"conv{i + 1}", **q)(x)
        x = tf.keras.layers.Activation("tanh", name=STAGES[i])(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(3, name="logits")(x)
    return tf.keras.Model(inp, out, name="bnn" if binary else "fp")


def np_retention(front, back):
    """Loops: average-pool front to back's size, then RM[c, d] = mean_s front[s, c] back[s, d]."""
    b, hf, wf, cf = front.shape
    _, h, w, cb = back.shape
    fy, fx = hf // h, wf // w
    rm = np.zeros((b, cf, cb))
    for n in range(b):
        pooled = np.zeros((h, w, cf))
        for i in range(h):
            for j in range(w):
                pooled[i, j] = front[n, i * fy:(i + 1) * fy, j * fx:(j + 1) * fx].mean(axis=(0, 1))
        for c in range(cf):
            for d in range(cb):
                rm[n, c, d] = sum(pooled[i, j, c] * back[n, i, j, d]
                                  for i in range(h) for j in range(w)) / (h * w)
    return rm


def np_lcr(student, teacher, beta, iterations):
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


class TestFunctions:
    @pytest.mark.parametrize("front_hw,back_hw", [((4, 4), (4, 4)), ((8, 8), (4, 4)),
                                                  ((6, 4), (3, 2))])
    def test_retention_matrix(self, front_hw, back_hw):
        rng = np.random.RandomState(0)
        front = rng.randn(2, *front_hw, 3).astype(np.float32)
        back = rng.randn(2, *back_hw, 5).astype(np.float32)
        np.testing.assert_allclose(retention_matrix(front, back).numpy(),
                                   np_retention(front, back), rtol=1e-4, atol=1e-5)

    def test_retention_matrix_rejects_bad_sizes(self):
        with pytest.raises(ValueError, match="average-pooled"):
            retention_matrix(np.ones((1, 5, 5, 2), np.float32), np.ones((1, 2, 2, 2), np.float32))
        with pytest.raises(ValueError, match="average-pooled"):  # wrong order
            retention_matrix(np.ones((1, 2, 2, 2), np.float32), np.ones((1, 4, 4, 2), np.float32))
        with pytest.raises(ValueError, match="rank"):
            retention_matrix(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32))

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
        shapes = [(2, 8, 8, 3), (2, 4, 4, 4), (2, 2, 2, 5)]
        s = [rng.randn(*sh).astype(np.float32) for sh in shapes]
        t = [rng.randn(*sh).astype(np.float32) for sh in shapes]
        np.testing.assert_allclose(float(lcr_loss(s, t, beta, iterations)),
                                   np_lcr(s, t, beta, iterations), rtol=1e-4)

    def test_official_weights(self):
        """Four stages: the pairs are weighted 1/8, 1/4, 1/2 (beta = 2)."""
        rng = np.random.RandomState(2)
        shapes = [(2, 4, 4, 2)] * 4
        s = [rng.randn(*sh).astype(np.float32) for sh in shapes]
        t = [x.copy() for x in s]
        t[3] = rng.randn(*shapes[3]).astype(np.float32)  # only the last pair differs
        only_last = float(lcr_loss(s, t))
        t2 = [x.copy() for x in s]
        t2[0] = t[3]  # only the first pair differs, by construction the same mismatch scale
        assert only_last > 0
        np.testing.assert_allclose(
            only_last, 0.5 * np.mean((np.sqrt(np.linalg.norm(
                np.einsum("bij,bkj->bik", np_retention(s[2], s[3]), np_retention(s[2], s[3]))
                @ np.ones(2), axis=1)) - np.sqrt(np.linalg.norm(
                    np.einsum("bij,bkj->bik", np_retention(t[2], t[3]),
                              np_retention(t[2], t[3])) @ np.ones(2), axis=1))) ** 2),
            rtol=1e-4)

    def test_lcr_loss_errors(self):
        x = np.ones((1, 2, 2, 2), np.float32)
        with pytest.raises(ValueError, match="two stages"):
            lcr_loss([x], [x])
        with pytest.raises(ValueError, match="same stages"):
            lcr_loss([x, x], [x])
        with pytest.raises(ValueError, match="architecture"):
            lcr_loss([x, x], [x, np.ones((1, 2, 2, 3), np.float32)])


def data(n=8, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 8, 8, 3).astype(np.float32), rng.randint(0, 3, n)


def compile_(model, run_eagerly=True):
    # Eager: one or two tiny steps run faster than tracing the train function on a busy box.
    model.compile(tf.keras.optimizers.SGD(0.01),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=run_eagerly)
    return model


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

    def test_teacher_not_trained_scales_trained(self):
        student = tiny_resnet(True)
        teacher = tiny_resnet(False, seed=1)
        before = [w.numpy().copy() for w in teacher.weights]
        model = compile_(LCRModel(student, teacher, STAGES, lam=10.0))
        x, y = data()
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        for b, w in zip(before, teacher.weights):
            np.testing.assert_array_equal(b, w.numpy())
        assert not np.allclose(model.stage_scale.numpy(), 1.0)

    def test_evaluate_and_predict_use_student(self):
        student = tiny_resnet(True)
        model = compile_(LCRModel(student, tiny_resnet(False, seed=1), STAGES))
        x, y = data()
        np.testing.assert_allclose(model.predict(x, verbose=0), student.predict(x, verbose=0),
                                   rtol=1e-6)
        loss, lcr, pen = model.evaluate(x, y, verbose=0)
        assert model.metrics_names == ["loss", "lcr_loss", "penalty"]
        assert np.isfinite(loss) and lcr > 0 and pen == 0

    def test_config_roundtrip(self):
        model = LCRModel(tiny_resnet(True), tiny_resnet(False, seed=1), STAGES, lam=0.5,
                         beta=3.0, power_iterations=2, stage_scales=False)
        restored = LCRModel.from_config(model.get_config())
        assert restored.lam == 0.5 and restored.beta == 3.0 and restored.power_iterations == 2
        assert restored.stage_scale is None
        x, _ = data(2)
        np.testing.assert_allclose(restored.student.predict(x, verbose=0).shape, (2, 3))

    @pytest.mark.parametrize("kwargs,match", [
        (dict(stages=["nope", "stage2"]), "no layer"),
        (dict(stages=["stage1"]), "at least two"),
        (dict(stages=STAGES, lam=-1.0), "lam"),
        (dict(stages=STAGES, beta=0.0), "beta"),
        (dict(stages=STAGES, power_iterations=0), "power_iterations"),
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

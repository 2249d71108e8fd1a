"""Multi-bit binary layers: equivalence with larq's binary layers, the formula, the penalty,
serialization, IBP, the backbone variant and what LCE makes of them."""

import larq as lq
import numpy as np
import pytest
from helpers import BINARY, layer_test, uniform_inputs

from larq_l1inf import L1InfRegularizer, ibp
from larq_l1inf._keras import tf
from larq_l1inf.ibp import Interval, input_box, interval_bounds
from larq_l1inf.mbn import MBNConv1D, MBNConv2D, MBNDense, mbn_variant, weight_shifts

L = tf.keras.layers


def _sign(v):
    return np.where(v >= 0, 1.0, -1.0)


@pytest.mark.parametrize("mbn,plain,shape", [
    (lambda: MBNConv2D(4, 3, strides=2, weight_bases=1, activation_bases=1),
     lambda: lq.layers.QuantConv2D(4, 3, strides=2, padding="same", pad_values=1.0, **BINARY),
     (7, 7, 3)),
    (lambda: MBNConv1D(4, 3, weight_bases=1, activation_bases=1),
     lambda: lq.layers.QuantConv1D(4, 3, padding="same", pad_values=1.0, **BINARY), (9, 3)),
    (lambda: MBNDense(4, weight_bases=1, activation_bases=1),
     lambda: lq.layers.QuantDense(4, **BINARY), (6,)),
])
def test_one_by_one_equals_the_plain_binary_layer_output_and_gradient(mbn, plain, shape):
    x = tf.constant(uniform_inputs((3, *shape)) * 2 - 1)
    a, b = mbn(), plain()
    a.build((None, *shape))
    b.build((None, *shape))
    a.kernel.assign(np.random.default_rng(0).uniform(-1.2, 1.2, a.kernel.shape).astype("float32"))
    b.kernel.latent_variable.assign(a.kernel)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ya, yb = a(x), b(x)
        la, lb = tf.reduce_sum(ya * ya), tf.reduce_sum(yb * yb)
    np.testing.assert_allclose(ya.numpy(), yb.numpy(), atol=1e-5)
    np.testing.assert_allclose(tape.gradient(la, x).numpy(), tape.gradient(lb, x).numpy(),
                               atol=1e-5)
    ga = tape.gradient(la, a.kernel)
    gb = tape.gradient(lb, b.kernel.latent_variable)
    np.testing.assert_allclose(ga.numpy(), gb.numpy(), atol=1e-4)
    assert np.any(ga.numpy() == 0) and np.any(ga.numpy() != 0)  # the STE clips |w| > 1


def test_dense_matches_the_formula_by_loops():
    layer = MBNDense(3, weight_bases=2, activation_bases=3)
    layer.build((None, 5))
    rng = np.random.default_rng(1)
    layer.kernel.assign(rng.uniform(-1, 1, (5, 3)).astype("float32"))
    layer.weight_scale.assign([0.7, -0.2])
    layer.activation_scale.assign([0.5, 0.3, 0.2])
    x = rng.normal(0, 1, (4, 5)).astype("float32")
    w = layer.kernel.numpy().astype(np.float64)
    std = w.std()
    want = np.zeros((4, 3))
    for m, u in enumerate(weight_shifts(2)):
        wb = _sign(w + u * std)
        for n in range(3):
            a = _sign(x + layer.activation_shift.numpy()[n])
            for i in range(4):
                for o in range(3):
                    want[i, o] += (layer.weight_scale.numpy()[m] * layer.activation_scale.numpy()[n]
                                   * sum(a[i, k] * wb[k, o] for k in range(5)))
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-5, atol=1e-5)


def test_conv_equals_the_sum_of_larq_binary_convs():
    layer = MBNConv2D(3, 3, weight_bases=3, activation_bases=2)
    x = uniform_inputs((2, 6, 6, 2)) * 2 - 1
    out = layer(x).numpy()
    w = layer.kernel.numpy()
    total = 0
    for m, u in enumerate(weight_shifts(3)):
        for n in range(2):
            conv = lq.layers.QuantConv2D(3, 3, padding="same", pad_values=1.0, **BINARY)
            conv.build((None, 6, 6, 2))
            conv.kernel.latent_variable.assign(w + u * w.std())
            scale = layer.weight_scale.numpy()[m] * layer.activation_scale.numpy()[n]
            total = total + scale * conv(x + layer.activation_shift.numpy()[n]).numpy()
    np.testing.assert_allclose(out, total, atol=1e-4)


def test_penalty_is_the_l1inf_norm_of_the_combined_binary_kernel():
    reg = L1InfRegularizer(0.5)
    layer = MBNConv2D(4, 3, weight_bases=2, activation_bases=1, kernel_regularizer=reg)
    model = tf.keras.Sequential([tf.keras.Input((6, 6, 2)), layer])
    layer.weight_scale.assign([0.8, -0.3])
    w = layer.kernel.numpy().astype(np.float64)
    combined = sum(a * _sign(w + u * w.std()) for a, u in zip([0.8, -0.3], weight_shifts(2)))
    rows = [np.abs(combined[..., o]).sum() for o in range(4)]
    want = 0.5 * max(rows) / (3 * 3 * 2)  # normalize=True: divided by the fan-in
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), want, rtol=1e-5)
    with tf.GradientTape() as tape:
        loss = tf.add_n(model.losses)
    grads = tape.gradient(loss, [layer.kernel, layer.weight_scale])
    assert np.any(grads[1].numpy() != 0) and np.any(grads[0].numpy() != 0)
    with pytest.raises(ValueError, match="product"):
        MBNConv2D(4, 3, kernel_regularizer=L1InfRegularizer(reduction="product"))
    with pytest.raises(ValueError, match="KernelPenalty"):
        MBNConv2D(4, 3, kernel_regularizer="l2")
    with pytest.raises(ValueError, match="weight_bases"):
        MBNConv2D(4, 3, weight_bases=0)


def test_serialization(tmp_path):
    layer_test(MBNConv2D, dict(filters=3, kernel_size=3, weight_bases=2, activation_bases=1,
                               kernel_regularizer=L1InfRegularizer(5e-3)), (6, 6, 2), tmp_path)


@pytest.mark.parametrize("cls,kwargs,shape", [
    (MBNConv1D, dict(filters=3, kernel_size=3, strides=2, weight_bases=2, activation_bases=1),
     (8, 2)),
    (MBNDense, dict(units=3, weight_bases=1, activation_bases=2), (5,)),
])
def test_config_and_h5_round_trip(cls, kwargs, shape, tmp_path):
    # The full layer_test (with SavedModel) runs for MBNConv2D above; same base class.
    layer = cls(**kwargs)
    assert cls.from_config(layer.get_config()).get_config() == layer.get_config()
    model = tf.keras.Sequential([tf.keras.Input(shape), layer])
    x = uniform_inputs((2, *shape))
    path = str(tmp_path / "model.h5")
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)


def test_interval_bounds_contain_sampled_outputs_of_an_mbn_model():
    inputs = tf.keras.Input((6, 6, 2))
    x = L.Conv2D(3, 3, padding="same")(inputs)
    x = MBNConv2D(4, 3, weight_bases=2, activation_bases=2)(x)
    x = L.BatchNormalization()(x)
    x = L.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, MBNDense(3, weight_bases=2, activation_bases=1)(x))
    x = uniform_inputs((2, 6, 6, 2))
    lower, upper = (t.numpy() for t in interval_bounds(model, x, 0.05))
    box = input_box(x, 0.05)
    rng = np.random.default_rng(0)
    for i in range(2):
        lo, hi = box.lower.numpy()[i], box.upper.numpy()[i]
        points = np.where(rng.random((300, *lo.shape)) < 0.5, lo, hi)
        points[::2] = rng.uniform(lo, hi, (150, *lo.shape))
        out = model(points.astype("float32")).numpy()
        assert np.all(out >= lower[i] - 1e-4) and np.all(out <= upper[i] + 1e-4)
    assert np.all(upper > lower)


def base_pair_interval(layer, box):
    """The M x N base-pair computation: every (m, n) convolution of the sign interval's centre
    with W_b^m and of its radius with |W_b^m|, scaled by alpha_m beta_n and |alpha_m beta_n|."""
    bases = layer.weight_bases_tensors()
    centres, radii = [], []
    for n in range(layer.activation_bases):
        a = box.map(lambda v: lq.quantizers.ste_sign(v + layer.activation_shift[n]))
        for m, kernel in enumerate(bases):
            scale = layer.weight_scale[m] * layer.activation_scale[n]
            centres.append(scale * layer.base_op(a.centre, kernel, layer.pad_values))
            radii.append(tf.abs(scale) * layer.base_op(a.radius, tf.abs(kernel), 0.0))
    return tf.add_n(centres), tf.add_n(radii)


@pytest.mark.parametrize("make, shape", [
    (lambda: MBNConv2D(4, 3, strides=2, weight_bases=3, activation_bases=2), (7, 7, 3)),
    (lambda: MBNConv2D(3, (3, 2), padding="valid", weight_bases=2, activation_bases=3), (6, 5, 2)),
    (lambda: MBNConv1D(4, 3, weight_bases=3, activation_bases=2), (9, 3)),
    (lambda: MBNDense(3, weight_bases=2, activation_bases=3), (5,)),
], ids=["conv2d-same-stride2", "conv2d-valid", "conv1d", "dense"])
@pytest.mark.parametrize("mode", ["fast", "generic"])
def test_interval_equals_the_base_pair_computation(make, shape, mode, monkeypatch):
    """One centre convolution with the combined kernel and one window sum per activation base
    give the M x N computation's bound, values and gradients (negative scales included)."""
    monkeypatch.setattr(ibp, "BINARY_RADIUS", mode)
    layer = make()
    layer.build((None, *shape))
    rng = np.random.default_rng(2)
    layer.kernel.assign(rng.uniform(-1.2, 1.2, layer.kernel.shape).astype("float32"))
    m, n = layer.weight_bases, layer.activation_bases
    layer.weight_scale.assign(rng.uniform(-1, 1, m).astype("float32"))
    layer.activation_scale.assign(rng.uniform(-1, 1, n).astype("float32"))
    layer.activation_shift.assign(rng.uniform(-0.5, 0.5, n).astype("float32"))
    lo = tf.constant(rng.uniform(-1, 1, (2, *shape)).astype("float32"))
    hi = lo + tf.constant(rng.uniform(0, 0.6, (2, *shape)).astype("float32"))
    weights = [layer.weight_scale, layer.activation_scale, layer.activation_shift]
    results = []
    for compute in (lambda b: layer.interval(b), lambda b: base_pair_interval(layer, b)):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([lo, hi])
            out = compute(Interval(lo, hi))
            centre, radius = (out.centre, out.radius) if isinstance(out, Interval) else out
            loss = tf.reduce_sum(tf.sin(centre) * radius) + tf.reduce_sum(radius ** 2)
        grads = tape.gradient(loss, [lo, hi, *weights, layer.kernel])
        results.append((centre.numpy(), radius.numpy(), [g.numpy() for g in grads]))
    (c1, r1, g1), (c2, r2, g2) = results
    assert np.any(r1 > 0) and np.all(r1 >= 0)
    np.testing.assert_allclose(c1, c2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r1, r2, rtol=1e-5, atol=1e-5)
    for got, want in zip(g1[:-1], g2[:-1]):  # inputs, scales, shifts: the same linear maps
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if mode == "generic":  # the straight-through gradient through |W_b^m| too
        np.testing.assert_allclose(g1[-1], g2[-1], rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(g1[-1]))


def test_variant_builds_a_backbone():
    from larq_l1inf.backbones import conv1d_net, resnet20

    variant = mbn_variant(weight_bases=2, activation_bases=1)
    model = resnet20(variant, num_classes=3, input_shape=(8, 8, 3), width=2,
                     kernel_regularizer=L1InfRegularizer(5e-3))
    mbn = [layer for layer in model.layers if isinstance(layer, MBNConv2D)]
    assert len(mbn) == 18 and all(layer.weight_bases == 2 for layer in mbn)
    assert len(model.losses) == 18
    assert model(uniform_inputs((1, 8, 8, 3))).shape == (1, 3)
    net = conv1d_net(mbn_variant(1, 2), num_classes=2, input_shape=(16, 2), width=2)
    assert sum(isinstance(layer, MBNConv1D) for layer in net.layers) == 3


def test_lce_turns_every_base_pair_into_one_bconv():
    from larq_l1inf.deploy import convert, op_counts

    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 3)),
        L.Conv2D(8, 3, padding="same"),
        L.BatchNormalization(),
        MBNConv2D(8, 3, weight_bases=3, activation_bases=2),
        L.BatchNormalization(),
        L.GlobalAveragePooling2D(),
        L.Dense(3),
    ])
    counts = op_counts(convert(model, in_process=True, on_failure="ignore"))
    assert counts.get("LceBconv2d", 0) == 3 * 2, counts


def _mbn_model(reg):
    """Float stem, an MBN conv and an MBN dense (both penalized) and a plain larq conv."""
    inputs = tf.keras.Input((6, 6, 2))
    x = L.Conv2D(3, 3, padding="same")(inputs)
    x = MBNConv2D(4, 3, weight_bases=3, activation_bases=2, kernel_regularizer=reg, name="mbn_c")(x)
    x = lq.layers.QuantConv2D(3, 3, padding="same", pad_values=1.0, kernel_regularizer=reg,
                              name="plain", **BINARY)(x)
    x = L.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inputs, MBNDense(2, weight_bases=2, kernel_regularizer=reg,
                                           name="mbn_d")(x))


class TestPenaltySeesMBN:
    @pytest.mark.parametrize("reduction", ["sum", "log"])
    def test_penalty_equals_the_model_losses_and_numpy(self, reduction):
        from larq_l1inf import kernels, penalty
        from larq_l1inf.regularizers import penalized_layers

        reg = L1InfRegularizer(0.3, reduction=reduction)
        model = _mbn_model(reg)
        mbn_c = model.get_layer("mbn_c")
        mbn_c.weight_scale.assign([0.5, -0.2, 0.9])
        entries = penalized_layers(model)
        assert [e.layer.name for e in entries] == ["mbn_c", "plain", "mbn_d"]
        assert kernels.is_binary(mbn_c) and kernels.is_multi_base(mbn_c)
        assert [e.layer.name for e in kernels.binary_kernels(model)] == ["mbn_c", "plain", "mbn_d"]
        np.testing.assert_allclose(float(penalty(model)), float(tf.add_n(model.losses)), rtol=1e-6)
        # the MBN conv's own part, by loops
        w = mbn_c.kernel.numpy().astype(np.float64)
        combined = sum(a * _sign(w + u * w.std()) for a, u in zip([0.5, -0.2, 0.9], weight_shifts(3)))
        t = max(np.abs(combined[..., o]).sum() for o in range(4)) / (3 * 3 * 3)
        want = 0.3 * (t if reduction == "sum" else np.log(t))
        [own] = mbn_c.losses
        np.testing.assert_allclose(float(own), want, rtol=1e-5)
        # kernels' W_b and alpha of the MBN kernel: alpha = sum |alpha_m|, alpha ||W_b|| = t
        [entry] = kernels.layer_kernels(mbn_c)
        w_b = kernels.binary_kernel(entry.weight).numpy()
        alpha = float(kernels.scaling_factor(entry.weight))
        np.testing.assert_allclose(alpha, 1.6, rtol=1e-6)
        np.testing.assert_allclose(w_b * alpha, combined, atol=1e-5)
        np.testing.assert_array_equal(kernels.latent_kernel(entry.weight).numpy(), mbn_c.kernel.numpy())

    def test_warmup_and_logging_reach_mbn_layers(self):
        from larq_l1inf import L1InfCallback, l1inf_norm, penalty

        reg = L1InfRegularizer(0.3)
        model = _mbn_model(reg)
        model.compile(tf.keras.optimizers.SGD(0.01),
                      tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x, y = uniform_inputs((4, 6, 6, 2)), np.array([0, 1, 0, 1])
        callback = L1InfCallback(warmup_epochs=2, bounds=False)
        callback.set_model(model)
        callback.on_epoch_begin(1)
        mbn_d = model.get_layer("mbn_d")
        assert reg.warmup_factor == 0.5
        np.testing.assert_allclose(float(mbn_d.losses[0]), 0.5 * float(mbn_d.penalty_term()) * 0.3,
                                   rtol=1e-6)
        np.testing.assert_allclose(float(penalty(model)), float(tf.add_n(model.losses)), rtol=1e-6)
        callback.on_train_end()
        assert reg.warmup_factor == 1.0
        history = model.fit(x, y, epochs=1, verbose=0, callbacks=[L1InfCallback(bounds=False)])
        logs = {k: v[0] for k, v in history.history.items()}
        np.testing.assert_allclose(logs["l1inf_norm/mbn_d"],
                                   float(l1inf_norm(mbn_d.combined_kernel())), rtol=1e-5)
        np.testing.assert_allclose(logs["l1inf_alpha_max/mbn_d"],
                                   np.abs(mbn_d.weight_scale.numpy()).max(), rtol=1e-6)
        np.testing.assert_allclose(logs["l1inf_term/mbn_d"], float(mbn_d.penalty_term()), rtol=1e-5)
        assert {"l1inf_term/mbn_c", "l1inf_term/plain"} <= set(logs)
        np.testing.assert_allclose(logs["l1inf_penalty"], float(penalty(model)), rtol=1e-5)

    def test_registered_variant(self):
        from larq_l1inf.variants import VARIANTS, get_variant

        assert "mbn" in VARIANTS
        variant = get_variant("mbn", weight_bases=2, activation_bases=3)
        assert (variant.weight_bases, variant.activation_bases, variant.lce_convs) == (2, 3, 6)
        with pytest.raises(ValueError, match="weight_bases"):
            get_variant("mbn", weight_bases=0)

import numpy as np
import pytest
from helpers import layer_test, toy_bnn, trained_like_batchnorm, uniform_inputs

from larq_l1inf import deploy, noise
from larq_l1inf._keras import tf
from larq_l1inf.noise import (
    InputNoise,
    environmental_noise,
    environmental_noise_loop,
    gaussian_noise,
    impulse_noise,
    noisy_dataset,
    uniform_noise,
)

# (shape of a batch, spatial dims); images NHWC and 1-D signals NWC
SHAPES = [(16, 8, 8, 3), (16, 6, 9, 1), (16, 20, 2)]
EPSILONS = [0.5, (0.05, 0.1), (0.4, 0.8)]
NOISE_FAMILIES = [
    ("environmental", (0.05, 0.1)),
    ("gaussian", 0.1),
    ("uniform", 0.1),
    ("impulse", 0.2),
]


def interior_mask(shape):
    mask = np.zeros(shape[1:-1], dtype=bool)
    mask[(slice(1, -1),) * len(shape[1:-1])] = True
    return mask


class TestEnvironmentalSemantics:
    @pytest.mark.parametrize("shape", SHAPES)
    @pytest.mark.parametrize("epsilon", EPSILONS)
    def test_borders_untouched_and_channels_equal(self, shape, epsilon):
        x = np.random.default_rng(0).random(shape).astype(np.float32)
        delta = environmental_noise(x, epsilon, seed=3).numpy() - x
        border = ~interior_mask(shape)
        assert np.all(delta[:, border] == 0)
        assert np.abs(delta[:, interior_mask(shape)]).max() > 0
        np.testing.assert_allclose(delta, np.repeat(delta[..., :1], shape[-1], -1), atol=1e-6)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_single_draw_shift_in_range(self, shape):
        lo, hi = 0.4, 0.8
        x = np.zeros((400,) + shape[1:], np.float32)
        delta = environmental_noise(x, (lo, hi), points=1, prob=1.0, seed=5).numpy()[..., 0]
        flat = delta.reshape(len(x), -1)
        # exactly one position per sample is shifted, by a value in [lo, hi]
        assert np.all((flat != 0).sum(1) == 1)
        shifts = flat.sum(1)
        assert shifts.min() >= lo and shifts.max() <= hi
        # drawn per kept position: U[lo, hi] has mean (lo+hi)/2, std (hi-lo)/sqrt(12)
        assert abs(shifts.mean() - 0.6) < 5 * 0.4 / np.sqrt(12 * 400)
        assert shifts.std() > 0.05

    @pytest.mark.parametrize("shape", SHAPES)
    def test_kept_draws_match_binomial_and_repeats_accumulate(self, shape):
        x = np.zeros(shape, np.float32)
        points, prob = 50, 0.5
        delta = environmental_noise(x, 1.0, points=points, prob=prob, seed=11).numpy()[..., 0]
        # constant epsilon 1: the total is the number of kept draws, repeats included
        n_kept = delta.sum()
        mean, std = shape[0] * points * prob, np.sqrt(shape[0] * points * prob * (1 - prob))
        assert abs(n_kept - mean) < 5 * std
        assert np.all(np.round(delta) == delta)
        assert delta.max() >= 2  # 50 draws into <= 42 interior positions must repeat

    @pytest.mark.parametrize("shape", [(64, 8, 8, 1), (64, 12, 1)])
    def test_fraction_of_perturbed_positions_matches_loop_and_theory(self, shape):
        x = np.zeros(shape, np.float32)
        inner = interior_mask(shape)
        area = inner.sum()
        expected = 1 - (1 - 0.5 / area) ** area  # default P = area, prob 0.5
        frac_tf = (environmental_noise(x, 1.0, seed=2).numpy()[:, inner] > 0).mean()
        frac_np = (environmental_noise_loop(x, 1.0, rng=2)[:, inner] > 0).mean()
        tol = 5 * np.sqrt(expected * (1 - expected) / (shape[0] * area))
        assert abs(frac_tf - expected) < tol
        assert abs(frac_np - expected) < tol

    def test_positions_uniform_over_interior(self):
        x = np.zeros((200, 6, 7, 1), np.float32)
        counts = environmental_noise(x, 1.0, points=20, prob=1.0, seed=4).numpy().sum((0, 3))
        inner = counts[1:-1, 1:-1]
        expected = 200 * 20 / inner.size
        # chi-square with 19 dof; 60 is far beyond its 0.9999 quantile (~48)
        chi2 = ((inner - expected) ** 2 / expected).sum()
        assert chi2 < 60

    def test_exact_match_with_loop_on_fixed_draws(self):
        """The vectorized scatter and the appendix loop agree on the same draws."""
        rng = np.random.default_rng(0)
        x = rng.random((5, 6, 7, 3))
        for dims in ([6, 7], [6]):
            xs = x if len(dims) == 2 else x[:, :, 0, :]
            cells = rng.integers(0, np.prod([d - 2 for d in dims]), size=(5, 40))
            positions = noise._cells_to_positions(cells, dims)
            assert min(p.min() for p in positions) == 1
            assert all(p.max() == d - 2 for p, d in zip(positions, dims))
            shifts = rng.uniform(0.1, 0.2, size=(5, 40)) * (rng.random((5, 40)) < 0.5)
            got = noise._apply_point_shifts(tf.constant(xs), cells, shifts).numpy()
            want = noise._apply_point_shifts_loop(xs, positions, shifts)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)

    def test_drawn_quantities(self):
        cells, shifts = noise._draw_environmental(
            1000, [8, 5], 7, 0.05, 0.1, 0.5, 9, tf.float32
        )
        rows, cols = noise._cells_to_positions(cells.numpy(), [8, 5])
        assert rows.min() == 1 and rows.max() == 6
        assert cols.min() == 1 and cols.max() == 3
        s = shifts.numpy()
        kept = s != 0
        assert abs(kept.mean() - 0.5) < 0.02
        assert s[kept].min() >= 0.05 and s[kept].max() <= 0.1
        # epsilon ~ U[0.05, 0.1] on kept draws: mean 0.075, std 0.05 / sqrt(12)
        assert abs(s[kept].mean() - 0.075) < 0.001
        assert abs(s[kept].std() - 0.05 / np.sqrt(12)) < 0.001
        # every row/col pair appears (uniform over the 6 x 3 interior)
        assert len(set(zip(rows.ravel(), cols.ravel()))) == 18

    def test_no_clipping_and_dtype(self):
        x = np.ones((4, 5, 5, 2), np.float64)
        y = environmental_noise(x, 0.5, prob=1.0, seed=0)
        assert y.dtype == tf.float64
        assert y.numpy().max() > 1.0

    @pytest.mark.parametrize("kwargs", [dict(points=0), dict(prob=0.0)])
    def test_identity_cases(self, kwargs):
        x = np.random.default_rng(0).random((3, 5, 5, 2)).astype(np.float32)
        np.testing.assert_array_equal(environmental_noise(x, 0.3, seed=0, **kwargs).numpy(), x)

    def test_default_points_prob_one(self):
        x = np.zeros((3, 7, 9, 1), np.float32)
        y = environmental_noise(x, 1.0, prob=1.0, seed=0).numpy()
        np.testing.assert_allclose(y.sum((1, 2, 3)), 5 * 7)


class TestReproducibility:
    @pytest.mark.parametrize("name,level", NOISE_FAMILIES)
    @pytest.mark.parametrize("shape", SHAPES)
    def test_same_seed_same_noise(self, name, level, shape):
        fn = noise.get(name)
        x = np.random.default_rng(1).random(shape).astype(np.float32)
        a, b = fn(x, level, seed=7).numpy(), fn(x, level, seed=7).numpy()
        c = fn(x, level, seed=8).numpy()
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        # pairs of ints and tensors are seeds too
        np.testing.assert_array_equal(fn(x, level, seed=(7, 1)), fn(x, level, seed=[7, 1]))

    def test_samples_get_different_noise(self):
        x = np.zeros((2, 8, 8, 1), np.float32)
        y = environmental_noise(x, 1.0, seed=0).numpy()
        assert not np.array_equal(y[0], y[1])

    def test_seed_none_is_random(self):
        x = np.zeros((2, 8, 8, 1), np.float32)
        assert not np.array_equal(environmental_noise(x, 1.0), environmental_noise(x, 1.0))


class TestOtherNoises:
    def test_gaussian_statistics(self):
        x = np.zeros((64, 8, 8, 3), np.float32)
        d = gaussian_noise(x, 0.2, seed=0).numpy()
        assert abs(d.std() - 0.2) < 0.01 and abs(d.mean()) < 0.01

    def test_uniform_bounded(self):
        x = np.full((64, 8, 8, 3), 0.5, np.float32)
        d = uniform_noise(x, 0.1, seed=0).numpy() - 0.5
        assert np.abs(d).max() <= 0.1 + 1e-7 and np.abs(d).max() > 0.09
        assert abs(d.mean()) < 0.005

    @pytest.mark.parametrize("shape", SHAPES)
    def test_impulse(self, shape):
        x = np.full((64,) + shape[1:], 0.5, np.float32)
        y = impulse_noise(x, 0.2, seed=0).numpy()
        hit = y[..., 0] != 0.5
        assert abs(hit.mean() - 0.2) < 0.03
        assert set(np.unique(y)) <= {0.0, 0.5, 1.0}
        np.testing.assert_array_equal(y, np.repeat(y[..., :1], shape[-1], -1))
        assert abs((y[..., 0][hit] == 1.0).mean() - 0.5) < 0.06


class TestDatasetAndLayer:
    def test_noisy_dataset_reproducible(self):
        x = np.random.default_rng(0).random((10, 6, 6, 1)).astype(np.float32)
        y = np.arange(10)
        ds = noisy_dataset(
            tf.data.Dataset.from_tensor_slices((x, y)).batch(4), "environmental", (0.1, 0.2),
            seed=3,
        )
        first = [(a.numpy(), b.numpy()) for a, b in ds]
        second = [(a.numpy(), b.numpy()) for a, b in ds]
        for (a1, b1), (a2, b2) in zip(first, second):
            np.testing.assert_array_equal(a1, a2)
            np.testing.assert_array_equal(b1, b2)
        np.testing.assert_array_equal(np.concatenate([b for _, b in first]), y)
        xs = np.concatenate([a for a, _ in first])
        assert np.all(xs[:, 0] == x[:, 0]) and not np.array_equal(xs, x)
        # batch i has seed (3, i): identical to the function with that seed
        np.testing.assert_array_equal(
            first[1][0], environmental_noise(x[4:8], (0.1, 0.2), seed=(3, 1)).numpy()
        )

    def test_noisy_dataset_unbatched_inputs_only(self):
        x = np.zeros((3, 5, 5, 1), np.float32)
        ds = noisy_dataset(
            tf.data.Dataset.from_tensor_slices(x), "gaussian", 0.1, seed=0, batched=False
        )
        out = np.stack([a.numpy() for a in ds])
        assert out.shape == x.shape and out.std() > 0

    def test_layer_training_only(self):
        layer = InputNoise("environmental", (0.1, 0.2), seed=0)
        x = tf.zeros((2, 6, 6, 1))
        np.testing.assert_array_equal(layer(x, training=False), x)
        a, b = layer(x, training=True).numpy(), layer(x, training=True).numpy()
        assert a.max() > 0 and not np.array_equal(a, b)  # fresh noise per call
        always = InputNoise("uniform", 0.1, seed=0, training_only=False)
        assert np.abs(always(x, training=False).numpy()).max() > 0

    def test_layer_in_model_fit_and_config(self):
        model = tf.keras.Sequential(
            [
                tf.keras.layers.Input((6, 6, 1)),
                InputNoise("environmental", (0.1, 0.2), seed=0, noise_kwargs={"points": 4}),
                tf.keras.layers.Flatten(),
                tf.keras.layers.Dense(2),
            ]
        )
        model.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(np.zeros((4, 6, 6, 1)), np.zeros(4), epochs=1, verbose=0)
        x = np.zeros((2, 6, 6, 1), np.float32)
        np.testing.assert_array_equal(model.predict(x, verbose=0), model(x, training=False))
        clone = tf.keras.Sequential.from_config(model.get_config())
        assert clone.layers[0].get_config()["epsilon"] == [0.1, 0.2]
        assert clone.layers[0].noise_kwargs == {"points": 4}


class TestBadInputs:
    @pytest.mark.parametrize(
        "x,kwargs,error,match",
        [
            (np.zeros((2, 8, 8, 1), np.float32), dict(epsilon=(0.2, 0.1)), ValueError, "lo <= hi"),
            (np.zeros((2, 8, 8, 1), np.float32), dict(epsilon=0.1, points=-1), ValueError, ">= 0"),
            (np.zeros((2, 2, 8, 1), np.float32), dict(epsilon=0.1), ValueError, ">= 3"),
            (np.zeros((2, 2, 1), np.float32), dict(epsilon=0.1), ValueError, ">= 3"),
            (np.zeros((8, 8), np.float32), dict(epsilon=0.1), ValueError, "rank 2"),
            (np.zeros((1, 2, 8, 8, 1), np.float32), dict(epsilon=0.1), ValueError, "rank 5"),
            (np.zeros((2, 8, 8, 1), np.uint8), dict(epsilon=0.1), TypeError, "floating"),
            (np.zeros((2, 8, 8, 1), np.float32), dict(epsilon=0.1, prob=1.5), ValueError, "prob"),
            (np.zeros((2, 8, 8, 1), np.float32), dict(epsilon="big"), TypeError, "epsilon"),
            (np.zeros((2, 8, 8, 1), np.float32), dict(epsilon=0.1, points=2.5), TypeError, "int"),
        ],
    )
    def test_environmental_errors(self, x, kwargs, error, match):
        with pytest.raises(error, match=match):
            environmental_noise(x, **kwargs)

    def test_other_errors(self):
        x = np.zeros((2, 8, 8, 1), np.float32)
        with pytest.raises(ValueError, match="sigma"):
            gaussian_noise(x, -1.0)
        with pytest.raises(ValueError, match="amount"):
            impulse_noise(x, 2.0)
        with pytest.raises(ValueError, match="Unknown noise"):
            noise.get("pink")
        with pytest.raises(ValueError, match="seed"):
            environmental_noise(x, 0.1, seed=[1, 2, 3])
        with pytest.raises(ValueError, match="lo <= hi"):
            InputNoise("environmental", (0.3, 0.1))
        with pytest.raises(ValueError, match="`epsilon` is required"):
            InputNoise("gaussian")


class TestScatterPaths:
    def test_unknown_batch_size_path_equals_known(self):
        """Inside tf.data the batch size is unknown: the int64 segment-sum path must add the
        same shifts as the int32 bincount path used for known shapes."""
        rng = np.random.default_rng(0)
        x = rng.random((6, 7, 5, 2)).astype(np.float32)
        cells = rng.integers(0, 15, size=(6, 30)).astype(np.int32)
        shifts = (rng.uniform(0.1, 0.2, (6, 30)) * (rng.random((6, 30)) < 0.5)).astype(np.float32)
        known = noise._apply_point_shifts(tf.constant(x), cells, shifts).numpy()
        unknown = tf.function(
            noise._apply_point_shifts,
            input_signature=[tf.TensorSpec([None, 7, 5, 2]), tf.TensorSpec([None, 30], tf.int32),
                             tf.TensorSpec([None, 30])],
        )(x, cells, shifts).numpy()
        np.testing.assert_allclose(unknown, known, rtol=0, atol=1e-6)
        want = noise._apply_point_shifts_loop(x, noise._cells_to_positions(cells, [7, 5]), shifts)
        np.testing.assert_allclose(known, want, rtol=0, atol=1e-6)


class TestInputNoiseDeployment:
    def test_layer_round_trip_h5_and_saved_model(self, tmp_path):
        """larq-style layer test: config, a training step, h5 and SavedModel round trips; at
        inference the layer is the identity."""
        x = uniform_inputs((2, 8, 8, 3))
        out = layer_test(InputNoise, {"noise": "environmental", "epsilon": [0.1, 0.2],
                                      "seed": 0, "noise_kwargs": {"points": 4}},
                         (8, 8, 3), tmp_path, x=x)
        np.testing.assert_array_equal(out, x)

    def test_model_with_input_noise_converts_without_random_ops(self, tmp_path):
        tf.keras.utils.set_random_seed(0)
        inputs = tf.keras.Input((8, 8, 3))
        x = InputNoise("environmental", epsilon=(0.05, 0.1), seed=0)(inputs)
        model = tf.keras.Model(inputs, trained_like_batchnorm(toy_bnn(width=4))(x))
        path = str(tmp_path / "saved_model")
        model.save(path)
        loaded = tf.keras.models.load_model(path)  # no custom_objects: the layer is registered
        assert isinstance(loaded.layers[1], InputNoise)
        assert loaded.layers[1].get_config()["epsilon"] == [0.05, 0.1]
        x = uniform_inputs((16, 8, 8, 3))
        keras_out = loaded.predict(x, verbose=0)
        np.testing.assert_allclose(keras_out, model.predict(x, verbose=0), atol=1e-6)
        flatbuffer = deploy.convert(loaded, in_process=True)
        ops = deploy.op_counts(flatbuffer)
        assert not [op for op in ops if "RANDOM" in op.upper() or "MULTINOMIAL" in op.upper()], ops
        assert ops.get("LceBconv2d") == 2, ops
        lite_out = deploy.TFLiteModel(flatbuffer).predict(x, verbose=False)
        np.testing.assert_allclose(lite_out, keras_out, atol=1e-3)


class TestDeprecatedNames:
    def test_level_is_epsilon_for_one_release(self):
        with pytest.warns(DeprecationWarning, match="`level` is deprecated"):
            layer = InputNoise("environmental", level=(0.1, 0.2), seed=0)
        assert layer.epsilon == (0.1, 0.2)
        # a configuration saved by version 0.1.0
        old = {"name": "input_noise", "noise": "uniform", "level": 0.1, "seed": 1,
               "training_only": True, "noise_kwargs": {}}
        with pytest.warns(DeprecationWarning):
            assert InputNoise.from_config(old).get_config()["epsilon"] == 0.1
        x = np.zeros((4, 6, 6, 1), np.float32)
        ds = tf.data.Dataset.from_tensor_slices(x).batch(2)
        with pytest.warns(DeprecationWarning, match="noisy_dataset"):
            old_ds = noisy_dataset(ds, "gaussian", level=0.1, seed=0)
        for a, b in zip(old_ds, noisy_dataset(ds, "gaussian", epsilon=0.1, seed=0)):
            np.testing.assert_array_equal(a, b)

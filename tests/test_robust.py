"""GM robust training (Liang et al., FITEE 2023): weights, loss, schedule, one step per term."""

import larq_l1inf  # noqa: F401,I001  (first: sets TF_USE_LEGACY_KERAS before larq imports TF)
import logging
import math
import os

import numpy as np
import pytest
from helpers import toy_bnn, uniform_inputs

from larq_l1inf import L1InfRegularizer, attacks
from larq_l1inf._keras import tf
from larq_l1inf.noise import environmental_noise
from larq_l1inf.robust import (
    WEIGHTINGS,
    GMRobustModel,
    gm_weights,
    pgd_perturbation,
    sub_perturbations,
    worst_case_logits,
)

NAMES = list(WEIGHTINGS)
STRICT = ["1/sqrt", "1/i", "1/i^2", "1/ln"]
TERMS = ["noise", "pgd", "ibp", "crown-ibp"]
BOUNDS = ["ibp", "crown-ibp"]

from larq_l1inf import crown, ibp


def np_ce(logits_or_probs, y, from_logits=True):
    """Cross-entropy per sample by loops (log-sum-exp for logits)."""
    out = np.asarray(logits_or_probs, np.float64)
    res = []
    for row, label in zip(out, y):
        if from_logits:
            m = row.max()
            res.append(m + math.log(sum(math.exp(v - m) for v in row)) - row[label])
        else:
            res.append(-math.log(row[label]))
    return np.array(res)


def linear_model():
    """Flatten + Dense(3) with fixed weights: IBP bounds have a closed form."""
    rng = np.random.default_rng(3)
    model = tf.keras.Sequential([tf.keras.Input((3, 3, 1)), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(3)])
    w = rng.normal(size=(9, 3)).astype("float32")
    b = rng.normal(size=(3,)).astype("float32")
    model.layers[-1].set_weights([w, b])
    return model, w, b


@pytest.fixture(scope="module")
def batch():
    return uniform_inputs((6, 8, 8, 3)), np.array([0, 1, 2, 3, 4, 0])


class TestWeights:
    @pytest.mark.parametrize("name", NAMES)
    @pytest.mark.parametrize("n", [1, 2, 5, 10])
    def test_closed_form_and_normalised(self, name, n):
        raw = {"1/sqrt": lambda i: 1 / math.sqrt(i), "1/i": lambda i: 1 / i,
               "1/i^2": lambda i: 1 / i**2, "1/ln": lambda i: 1 / math.log(i + 1),
               "constant": lambda i: 1 / n}[name]
        expected = np.array([raw(i) for i in range(1, n + 1)])
        c = gm_weights(n, name)
        np.testing.assert_allclose(c, expected / expected.sum(), rtol=1e-12)
        assert abs(c.sum() - 1.0) < 1e-12

    @pytest.mark.parametrize("name", NAMES)
    def test_monotone_in_the_sub_perturbation(self, name):
        # 004 sec. 3.3: the larger r_i = i/N eps, the smaller (never larger) its weight.
        c = gm_weights(10, name)
        r = sub_perturbations(0.3, 10)
        order = np.argsort(r)
        assert np.all(np.diff(c[order]) <= 0)
        if name in STRICT:
            assert np.all(np.diff(c[order]) < 0)
        else:
            np.testing.assert_allclose(c, np.full(10, 0.1))

    def test_one_sub_perturbation_has_weight_one(self):
        for name in NAMES:
            assert gm_weights(1, name).tolist() == [1.0]

    def test_callable_and_sequence(self, caplog):
        np.testing.assert_allclose(gm_weights(3, lambda i: 4 - i), [3 / 6, 2 / 6, 1 / 6])
        np.testing.assert_allclose(gm_weights(2, [3.0, 1.0]), [0.75, 0.25])
        with caplog.at_level(logging.WARNING, logger="larq_l1inf.robust"):
            gm_weights(3, [1.0, 2.0, 3.0])  # the paper's "increasing" ablation
        assert "increase" in caplog.text

    @pytest.mark.parametrize("bad, exc, match", [
        (dict(robustness_size=0), ValueError, ">= 1"),
        (dict(robustness_size=-2), ValueError, ">= 1"),
        (dict(robustness_size=2.5), TypeError, "int"),
        (dict(weighting="1/exp"), ValueError, "Unknown weighting"),
        (dict(weighting=[1.0, -1.0]), ValueError, ">= 0"),
        (dict(weighting=[0.0, 0.0]), ValueError, "not all zero"),
        (dict(weighting=[1.0, 1.0, 1.0]), ValueError, "exactly N"),
    ])
    def test_errors(self, bad, exc, match):
        args = {"robustness_size": 2, "weighting": "1/i", **bad}
        with pytest.raises(exc, match=match):
            gm_weights(**args)


def test_sub_perturbations_uniform_grid():
    np.testing.assert_allclose(sub_perturbations(0.4, 4), [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=">= 0"):
        sub_perturbations(-0.1, 4)


def test_worst_case_logits_against_loops():
    rng = np.random.default_rng(0)
    lower = rng.normal(size=(4, 3)).astype("float32")
    upper = lower + rng.uniform(0, 1, size=(4, 3)).astype("float32")
    y = np.array([0, 2, 1, 2])
    expected = np.array([[lower[n, j] if j == y[n] else upper[n, j] for j in range(3)]
                         for n in range(4)])
    np.testing.assert_array_equal(worst_case_logits(lower, upper, y).numpy(), expected)
    onehot = np.eye(3)[y]
    np.testing.assert_array_equal(worst_case_logits(lower, upper, onehot).numpy(), expected)


def test_in_graph_pgd_matches_attacks_pgd(batch):
    x, y = batch
    model = toy_bnn()
    ours = pgd_perturbation(model, x, y, 0.05, iterations=2, random_start=False, clip=(0, 1))
    theirs = attacks.pgd(model, x, y, 0.05, iterations=2, random_start=False, clip=(0, 1))
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-7)
    start = pgd_perturbation(model, x, y, 0.05, iterations=0, random_start=True, seed=1, clip=None)
    assert np.all(np.abs(start.numpy() - x) <= 0.05 + 1e-7)
    assert np.abs(start.numpy() - x).max() > 0.04


class TestErrors:
    @pytest.mark.parametrize("kwargs, match", [
        (dict(epsilon=-0.1), ">= 0"),
        (dict(epsilon=float("nan")), ">= 0"),
        (dict(kappa=0.0), "strictly between 0 and 1"),
        (dict(kappa=1.0), "strictly between 0 and 1"),
        (dict(kappa=1.5), "strictly between 0 and 1"),
        (dict(robustness_size=0), ">= 1"),
        (dict(weighting="1/exp"), "Unknown weighting"),
        (dict(robust="crown"), "Unknown robust term"),
        (dict(robust="pgd", epsilon=(0.1, 0.2)), "range"),
        (dict(robust="noise", epsilon=(0.2, 0.1)), "lo <= hi"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(pgd_iterations=0), "pgd_iterations"),
        (dict(robust="crown-ibp", final_beta=1.5), "final_beta"),
        (dict(robust="crown-ibp", final_beta=-0.1), "final_beta"),
        (dict(robust="crown-ibp", final_beta=True), "final_beta"),
        (dict(robust="crown-ibp", final_beta="1"), "final_beta"),
    ])
    def test_bad_arguments(self, kwargs, match):
        args = {"epsilon": 0.1, "robust": "noise", **kwargs}
        with pytest.raises(ValueError, match=match):
            GMRobustModel(linear_model()[0], **args)

    def test_not_a_model(self):
        with pytest.raises(TypeError, match="Keras model"):
            GMRobustModel(lambda x: x, epsilon=0.1, robust="noise")

    @pytest.mark.parametrize("term", BOUNDS)
    def test_model_ibp_cannot_bound(self, term):
        model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Lambda(tf.square),
                                     tf.keras.layers.Dense(2)])
        with pytest.raises(ibp.UnsupportedLayerError, match="robust='pgd'"):
            GMRobustModel(model, epsilon=0.1, robust=term)

    def test_final_beta_of_another_term_warns(self, caplog):
        with caplog.at_level(logging.WARNING, logger="larq_l1inf.robust"):
            GMRobustModel(linear_model()[0], epsilon=0.1, robust="ibp", final_beta=0.5)
        assert "final_beta=0.5 is ignored" in caplog.text

    def test_compile_loss_is_ignored_with_a_warning(self, caplog):
        gm = GMRobustModel(linear_model()[0], epsilon=0.1, robust="pgd")
        with caplog.at_level(logging.WARNING, logger="larq_l1inf.robust"):
            gm.compile("sgd", loss="mse")
        assert "ignored" in caplog.text


class TestLoss:
    @pytest.mark.parametrize("term", TERMS)
    @pytest.mark.parametrize("softmax", [False, True])
    def test_one_sub_perturbation_is_the_single_epsilon_loss(self, batch, term, softmax):
        """N = 1 gives eq. 15: kappa CE(f(x)) + (1 - kappa) L_rob(eps) (+ penalty)."""
        x, y = batch
        model = toy_bnn(softmax=softmax, kernel_regularizer=L1InfRegularizer())
        eps, kappa, seed = 0.08, 0.3, (5, 7)
        gm = GMRobustModel(model, epsilon=eps, robust=term, robustness_size=1, kappa=kappa,
                           pgd_iterations=2)
        parts = gm.gm_loss(x, y, seed=seed)
        ce = tf.keras.losses.sparse_categorical_crossentropy
        clean = tf.reduce_mean(ce(y, model(x), from_logits=not softmax))
        if term in BOUNDS:
            # ibp: the IBP margins with the last Dense folded in; crown-ibp: final beta 1.
            beta = 1.0 if term == "crown-ibp" else 0.0
            margins = crown.margin_bounds(model, x, y, eps, beta=beta)
            rob = tf.reduce_mean(ce(y, -margins, from_logits=True))
            if term == "ibp":  # the same bound as ibp.py's own folding of the last layer
                worst = np.where(np.eye(5)[y] > 0, np.inf, margins.numpy()).min(axis=1)
                np.testing.assert_allclose(worst, ibp.certified_margin(model, x, y, eps).numpy(),
                                           rtol=1e-5, atol=1e-5)
        else:
            if term == "pgd":
                start = tf.random.experimental.stateless_fold_in(tf.constant(seed, tf.int64), 0)
                x_rob = pgd_perturbation(model, x, y, eps, iterations=2, seed=start,
                                         from_logits=not softmax)
            else:
                x_rob = environmental_noise(x, eps, seed=seed)  # Algorithm 1 at eps itself
            rob = tf.reduce_mean(ce(y, model(x_rob), from_logits=not softmax))
        penalty = tf.add_n(model.losses)
        direct = kappa * clean + (1 - kappa) * rob + penalty
        assert float(parts["robust_loss"]) == float(rob)  # exact: c_1 = 1, r_1 = epsilon
        assert float(parts["loss"]) == float(direct)
        if term in BOUNDS:  # a worst case over the box is never below the clean loss
            assert float(parts["robust_loss"]) >= float(parts["clean_loss"]) - 1e-6

    def test_kappa_blends_clean_and_robust(self, batch):
        x, y = batch
        model = toy_bnn(kernel_regularizer=L1InfRegularizer())
        gm = GMRobustModel(model, epsilon=0.3, robust="noise", robustness_size=3)
        totals = []
        for kappa in (0.2, 0.7):
            p = gm.gm_loss(x, y, kappa=kappa, seed=3)
            expected = (kappa * p["clean_loss"] + (1 - kappa) * p["robust_loss"] + p["penalty"])
            assert float(p["loss"]) == pytest.approx(float(expected), rel=1e-6)
            totals.append(p)
        assert float(totals[0]["clean_loss"]) == float(totals[1]["clean_loss"])
        assert float(totals[0]["robust_loss"]) == float(totals[1]["robust_loss"])
        robust = float(totals[0]["robust_loss"])
        c = gm_weights(3, "1/sqrt")
        assert robust == pytest.approx(float(np.dot(c, totals[0]["sub_losses"].numpy())), rel=1e-6)

    def test_noise_sub_perturbation_is_algorithm1_at_the_scaled_epsilon(self, batch):
        """Block i of the tiled batch is environmental_noise at (r_i lo, r_i hi), i = 1..N."""
        x, y = batch
        lo, hi, n, seed = 0.05, 0.1, 2, (1, 2)
        unit = environmental_noise(tf.zeros((n * len(x),) + x.shape[1:]), (lo, hi), seed=seed)
        tiled = np.concatenate([x] * n)
        for i in (1, 2):
            r = i / n
            direct = environmental_noise(tiled, (r * lo, r * hi), seed=seed)
            np.testing.assert_allclose(tiled + r * unit.numpy(), direct.numpy(), atol=1e-6)
        model = toy_bnn()
        gm = GMRobustModel(model, epsilon=(lo, hi), robust="noise", robustness_size=n)
        sub = gm.sub_losses(x, y, seed=seed).numpy()
        for i in (1, 2):
            block = (tiled + i / n * unit.numpy())[(i - 1) * len(x):i * len(x)]
            ce = np_ce(model(block).numpy(), y)
            assert sub[i - 1] == pytest.approx(ce.mean(), rel=1e-5)

    def test_ibp_gm_loss_closed_form_on_a_linear_model(self):
        """Dense logits z = W^T x + b, the last layer folded into the margin:
        m_j = (w_y - w_j)^T x + b_y - b_j - r |w_y - w_j|_1, by hand in NumPy."""
        model, w, b = linear_model()
        x = uniform_inputs((4, 3, 3, 1), seed=2)
        y = np.array([0, 1, 2, 1])
        eps, n, kappa = 0.2, 3, 0.4
        gm = GMRobustModel(model, epsilon=eps, robust="ibp", robustness_size=n,
                           weighting="1/i", kappa=kappa, clip=None)
        flat = x.reshape(4, -1).astype(np.float64)
        centre = flat @ w + b
        clean = np_ce(centre, y).mean()
        c = np.array([1, 1 / 2, 1 / 3]) / (1 + 1 / 2 + 1 / 3)
        robust = 0.0
        for i in range(1, n + 1):
            r = i / n * eps
            margins = np.array([[centre[k, y[k]] - centre[k, j]
                                 - r * np.abs(w[:, y[k]] - w[:, j]).sum() for j in range(3)]
                                for k in range(4)])
            robust += c[i - 1] * np_ce(-margins, y).mean()
        parts = gm.gm_loss(x, y)
        assert float(parts["clean_loss"]) == pytest.approx(clean, rel=1e-5)
        assert float(parts["robust_loss"]) == pytest.approx(robust, rel=1e-5)
        assert float(parts["loss"]) == pytest.approx(kappa * clean + (1 - kappa) * robust,
                                                     rel=1e-5)


class TestCrownIBP:
    """The "crown-ibp" term: CE of -crown.margin_bounds at r_i and the scheduled beta."""

    @pytest.mark.parametrize("ramp_tensor", [False, True])
    def test_loss_is_the_ce_of_the_mixed_margin_bounds(self, batch, ramp_tensor):
        x, y = batch
        model = toy_bnn()
        eps, n, final_beta = 0.06, 2, 0.25
        gm = GMRobustModel(model, epsilon=eps, robust="crown-ibp", robustness_size=n,
                           weighting="1/i", final_beta=final_beta)
        ramp = tf.constant(0.5) if ramp_tensor else 0.5
        beta = 1 - (1 - final_beta) * 0.5  # 0.625
        assert float(gm.beta_schedule(ramp)) == beta
        sub = gm.sub_losses(x, y, ramp=ramp).numpy()
        for i in (1, 2):
            margins = crown.margin_bounds(model, x, y, i / n * 0.5 * eps, beta=beta).numpy()
            assert np.all(margins[np.arange(len(y)), y] == 0)
            assert sub[i - 1] == pytest.approx(np_ce(-margins, y).mean(), rel=1e-5)
        parts = gm.gm_loss(x, y, ramp=ramp)
        assert float(parts["robust_loss"]) == pytest.approx(
            float(np.dot(gm_weights(n, "1/i"), sub)), rel=1e-6)

    def test_beta_zero_is_the_ibp_term(self, batch):
        x, y = batch
        model = toy_bnn()
        kwargs = dict(epsilon=0.05, robustness_size=2, kappa=0.4)
        mixed = GMRobustModel(model, robust="crown-ibp", final_beta=0.0, **kwargs)
        plain = GMRobustModel(model, robust="ibp", **kwargs)
        ramp = tf.constant(1.0)  # a tensor beta: the mixing path, 0 * CROWN + 1 * IBP
        assert float(mixed.beta_schedule(ramp)) == 0.0
        got = mixed.gm_loss(x, y, ramp=ramp)
        want = plain.gm_loss(x, y, ramp=ramp)
        np.testing.assert_allclose(got["sub_losses"].numpy(), want["sub_losses"].numpy(),
                                   rtol=1e-6)
        assert float(got["loss"]) == pytest.approx(float(want["loss"]), rel=1e-6)

    def test_crown_ibp_term_is_never_above_the_ibp_term_on_a_bnn(self, batch):
        """Without ReLUs CROWN-IBP's margins are never below IBP's, so neither is the CE."""
        x, y = batch
        model = toy_bnn()
        crown_loss = GMRobustModel(model, 0.05, robust="crown-ibp", robustness_size=2)
        ibp_loss = GMRobustModel(model, 0.05, robust="ibp", robustness_size=2)
        ours = crown_loss.sub_losses(x, y).numpy()
        theirs = ibp_loss.sub_losses(x, y).numpy()
        assert np.all(ours <= theirs + 1e-5) and np.all(ours > 0)

    def test_beta_schedule_follows_the_epsilon_ramp(self):
        gm = GMRobustModel(linear_model()[0], epsilon=0.1, robust="crown-ibp", final_beta=0.2,
                           warmup_steps=2, rampup_steps=4)
        got = [float(gm.beta_schedule(gm.schedule(s)[0])) for s in (0, 1, 2, 3, 5, 6, 100)]
        np.testing.assert_allclose(got, [1, 1, 0.8, 0.6, 0.2, 0.2, 0.2], rtol=1e-6)
        paper = GMRobustModel(linear_model()[0], epsilon=0.1, robust="crown-ibp", rampup_steps=4)
        assert paper.final_beta == 1.0 and paper.beta_schedule(tf.constant(0.25)) == 1.0

    def test_compiled_steps_log_beta_without_retracing(self, batch):
        x, y = batch
        gm = GMRobustModel(toy_bnn(), epsilon=0.05, robust="crown-ibp", robustness_size=1,
                           final_beta=0.5, rampup_steps=2, seed=0)
        gm.compile(tf.keras.optimizers.SGD(0.01))
        betas, traces = [], []
        for _ in range(3):
            gm.reset_metrics()
            logs = gm.train_on_batch(x, y, return_dict=True)
            assert all(np.isfinite(v) for v in logs.values())
            betas.append(logs["beta"])
            traces.append(gm.train_function.experimental_get_tracing_count())
        np.testing.assert_allclose(betas, [0.75, 0.5, 0.5], rtol=1e-6)
        assert traces[0] == traces[-1], traces  # beta is a tensor: no retracing as it moves

    def test_config_round_trip(self):
        gm = GMRobustModel(linear_model()[0], epsilon=0.1, robust="crown-ibp", final_beta=0.3)
        config = gm.get_config()
        assert config["final_beta"] == 0.3 and config["robust"] == "crown-ibp"
        clone = GMRobustModel.from_config(config)
        assert (clone.final_beta, clone.robust) == (0.3, "crown-ibp")


class TestSchedule:
    def test_warmup_then_linear_ramp(self):
        gm = GMRobustModel(linear_model()[0], epsilon=0.1, robust="noise", kappa=0.5,
                           warmup_steps=2, rampup_steps=4)
        got = [tuple(float(v) for v in gm.schedule(s)) for s in (0, 1, 2, 3, 5, 6, 100)]
        expected = [(0, 1), (0, 1), (0.25, 0.875), (0.5, 0.75), (1, 0.5), (1, 0.5), (1, 0.5)]
        np.testing.assert_allclose(got, expected)

    def test_no_ramp_and_fixed_kappa(self):
        gm = GMRobustModel(linear_model()[0], epsilon=0.1, robust="noise", kappa=0.3,
                           warmup_steps=3, ramp_kappa=False)
        got = [tuple(float(v) for v in gm.schedule(s)) for s in (2, 3, 4)]
        np.testing.assert_allclose(got, [(0, 1), (1, 0.3), (1, 0.3)])

    def test_warmup_step_is_the_clean_loss(self, batch):
        x, y = batch
        model = toy_bnn(kernel_regularizer=L1InfRegularizer())
        gm = GMRobustModel(model, epsilon=0.1, robust="noise", warmup_steps=1, rampup_steps=2,
                           robustness_size=2, seed=0)
        gm.compile(tf.keras.optimizers.SGD(0.0), run_eagerly=True)  # eager: no tracing cost
        clean = float(tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            y, model(x, training=True), from_logits=True)))
        penalty = float(tf.add_n(model.losses))
        logs = gm.train_on_batch(x, y, return_dict=True)
        assert logs["robust_loss"] == 0.0 and logs["kappa"] == 1.0 and logs["epsilon"] == 0.0
        assert logs["loss"] == pytest.approx(clean + penalty, rel=1e-6)
        assert logs["clean_loss"] == pytest.approx(clean, rel=1e-6)
        gm.reset_metrics()
        logs = gm.train_on_batch(x, y, return_dict=True)  # first ramp step: eps / 2
        assert logs["epsilon"] == pytest.approx(0.05) and logs["kappa"] == pytest.approx(0.75)
        assert logs["robust_loss"] > 0
        assert logs["loss"] == pytest.approx(
            0.75 * logs["clean_loss"] + 0.25 * logs["robust_loss"] + logs["penalty"], rel=1e-6)


@pytest.mark.parametrize("term", TERMS)
def test_one_training_step_with_the_l1inf_penalty(batch, term):
    x, y = batch
    model = toy_bnn(kernel_regularizer=L1InfRegularizer())
    gm = GMRobustModel(model, epsilon=0.05, robust=term, robustness_size=2, pgd_iterations=2,
                       seed=0)
    gm.compile(tf.keras.optimizers.SGD(0.1), metrics=["accuracy"])
    before = [v.numpy().copy() for v in model.trainable_variables]
    penalty = float(tf.add_n(model.losses))
    assert penalty > 0
    logs = gm.train_on_batch(x, y, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    assert logs["penalty"] == pytest.approx(penalty, rel=1e-6)
    assert logs["loss"] == pytest.approx(
        0.5 * logs["clean_loss"] + 0.5 * logs["robust_loss"] + penalty, rel=1e-6)
    moved = [not np.allclose(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert all(moved), [v.name for v, m in zip(model.trainable_variables, moved) if not m]
    assert set(logs) >= {"loss", "clean_loss", "robust_loss", "penalty", "epsilon", "kappa",
                         "accuracy"}


def test_config_round_trip_and_inner_model_saves(batch, tmp_path):
    x, y = batch
    model = toy_bnn(kernel_regularizer=L1InfRegularizer())
    gm = GMRobustModel(model, epsilon=(0.05, 0.1), robust="noise", robustness_size=3,
                       weighting=lambda i: 1 / i**0.75, kappa=0.4, warmup_steps=2,
                       rampup_steps=3, noise_kwargs={"prob": 0.4}, seed=1)
    config = gm.get_config()
    assert isinstance(config["weighting"], list) and len(config["weighting"]) == 3
    clone = GMRobustModel.from_config(config)
    clone_config = clone.get_config()
    assert {k: v for k, v in clone_config.items() if k != "model"} == {
        k: v for k, v in config.items() if k != "model"}
    assert [type(a) for a in clone.model.layers] == [type(a) for a in model.layers]
    np.testing.assert_allclose(clone.gm_weights, gm.gm_weights)
    gm.compile("adam", run_eagerly=True)  # the graph path is covered by the one-step tests
    gm.fit(x, y, batch_size=6, epochs=1, verbose=0)
    logs = gm.evaluate(x, y, batch_size=6, verbose=0, return_dict=True)  # final eps and kappa
    assert logs["epsilon"] == pytest.approx(0.1) and logs["kappa"] == pytest.approx(0.4)
    assert all(np.isfinite(v) for v in logs.values())
    path = os.path.join(str(tmp_path), "inner.h5")
    gm.model.save(path)
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), gm.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    path = os.path.join(str(tmp_path), "gm.keras")  # the wrapper itself: Keras' native format
    gm.save(path)
    loaded = tf.keras.models.load_model(path)
    assert isinstance(loaded, GMRobustModel) and loaded.robustness_size == 3
    np.testing.assert_allclose(loaded.predict(x, verbose=0), gm.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)

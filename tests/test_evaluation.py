"""`larq_l1inf.evaluation`: evaluate, sweep, noisy inputs, CSV and JSON of the results."""

import json

import larq as lq
import numpy as np
import pytest
from helpers import BINARY

from larq_l1inf import deploy, evaluation
from larq_l1inf._keras import tf
from larq_l1inf.data import load_digits
from larq_l1inf.noise import environmental_noise
from larq_l1inf.utils import write_json


def digits_bnn():
    """A BNN that learns 8x8 digits in 2 epochs: it keeps the spatial layout (Flatten), which
    `helpers.toy_bnn`'s global average pooling loses (it stays near chance there)."""
    return tf.keras.Sequential([
        tf.keras.layers.Input((8, 8, 1)),
        tf.keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
        tf.keras.layers.BatchNormalization(),
        lq.layers.QuantConv2D(16, 3, padding="same", pad_values=1.0, **BINARY),
        tf.keras.layers.BatchNormalization(),
        tf.keras.layers.MaxPool2D(2),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])


@pytest.fixture(scope="module")
def setup():
    (x_train, y_train), (x_test, y_test) = load_digits(size=8, channels=1)
    tf.keras.utils.set_random_seed(0)
    model = digits_bnn()
    model.compile(tf.keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    flatbuffer = deploy.convert(model, in_process=True, on_failure="raise")
    return model, flatbuffer, x_test[:120], y_test[:120]


class TestNoisyInputs:
    def test_reproducible_and_chunk_independent(self, monkeypatch):
        x = np.random.default_rng(0).random((10, 6, 6, 2)).astype(np.float32)
        a = evaluation.noisy_inputs(x, "environmental", (0.1, 0.2), seed=1, draw=0)
        b = evaluation.noisy_inputs(x, "environmental", (0.1, 0.2), seed=1, draw=0)
        c = evaluation.noisy_inputs(x, "environmental", (0.1, 0.2), seed=1, draw=1)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        assert np.all(a[:, 0] == x[:, 0])
        # one chunk: the same as the noise function with the folded seed
        s = tf.random.experimental.stateless_fold_in(tf.constant([1, 0], tf.int64), 0)
        np.testing.assert_array_equal(a, environmental_noise(x, (0.1, 0.2), seed=s).numpy())
        monkeypatch.setattr(evaluation, "NOISE_CHUNK", 4)
        d = evaluation.noisy_inputs(x, "environmental", (0.1, 0.2), seed=1, draw=0)
        assert d.shape == x.shape and np.all(d[:, 0] == x[:, 0])


class TestEvaluate:
    def test_keras_and_flatbuffer_agree(self, setup):
        model, flatbuffer, x, y = setup
        r = evaluation.evaluate(model, x, y, flatbuffer=flatbuffer, epsilon=(0.1, 0.2), draws=2,
                                pgd_epsilon=0.05, pgd_iterations=2)
        keras, tflite = r.models["keras"], r.models["tflite"]
        assert keras["clean"] > 0.5  # the toy model learned something
        assert r.disagreement["clean"] <= 1  # ties may flip one argmax
        assert abs(keras["clean"] - tflite["clean"]) <= 1 / len(x) + 1e-9
        assert len(keras["noisy"]) == 2 and len(r.disagreement["noisy"]) == 2
        assert max(r.disagreement["noisy"]) <= 2
        # both saw the same adversarial inputs computed on the Keras model
        assert keras["pgd"] < keras["clean"] and r.disagreement["pgd"] <= 2
        assert abs(keras["pgd"] - tflite["pgd"]) <= 2 / len(x) + 1e-9
        assert "Keras vs flatbuffer" in r.summary()

    def test_numbers_match_manual_computation(self, setup):
        model, _, x, y = setup
        r = evaluation.evaluate(model, x, y, epsilon=(0.2, 0.4), draws=3, seed=5)
        manual = []
        for k in range(3):
            xn = evaluation.noisy_inputs(x, "environmental", (0.2, 0.4), seed=5, draw=k)
            manual.append(np.mean(model.predict(xn, verbose=0).argmax(1) == y))
        m = r.models["keras"]
        np.testing.assert_allclose(m["noisy"], manual)
        np.testing.assert_allclose(m["noisy_mean"], np.mean(manual))
        np.testing.assert_allclose(m["noisy_std"], np.std(manual))
        assert m["pgd"] is None and r.disagreement is None
        # per-class accuracies average (weighted by class counts) to the accuracy
        counts = np.bincount(y, minlength=r.num_classes)
        np.testing.assert_allclose(
            np.nansum(np.array(m["per_class"]["clean"]) * counts) / counts.sum(), m["clean"]
        )
        assert r.to_dict()["config"]["draws"] == 3

    def test_clean_false_skips_only_the_clean_pass(self, setup, monkeypatch):
        model, flatbuffer, x, y = setup
        kw = dict(flatbuffer=flatbuffer, epsilon=(0.1, 0.2), draws=2, pgd_epsilon=0.05,
                  pgd_iterations=2, seed=3)
        full = evaluation.evaluate(model, x, y, **kw)
        calls = []
        predict = evaluation._Predictor.predict
        monkeypatch.setattr(evaluation._Predictor, "predict",
                            lambda self, a: calls.append(len(a)) or predict(self, a))
        r = evaluation.evaluate(model, x, y, clean=False, **kw)
        assert len(calls) == 2 * (2 + 1)  # two models x (2 draws + PGD), no clean pass
        for name in ("keras", "tflite"):
            a, b = r.models[name], full.models[name]
            assert a["clean"] is None and a["per_class"]["clean"] is None
            assert a["noisy"] == b["noisy"] and a["pgd"] == b["pgd"]
            assert a["per_class"]["noisy"] == b["per_class"]["noisy"]
        assert r.disagreement["clean"] is None
        assert r.disagreement["noisy"] == full.disagreement["noisy"]
        text = r.summary()
        assert "clean" not in text.split("\n")[-1] and " - " in text

    def test_summary_without_noise(self, setup):
        model, _, x, y = setup
        text = evaluation.evaluate(model, x, y).summary()
        assert text.splitlines()[1].split()[2:] == ["-", "-"]

    def test_flatbuffer_alone(self, setup):
        model, flatbuffer, x, y = setup
        r = evaluation.evaluate(flatbuffer, x, y, epsilon=0.1, draws=1)
        assert set(r.models) == {"tflite"}
        with pytest.raises(ValueError, match="PGD needs gradients"):
            evaluation.evaluate(flatbuffer, x, y, pgd_epsilon=0.1)

    def test_bad_inputs(self, setup):
        model, _, x, y = setup
        with pytest.raises(ValueError, match="Mismatched dataset"):
            evaluation.evaluate(model, x, y[:-1])
        with pytest.raises(ValueError, match="expects samples of shape"):
            evaluation.evaluate(model, np.zeros((4, 9, 9, 1), np.float32), y[:4])
        with pytest.raises(ValueError, match="draws"):
            evaluation.evaluate(model, x, y, epsilon=0.1, draws=0)
        with pytest.raises(TypeError, match="floating"):
            evaluation.evaluate(model, (x * 16).astype(np.int32), y)
        with pytest.raises(TypeError, match="tf.keras.Model"):
            evaluation.sweep({"a": object()}, x, y, [0.1])
        with pytest.raises(ValueError, match="lo <= hi"):
            evaluation.evaluate(model, x, y, epsilon=(0.2, 0.1))


class TestSweep:
    def test_csv_and_png(self, setup, tmp_path):
        model, flatbuffer, x, y = setup
        epsilons = [0.0, (0.1, 0.2), (0.5, 1.0)]
        rows = evaluation.sweep({"keras": model, "lce": flatbuffer}, x, y, epsilons, draws=2,
                                csv_path=str(tmp_path / "s.csv"), png_path=str(tmp_path / "s.png"))
        assert len(rows) == 6
        back = evaluation.read_csv(str(tmp_path / "s.csv"))
        assert [r["accuracy_mean"] for r in back] == pytest.approx(
            [r["accuracy_mean"] for r in rows]
        )
        assert (tmp_path / "s.png").stat().st_size > 1000
        by = {(r["model"], r["epsilon_hi"]): r for r in rows}
        clean = np.mean(model.predict(x, verbose=0).argmax(1) == y)
        assert by[("keras", 0.0)]["accuracy_mean"] == pytest.approx(clean)
        assert by[("keras", 0.0)]["accuracy_std"] == 0
        # strong noise hurts; both forms of the model see the same inputs
        assert by[("keras", 1.0)]["accuracy_mean"] < clean
        assert abs(by[("keras", 1.0)]["accuracy_mean"] - by[("lce", 1.0)]["accuracy_mean"]) < 0.03


class TestResultsAsJSON:
    def test_write_json_round_trip_and_absent_classes(self, setup, tmp_path):
        model, _, x, y = setup
        keep = y != 3  # class 3 has no sample: its per-class accuracy is None, not NaN
        r = evaluation.evaluate(model, x[keep], y[keep], epsilon=0.1, draws=1)
        assert r.models["keras"]["per_class"]["clean"][3] is None
        path = write_json(r.to_dict(), str(tmp_path / "sub" / "r.json"))
        back = json.loads(open(path).read())
        assert back["models"]["keras"]["clean"] == pytest.approx(r.models["keras"]["clean"])
        assert back["config"]["epsilon"] == 0.1 and back["config"]["pgd_step_size"] is None


class TestDeprecatedNames:
    """The names of version 0.1.0 keep working for one release, with a DeprecationWarning."""

    def test_evaluate_level_pgd_step_progress(self, setup):
        model, _, x, y = setup
        new = evaluation.evaluate(model, x[:32], y[:32], epsilon=(0.1, 0.2), draws=1,
                                  pgd_epsilon=0.05, pgd_step_size=0.02, pgd_iterations=1,
                                  verbose=0)
        with pytest.warns(DeprecationWarning) as record:
            old = evaluation.evaluate(model, x[:32], y[:32], level=(0.1, 0.2), draws=1,
                                      pgd_epsilon=0.05, pgd_step=0.02, pgd_iterations=1,
                                      progress=False)
        messages = " ".join(str(w.message) for w in record)
        for name in ("`level`", "`pgd_step`", "`progress`"):
            assert name in messages
        assert record[0].filename == __file__  # points at the caller
        assert old.to_dict() == new.to_dict()
        with pytest.raises(TypeError, match="unexpected keyword argument 'levle'"):
            evaluation.evaluate(model, x, y, levle=0.1)

    def test_sweep_levels_noisy_inputs_level_and_old_csv(self, setup, tmp_path):
        model, _, x, y = setup
        with pytest.warns(DeprecationWarning, match="`levels`"):
            old = evaluation.sweep(model, x[:32], y[:32], levels=[0.1], draws=1)
        assert old == evaluation.sweep(model, x[:32], y[:32], epsilons=[0.1], draws=1)
        with pytest.warns(DeprecationWarning, match="`level`"):
            a = evaluation.noisy_inputs(x[:4], "environmental", level=0.1, seed=0)
        np.testing.assert_array_equal(a, evaluation.noisy_inputs(x[:4], epsilon=0.1, seed=0))
        path = tmp_path / "old.csv"  # a file written by version 0.1.0
        path.write_text("model,noise,level_lo,level_hi,accuracy_mean,accuracy_std,draws,n\n"
                        "m,environmental,0.05,0.1,0.5,0.01,3,100\n")
        rows = evaluation.read_csv(str(path))
        assert rows[0]["epsilon_lo"] == 0.05 and rows[0]["epsilon_hi"] == 0.1
        evaluation.plot_sweep(rows, str(tmp_path / "old.png"))

    def test_to_json(self, setup, tmp_path):
        model, _, x, y = setup
        r = evaluation.evaluate(model, x[:16], y[:16])
        with pytest.warns(DeprecationWarning, match="write_json"):
            text = r.to_json(str(tmp_path / "r.json"))
        assert json.loads(text) == json.loads((tmp_path / "r.json").read_text())

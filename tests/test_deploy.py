"""Conversion with LCE: subprocess isolation, flatbuffer parsing, binarization check, inference."""

import collections
import contextlib
import io
import logging
import re
import sys

import larq as lq
import numpy as np
import pytest

import larq_l1inf
from larq_l1inf import deploy
from larq_l1inf._keras import tf

BINARY = dict(
    input_quantizer="ste_sign",
    kernel_quantizer="ste_sign",
    kernel_constraint="weight_clip",
    use_bias=False,
)


def tiny_bnn(regularizer=None, name="tiny_bnn"):
    """Float stem, two binary convs (one 'same' with pad_values=1), float head: 8x8x3 -> 5."""
    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(8, 3, padding="same", pad_values=1.0,
                              kernel_regularizer=regularizer, **BINARY)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = lq.layers.QuantConv2D(8, 3, kernel_regularizer=regularizer, **BINARY)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = tf.keras.layers.Dense(5)(x)
    model = tf.keras.Model(inputs, outputs, name=name)
    # Non-trivial batch-norm statistics, so the comparison is not of near-constant outputs.
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.3, 0.3, n).astype("float32"))
            layer.moving_variance.assign(np.linspace(0.5, 2.0, n).astype("float32"))
    return model


def inputs(n=6, seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 3)).astype("float32")


def analyzer_ops(flatbuffer):
    """Operator names as TF's own flatbuffer analyzer prints them (an independent parser)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_content=flatbuffer)
    return re.findall(r"Op#\d+ (\w+)\(", text.getvalue())


@pytest.fixture(scope="module")
def converted():
    """The tiny BNN with an L1InfRegularizer, converted in a subprocess (the default path)."""
    tf.keras.utils.set_random_seed(0)
    model = tiny_bnn(larq_l1inf.L1InfRegularizer(5e-3))
    return model, deploy.convert(model)


# Layers LCE cannot binarize, with a phrase the message must contain for each.
UNBINARIZABLE = [
    (dict(input_quantizer="ste_heaviside", kernel_quantizer="ste_sign"), "input_quantizer"),
    (dict(input_quantizer=None, kernel_quantizer="ste_sign"), "input_quantizer"),
    (dict(input_quantizer=lq.quantizers.DoReFa(k_bit=1, mode="activations"),
          kernel_quantizer="ste_sign"), "input_quantizer"),
    (dict(input_quantizer="ste_sign", kernel_quantizer=None), "kernel_quantizer"),
]


def mixed_bnn():
    """One binarizable conv and one of every UNBINARIZABLE kind, in sequence."""
    inputs_ = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.BatchNormalization()(inputs_)
    x = lq.layers.QuantConv2D(4, 3, padding="same", pad_values=1.0, name="good", **BINARY)(x)
    for i, (kwargs, _) in enumerate(UNBINARIZABLE):
        x = tf.keras.layers.BatchNormalization()(x)
        x = lq.layers.QuantConv2D(4, 3, padding="same", pad_values=1.0, use_bias=False,
                                  name=f"bad_{i}", **kwargs)(x)
    return tf.keras.Model(inputs_, tf.keras.layers.GlobalAveragePooling2D()(x), name="mixed")


class TestOpCounts:
    def test_counts_match_tf_analyzer(self, converted):
        _, flatbuffer = converted
        expected = collections.Counter(analyzer_ops(flatbuffer))
        assert deploy.op_counts(flatbuffer) == dict(sorted(expected.items()))
        assert deploy.op_list(flatbuffer) == analyzer_ops(flatbuffer)

    def test_custom_lce_ops_are_named(self, converted):
        counts = deploy.op_counts(converted[1])
        assert counts["LceBconv2d"] == 2
        assert counts.get("CONV_2D", 0) == 1  # the float stem
        assert counts["FULLY_CONNECTED"] == 1

    @pytest.mark.parametrize("bad", [b"not a flatbuffer", "model.tflite", b""])
    def test_not_a_flatbuffer(self, bad):
        with pytest.raises((TypeError, ValueError), match="flatbuffer"):
            deploy.op_counts(bad)


class TestConvert:
    def test_subprocess_equals_in_process(self, converted):
        model, flatbuffer = converted
        in_process = deploy.convert(model, in_process=True)
        assert deploy.op_counts(in_process) == deploy.op_counts(flatbuffer)
        x = inputs()
        np.testing.assert_allclose(
            deploy.TFLiteModel(in_process).predict(x),
            deploy.TFLiteModel(flatbuffer).predict(x), rtol=1e-5, atol=1e-5,
        )

    # A real segmentation fault in the child, and an ordinary non-zero exit.
    CHILD_FAILURES = [
        ("import ctypes; ctypes.string_at(0)", 139, "crashed"),
        ("import sys; sys.stderr.write('converter says no\\n'); sys.exit(3)", 3, "failed"),
    ]

    @pytest.mark.parametrize("code, returncode, word", CHILD_FAILURES)
    def test_child_failure_is_an_exception_naming_model_and_exit_code(
        self, monkeypatch, code, returncode, word
    ):
        monkeypatch.setattr(deploy, "_worker_command",
                            lambda *args: [sys.executable, "-c", code])
        model = tiny_bnn(name="zoo_like_model")
        with pytest.raises(deploy.ConversionError) as info:
            deploy.convert(model)
        message = str(info.value)
        assert "zoo_like_model" in message
        assert f"exit code {returncode}" in message and word in message
        assert info.value.returncode == returncode
        assert info.value.model_name == "zoo_like_model"
        if returncode == 3:
            assert "converter says no" in message
        # The caller is alive and its model still works.
        assert np.all(np.isfinite(model.predict(inputs(2), verbose=0)))

    def test_timeout(self, monkeypatch):
        monkeypatch.setattr(deploy, "_worker_command",
                            lambda *args: [sys.executable, "-c", "import time; time.sleep(60)"])
        with pytest.raises(deploy.ConversionError, match="within 1 s"):
            deploy.convert(tiny_bnn(), timeout=1)

    def test_fixed_batch_size(self, converted):
        model, _ = converted
        flatbuffer = deploy.convert(model, in_process=True, batch_size=4)
        tflite = deploy.TFLiteModel(flatbuffer)
        assert tflite.batch_size == 4
        x = inputs(7)  # 7 = one full chunk of 4 and a padded chunk of 3
        out = tflite.predict(x)
        assert out.shape == (7, 5)
        np.testing.assert_allclose(out, model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)

    def test_not_a_model(self):
        with pytest.raises(TypeError, match="tf.keras.Model"):
            deploy.convert(lambda x: x)

    def test_bad_binarized_option(self, converted):
        with pytest.raises(ValueError, match="'warn', 'raise' or 'ignore'"):
            deploy.convert(converted[0], binarized="yes")


class TestRoundTrip:
    @pytest.mark.parametrize("fmt", ["h5", "tf"])
    def test_save_load_convert(self, converted, tmp_path, fmt):
        model, flatbuffer = converted
        path = str(tmp_path / ("m.h5" if fmt == "h5" else "m"))
        model.save(path, save_format=fmt)
        loaded = tf.keras.models.load_model(path)  # no custom_objects
        assert isinstance(loaded.layers[3].kernel_regularizer, larq_l1inf.L1InfRegularizer)
        reloaded = deploy.convert(loaded, in_process=True, binarized="raise")
        assert deploy.op_counts(reloaded) == deploy.op_counts(flatbuffer)
        x = inputs()
        np.testing.assert_allclose(deploy.TFLiteModel(reloaded).predict(x),
                                   model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)

    def test_flatbuffer_file_round_trip(self, converted, tmp_path):
        _, flatbuffer = converted
        path = deploy.save_flatbuffer(flatbuffer, str(tmp_path / "sub" / "m.tflite"))
        assert deploy.load_flatbuffer(path) == flatbuffer
        assert deploy.TFLiteModel(flatbuffer).save(str(tmp_path / "n.tflite"))
        bad = tmp_path / "bad.tflite"
        bad.write_bytes(b"0123456789")
        with pytest.raises(ValueError, match="TFL3"):
            deploy.load_flatbuffer(str(bad))


class TestTFLiteModel:
    def test_keras_and_interpreter_agree(self, converted):
        model, flatbuffer = converted
        x = inputs(16)
        np.testing.assert_allclose(deploy.TFLiteModel(flatbuffer).predict(x),
                                   model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)

    def test_compare_outputs(self, converted):
        model, flatbuffer = converted
        result = deploy.compare_outputs(model, flatbuffer, inputs(10))
        assert result["n"] == 10 and result["argmax_agree"] == 10
        assert result["argmax_agreement"] == 1.0
        assert 0 <= result["max_abs_diff"] < 1e-4
        assert result["mean_abs_diff"] <= result["max_abs_diff"]

    def test_matches_lce_per_sample_predict(self, converted):
        _, flatbuffer = converted
        import larq_compute_engine as lce

        x = inputs(5)
        reference = lce.testing.Interpreter(flatbuffer, num_threads=1,
                                            use_indirect_bgemm=True).predict(x)
        np.testing.assert_array_equal(deploy.TFLiteModel(flatbuffer).predict(x, verbose=True),
                                      reference)

    def test_batch_size_other_than_the_flatbuffers_is_refused(self, converted):
        tflite = deploy.TFLiteModel(converted[1])
        assert tflite.batch_size == 1
        assert tflite.predict(inputs(3), batch_size=1).shape == (3, 5)
        with pytest.raises(ValueError, match="convert\\(model, batch_size=8\\)"):
            tflite.predict(inputs(3), batch_size=8)

    def test_wrong_shape_and_empty_input(self, converted):
        tflite = deploy.TFLiteModel(converted[1])
        with pytest.raises(ValueError, match="Expected input of shape"):
            tflite.predict(np.zeros((2, 9, 9, 3), "float32"))
        assert tflite.predict(np.zeros((0, 8, 8, 3), "float32")).shape == (0, 5)


class TestCheckBinarized:
    def test_binarized_model_passes(self, converted):
        model, flatbuffer = converted
        report = deploy.check_binarized(flatbuffer, model)
        assert (report.binary_convs, report.lce_bconv2d, report.float_convs) == (2, 2, 1)
        assert report.ok and report.problems == []

    def test_unbinarizable_layers_are_named_with_the_fix(self, caplog, monkeypatch):
        model = mixed_bnn()
        with caplog.at_level(logging.WARNING, logger="larq_l1inf.deploy"):
            flatbuffer = deploy.convert(model, in_process=True)  # binarized="warn"
        assert f"1 of {1 + len(UNBINARIZABLE)} binary convolutions became" in caplog.text
        # Asked for binarized deployment, convert() raises (same flatbuffer, not re-converted).
        monkeypatch.setattr(deploy, "_convert_in_process", lambda *args: flatbuffer)
        with pytest.raises(deploy.BinarizationError, match="bad_0"):
            deploy.convert(model, in_process=True, binarized="raise")
        with pytest.raises(deploy.BinarizationError) as info:
            deploy.check_binarized(flatbuffer, model, on_failure="raise")
        message = str(info.value)
        assert f"1 of {1 + len(UNBINARIZABLE)} binary convolutions became LceBconv2d" in message
        for i, (_, phrase) in enumerate(UNBINARIZABLE):
            assert re.search(f"bad_{i}: {phrase}", message), message
        assert "good:" not in message
        assert "ste_sign" in message  # says what to use instead
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="larq_l1inf.deploy"):
            report = deploy.check_binarized(flatbuffer, model, on_failure="warn")
        assert report.not_binarized == len(UNBINARIZABLE)
        assert "Not binarized" in caplog.text

    def test_model_without_binary_convs(self):
        inputs_ = tf.keras.Input((8, 8, 3))
        x = lq.layers.QuantConv2D(4, 3)(inputs_)  # no quantizers: a float conv
        model = tf.keras.Model(inputs_, x, name="float_only")
        flatbuffer = deploy.convert(model, in_process=True, binarized="ignore")
        assert "LceBconv2d" not in deploy.op_counts(flatbuffer)
        with pytest.raises(deploy.BinarizationError, match="no binary convolution"):
            deploy.check_binarized(flatbuffer, model)

    PADDING_CASES = [
        (dict(padding="same", pad_values=0.0), True),
        (dict(padding="same", pad_values=1.0), False),
        (dict(padding="valid"), False),
    ]

    @pytest.mark.parametrize("kwargs, noted", PADDING_CASES)
    def test_zero_padding_is_noted(self, kwargs, noted):
        inputs_ = tf.keras.Input((8, 8, 3))
        model = tf.keras.Model(inputs_, lq.layers.QuantConv2D(4, 3, name="c", **kwargs,
                                                              **BINARY)(inputs_))
        problems = deploy.binarization_problems(model)
        assert (problems != []) == noted
        if noted:
            assert "pad_values=1.0" in problems[0][1][0]

    @pytest.mark.parametrize("kwargs, phrase", UNBINARIZABLE)
    def test_problems_from_configuration(self, kwargs, phrase):
        inputs_ = tf.keras.Input((8, 8, 3))
        model = tf.keras.Model(inputs_, lq.layers.QuantConv2D(4, 3, name="c", **kwargs)(inputs_))
        ((name, reasons),) = deploy.binarization_problems(model)
        assert name == "c" and reasons[0].startswith(phrase)

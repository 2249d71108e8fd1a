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

from helpers import BINARY, toy_bnn, trained_like_batchnorm, uniform_inputs

import larq_l1inf
from larq_l1inf import deploy, flatbuffer, variants
from larq_l1inf._keras import tf

def tiny_bnn(regularizer=None, name="tiny_bnn"):
    """Float stem, two binary convs (one 'same' with pad_values=1), float head: 8x8x3 -> 5."""
    return trained_like_batchnorm(toy_bnn(kernel_regularizer=regularizer, name=name))


def inputs(n=6, seed=1):
    return uniform_inputs((n, 8, 8, 3), seed)


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


def diagnosis_model():
    """One binary conv of every variant of `larq_l1inf.variants.VARIANTS`, one of every
    UNBINARIZABLE kind, a good one and a zero-padded one, in parallel on one 8x8 input. Every
    conv has its own number of filters, so the output shape of an `LceBconv2d` names its layer.

    # Returns
    The model and `{filters: layer name}`.
    """
    inputs_ = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.BatchNormalization()(inputs_)
    branches, names = [], {}
    filters = iter(range(3, 100))

    def branch(y, n, name):
        names[n] = name
        branches.append(tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.BatchNormalization()(y)))

    for name in variants.VARIANTS:
        n = next(filters)
        branch(variants.get_variant(name).binary_conv(x, n, 3, name=f"variant_{name}"), n, f"variant_{name}")
    for i, (kwargs, _) in enumerate(UNBINARIZABLE):
        n = next(filters)
        branch(lq.layers.QuantConv2D(n, 3, padding="same", pad_values=1.0, use_bias=False,
                                     name=f"bad_{i}", **kwargs)(x), n, f"bad_{i}")
    for name, pad in (("good", 1.0), ("zero_pad", 0.0)):
        n = next(filters)
        branch(lq.layers.QuantConv2D(n, 3, padding="same", pad_values=pad, name=name, **BINARY)(x),
               n, name)
    model = tf.keras.Model(inputs_, tf.keras.layers.Concatenate()(branches), name="mixed")
    return trained_like_batchnorm(model), names


@pytest.fixture(scope="module")
def diagnosed():
    """The diagnosis model, converted once in-process (no crash seen with these layers)."""
    tf.keras.utils.set_random_seed(0)
    model, names = diagnosis_model()
    return model, names, deploy.convert(model, in_process=True, on_failure="ignore")


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

    def test_bad_on_failure_option(self, converted):
        with pytest.raises(ValueError, match="'warn', 'raise' or 'ignore'"):
            deploy.convert(converted[0], on_failure="yes")

    def test_binarized_keyword_is_deprecated_but_works(self, converted, monkeypatch):
        model, flatbuffer_ = converted
        monkeypatch.setattr(deploy, "_convert_in_process", lambda *args: flatbuffer_)
        with pytest.warns(DeprecationWarning, match="on_failure"):
            assert deploy.convert(model, in_process=True, binarized="raise") == flatbuffer_
        with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="on_failure"):
            deploy.convert(model, in_process=True, binarized="yes")


class TestDeploymentIssues:
    """CycleBNN above 1 bit disagrees between Keras and LCE (rounding ties): refused."""

    def cyclebnn(self):
        x = tf.keras.Input((8, 8, 3))
        y = variants.get_variant("cyclebnn").binary_conv(x, 4, 3, name="cyclic_conv")
        return tf.keras.Model(x, y, name="cyclic")

    def test_training_state_is_refused_before_converting(self):
        model = self.cyclebnn()
        assert [name for name, _ in flatbuffer.deployment_issues(model)] == ["cyclic_conv"] * 2
        with pytest.raises(deploy.ConversionError, match="cyclic_conv.*bits"):
            deploy.convert(model, in_process=True)

    def test_deployed_state_has_no_issue(self):
        model = self.cyclebnn()
        larq_l1inf.callbacks.set_cyclic_bits(model, 0)
        assert flatbuffer.deployment_issues(model) == []


class TestRoundTrip:
    @pytest.mark.parametrize("fmt", ["h5", "tf"])
    def test_save_load_convert(self, converted, tmp_path, fmt):
        model, flatbuffer = converted
        path = str(tmp_path / ("m.h5" if fmt == "h5" else "m"))
        model.save(path, save_format=fmt)
        loaded = tf.keras.models.load_model(path)  # no custom_objects
        assert isinstance(loaded.layers[3].kernel_regularizer, larq_l1inf.L1InfRegularizer)
        reloaded = deploy.convert(loaded, in_process=True, on_failure="raise")
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
        assert (report.binary_convs, report.binarizable, report.lce_bconv2d, report.float_convs) \
            == (2, 2, 2, 1)
        assert report.ok and report.problems == []

    def test_diagnosis_agrees_with_lce_layer_by_layer(self, diagnosed):
        """For every variant (and the other kinds): the layers `diagnose` calls binarizable are
        exactly those LCE made `LceBconv2d` (identified by their unique filter counts)."""
        model, names, flatbuffer_ = diagnosed
        bconv = sorted(names[op.output_shapes[0][-1]] for op in flatbuffer.operators(flatbuffer_)
                       if op.type == "LceBconv2d")
        # An M x N multi-bit conv (variant "mbn") is M x N LceBconv2d, each named by its filters.
        expected = sorted(d.name for d in flatbuffer.diagnose(model) if d.binarizable
                          for _ in range(d.convs))
        assert bconv == expected
        mbn = variants.get_variant("mbn")
        assert bconv.count("variant_mbn") == mbn.weight_bases * mbn.activation_bases > 1
        report = deploy.check_binarized(flatbuffer_, model, on_failure="ignore")
        assert report.binarizable == report.lce_bconv2d == len(bconv)
        reasons = dict(deploy.binarization_problems(model))
        assert "padding='same' with pad_values=0 (note)" in reasons["zero_pad"][0]
        for name in names.values():  # every layer that stays float says why, not as a note
            if name not in bconv and name in reasons:
                assert any("(note)" not in r for r in reasons[name]), (name, reasons[name])

    def test_unbinarizable_layers_are_named_with_the_fix(self, diagnosed, caplog, monkeypatch):
        model, _, flatbuffer_ = diagnosed
        report = deploy.check_binarized(flatbuffer_, model, on_failure="ignore")
        # Asked for binarized deployment, convert() raises (same flatbuffer, not re-converted).
        monkeypatch.setattr(deploy, "_convert_in_process", lambda *args: flatbuffer_)
        # Its CycleBNN conv is at 8 bits, which convert() refuses first (TestDeploymentIssues).
        monkeypatch.setattr(deploy, "deployment_issues", lambda model: [])
        with pytest.raises(deploy.BinarizationError, match="bad_0"):
            deploy.convert(model, in_process=True, on_failure="raise")
        with pytest.raises(deploy.BinarizationError) as info:
            deploy.check_binarized(flatbuffer_, model, on_failure="raise")
        message = str(info.value)
        assert f"{report.lce_bconv2d} of {report.binary_convs} binary convolutions became LceBconv2d" in message
        for i, (_, phrase) in enumerate(UNBINARIZABLE):
            assert re.search(f"bad_{i}: {phrase}", message), message
        assert "good:" not in message and "variant_bnn:" not in message
        assert "ste_sign" in message  # says what to use instead
        with caplog.at_level(logging.WARNING, logger="larq_l1inf.flatbuffer"):
            report = deploy.check_binarized(flatbuffer_, model, on_failure="warn")
        assert report.not_binarized == report.binary_convs - report.lce_bconv2d > 0
        assert "Not binarized" in caplog.text

    def test_irnet_resnet20_is_binarizable(self):
        """The old class-list check called all 18 binary convs of IR-Net float; LCE binarizes
        every one (`TestLceMatrix`), and so does the diagnosis."""
        from larq_l1inf import backbones

        model = backbones.resnet20("irnet", input_shape=(8, 8, 3), width=2)
        diagnoses = flatbuffer.diagnose(model)
        assert len(diagnoses) == 18 and all(d.binarizable and not d.reasons for d in diagnoses)

    def test_1d_dense_and_depthwise_stay_float_with_a_note(self):
        x = inputs_ = tf.keras.Input((8, 3))
        x = lq.layers.QuantConv1D(2, 3, name="c1", **BINARY)(x)
        x = lq.layers.QuantDense(2, name="d", input_quantizer="ste_sign", kernel_quantizer="ste_sign")(x)
        problems = dict(deploy.binarization_problems(tf.keras.Model(inputs_, x)))
        assert "1-D convolution" in problems["c1"][0] and "dense layer" in problems["d"][0]
        assert all("(note)" in r for rs in problems.values() for r in rs)

    def test_multi_bit_layers_count_their_base_pairs(self):
        from larq_l1inf.mbn import MBNConv1D, MBNConv2D, MBNDense

        inputs_ = tf.keras.Input((8, 8, 3))
        x = MBNConv2D(4, 3, weight_bases=3, activation_bases=2, name="m32")(inputs_)
        x = MBNConv2D(4, 3, weight_bases=2, activation_bases=1, pad_values=0.0, name="m21")(x)
        x = MBNDense(2, weight_bases=2, name="md")(tf.keras.layers.GlobalAveragePooling2D()(x))
        seq = tf.keras.Input((8, 3))
        model = tf.keras.Model([inputs_, seq], [x, MBNConv1D(2, 3, name="m1")(seq)])
        found = {d.name: d for d in flatbuffer.diagnose(model)}
        assert {n: (d.binarizable, d.convs) for n, d in found.items()} == {
            "m32": (True, 6), "m21": (True, 2), "md": (False, 0), "m1": (False, 0)}
        assert found["m32"].reasons == [] and "pad_values=1.0" in found["m21"].reasons[0]
        assert "dense layer" in found["md"].reasons[0] and "1-D" in found["m1"].reasons[0]

    def test_model_without_binary_convs(self):
        inputs_ = tf.keras.Input((8, 8, 3))
        x = lq.layers.QuantConv2D(4, 3)(inputs_)  # no quantizers: a float conv
        model = tf.keras.Model(inputs_, x, name="float_only")
        flatbuffer_ = deploy.convert(model, in_process=True, on_failure="ignore")
        assert "LceBconv2d" not in deploy.op_counts(flatbuffer_)
        with pytest.raises(deploy.BinarizationError, match="no binary convolution"):
            deploy.check_binarized(flatbuffer_, model)

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


@pytest.mark.slow
class TestLceMatrix:
    """Every variant on two tiny backbones, really converted: the diagnosis' count of
    binarizable convs equals the LceBconv2d count (about 20 s per conversion)."""

    @pytest.mark.parametrize("backbone", ["vgg_small", "resnet20"])
    @pytest.mark.parametrize("variant", list(variants.VARIANTS))
    def test_count(self, backbone, variant):
        from larq_l1inf import backbones

        model = getattr(backbones, backbone)(variant, input_shape=(16, 16, 3), width=2,
                                             num_classes=3)
        report = deploy.check_binarized(deploy.convert(model, in_process=True, on_failure="ignore"),
                                        model, on_failure="ignore")
        assert report.binarizable == report.lce_bconv2d

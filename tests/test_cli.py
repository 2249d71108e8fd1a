"""The `larq-l1inf` command line: parser and the demo end to end (tiny settings)."""

import json
import math

import pytest

import larq_l1inf
from larq_l1inf import cli

MODEL_KEYS = [
    "keras_clean_acc",
    "keras_noisy_acc",
    "tflite_clean_acc",
    "tflite_noisy_acc",
    "model_size_bytes",
    "lce_bconv2d",
    "binary_convs",
    "float_convs",
    "op_counts",
    "noisy_agreement",
    "final_train_loss",
    "penalty",
]


def finite_numbers(value):
    if isinstance(value, dict):
        return all(finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_numbers(v) for v in value)
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return True


class TestDemo:
    def test_fast_demo_end_to_end(self, tmp_path, capsys, monkeypatch):
        # The command quiets TensorFlow's loggers process-wide; not inside the test session.
        monkeypatch.setattr(cli, "_quiet_tensorflow", lambda: None)
        out = tmp_path / "results" / "demo.json"
        code = cli.main(["demo", "--fast", "--out", str(out), "--convert-in-process",
                         "--save-dir", str(tmp_path / "tflite")])
        assert code == 0
        printed = capsys.readouterr().out
        header = next(line for line in printed.splitlines() if line.startswith("model "))
        for column in ("Keras clean", "Keras noisy", "TFLite clean", "TFLite noisy",
                       "size (KiB)", "LceBconv2d"):
            assert column in header
        assert any(line.startswith("baseline ") and "4/4" in line for line in printed.splitlines())
        assert any(line.startswith("l1inf ") and "4/4" in line for line in printed.splitlines())

        result = json.loads(out.read_text())
        assert finite_numbers(result)
        assert set(result["models"]) == {"baseline", "l1inf"}
        assert result["config"]["noise_range"] == list(cli.DEMO_NOISE_RANGE)
        assert result["config"]["penalty"] == larq_l1inf.L1InfRegularizer().get_config()
        for name, model in result["models"].items():
            assert set(MODEL_KEYS) <= set(model), name
            for key in ("keras_clean_acc", "keras_noisy_acc", "tflite_clean_acc",
                        "tflite_noisy_acc"):
                assert 0.0 <= model[key] <= 1.0
            assert model["lce_bconv2d"] == model["binary_convs"] == 4
            assert model["op_counts"]["LceBconv2d"] == 4
            assert model["noisy_agreement"]["n"] == result["config"]["n_test"]
            assert (tmp_path / "tflite" / f"{name}.tflite").stat().st_size == \
                model["model_size_bytes"]
        assert result["models"]["baseline"]["penalty"] == 0.0
        assert result["models"]["l1inf"]["penalty"] != 0.0


class TestParser:
    def test_demo_defaults(self):
        args = cli.build_parser().parse_args(["demo"])
        assert args.noise_range == list(cli.DEMO_NOISE_RANGE)
        assert (args.epochs, args.out) == (15, "results/demo.json")
        assert args.func is cli.run_demo
        assert cli._penalty_options(args) == {}  # L1InfRegularizer's own defaults

    def test_penalty_flags(self):
        args = cli.build_parser().parse_args(
            ["demo", "--delta", "0.05", "--reduction", "log", "--normalize", "off"])
        assert cli._penalty_options(args) == {"delta": 0.05, "reduction": "log",
                                              "normalize": False}

    def test_command_is_required(self, capsys):
        with pytest.raises(SystemExit) as info:
            cli.main([])
        assert info.value.code == 2

    def test_bad_noise_range(self):
        with pytest.raises(SystemExit, match="lo <= hi"):
            cli.main(["demo", "--noise-range", "0.3", "0.1", "--out", ""])

    def test_evaluation_commands_are_registered(self):
        from larq_l1inf import evaluation

        parser = cli.build_parser()
        assert parser.parse_args(["evaluate", "m.h5", "--convert"]).func is evaluation.run_evaluate
        assert parser.parse_args(["sweep", "a=m.tflite"]).func is evaluation.run_sweep

    def test_commands_are_pluggable(self, monkeypatch):
        def register_hello(subparsers):
            parser = subparsers.add_parser("hello")
            parser.set_defaults(func=lambda args: 7)

        monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, register_hello])
        assert cli.main(["hello"]) == 7

    def test_nan_results_are_refused(self):
        with pytest.raises(FloatingPointError, match="models.l1inf.keras_clean_acc"):
            cli._check_all_finite({"models": {"l1inf": {"keras_clean_acc": float("nan")}}})

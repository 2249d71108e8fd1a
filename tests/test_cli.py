"""The `larq-l1inf` command line: parser, errors, evaluate/sweep and the demo end to end
(tiny settings); the one JSON writer."""

import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import toy_bnn, trained_like_batchnorm

import larq_l1inf
from larq_l1inf import cli, evaluation
from larq_l1inf.utils import renamed_arguments, to_json_value, write_json

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
        assert list(args.epsilon) == list(cli.DEMO_NOISE_RANGE)
        assert (args.epochs, args.out) == (15, "results/demo.json")
        assert args.func is cli.run_demo
        assert cli._penalty_options(args) == {}  # L1InfRegularizer's own defaults

    def test_penalty_flags(self):
        args = cli.build_parser().parse_args(
            ["demo", "--delta", "0.05", "--reduction", "log", "--normalize", "off"])
        assert cli._penalty_options(args) == {"delta": 0.05, "reduction": "log",
                                              "normalize": False}

    def test_command_is_required(self, capsys):
        assert cli.main([]) == 2
        assert capsys.readouterr().err.count("\n") == 1

    def test_bad_noise_range(self, capsys):
        assert cli.main(["demo", "--epsilon", "0.3", "0.1", "--out", ""]) == 2
        assert "LO <= HI" in capsys.readouterr().err.strip().splitlines()[-1]

    def test_negative_epochs_is_one_line_exit_2(self, capsys):
        assert cli.main(["demo", "--epochs", "-1"]) == 2
        assert capsys.readouterr().err.count("\n") == 1

    def test_evaluation_commands_are_registered(self, tmp_path):
        path = tmp_path / "m.h5"
        path.write_bytes(b"")
        parser = cli.build_parser()
        args = parser.parse_args(["evaluate", str(path), "--convert", "--epsilon", "0.1", "0.2"])
        assert args.func is cli.run_evaluate and args.epsilon == [0.1, 0.2]
        args = parser.parse_args(["sweep", f"a={path}", "--epsilons", "0", "0.1"])
        assert args.func is cli.run_sweep
        assert args.model == [("a", str(path))] and args.epsilons == [0.0, 0.1]

    def test_commands_are_pluggable(self, monkeypatch):
        def register_hello(subparsers):
            parser = subparsers.add_parser("hello")
            parser.set_defaults(func=lambda args: 7)

        monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, register_hello])
        assert cli.main(["hello"]) == 7

    def test_nan_results_are_refused(self):
        with pytest.raises(FloatingPointError, match="models.l1inf.keras_clean_acc"):
            cli._check_all_finite({"models": {"l1inf": {"keras_clean_acc": float("nan")}}})


# --------------------------------------------------------------------------- errors


def one_line(text):
    return text.count("\n") == 1 and "Traceback" not in text


class TestErrors:
    """A command-line error is one line naming the argument, exit status 2, for every
    command; other failures are one line with status 1; tracebacks only with -v."""

    @pytest.mark.parametrize("command", sorted(cli.build_parser().choices))
    def test_every_command_bad_option_is_one_line(self, command, capsys):
        assert cli.main([command, "--no-such-option"]) == 2
        err = capsys.readouterr().err
        assert one_line(err), err
        assert err.startswith(f"larq-l1inf {command}: error:")
        assert "--no-such-option" in err or "are required:" in err  # whichever comes first
        assert f"larq-l1inf {command} --help" in err

    @pytest.mark.parametrize("argv,match", [
        (["evaluate", "missing.h5"], "argument MODEL: no such file or folder: 'missing.h5'"),
        (["sweep", "a=missing.tflite"], "argument MODEL: no such file or folder"),
        (["sweep", "README.md", "--draws", "0"], "argument --draws: must be >= 1, got 0"),
        (["evaluate", "README.md", "--pgd-epsilon", "x"], "argument --pgd-epsilon: expected a "
                                                         "number >= 0, got 'x'"),
        (["sweep", "README.md", "--lo-fraction", "2"], "argument --lo-fraction: must be <= 1"),
    ])
    def test_bad_arguments(self, argv, match, capsys):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert one_line(err) and match in err, err

    def test_command_error_and_other_exceptions(self, monkeypatch, capsys):
        def register_fail(subparsers):
            parser = subparsers.add_parser("fail")
            parser.add_argument("--kind", default="command")

            def run(args):
                if args.kind == "command":
                    raise cli.CommandError("argument --kind: use another kind")
                raise ValueError("Something the library refuses,\nwith a second line.")

            parser.set_defaults(func=run)

        monkeypatch.setattr(cli, "_quiet_tensorflow", lambda: None)
        monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, register_fail])
        assert cli.main(["fail"]) == 2
        err = capsys.readouterr().err
        assert one_line(err)
        assert err == ("larq-l1inf fail: error: argument --kind: use another kind "
                       "(see 'larq-l1inf fail --help')\n")
        assert cli.main(["fail", "--kind", "library"]) == 1
        err = capsys.readouterr().err
        assert one_line(err) and "ValueError: Something the library refuses, with a second " \
            "line. (run with -v for the traceback)" in err
        for argv in (["-v", "fail", "--kind", "library"], ["fail", "--kind", "library", "-v"]):
            assert cli.main(argv) == 1
            err = capsys.readouterr().err
            assert "Traceback" in err and err.strip().endswith("(run with -v for the traceback)")

    def test_evaluate_epsilon_checks(self, capsys):
        assert cli.main(["-q", "evaluate", "README.md", "--epsilon", "1", "2", "3"]) == 2
        assert "argument --epsilon: give one value or LO HI, got 3" in capsys.readouterr().err
        assert cli.main(["-q", "evaluate", "README.md", "--epsilon", "0.3", "0.1"]) == 2
        assert "needs LO <= HI" in capsys.readouterr().err

    def test_verbose_and_quiet_exclusive(self, capsys):
        assert cli.main(["-v", "-q", "sweep", "README.md"]) == 2
        assert one_line(capsys.readouterr().err)

    @pytest.mark.parametrize("helper,good,bad", [
        (cli.positive_int, [("3", 3)], ["0", "-1", "1.5", "x"]),
        (cli.non_negative_int, [("0", 0)], ["-1"]),
        (cli.positive_float, [("0.5", 0.5)], ["0", "nan", "inf"]),
        (cli.non_negative_float, [("0", 0.0)], ["-0.1"]),
        (cli.probability, [("0", 0.0), ("1", 1.0)], ["1.01", "-0.5"]),
    ])
    def test_type_helpers(self, helper, good, bad):
        for text, value in good:
            assert helper(text) == value
        for text in bad:
            with pytest.raises(argparse.ArgumentTypeError):
                helper(text)

    def test_help_has_no_tensorflow_start_up_messages(self):
        """`larq-l1inf --help` through the console script, in a fresh process."""
        script = os.path.join(os.path.dirname(sys.executable), "larq-l1inf")
        command = [script] if os.path.exists(script) else [
            sys.executable, "-c", "import sys; sys.argv[0] = 'larq-l1inf'; "
            "from larq_l1inf.cli import main; sys.exit(main())"]
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(cli.__file__)),
                                             env.get("PYTHONPATH", "")])
        done = subprocess.run(command + ["--help"], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0 and "usage: larq-l1inf" in done.stdout
        for word in ("cuFFT", "cuDNN", "cuBLAS", "TensorRT", "oneDNN", "cpu_feature_guard"):
            assert word not in done.stderr, done.stderr


# --------------------------------------------------------------------------- evaluate, sweep


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A tiny BNN for 8x8x1 digits saved as h5, under two names (evaluate and sweep need
    no training)."""
    folder = tmp_path_factory.mktemp("models")
    model = trained_like_batchnorm(toy_bnn(input_shape=(8, 8, 1), num_classes=10, width=4))
    model.save(str(folder / "a.h5"))
    os.symlink(folder / "a.h5", folder / "b.h5")
    return str(folder / "a.h5"), str(folder / "b.h5")


DATA = ["--size", "8", "--channels", "1", "--limit", "40", "--draws", "1"]


class TestEvaluateAndSweepCommands:
    def test_evaluate_writes_json(self, saved_models, tmp_path, capsys, monkeypatch):
        monkeypatch.setattr(cli, "_quiet_tensorflow", lambda: None)
        code = cli.main(["-q", "evaluate", saved_models[0], "--epsilon", "0.1", "0.2",
                         "--pgd-epsilon", "0.05", "--pgd-step-size", "0.02",
                         "--pgd-iterations", "0", "--out", str(tmp_path), *DATA])
        assert code == 0
        assert "keras" in capsys.readouterr().out
        result = json.loads((tmp_path / "evaluate.json").read_text())
        assert result["command"] == "evaluate" and result["n"] == 40
        assert result["config"]["epsilon"] == [0.1, 0.2]
        assert result["config"]["pgd_step_size"] == 0.02
        assert result["args"]["pgd_iterations"] == 0
        assert result["models"]["keras"]["pgd"] is not None

    def test_sweep_writes_csv_png_json_and_old_levels(self, saved_models, tmp_path, capsys,
                                                      monkeypatch):
        monkeypatch.setattr(cli, "_quiet_tensorflow", lambda: None)
        a, b = saved_models
        assert cli.main(["-q", "sweep", f"first={a}", b, "--epsilons", "0", "0.2",
                         "--out", str(tmp_path), *DATA]) == 0
        rows = evaluation.read_csv(str(tmp_path / "sweep.csv"))
        assert [(r["model"], r["epsilon_lo"], r["epsilon_hi"]) for r in rows] == [
            ("first", 0.0, 0.0), ("first", 0.1, 0.2), ("b", 0.0, 0.0), ("b", 0.1, 0.2)]
        assert (tmp_path / "sweep.png").stat().st_size > 1000
        written = json.loads((tmp_path / "sweep.json").read_text())
        assert written["rows"] == rows
        # the option of version 0.1.0 still works, with a DeprecationWarning
        with pytest.warns(DeprecationWarning, match="--levels is deprecated"):
            assert cli.main(["-q", "sweep", a, "--levels", "0.2", "--out", str(tmp_path / "old"),
                             *DATA]) == 0
        rows = evaluation.read_csv(str(tmp_path / "old" / "sweep.csv"))
        assert [(r["epsilon_lo"], r["epsilon_hi"]) for r in rows] == [(0.1, 0.2)]


# --------------------------------------------------------------------------- JSON writer


class TestWriteJSON:
    def test_round_trip_numpy_and_folders(self, tmp_path):
        data = {"a": np.float32(0.5), "b": np.arange(3), "c": (1, None, "x"), "d": np.bool_(True)}
        path = write_json(data, str(tmp_path / "new" / "r.json"))
        assert json.loads(open(path).read()) == {"a": 0.5, "b": [0, 1, 2], "c": [1, None, "x"],
                                                 "d": True}

    def test_non_finite_refused_with_its_place(self, tmp_path):
        with pytest.raises(ValueError, match=r"data.models.l1inf\[1\] is nan"):
            write_json({"models": {"l1inf": [0.1, float("nan")]}}, str(tmp_path / "r.json"))
        assert not (tmp_path / "r.json").exists()
        with pytest.raises(TypeError, match="data.x has type object"):
            to_json_value({"x": object()})

    def test_renamed_arguments(self):
        with pytest.warns(DeprecationWarning, match="f\\(\\): `old` is deprecated.*use `new`"):
            assert renamed_arguments({"old": 1}, {"old": "new"}, "f") == {"new": 1}
        with pytest.raises(TypeError, match="unexpected keyword argument 'typo'"):
            renamed_arguments({"typo": 1}, {"old": "new"}, "f")

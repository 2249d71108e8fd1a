"""`larq-l1inf train`, `train --resume`, `convert`, `plot` end to end, and their bad inputs."""

import json
import os

import pytest
import yaml

from larq_l1inf import cli, training

# 8x8 grey digits, width 4, one epoch of 6 batches: seconds, not minutes.
TINY = ["--backbone", "demo", "--width", "4", "--dataset", "digits", "--data-option", "size=8",
        "--data-option", "channels=1", "--epochs", "1", "--batch-size", "256", "--draws", "2",
        "--test-size", "60"]


@pytest.fixture(autouse=True)
def _keep_tensorflow_logs(monkeypatch):
    # The command quiets TensorFlow's loggers process-wide; not inside the test session.
    monkeypatch.setattr(cli, "_quiet_tensorflow", lambda: None, raising=False)


def exit_code_and_error(argv, capsys):
    code = cli.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    code = cli.main(["train", *TINY, "--regularizer", "l1inf", "--out", str(out),
                     "--convert-in-process"])
    assert code == 0
    return out


class TestTrain:
    def test_run_directory_holds_everything(self, run_dir):
        names = set(os.listdir(run_dir))
        assert {"config.yaml", "status.json", "checkpoints", "backup", "logs", "history.csv",
                "model", "model.tflite", "evaluation.json", "training_curves.png",
                "weight_histograms.png", "feature_maps.png"} <= names
        assert not [n for n in names if n.startswith(".tmp")]  # nothing half-written
        assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert (config["backbone"], config["regularizer"], config["epochs"]) == ("demo", "l1inf", 1)
        assert config["data_options"] == {"size": 8, "channels": 1, "test_size": 60}
        history = (run_dir / "history.csv").read_text().splitlines()
        assert "l1inf_penalty" in history[0] and len(history) == 2
        assert any(name.startswith("events") for name in os.listdir(run_dir / "logs" / "train"))

    def test_evaluation_covers_keras_and_flatbuffer_on_identical_inputs(self, run_dir):
        evaluation = json.loads((run_dir / "evaluation.json").read_text())
        assert set(evaluation["models"]) == {"keras", "tflite"}
        assert evaluation["n"] == 60
        for result in evaluation["models"].values():
            assert 0 <= result["clean"] <= 1 and len(result["noisy"]) == 2
        assert evaluation["config"]["draws"] == 2
        assert evaluation["flatbuffer"]["op_counts"]["LceBconv2d"] == 4
        assert evaluation["flatbuffer"]["bytes"] == (run_dir / "model.tflite").stat().st_size
        assert evaluation["disagreement"]["clean"] <= 2

    def test_resume_of_a_finished_run_trains_nothing_more(self, run_dir, capsys):
        code = cli.main(["train", "--resume", str(run_dir), "--convert-in-process"])
        assert code == 0
        assert len((run_dir / "history.csv").read_text().splitlines()) == 2
        assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"

    def test_resume_with_another_config_is_a_clear_error(self, run_dir, capsys):
        code, error = exit_code_and_error(
            ["train", "--resume", str(run_dir), "--epochs", "3"], capsys)
        assert code == 2
        assert "epochs: run has 1, given 3" in error and "another --out" in error

    def test_existing_run_directory_is_not_overwritten(self, run_dir, capsys):
        code, error = exit_code_and_error(["train", *TINY, "--out", str(run_dir)], capsys)
        assert code == 2 and f"--resume {run_dir}" in error

    def test_convert_prints_ops_binarization_and_parity(self, run_dir, tmp_path, capsys):
        report = tmp_path / "convert.json"
        code = cli.main(["convert", str(run_dir), "--in-process", "--out",
                         str(tmp_path / "m.tflite"), "--json", str(report), "--samples", "4"])
        assert code == 0
        printed = capsys.readouterr().out
        assert "LceBconv2d 4" in printed and "4 of 4 binary convolutions" in printed
        result = json.loads(report.read_text())
        assert result["parity"]["n"] == 4 and result["parity"]["max_abs_diff"] < 1e-4
        assert (tmp_path / "m.tflite").stat().st_size == result["bytes"]

    def test_plot_writes_the_run_figures(self, run_dir, capsys):
        figures = ["training_curves.png", "weight_histograms.png", "feature_maps.png"]
        for name in figures:  # train wrote them; plot must write them again
            assert (run_dir / name).stat().st_size > 0
            (run_dir / name).unlink()
        assert cli.main(["plot", str(run_dir)]) == 0
        for name in figures:
            assert (run_dir / name).stat().st_size > 0

    def test_plot_of_a_directory_without_a_run(self, tmp_path, capsys):
        code, error = exit_code_and_error(["plot", str(tmp_path)], capsys)
        assert code == 2 and "not a run directory" in error


class TestBadInputs:
    @pytest.mark.parametrize("flag, value, listed", [
        ("--variant", "binaryconnect", "irnet"),
        ("--backbone", "resnet50", "resnet20"),
        ("--dataset", "imagenet21k", "fashion_mnist"),
        ("--regularizer", "l3", "spectral"),
    ])
    def test_unknown_names(self, tmp_path, capsys, flag, value, listed):
        code, error = exit_code_and_error(
            ["train", flag, value, "--out", str(tmp_path / "r")], capsys)
        assert code == 2 and value in error and listed in error
        assert not (tmp_path / "r").exists()

    def test_missing_dataset_files_say_how_to_get_them(self, tmp_path, capsys):
        code, error = exit_code_and_error(
            ["train", "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "none"),
             "--out", str(tmp_path / "r")], capsys)
        assert code == 2 and "train-images-idx3-ubyte" in error
        assert not (tmp_path / "r").exists()

    def test_resume_of_a_directory_without_a_run(self, tmp_path, capsys):
        code, error = exit_code_and_error(["train", "--resume", str(tmp_path)], capsys)
        assert code == 2 and "not a run directory" in error

    def test_bad_key_value_option(self, capsys):
        code, error = exit_code_and_error(["train", "--data-option", "size"], capsys)
        assert code == 2 and "KEY=VALUE" in error

    def test_config_file_and_flags(self, tmp_path, capsys):
        path = tmp_path / "c.json"
        path.write_text(json.dumps({"backbone": "demo", "epochs": 7, "regularizer": "l1inf"}))
        args = cli.build_parser().parse_args(["train", "--config", str(path), "--epochs", "2"])
        settings = cli._train_settings(args)
        assert (settings["backbone"], settings["epochs"]) == ("demo", 2)  # the flag wins
        path.write_text(json.dumps({"epoch": 7}))
        code, error = exit_code_and_error(["train", "--config", str(path)], capsys)
        assert code == 2 and "Unknown setting" in error


class TestDemoArguments:
    @pytest.mark.parametrize("argv, word", [
        (["--epochs", "-1"], "--epochs"),
        (["--size", "10"], "--size"),
        (["--epsilon", "0.3", "0.1"], "--epsilon"),
        (["--batch-size", "0"], "--batch-size"),
    ])
    def test_one_line_errors(self, capsys, argv, word):
        code, error = exit_code_and_error(["demo", *argv, "--out", ""], capsys)
        assert code == 2 and word in error

    def test_noise_range_is_deprecated_for_epsilon(self):
        with pytest.warns(DeprecationWarning, match="--noise-range is deprecated.*--epsilon"):
            args = cli.build_parser().parse_args(["demo", "--noise-range", "0.1", "0.2"])
        assert args.epsilon == [0.1, 0.2]


def test_train_command_is_registered():
    parser = cli.build_parser()
    for command in ("train", "convert", "plot"):
        assert parser.parse_args([command, "x"] if command != "train" else [command]).func \
            is getattr(cli, f"run_{command}")
    assert training.TrainConfig().lr == 0.1 and training.TrainConfig().momentum == 0.9


def test_default_run_directory_names_gm_training():
    """A GM run and a plain run of the same settings get different default directories."""
    plain = training.TrainConfig()
    gm = training.TrainConfig(robust="ibp", robust_epsilon=0.1)
    assert cli._default_out_dir(plain) != cli._default_out_dir(gm)
    assert cli._default_out_dir(gm).endswith("-gm-ibp-seed0")


class TestGMRobustTraining:
    def test_gm_flags_train_the_inner_model(self, tmp_path):
        from larq_l1inf._keras import tf
        from larq_l1inf.robust import GMRobustModel

        out = tmp_path / "gm"
        # One run for two features: GM training, and the recipe on the MBN variant (penalty
        # logged per MBN layer; feature maps skipped, as plots finds no larq binary conv).
        code = cli.main(["train", *TINY, "--variant", "mbn", "--variant-option", "weight_bases=2",
                         "--regularizer", "l1inf", "--robust", "noise",
                         "--robust-epsilon", "0.05", "0.1", "--gm-n", "2", "--gm-weights", "1/i",
                         "--gm-kappa", "0.7", "--gm-rampup-epochs", "1", "--no-convert",
                         "--out", str(out)])
        assert code == 0
        config = yaml.safe_load((out / "config.yaml").read_text())
        assert (config["robust"], config["robust_epsilon"], config["gm_n"], config["gm_weights"],
                config["gm_kappa"], config["gm_rampup_epochs"]) == ("noise", [0.05, 0.1], 2, "1/i",
                                                                    0.7, 1)
        header = (out / "history.csv").read_text().splitlines()[0].split(",")
        assert {"robust_loss", "clean_loss", "kappa", "l1inf_penalty",
                "l1inf_term/mbn_conv2d"} <= set(header)
        assert config["variant_options"] == {"weight_bases": 2}
        loaded = tf.keras.models.load_model(str(out / "model"))
        assert not isinstance(loaded, GMRobustModel) and loaded.output_shape[-1] == 10

    def test_crown_ibp_run_ramps_beta(self, tmp_path):
        out = tmp_path / "crown"
        code = cli.main(["train", *TINY, "--robust", "crown-ibp", "--robust-epsilon", "0.02",
                         "--gm-n", "1", "--gm-final-beta", "0.5", "--gm-rampup-epochs", "1",
                         "--no-convert", "--out", str(out)])
        assert code == 0
        config = yaml.safe_load((out / "config.yaml").read_text())
        assert (config["robust"], config["gm_final_beta"]) == ("crown-ibp", 0.5)
        lines = (out / "history.csv").read_text().splitlines()
        row = dict(zip(lines[0].split(","), lines[1].split(",")))
        # beta_t = 1 - (1 - 0.5) eps_t / eps over the one-epoch ramp; fit logs epoch means.
        ramp = float(row["epsilon"]) / 0.02
        assert 0 < ramp < 1 and float(row["beta"]) == pytest.approx(1 - 0.5 * ramp, rel=1e-5)

    def test_steps_come_from_epochs(self):
        config = training.TrainConfig(robust="pgd", robust_epsilon=[0.1], gm_warmup_epochs=2,
                                      gm_rampup_epochs=3, gm_n=4, epochs=5).validate()
        from larq_l1inf._keras import tf

        inner = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
        gm = training.gm_model(inner, config, steps_per_epoch=7)
        assert (gm.warmup_steps, gm.rampup_steps, gm.robust, gm.model is inner) == (14, 21, "pgd", True)
        config = training.TrainConfig(robust="crown-ibp", robust_epsilon=[0.1],
                                      gm_final_beta=0.25).validate()
        gm = training.gm_model(inner, config, steps_per_epoch=7)
        assert (gm.robust, gm.final_beta) == ("crown-ibp", 0.25)

    @pytest.mark.parametrize("flags, phrase", [
        (["--gm-n", "3"], "--robust"),
        (["--robust", "ibp"], "--robust-epsilon"),
        (["--robust", "ibp", "--robust-epsilon", "0.1", "0.2"], "noise only"),
        (["--robust", "noise", "--robust-epsilon", "0.1", "--gm-kappa", "1.5"], "gm_kappa"),
        (["--gm-final-beta", "0.5"], "--robust"),
        (["--robust", "crown-ibp", "--robust-epsilon", "0.1", "--gm-final-beta", "1.5"],
         "gm_final_beta"),
        (["--robust", "ibp", "--robust-epsilon", "0.1", "--gm-final-beta", "0.5"], "crown-ibp"),
    ])
    def test_bad_gm_settings(self, tmp_path, capsys, flags, phrase):
        code, error = exit_code_and_error(["train", *flags, "--out", str(tmp_path / "r")], capsys)
        assert code == 2 and phrase in error, error
        assert not (tmp_path / "r").exists()

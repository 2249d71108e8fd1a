"""The training recipe (`larq_l1inf.training`): resume, batch order, distribution, configs."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import subprocess_env

import larq_l1inf
from larq_l1inf import training, utils
from larq_l1inf._keras import tf
from larq_l1inf.data import load_digits


@pytest.fixture(scope="module")
def tiny_data():
    """256 training and 64 test digits, 8x8x1: a few batches per epoch."""
    (x, y), (xt, yt) = load_digits(size=8, channels=1, seed=0)
    return training.ArrayData((x[:256], y[:256]), (xt[:64], yt[:64]), name="digits",
                              epsilon=(0.03, 0.06), num_classes=10)


def tiny_config(**changes):
    values = dict(backbone="demo", width=4, dataset="digits", batch_size=64, epochs=2, seed=3)
    values.update(changes)
    return training.TrainConfig(**values)


class KillAt(tf.keras.callbacks.Callback):
    """Stands in for a kill: raises in the middle of training, after some optimizer steps."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise KeyboardInterrupt("killed by the test")


#: Runs a resume must reproduce exactly, each with its own piece of restored state.
RESUMED_RUNS = {
    # IR-Net (EDE schedule per epoch), a product penalty (attached model loss) and noise
    # augmentation (a seeded generator).
    "irnet": dict(variant="irnet", regularizer="l1inf", reduction="product",
                  noise_augment=["environmental", 0.01, 0.02]),
    # CycleBNN: the per-step bit schedule and GradientQuantizer's stochastic-rounding noise.
    "cyclebnn": dict(variant="cyclebnn", regularizer="l1inf"),
}


#: A fresh process resumes the run in argv[2] with the config argv[1]; weights to argv[3].
RESUME = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from larq_l1inf import training

    config = training.TrainConfig.from_dict(json.loads(sys.argv[1]))
    model, history = training.fit(config, out_dir=sys.argv[2], verbose=0)
    assert history.epoch == [config.epochs - 1], history.epoch
    np.savez(sys.argv[3], **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    """
)


class TestResume:
    @pytest.mark.parametrize("run", list(RESUMED_RUNS))
    def test_resumed_run_ends_with_the_uninterrupted_weights(self, tmp_path, tiny_data, run):
        config = tiny_config(**RESUMED_RUNS[run])
        steps = 4  # 256 / 64
        full, _ = training.fit(config, tiny_data, out_dir=str(tmp_path / "full"), verbose=0)
        full_weights = full.get_weights()

        tf.keras.backend.clear_session()  # a fresh process would have fresh layer names too
        with pytest.raises(KeyboardInterrupt):
            training.fit(config, tiny_data, out_dir=str(tmp_path / "cut"), verbose=0,
                         callbacks=[KillAt(steps + 2)])  # inside the second epoch
        assert training._backup_epoch(str(tmp_path / "cut" / "backup")) == 1
        tf.keras.backend.clear_session()
        resumed, history = training.fit(config, tiny_data, out_dir=str(tmp_path / "cut"),
                                        verbose=0)
        assert history.epoch == [1]  # only the missing epoch ran
        assert len(resumed.get_weights()) == len(full_weights)
        for a, b in zip(resumed.get_weights(), full_weights):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        rows = (tmp_path / "cut" / "history.csv").read_text().splitlines()
        assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]  # no repeated epoch
        assert sorted(p for p in os.listdir(tmp_path / "cut" / "checkpoints")
                      if p.endswith(".index")) == ["epoch_001.index", "epoch_002.index"]

    def test_resume_in_a_new_process_ends_with_the_uninterrupted_weights(self, tmp_path):
        # A loaded dataset reshuffles on every iteration of its pipeline; with one epoch left
        # Keras used to iterate the resumed epoch's dataset twice and train on its second order.
        config = tiny_config(data_options={"size": 8, "channels": 1, "train_size": 128,
                                           "test_size": 16}, batch_size=32)
        data = training.load_data(config)
        steps = 4  # 128 / 32
        full, _ = training.fit(config, data, verbose=0)
        tf.keras.backend.clear_session()
        with pytest.raises(KeyboardInterrupt):
            training.fit(config, data, out_dir=str(tmp_path / "cut"), verbose=0,
                         callbacks=[KillAt(steps + 2)])  # inside the last epoch
        assert training._backup_epoch(str(tmp_path / "cut" / "backup")) == 1
        done = subprocess.run([sys.executable, "-c", RESUME, json.dumps(config.to_dict()),
                               str(tmp_path / "cut"), str(tmp_path / "resumed.npz")],
                              capture_output=True, text=True, env=subprocess_env(), timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        resumed = np.load(tmp_path / "resumed.npz")
        assert len(resumed.files) == len(full.get_weights())
        for i, w in enumerate(full.get_weights()):
            np.testing.assert_array_equal(resumed[f"w{i}"], w)

    def test_step_schedules_continue_at_the_restored_step(self):
        # CycleBNN's schedule counts steps in Python; after a restore it must not restart at 0.
        from larq_l1inf.variants import CyclicPrecisionSchedule

        model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(2)])
        model.compile(tf.keras.optimizers.SGD(0.1), "mse")
        model.optimizer.iterations.assign(7)
        schedule = CyclicPrecisionSchedule(total_steps=20)
        sync = training.ResumeSchedules([schedule])
        sync.set_model(model)
        sync.on_epoch_begin(1)
        assert schedule.step == 7

    def test_each_epoch_order_depends_only_on_seed_and_epoch(self, tiny_data):
        config = tiny_config(epochs=3)
        labels = lambda ds: np.concatenate([y.numpy() for _, y in ds])  # noqa: E731
        whole, steps = training.train_dataset(tiny_data, config, initial_epoch=0)
        tail, _ = training.train_dataset(tiny_data, config, initial_epoch=1)
        whole, tail = labels(whole), labels(tail)
        n = tiny_data.splits["train"]
        assert len(whole) == 3 * n and steps == 4
        np.testing.assert_array_equal(whole[n:], tail)
        assert not np.array_equal(whole[:n], whole[n:2 * n])  # reshuffled every epoch
        np.testing.assert_array_equal(np.sort(whole[:n]), np.sort(tiny_data.arrays("train")[1]))


DISTRIBUTED = textwrap.dedent(
    """
    import json, sys
    import larq_l1inf
    from larq_l1inf._keras import tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import larq as lq
    import numpy as np
    from larq_l1inf import training

    BINARY = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                  kernel_constraint="weight_clip", use_bias=False, padding="same",
                  pad_values=1.0)

    def build(config, data):
        # No batch norm: its batch statistics are per replica, which is not the penalty's business.
        reg = training.make_regularizer(config)
        inputs = tf.keras.Input(data.input_shape)
        x = tf.keras.layers.Conv2D(4, 3, padding="same")(inputs)
        x = lq.layers.QuantConv2D(4, 3, kernel_regularizer=reg, **BINARY)(x)
        x = lq.layers.QuantConv2D(8, 3, strides=2, kernel_regularizer=reg, **BINARY)(x)
        x = tf.keras.layers.GlobalAveragePooling2D()(x)
        model = tf.keras.Model(inputs, tf.keras.layers.Dense(10, activation="softmax")(x))
        return model, model

    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (64, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 64)
    data = training.ArrayData((x, y), (x[:8], y[:8]), epsilon=(0.03, 0.06), num_classes=10)
    out = {"replicas": len(tf.config.list_logical_devices("CPU"))}
    for reduction in ("product", "sum"):
        runs = {}
        for distribute in ("none", "mirrored"):
            config = training.TrainConfig(regularizer="l1inf", reduction=reduction, delta=0.05,
                                          epochs=2, batch_size=16, seed=1, lr=0.05,
                                          distribute=distribute)
            model, history = training.fit(config, data, verbose=0, build=build)
            runs[distribute] = (history.history, model.get_weights())
        (h1, w1), (h2, w2) = runs["none"], runs["mirrored"]
        out[reduction] = {
            "loss": [h1["loss"], h2["loss"]],
            "penalty": [h1["l1inf_penalty"], h2["l1inf_penalty"]],
            "max_weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2)),
        }
    print("RESULT" + json.dumps(out))
    """
)


def test_mirrored_strategy_gives_the_single_device_loss_and_penalty():
    done = subprocess.run([sys.executable, "-c", DISTRIBUTED], capture_output=True, text=True,
                          env=subprocess_env(), timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, done.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT"):])
    assert result["replicas"] == 2
    for reduction in ("product", "sum"):
        r = result[reduction]
        single, mirrored = r["loss"]
        np.testing.assert_allclose(mirrored, single, rtol=1e-4)
        np.testing.assert_allclose(r["penalty"][1], r["penalty"][0], rtol=1e-4)
        assert r["penalty"][0][0] > 0
        assert r["max_weight_diff"] < 1e-4, reduction


class TestConfig:
    @pytest.mark.parametrize("key, value, listed", [
        ("variant", "binaryconnect", "irnet"),
        ("backbone", "resnet50", "resnet20"),
        ("dataset", "no_such_data", "digits"),
        ("regularizer", "l3", "l1inf"),
    ])
    def test_unknown_names_list_the_known_ones(self, key, value, listed):
        with pytest.raises(ValueError, match=f"Unknown {key}.*{value}.*{listed}"):
            tiny_config(**{key: value}).validate()

    @pytest.mark.parametrize("changes, match", [
        (dict(epochs=0), "epochs"),
        (dict(batch_size=-1), "batch_size"),
        (dict(lr=0.0), "lr"),
        (dict(delta=0.1), "--regularizer l1inf"),
        (dict(regularizer="l1inf", noise_augment=["environmental", 0.2, 0.1]), "LO <= HI"),
    ])
    def test_bad_settings_say_what_to_do(self, changes, match):
        with pytest.raises(ValueError, match=match):
            tiny_config(**changes).validate()

    def test_unknown_key_is_refused(self):
        with pytest.raises(ValueError, match="epoch.*settings are"):
            training.TrainConfig.from_dict({"epoch": 3})

    @pytest.mark.parametrize("name", ["config.yaml", "config.json"])
    def test_round_trip(self, tmp_path, name):
        config = tiny_config(regularizer="l1inf", delta=0.01, noise_augment=["gaussian", 0, 0.1],
                             data_options={"size": 8})
        training.save_config(config, str(tmp_path / name))
        assert training.TrainConfig.from_dict(training.load_config(str(tmp_path / name))) == config

    def test_resume_with_another_config_is_refused(self, tmp_path):
        training.save_config(tiny_config(epochs=2), str(tmp_path / "config.yaml"))
        with pytest.raises(training.ConfigMismatchError, match="epochs: run has 2, given 3"):
            training.resume_config(str(tmp_path), {"epochs": 3, "out_dir": "elsewhere"})
        assert training.resume_config(str(tmp_path), {"epochs": 2}).epochs == 2
        with pytest.raises(FileNotFoundError, match="not a run directory"):
            training.resume_config(str(tmp_path / "missing"))

    def test_settings_missing_from_an_older_config_take_their_defaults(self):
        saved = tiny_config().to_dict()
        del saved["log_bounds"]
        assert training.config_differences(saved, tiny_config().to_dict()) == {}
        assert "log_bounds" in training.config_differences(saved, {"log_bounds": True})

        # tuples and NumPy values compare as their plain JSON forms
        assert training.config_differences({"epsilon": [0.05, 0.1], "draws": 3},
                                           {"epsilon": (0.05, 0.1), "draws": np.int64(3)}) == {}

    def test_a_setting_json_cannot_hold_is_named(self):
        with pytest.raises(TypeError, match="TrainConfig.variant_options.f"):
            tiny_config(variant_options={"f": object()}).to_dict()
        with pytest.raises(ValueError, match="TrainConfig.data_options.scale"):
            tiny_config(data_options={"scale": float("nan")}).to_dict()
        assert tiny_config(epsilon=(0.05, 0.1)).to_dict()["epsilon"] == [0.05, 0.1]


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "evaluation.json"
    utils.write_atomic(str(path), "old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        utils.write_atomic(str(path), "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["evaluation.json"]  # no temporary file left


def test_lcr_trains_the_student_against_a_full_precision_teacher(tiny_data):
    config = tiny_config(regularizer="lcr", delta=1e-3, epochs=1)
    model, history = training.fit(config, tiny_data, verbose=0)
    assert np.isfinite(history.history["lcr_loss"]).all()
    assert history.history["lcr_loss"][0] > 0
    assert isinstance(model.layers[2], type(model.layers[2]))
    assert any(getattr(layer, "kernel_quantizer", None) is not None for layer in model.layers)


def test_lcr_teacher_is_trained_once_and_loadable(tiny_data, tmp_path):
    """`lcr_teacher="train"` fits the full-precision twin first and keeps it in OUT/teacher; a
    path loads those weights; the option needs --regularizer lcr and an existing path."""
    config = tiny_config(regularizer="lcr", lcr_teacher="train", epochs=1)
    student, _ = training.fit(config, tiny_data, out_dir=str(tmp_path / "run"), verbose=0)
    path = tmp_path / "run" / "teacher" / "weights.h5"
    assert path.exists()
    untrained = training.lcr_teacher(student, tiny_config(regularizer="lcr"), tiny_data)
    trained = training.lcr_teacher(student, config, tiny_data, out_dir=str(tmp_path / "run"))
    loaded = training.lcr_teacher(student, tiny_config(regularizer="lcr", lcr_teacher=str(path)),
                                  tiny_data)
    x, y = tiny_data.arrays("test")
    assert all(np.array_equal(a, b) for a, b in zip(trained.get_weights(), loaded.get_weights()))
    assert not all(np.array_equal(a, b)
                   for a, b in zip(trained.get_weights(), untrained.get_weights()))
    assert not any(getattr(layer, "kernel_quantizer", None) for layer in trained.layers)
    assert np.isfinite(trained.predict(x, verbose=0)).all()
    with pytest.raises(ValueError, match="option of --regularizer lcr"):
        tiny_config(lcr_teacher="train").validate()
    with pytest.raises(ValueError, match="no such file"):
        tiny_config(regularizer="lcr", lcr_teacher=str(tmp_path / "nope.h5")).validate()


def test_demo_net_is_a_registered_backbone_and_the_old_builder_warns():
    from larq_l1inf import backbones, cli

    assert backbones.BACKBONES["demo"] is backbones.demo_net
    with pytest.warns(DeprecationWarning, match="demo_net"):
        old = cli.build_demo_model((8, 8, 3), width=4, regularizer=larq_l1inf.L1InfRegularizer())
    assert len(larq_l1inf.regularizers.penalized_layers(old)) == 4
    with pytest.raises(ValueError, match="divisible by 4"):
        backbones.demo_net(input_shape=(10, 10, 1))


def test_history_csv_without_validation_reads_as_numbers(tmp_path):
    # CSVLogger writes a val_ column of "NA" per metric when there is no validation data.
    path = tmp_path / "history.csv"
    path.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.5,1.5,NA,NA\n1,0.75,1.0,NA,NA\n")
    assert training.read_history(str(path)) == {"accuracy": [0.5, 0.75], "loss": [1.5, 1.0]}
    assert training.read_history(str(tmp_path / "missing.csv")) == {}


def _event_tags(log_dir):
    """{subdirectory: {(tag, step)}} of the TensorBoard event files under `log_dir`."""
    tags = {}
    for path in tf.io.gfile.glob(os.path.join(str(log_dir), "*", "events*")):
        sub = os.path.basename(os.path.dirname(path))
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(sub, set()).add((value.tag, event.step))
    return tags


def test_epoch_tensorboard_writes_what_keras_writes_at_epoch_frequency(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    logs = {}
    for name, callback in (
            ("keras", tf.keras.callbacks.TensorBoard(str(tmp_path / "keras"), update_freq="epoch",
                                                     write_graph=False, profile_batch=0)),
            ("epoch", training.EpochTensorBoard(str(tmp_path / "epoch")))):
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
        model.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x, y, batch_size=16, epochs=2, validation_data=(x, y), verbose=0,
                  callbacks=[callback])
        logs[name] = _event_tags(tmp_path / name)
    assert logs["epoch"] == logs["keras"]
    assert ("epoch_loss", 1) in logs["epoch"]["train"] and ("epoch_loss", 1) in logs["epoch"]["validation"]
    assert not training.EpochTensorBoard(str(tmp_path))._implements_train_batch_hooks()
    with pytest.raises(ValueError, match="batch hooks"):
        training.EpochTensorBoard(str(tmp_path), update_freq="batch")

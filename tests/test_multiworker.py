"""Multi-worker training (`--distribute mirrored` with TF_CONFIG): only the chief writes the run.

Two worker processes on localhost share one `out_dir`, as `MultiWorkerMirroredStrategy` jobs
on a shared filesystem do. Every worker runs the whole recipe (saving a model and reading
synced variables are collectives all workers join); only the chief's files may reach
`out_dir`.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import types

import numpy as np
import pytest
from helpers import subprocess_env

from larq_l1inf import training
from larq_l1inf._keras import tf


#: One worker: `training.train` into MW_OUT, then a report (weights, writes into MW_OUT) to
#: MW_REPORT. MW_TINY swaps the backbone for Flatten-BatchNorm-Dense (quick to trace; its
#: synced-on-read moving statistics keep saving a collective). MW_KILL_AT raises at that
#: optimizer step on every worker, as a kill would; MW_RESUME continues the run.
WORKER = textwrap.dedent(
    """
    import json, os, sys
    out_dir = os.path.realpath(os.environ["MW_OUT"])
    writes = []

    def audit(event, args):
        # Python-level writes (open for writing, mkdir, rename, remove, temp files).
        if event == "open":
            path, mode, flags = args
            if not (mode and any(c in mode for c in "wax+")
                    or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                return
        elif event not in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree",
                           "tempfile.mkdtemp", "tempfile.mkstemp"):
            return
        for path in args[:2] if event == "os.rename" else args[:1]:
            if isinstance(path, str) and (os.path.realpath(path) + os.sep).startswith(
                    out_dir + os.sep):
                writes.append([event, path])

    sys.addaudithook(audit)

    from larq_l1inf import training
    from larq_l1inf._keras import tf

    config = training.TrainConfig.from_dict(json.loads(os.environ["MW_CONFIG"]))
    if os.environ.get("MW_TINY"):
        def tiny(config, data, **kwargs):
            inputs = tf.keras.Input(data.input_shape)
            x = tf.keras.layers.BatchNormalization()(tf.keras.layers.Flatten()(inputs))
            model = tf.keras.Model(inputs, tf.keras.layers.Dense(10, activation="softmax")(x))
            return model, model
        training.build_model = tiny

    class KillAt(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == int(os.environ["MW_KILL_AT"]):
                raise KeyboardInterrupt("killed by the test")

    if os.environ.get("MW_KILL_AT"):
        fit = training.fit
        training.fit = lambda *args, **kwargs: fit(*args, callbacks=[KillAt()], **kwargs)

    strategy = training.make_strategy(config.distribute)
    report = {"chief": bool(strategy.extended.should_checkpoint), "pid": os.getpid()}
    try:
        result = training.train(config, out_dir, resume=bool(os.environ.get("MW_RESUME")),
                                verbose=0, plots=bool(os.environ.get("MW_PLOTS")))
        report["weights"] = [w.tolist() for w in result.model.get_weights()]
        report["history"] = result.history
        report["out_dir"] = result.out_dir
    except KeyboardInterrupt:
        report["killed"] = True
    report["writes"] = writes
    with open(os.environ["MW_REPORT"], "w") as f:
        json.dump(report, f)
    """
)

CONFIG = dict(backbone="demo", width=4, dataset="digits", epochs=2, batch_size=16, seed=3,
              data_options={"size": 8, "train_size": 64, "test_size": 16},
              distribute="mirrored", convert=False, draws=2)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(tmp_path, out_dir, name, config=CONFIG, timeout=240, **env):
    """Two workers of one cluster on localhost; their reports (chief first), or a failure
    with both outputs. A hang is a failure after `timeout` seconds, not a stuck suite."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    procs, reports, logs = [], [], []
    for index in range(2):
        reports.append(tmp_path / f"{name}-report{index}.json")
        logs.append(open(tmp_path / f"{name}-worker{index}.log", "w+"))
        procs.append(subprocess.Popen(
            [sys.executable, str(script)], stdout=logs[-1], stderr=subprocess.STDOUT,
            env=subprocess_env(TF_CONFIG=json.dumps({"cluster": cluster,
                                                     "task": {"type": "worker", "index": index}}),
                               MW_CONFIG=json.dumps(config), MW_OUT=str(out_dir),
                               MW_REPORT=str(reports[-1]), **env)))
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for proc in procs:
            codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 1)))
    except subprocess.TimeoutExpired:
        codes.append("timeout")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read()[-3000:])
        log.close()
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n----\n".join(outputs)
    loaded = [json.loads(path.read_text()) for path in reports]
    assert [r["chief"] for r in loaded] == [True, False]  # worker 0 is the chief
    return loaded


def load_test_split():
    config = training.TrainConfig.from_dict({**CONFIG, "distribute": "none"})
    return training.load_data(config).arrays("test")


def tree(path):
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, files in os.walk(path) for f in files)


def assert_equal_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_one_run(out_dir, chief, worker, epochs, other_workers=()):
    """`out_dir` holds the chief's complete run and nothing of the other worker (nor of
    `other_workers`, non-chief workers of an earlier part of the run)."""
    files = tree(out_dir)
    assert not [f for f in files if "workertemp" in f or "/.tmp" in f or f.startswith(".tmp")]
    expected = {"config.yaml", "status.json", "history.csv", "evaluation.json",
                "model/saved_model.pb", "backup/chief/checkpoint"}
    assert expected <= set(files), files
    assert training.load_config(out_dir / "config.yaml")["epochs"] == epochs
    assert json.loads((out_dir / "status.json").read_text())["state"] == "finished"
    assert json.loads((out_dir / "evaluation.json").read_text())["models"]["keras"]["clean"] >= 0
    rows = (out_dir / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == [str(e) for e in range(epochs)], rows
    assert [f for f in files if f.startswith("checkpoints/epoch_")
            and f.endswith(".index")] == [f"checkpoints/epoch_{e + 1:03d}.index"
                                          for e in range(epochs)]
    # Event files are named after the writing process: the chief's, never another worker's.
    events = [f for f in files if "tfevents" in f]
    assert any(f".{chief['pid']}." in f for f in events), events
    for other in (worker, *other_workers):
        assert not [f for f in events if f".{other['pid']}." in f], events
    assert worker["writes"] == [], worker["writes"]
    assert chief["writes"]  # the audit sees the chief's writes: an empty list means something
    # Both workers end with the same weights, and the saved model holds them.
    assert_equal_weights(chief["weights"], worker["weights"])
    saved = tf.keras.models.load_model(out_dir / "model", compile=False)
    assert_equal_weights(saved.get_weights(), chief["weights"])
    # evaluation.json is the saved model's evaluation.
    x, y = load_test_split()
    keras = json.loads((out_dir / "evaluation.json").read_text())["models"]["keras"]
    predicted = np.argmax(saved.predict(x, verbose=0), axis=-1)
    assert keras["clean"] == pytest.approx(float(np.mean(predicted == y)))
    assert keras["per_class"]["clean"] == pytest.approx(
        [float(np.mean(predicted[y == c] == c)) for c in range(10)])
    assert chief["history"] == worker["history"] and len(chief["history"]["loss"]) == epochs


#: Two worker processes spend about 50-110 s on this shared 2-core box (TensorFlow start-up,
#: autograph converting tf_keras's train step in each process, the collectives between them):
#: more than the suite's budget, so they are slow tests; the fast tests below cover the paths.
two_processes = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One uninterrupted two-worker run of the tiny model."""
    tmp_path = tmp_path_factory.mktemp("multiworker")
    out_dir = tmp_path / "run"
    return tmp_path, out_dir, run_workers(tmp_path, out_dir, "run", MW_TINY="1")


@two_processes
def test_two_workers_write_one_run_and_end_equal(tiny_run):
    _, out_dir, (chief, worker) = tiny_run
    assert chief["out_dir"] == worker["out_dir"] == str(out_dir)
    assert_one_run(out_dir, chief, worker, CONFIG["epochs"])


@pytest.fixture(scope="module")
def resumed_run(tiny_run):
    """The tiny run killed in epoch 2 on both workers, then resumed by two new workers."""
    tmp_path = tiny_run[0]
    out_dir = tmp_path / "resumed"
    # 4 steps an epoch: killed in epoch 2, after epoch 1's backup.
    killed = run_workers(tmp_path, out_dir, "killed", MW_TINY="1", MW_KILL_AT="6")
    status = json.loads((out_dir / "status.json").read_text())["state"]
    resumed = run_workers(tmp_path, out_dir, "resume", MW_TINY="1", MW_RESUME="1")
    return out_dir, killed, status, resumed


@two_processes
def test_two_workers_resume_one_run_from_the_chiefs_backup(resumed_run):
    out_dir, killed, status, (chief, worker) = resumed_run
    assert all(r.get("killed") for r in killed) and killed[1]["writes"] == []
    assert status == "failed"
    assert_one_run(out_dir, chief, worker, CONFIG["epochs"], other_workers=killed[1:])


@two_processes
def test_two_workers_resume_to_the_uninterrupted_weights(tiny_run, resumed_run):
    assert_equal_weights(resumed_run[3][0]["weights"], tiny_run[2][0]["weights"])


@two_processes
def test_two_workers_of_the_cli_write_one_run(tmp_path):
    """`larq-l1inf train --distribute mirrored` on the demo backbone, as a user runs it,
    converted with LCE."""
    script = tmp_path / "cli.py"
    script.write_text("import sys\nfrom larq_l1inf.cli import main\nsys.exit(main())\n")
    out_dir = tmp_path / "run"
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    procs = [subprocess.Popen(
        [sys.executable, str(script), "train", "--backbone", "demo", "--width", "4",
         "--dataset", "digits", "--data-option", "size=8", "--train-size", "64",
         "--test-size", "16", "--epochs", "2", "--batch-size", "16", "--draws", "2",
         "--distribute", "mirrored", "--out", str(out_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=subprocess_env(TF_CONFIG=json.dumps({"cluster": cluster,
                                                 "task": {"type": "worker", "index": index}})))
        for index in range(2)]
    try:
        outputs = [proc.communicate(timeout=400)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [proc.returncode for proc in procs] == [0, 0], "\n----\n".join(outputs)
    files = tree(out_dir)
    assert not [f for f in files if "workertemp" in f or ".tmp" in f], files
    assert {"config.yaml", "history.csv", "evaluation.json", "model/saved_model.pb",
            "model.tflite", "training_curves.png", "weight_histograms.png",
            "feature_maps.png"} <= set(files)
    assert json.loads((out_dir / "status.json").read_text())["state"] == "finished"
    # The Keras model is evaluated as saved (synced batch-norm statistics, inputs in order):
    # it predicts what its flatbuffer predicts.
    evaluation = json.loads((out_dir / "evaluation.json").read_text())
    assert evaluation["disagreement"] == {"clean": 0, "noisy": [0, 0], "pgd": None}
    assert len((out_dir / "history.csv").read_text().splitlines()) == 1 + 2
    events = [f for f in files if "tfevents" in f]
    assert len(events) == 1 and f".{procs[0].pid}." in events[0], events


# --------------------------------------------------------------------------- chief/worker paths


def fake_strategy(chief, task_id=1):
    return types.SimpleNamespace(
        extended=types.SimpleNamespace(should_checkpoint=chief),
        cluster_resolver=types.SimpleNamespace(task_type="worker", task_id=task_id))


def test_worker_dir_is_out_dir_on_the_chief_and_a_private_temp_dir_elsewhere(tmp_path):
    out_dir = str(tmp_path / "run")
    for strategy in (None, fake_strategy(chief=True)):
        with training.worker_dir(out_dir, strategy) as path:
            assert path == out_dir
    with training.worker_dir(None, fake_strategy(chief=False)) as path:
        assert path is None
    with training.worker_dir(out_dir, fake_strategy(chief=False)) as path:
        assert os.path.isdir(path) and not os.path.realpath(path).startswith(str(tmp_path))
        assert "worker1" in os.path.basename(path)
        open(os.path.join(path, "history.csv"), "w").close()
    assert not os.path.exists(path) and not os.path.exists(out_dir)


def test_worker_dir_is_removed_when_the_run_fails(tmp_path):
    with pytest.raises(KeyError):
        with training.worker_dir(str(tmp_path), fake_strategy(chief=False)) as path:
            raise KeyError("failed run")
    assert not os.path.exists(path)


def test_late_multi_worker_strategy_says_to_create_it_first(monkeypatch):
    # This process has run TensorFlow ops: collective ops can no longer be configured.
    tf.constant(1.0)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(RuntimeError, match="make_strategy"):
        training.make_strategy("mirrored")


class NonChief:
    """This process's default strategy, seen as worker 1 of a cluster whose chief is elsewhere."""

    extended = types.SimpleNamespace(should_checkpoint=False)
    cluster_resolver = types.SimpleNamespace(task_type="worker", task_id=1)

    def __getattr__(self, name):
        return getattr(tf.distribute.get_strategy(), name)


def tiny_build(config, data, **kwargs):
    """Flatten, BatchNorm, a binary dense layer (for the weight histograms) and a classifier."""
    import larq as lq

    inputs = tf.keras.Input(data.input_shape)
    x = tf.keras.layers.BatchNormalization()(tf.keras.layers.Flatten()(inputs))
    x = lq.layers.QuantDense(8, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                             kernel_constraint="weight_clip")(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(10, activation="softmax")(x))
    return model, model


def test_a_non_chief_worker_runs_the_whole_recipe_but_writes_nothing_of_the_run(
        tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (32, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 32)
    data = training.ArrayData((x, y), (x[:8], y[:8]), name="digits", epsilon=(0.03, 0.06),
                              num_classes=10)
    config = training.TrainConfig(backbone="demo", dataset="digits", epochs=1, batch_size=16,
                                  convert=False, draws=1)
    # A worker of a cluster (TF_CONFIG set) whose strategy says it is not the chief.
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"] * 2},
                                                "task": {"type": "worker", "index": 1}}))
    monkeypatch.setattr(training, "make_strategy", lambda name: NonChief())
    monkeypatch.setattr(training, "build_model", tiny_build)
    temp = tf.io.gfile.glob(os.path.join(tempfile.gettempdir(), "larq-l1inf-worker1-*"))
    out_dir = tmp_path / "run"
    result = training.train(config, str(out_dir), data=data, verbose=0)
    assert result.out_dir == str(out_dir) and result.evaluation["models"]["keras"]
    # Keras's BackupAndRestore is given `out_dir` on every worker (all restore the chief's
    # backup) and decides itself where a worker writes; the default strategy is its chief.
    assert [f for f in tree(out_dir) if not f.startswith("backup/")] == []
    assert tf.io.gfile.glob(os.path.join(tempfile.gettempdir(), "larq-l1inf-worker1-*")) == temp


def test_tf_config_without_distribution_warns(monkeypatch, caplog):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    training._warn_tf_config_unused.cache_clear()
    with caplog.at_level("WARNING", logger="larq_l1inf.training"):
        assert training.make_strategy("none") is None
    assert "--distribute mirrored" in caplog.text

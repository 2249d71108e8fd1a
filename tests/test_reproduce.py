"""`larq_l1inf.reproduce`: recipes end to end on tiny data, the pairing, the t-interval."""

import json
import math
import os
import runpy

import numpy as np
import pytest

from larq_l1inf import reproduce, training

# Tiny stand-ins for the recipes' data: digits 8x8 for the image tables, a small MNIST-1D.
TINY_IMAGE = {"dataset": "digits", "data_options": {"size": 8, "channels": 1},
              "train_size": 120, "test_size": 60, "width": 2, "epochs": 1, "draws": 1,
              "seeds": 2, "batch_size": 32}
TINY_1D = {"train_size": 150, "test_size": 60, "width": 4, "epochs": 1, "draws": 1,
           "seeds": 2, "batch_size": 32}


def interval_text(c):
    return f"{100 * c['mean']:+.2f} [{100 * c['lo']:+.2f}, {100 * c['hi']:+.2f}]"


def tiny(name):
    return dict(TINY_1D if name == "table3" else TINY_IMAGE)


def test_interval_matches_hand_computation():
    a = [0.80, 0.83, 0.79, 0.85]
    b = [0.78, 0.80, 0.80, 0.81]
    # By hand: d = (0.02, 0.03, -0.01, 0.04); mean 0.02; sum of squared deviations
    # 0 + 1e-4 + 9e-4 + 4e-4 = 1.4e-3; s = sqrt(1.4e-3 / 3); t_{0.975,3} = 3.182.
    s = math.sqrt(1.4e-3 / 3)
    half = 3.182 * s / 2
    r = reproduce.paired_difference(a, b)
    assert r["n"] == 4 and r["mean"] == pytest.approx(0.02)
    assert r["std"] == pytest.approx(s)
    assert r["lo"] == pytest.approx(0.02 - half) and r["hi"] == pytest.approx(0.02 + half)
    assert r["verdict"] == "unresolved"  # 0.02 - 0.0344 < 0
    clear = reproduce.paired_difference([0.9, 0.91, 0.92], [0.8, 0.8, 0.81])
    assert clear["verdict"] == "higher" and clear["lo"] > 0
    assert reproduce.paired_difference([0.1, 0.2, 0.15], [0.3, 0.41, 0.35])["verdict"] == "lower"


def test_t_quantiles_and_bad_input():
    assert reproduce.t_quantile_975(1) == 12.706
    assert reproduce.t_quantile_975(4) == 2.776
    assert 2.021 > reproduce.t_quantile_975(50) > 2.000
    assert 1.96 < reproduce.t_quantile_975(10_000) < 1.961
    with pytest.raises(ValueError, match=">= 2 seeds"):
        reproduce.paired_difference([0.5], [0.4])
    with pytest.raises(ValueError, match="equal"):
        reproduce.paired_difference([0.5, 0.6], [0.4])


def test_hard_range_picks_10_to_30_point_loss():
    eps = [(0.0, 0.1), (0.1, 0.2), (0.2, 0.3)]
    assert reproduce.hard_range(eps, 0.9, [0.88, 0.75, 0.4]) == 1
    assert reproduce.hard_range(eps, 0.9, [0.89, 0.88, 0.87]) == 2  # closest to 20 points


def test_every_arm_of_every_recipe_configures():
    for name, recipe in reproduce.RECIPES.items():
        configs, scale = reproduce.recipe_configs(recipe, quick=True, overrides=tiny(name))
        assert set(configs) == set(recipe.arms) and scale["seeds"] == 2
        assert all(t in configs and r in configs for t, r in recipe.comparisons)
        assert len({c.to_dict()["data_options"]["train_size"] for c in configs.values()}) == 1
    full, scale = reproduce.recipe_configs(reproduce.RECIPES["table2"])
    assert scale["seeds"] == 5 and full["irnet"].dataset == "fashion_mnist"


# (recipe, treatment, reference): the distinct mechanisms of a treatment: a kernel penalty and
# the InputNoise front (LCR wraps the same student after it is built). (The end-to-end test checks the same
# property on the weights fit actually starts from.)
PAIRS = [("table11", "bireal+l1inf", "bireal"), ("noise_augment", "irnet+noise+l1inf", "irnet")]


@pytest.mark.parametrize("name, treatment, reference", PAIRS)
def test_seed_fixes_initial_weights_and_batches(name, treatment, reference):
    """Same initial weights and same batches with and without the treatment."""
    from larq_l1inf._keras import tf

    configs, _ = reproduce.recipe_configs(reproduce.RECIPES[name], quick=True,
                                          overrides=tiny(name))
    data = training.load_data(configs[reference])
    prints = []
    for arm in (treatment, reference):
        config = configs[arm]
        tf.keras.utils.set_random_seed(config.seed)  # as training.fit does
        model, _ = training.build_model(config, data)
        prints.append((reproduce.initial_fingerprint(model),
                       reproduce.batches_fingerprint(data, config)))
    assert prints[0] == prints[1]


def test_another_seed_changes_weights_and_batches():
    config = training.TrainConfig(backbone="demo", dataset="digits", width=2, epochs=1,
                                  data_options={"size": 8, "channels": 1, "train_size": 60,
                                                "test_size": 30})
    data = training.load_data(config)
    prints = []
    for seed in (0, 1):
        from larq_l1inf._keras import tf

        tf.keras.utils.set_random_seed(seed)
        model, _ = training.build_model(config, data)
        c = training.TrainConfig(**{**config.to_dict(), "seed": seed})
        prints.append((reproduce.initial_fingerprint(model), reproduce.batches_fingerprint(data, c)))
    assert prints[0][0] != prints[1][0] and prints[0][1] != prints[1][1]


# Tracing a BNN's train step costs seconds per run on 2 shared cores: table2 (with the resume
# check) runs by default, the other recipes with `pytest -m slow`.
@pytest.mark.parametrize("name", ["table2"] + [
    pytest.param(n, marks=pytest.mark.slow) for n in sorted(reproduce.RECIPES) if n != "table2"])
def test_recipe_quick_end_to_end(name, tmp_path, monkeypatch):
    """Each recipe in --quick mode on tiny data: its first comparison's two arms, 2 seeds."""
    recipe = reproduce.RECIPES[name]
    treatment, reference = recipe.comparisons[0]
    reproduce.run_recipe(name, quick=True, out_dir=str(tmp_path / "runs"),
                         results_dir=str(tmp_path / "results"),
                         overrides=tiny(name), arms=[treatment, reference])
    path = tmp_path / "results" / f"{name}_quick.json"
    written = json.loads(path.read_text())
    assert written["recipe"] == name and written["seeds"] == 2 and written["paired_check"]
    assert set(written["arms"]) == {treatment, reference}
    runs = written["arms"][treatment]["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert all(0 <= r["clean"] <= 1 and len(r["noisy"]) == len(written["epsilons"]) for r in runs)
    (comparison,) = written["comparisons"]
    assert comparison["paired"] and len(comparison["noisy"]) == len(written["epsilons"])
    d = [a["clean"] - b["clean"] for a, b in zip(runs, written["arms"][reference]["runs"])]
    assert comparison["clean"]["mean"] == pytest.approx(np.mean(d))
    assert "tensorflow" in written["versions"]
    if name == "table2":
        # The README section is generated from the JSON: the interval printed is the computed one.
        script = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "scripts",
                                             "results_tables.py"))
        md, png = tmp_path / "results.md", tmp_path / "noise.png"
        assert script["main"](["--results", str(tmp_path / "results"), "--quick",
                               "--out", str(md), "--plot", str(png)]) == 0
        text = md.read_text()
        assert interval_text(comparison["clean"]) in text
        assert "Paper:" in text and png.stat().st_size > 0
        readme = tmp_path / "README.md"
        readme.write_text(f"intro\n{script['README_BEGIN']}\nstale\n{script['README_END']}\nrest\n")
        assert script["main"](["--results", str(tmp_path / "results"), "--quick",
                               "--readme", str(readme)]) == 0
        bullets = readme.read_text()
        assert "stale" not in bullets and bullets.startswith("intro") and bullets.endswith("rest\n")
        i = max(written["paper_ranges"])
        assert interval_text(comparison["noisy"][i]) in bullets
        # Resumable: a second call reads every finished run back without training.
        marker = tmp_path / "runs" / "table2_quick" / reference / "seed_1" / "result.json"
        mtime = os.path.getmtime(marker)
        again = reproduce.run_recipe(name, quick=True, out_dir=str(tmp_path / "runs"),
                                     results_dir=str(tmp_path / "results"),
                                     overrides=tiny(name), arms=[treatment, reference])
        assert os.path.getmtime(marker) == mtime
        assert again["comparisons"][0]["clean"] == comparison["clean"]
        with pytest.raises(training.ConfigMismatchError):
            reproduce.run_recipe(name, quick=True, out_dir=str(tmp_path / "runs"),
                                 results_dir=str(tmp_path / "results"),
                                 overrides={**tiny(name), "lr": 0.05},
                                 arms=[treatment, reference])
        # Another recipe with the same arm reads table2's finished runs back, untrained.
        assert recipe.comparisons[0] in reproduce.RECIPES["table10"].comparisons

        def no_training(*args, **kwargs):
            raise AssertionError("a finished identical run was trained again")

        monkeypatch.setattr(training, "fit", no_training)
        other = reproduce.run_recipe("table10", quick=True, out_dir=str(tmp_path / "runs"),
                                     results_dir=str(tmp_path / "results"),
                                     overrides=tiny(name), arms=[treatment, reference])
        copied = other["arms"][reference]["runs"]
        assert [r["reused_from"] for r in copied] == [
            os.path.join("table2_quick", reference, f"seed_{s}") for s in (0, 1)]
        assert other["comparisons"][0]["clean"] == comparison["clean"]


def test_unknown_recipe_and_arm():
    with pytest.raises(ValueError, match="choose one of"):
        reproduce.run_recipe("table99")
    with pytest.raises(ValueError, match="arms are"):
        reproduce.run_recipe("table2", quick=True, arms=["nope"], overrides=tiny("table2"))


def test_certified_and_mbn_recipes_record_their_measures(tmp_path):
    """The issue-11 recipes add IBP-verified accuracy, PGD accuracy and BOPs to every run."""
    out, results = str(tmp_path / "runs"), str(tmp_path / "results")
    cert = reproduce.run_recipe("certified", quick=True, out_dir=out, results_dir=results,
                                overrides=tiny("certified"), arms=["bnn+gm-ibp", "bnn"])
    for arm in ("bnn+gm-ibp", "bnn"):
        for run in cert["arms"][arm]["runs"]:
            for key in ("verified", "verified_crown"):
                assert [v["epsilon"] for v in run[key]] == [0.01, 0.05, 0.1]
                assert all(0 <= v["accuracy"] <= 1 for v in run[key])
            # Nested input boxes give nested interval bounds: IBP-verified accuracy cannot grow.
            verified = [v["accuracy"] for v in run["verified"]]
            assert all(b <= a for a, b in zip(verified, verified[1:]))
            assert verified[0] <= run["clean"] + 1e-9 and 0 <= run["pgd"]["accuracy"] <= 1
    (comparison,) = cert["comparisons"]
    assert comparison["paired"]  # the GM arm trains the same initial network
    d = [a["pgd"]["accuracy"] - b["pgd"]["accuracy"]
         for a, b in zip(cert["arms"]["bnn+gm-ibp"]["runs"], cert["arms"]["bnn"]["runs"])]
    assert comparison["pgd"]["mean"] == pytest.approx(np.mean(d))
    assert len(comparison["verified"]) == len(comparison["verified_crown"]) == 3
    mbn = reproduce.run_recipe("mbn", quick=True, out_dir=out, results_dir=results,
                               overrides={**tiny("mbn"), "seeds": 2}, arms=["mbn2x3", "mbn1x1"])
    assert mbn["comparisons"][0]["paired"]  # same seed and batches; shapes differ
    small, big = mbn["arms"]["mbn1x1"]["bops"], mbn["arms"]["mbn2x3"]["bops"]
    # M x N bases: every binary MAC is done M * N times; the float layers are unchanged.
    assert big["binary_macs"] == 6 * small["binary_macs"] and big["total_macs"] == small["total_macs"]
    assert json.loads((tmp_path / "results" / "mbn_quick.json").read_text())["arms"]["mbn2x3"]["bops"] == big


def test_verdict_names_a_clean_accuracy_gap():
    """A difference under noise that clean accuracy shows as well is not called robustness."""
    script = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "scripts",
                                         "results_tables.py"))

    def diff(verdict):
        return {"mean": 0.1, "lo": 0.05, "hi": 0.15, "verdict": verdict}

    def result(clean, **extra):
        return {"claim": "c", "seeds": 5, "direction": "higher", "paper_ranges": [0],
                "epsilons": [[0.05, 0.1], [0.2, 0.3]],
                "comparisons": [{"treatment": "a", "reference": "b", "hard_range": 1,
                                 "clean": diff(clean),
                                 "noisy": [diff("unresolved"), diff("higher")], **extra}]}

    text = script["verdict_sentence"](result("higher"))
    assert "clean-accuracy gap" in text
    assert "a vs b (at [0.2, 0.3])" in text  # the range where it was resolved, not [0.05, 0.1]
    assert "clean-accuracy gap" not in script["verdict_sentence"](result("unresolved"))
    assert "PGD" not in text  # no extra measures, no sentence about them
    # Extra measures: resolved ones are named with their measure, the rest called unresolved.
    text = script["verdict_sentence"](result(
        "unresolved", pgd=diff("lower"),
        verified=[{"epsilon": 0.01, **diff("higher")}, {"epsilon": 0.1, **diff("unresolved")}]))
    assert "higher for a vs b (IBP-verified eps 0.01)" in text and "lower for a vs b (PGD)" in text
    assert "eps 0.1" not in text
    assert "no paired difference resolved" in script["verdict_sentence"](
        result("unresolved", pgd=diff("unresolved")))


def test_a_resumed_run_counts_the_epochs_its_earlier_process_trained(tmp_path, monkeypatch):
    clock = iter([0.0, 10.0, 10.0, 30.0,  # first process: epochs 0 (10 s) and 1 (20 s)
                  100.0, 104.0])          # resumed after a cut inside epoch 2: epoch 2 (4 s)
    monkeypatch.setattr(reproduce.time, "perf_counter", lambda: next(clock))
    path = str(tmp_path / "epoch_seconds.json")
    first = reproduce._epoch_seconds_callback(path)
    for epoch in (0, 1):
        first.on_epoch_begin(epoch)
        first.on_epoch_end(epoch)
    assert first.earlier_seconds == 0
    resumed = reproduce._epoch_seconds_callback(path)  # a new process reads the file back
    resumed.on_epoch_begin(2)
    resumed.on_epoch_end(2)
    assert resumed.earlier_seconds == pytest.approx(30.0)
    assert json.loads(open(path).read()) == pytest.approx({"0": 10.0, "1": 20.0, "2": 4.0})
    # A process resumed into epoch 1 (its backup was older) drops epoch 1's earlier time.
    clock = iter([200.0, 205.0])
    again = reproduce._epoch_seconds_callback(path)
    again.on_epoch_begin(1)
    again.on_epoch_end(1)
    assert again.earlier_seconds == pytest.approx(10.0)
    assert json.loads(open(path).read())["1"] == pytest.approx(5.0)

"""Benchmark scripts' reporting: README tables are rendered from their JSON reports."""

import json
import os
import runpy
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")


@pytest.fixture(scope="module")
def gm_step_cost():
    sys.path.insert(0, BENCHMARKS)
    try:
        yield runpy.run_path(os.path.join(BENCHMARKS, "gm_step_cost.py"))
    finally:
        sys.path.remove(BENCHMARKS)


def report(ratios):
    """A report as gm_step_cost writes it; plain steps 10 ms, `ratios` per config."""
    results = {"plain": {"seconds_per_step_median": 0.010, "ratio_to_plain": 1.0,
                         "ratio_per_repeat": [1.0, 1.0], "cpu_ratio_to_plain": 1.0,
                         "bound": None, "within_bound": None}}
    for name, (n, paired) in ratios.items():
        ratio = sum(paired) / len(paired)
        results[name] = {"seconds_per_step_median": 0.010 * ratio, "ratio_to_plain": ratio,
                         "ratio_per_repeat": paired, "cpu_ratio_to_plain": ratio + 0.5,
                         "bound": n + 1.5 if name.startswith("ibp") else None,
                         "within_bound": ratio <= n + 1.5 if name.startswith("ibp") else None}
    return {"command": "python benchmarks/gm_step_cost.py --repeats 2",
            "config": {"repeats": 2, "steps": 3},
            "machine": {"loadavg_at_end": [0.5, 0.4, 0.3]}, "results": results}


def test_gm_step_cost_renders_its_table_into_the_readme(gm_step_cost, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report({"ibp-N1": (1, [2.0, 2.2]), "ibp-N4": (4, [6.0, 7.0]),
                                       "noise-N2": (2, [3.0, 3.0])})))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{gm_step_cost['README_BEGIN']}\nstale\n"
                      f"{gm_step_cost['README_END']}\nrest\n")
    gm_step_cost["main"](["--render", str(path), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "stale" not in text
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert rows["ibp-N1"] == "| ibp-N1 | 21.0 | 2.10 | 2.10 (2.00-2.20) | 2.60 | 2.5 (met) |"
    assert rows["ibp-N4"].endswith("| 6.50 | 6.50 (6.00-7.00) | 7.00 | 5.5 (not met) |")
    assert rows["noise-N2"].endswith("(about N + 1 expected) |")
    assert "load average 0.5" in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no generated block"):
        gm_step_cost["main"](["--render", str(path), "--readme", str(readme)])

"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`; this folder is on sys.path)."""

import json
import os


def write_json(data, path):
    """Write a benchmark's result as indented JSON, creating the folder, and say where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    print(f"written to {path}")

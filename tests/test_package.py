"""The package itself: the Keras-2 guard on import, the public names, the README's snippets."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

import larq_l1inf

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_python(code, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    environment.update(env, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          timeout=300)


class TestKerasGuard:
    def test_import_first_selects_keras_2(self):
        result = run_python(
            "import os, larq_l1inf, tensorflow as tf; "
            "print(os.environ['TF_USE_LEGACY_KERAS'], tf.keras.layers.Layer.__module__.split('.')[0])"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["1", "tf_keras"]

    def test_keras_3_already_active_is_a_clear_error(self):
        result = run_python("import tensorflow as tf; tf.keras.layers; import larq_l1inf")
        assert result.returncode != 0
        assert "TF_USE_LEGACY_KERAS=1" in result.stderr and "Keras 3" in result.stderr


class TestPublicApi:
    def test_all_names_resolve(self):
        for name in larq_l1inf.__all__:
            assert getattr(larq_l1inf, name) is not None

    def test_unknown_attribute(self):
        with pytest.raises(AttributeError):
            larq_l1inf.no_such_thing  # noqa: B018

    @pytest.mark.parametrize("module", ["kernels", "regularizers", "baselines", "flatbuffer", "deploy"])
    def test_module_all_names_resolve(self, module):
        mod = getattr(larq_l1inf, module)
        for name in mod.__all__:
            assert getattr(mod, name) is not None, name

    def test_deploy_keeps_the_names_the_readme_uses(self):
        from larq_l1inf import deploy, flatbuffer

        for name in ("op_counts", "op_list", "check_binarized", "binarization_problems",
                     "BinarizationError", "BinarizationReport"):
            assert getattr(deploy, name) is getattr(flatbuffer, name)
        assert callable(deploy.TFLiteModel) and callable(deploy.compare_outputs)


def test_no_private_name_is_imported_across_modules():
    """A helper two modules need is public where it belongs (`_keras`, the environment guard,
    is the one private module every module imports first)."""
    import ast

    offenders = []
    for path in (ROOT / "larq_l1inf").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("larq_l1inf"):
                offenders += [f"{path.name}: {a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "_keras"]
    assert offenders == []


def test_saved_model_loads_in_a_fresh_process_without_custom_objects(tmp_path):
    import larq as lq

    from larq_l1inf._keras import tf

    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)),
        larq_l1inf.InputNoise("environmental", (0.1, 0.2)),
        lq.layers.QuantConv2D(2, 3, kernel_quantizer="ste_sign", kernel_regularizer=larq_l1inf.L1InfRegularizer()),
        lq.layers.QuantConv2D(2, 3, kernel_regularizer=larq_l1inf.SpectralNormRegularizer()),
        lq.layers.QuantConv2D(2, 3, kernel_regularizer=larq_l1inf.AbsumRegularizer()),
        tf.keras.layers.Flatten(),
        lq.layers.QuantDense(2, kernel_regularizer=larq_l1inf.L1Regularizer()),
    ])
    path = str(tmp_path / "model.h5")
    model.save(path)
    expected = float(larq_l1inf.penalty(model))
    result = run_python(
        "import larq_l1inf, tensorflow as tf; "
        f"m = tf.keras.models.load_model({path!r}); print(float(larq_l1inf.penalty(m)))"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) == pytest.approx(expected, rel=1e-6)


def readme_snippets():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("index", range(len(readme_snippets())))
def test_readme_snippet_runs_as_written(index, tmp_path):
    code = readme_snippets()[index]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=600)
    assert result.returncode == 0, f"README snippet {index} failed:\n{code}\n{result.stderr[-3000:]}"

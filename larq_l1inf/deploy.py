"""Deployment with Larq Compute Engine: conversion, and running the converted model.

- `convert` runs `lce.convert_keras_model` in a child process, so a converter crash (the
  MLIR converter has died with SIGSEGV, exit code 139, on a larq-zoo model here) becomes a
  `ConversionError` that names the model and the exit code instead of killing the caller.
- `TFLiteModel` wraps `lce.testing.Interpreter` and handles the flatbuffer's fixed batch.
- `compare_outputs` measures the agreement of Keras and the interpreter on the same inputs.

Flatbuffer inspection lives in `larq_l1inf.flatbuffer`; its `op_counts`, `op_list`,
`check_binarized`, `binarization_problems`, `BinarizationReport` and `BinarizationError` are
re-exported here, where the README's examples use them.
"""

import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy as np

from larq_l1inf._keras import tf
from larq_l1inf.flatbuffer import (
    BinarizationError,
    BinarizationReport,
    binarization_problems,
    check_binarized,
    check_flatbuffer,
    deployment_issues,
    op_counts,
    op_list,
)

log = logging.getLogger(__name__)

__all__ = [
    "BinarizationError",
    "BinarizationReport",
    "ConversionError",
    "TFLiteModel",
    "binarization_problems",
    "check_binarized",
    "compare_outputs",
    "convert",
    "load_flatbuffer",
    "op_counts",
    "op_list",
    "save_flatbuffer",
]

# Default time limit of one conversion in the child process (seconds).
DEFAULT_TIMEOUT = 1800
_STDERR_TAIL_LINES = 25


class ConversionError(RuntimeError):
    """The LCE converter failed or crashed on a model.

    # Attributes
    model_name: name of the Keras model.
    returncode: exit code of the converter process, as a shell reports it (139 for
        SIGSEGV), or None when the conversion ran in-process.
    output: the last lines the converter process wrote to stderr.
    """

    def __init__(self, message, model_name=None, returncode=None, output=""):
        super().__init__(message)
        self.model_name = model_name
        self.returncode = returncode
        self.output = output


# --------------------------------------------------------------------------- conversion


def _fixed_batch_model(model, batch_size):
    """A copy of `model` (same weights) whose input has the fixed batch size `batch_size`."""
    if len(model.inputs or []) != 1:
        raise ValueError(
            "convert(batch_size=...) supports single-input models only; "
            "convert with batch_size=None (batch 1) instead."
        )
    shape = tuple(model.inputs[0].shape[1:])
    new_input = tf.keras.Input(batch_shape=(batch_size, *shape), dtype=model.inputs[0].dtype)
    try:
        clone = tf.keras.models.clone_model(model, input_tensors=new_input)
    except Exception as error:  # noqa: BLE001 - re-raised with what to do
        raise ValueError(
            f"Could not rebuild model '{model.name}' with a fixed batch size {batch_size} "
            f"({type(error).__name__}: {error}). Use batch_size=None (the flatbuffer then has "
            "batch 1 and TFLiteModel.predict runs one sample per call)."
        ) from error
    clone.set_weights(model.get_weights())
    return clone


def _check_model(model):
    if not isinstance(model, tf.keras.Model):
        raise TypeError(
            f"convert() expects a tf.keras.Model (Keras 2 / tf_keras), got {type(model).__name__}."
        )
    if not model.built or not model.inputs:
        raise ValueError(
            f"Model '{model.name}' has no defined inputs. Build it with a fixed input shape "
            "(functional API or a Sequential starting with tf.keras.Input) before converting."
        )


def _encode_kwargs(lce_kwargs):
    """The converter's keyword arguments as JSON (dtypes by name)."""
    encoded = {}
    for key, value in lce_kwargs.items():
        if isinstance(value, tf.DType):
            encoded[key] = {"dtype": value.name}
        elif isinstance(value, tuple):
            encoded[key] = list(value)
        else:
            encoded[key] = value
    try:
        return json.dumps(encoded)
    except TypeError as error:
        raise TypeError(
            f"convert(): converter arguments must be plain values or tf.DTypes, got {lce_kwargs}."
        ) from error


def _decode_kwargs(text):
    decoded = {}
    for key, value in json.loads(text).items():
        if isinstance(value, dict) and "dtype" in value:
            value = tf.as_dtype(value["dtype"])
        elif isinstance(value, list):
            value = tuple(value)
        decoded[key] = value
    return decoded


def _worker_command(saved_model_dir, output_path, kwargs_json):
    """The child process: `python -c` running `_worker_main` of this module."""
    code = "from larq_l1inf.deploy import _worker_main; _worker_main()"
    return [sys.executable, "-c", code, saved_model_dir, output_path, kwargs_json]


def _worker_main(argv=None):
    """Entry point of the converter child process (not public API).

    Does what `lce.convert_keras_model` does for the model saved by the parent: convert the
    SavedModel, and if that raises, reload the Keras model and call `convert_keras_model`
    (which then falls back to its graph-def path).
    """
    import larq_compute_engine as lce

    saved_model_dir, output_path, kwargs_json = (argv or sys.argv[1:])[:3]
    kwargs = _decode_kwargs(kwargs_json)
    try:
        flatbuffer = lce.convert_saved_model(saved_model_dir, **kwargs)
    except Exception as error:  # noqa: BLE001 - fall back as convert_keras_model does
        print(f"convert_saved_model failed ({error}); retrying with convert_keras_model.",
              file=sys.stderr)
        model = tf.keras.models.load_model(saved_model_dir, compile=False)
        flatbuffer = lce.convert_keras_model(model, **kwargs)
    with open(output_path, "wb") as f:
        f.write(flatbuffer)


def _exit_description(returncode):
    """(shell-style exit code, text) for a subprocess return code; signals as 128 + signum."""
    if returncode < 0:
        signum = -returncode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return 128 + signum, f"exit code {128 + signum}, killed by {name}"
    return returncode, f"exit code {returncode}"


def _text(output):
    # TimeoutExpired carries bytes even when the process was run with text=True.
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def _tail(text, lines=_STDERR_TAIL_LINES):
    return "\n".join((text or "").strip().splitlines()[-lines:]) or "(no output)"


def convert(model, *, in_process=False, batch_size=None, timeout=DEFAULT_TIMEOUT,
            on_failure="warn", binarized=None, **lce_kwargs):
    """Convert a Keras model to an LCE TFLite flatbuffer, in a separate process.

    The model is saved as a SavedModel in a temporary directory and a child Python process
    converts it exactly as `lce.convert_keras_model` does. If the converter crashes (it has
    died with SIGSEGV on a larq-zoo model), the caller gets a `ConversionError` naming the
    model and the exit code, and keeps running.

    !!! example
        ```python
        flatbuffer = convert(model)
        print(op_counts(flatbuffer))  # {'LceBconv2d': 4, 'CONV_2D': 1, ...}
        TFLiteModel(flatbuffer).predict(x_test)
        ```

    # Arguments
    model: a built `tf.keras.Model` (tf_keras) with defined inputs.
    in_process: run `lce.convert_keras_model` in this process: faster (no second
        TensorFlow start-up), but a converter crash kills the caller.
    batch_size: fixed batch size of the flatbuffer's input; None gives batch 1 (what LCE
        does for an undefined batch). A copy of the model with that input is converted.
    timeout: seconds before the child process is killed and a `ConversionError` raised.
    on_failure: what to do when binary convolutions of the model do not become
        `LceBconv2d`: `"warn"` (log a warning), `"raise"` (`BinarizationError`) or
        `"ignore"`. See `larq_l1inf.flatbuffer.check_binarized`.
    binarized: the old name of `on_failure` (deprecated; a `DeprecationWarning`).
    **lce_kwargs: passed to `lce.convert_keras_model` (`inference_input_type`,
        `inference_output_type`, `target`, `experimental_default_int8_range`).

    # Returns
    The flatbuffer, as `bytes`.

    # Raises
    ConversionError: when the converter raises, crashes or times out, or (unless
        `on_failure="ignore"`) when a quantizer reports a `deployment_issue` (CycleBNN above
        1 bit: convert the trained model, whose schedule leaves plain sign).
    BinarizationError: with `on_failure="raise"`, see `check_binarized`.
    TypeError, ValueError: for a model that is not a built Keras model.
    """
    _check_model(model)
    if binarized is not None:
        warnings.warn("convert(binarized=...) is deprecated; use on_failure=...",
                      DeprecationWarning, stacklevel=2)
        on_failure = binarized
    if on_failure not in ("warn", "raise", "ignore"):
        raise ValueError(f"`on_failure` must be 'warn', 'raise' or 'ignore', got {on_failure!r}.")
    issues = deployment_issues(model)
    if issues and on_failure != "ignore":
        raise ConversionError(
            f"Model '{model.name}' would not run as trained after conversion: "
            + "; ".join(f"{name}: {reason}" for name, reason in issues),
            model_name=model.name,
        )
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ValueError(f"`batch_size` must be a positive int or None, got {batch_size}.")
        source = _fixed_batch_model(model, int(batch_size))
    else:
        source = model
    if in_process:
        flatbuffer = _convert_in_process(source, model.name, lce_kwargs)
    else:
        flatbuffer = _convert_in_subprocess(source, model.name, timeout, lce_kwargs)
    if on_failure != "ignore":
        check_binarized(flatbuffer, model, on_failure=on_failure)
    return flatbuffer


def _convert_in_process(model, name, lce_kwargs):
    import larq_compute_engine as lce

    try:
        return lce.convert_keras_model(model, **lce_kwargs)
    except Exception as error:
        raise ConversionError(
            f"lce.convert_keras_model failed on model '{name}': {type(error).__name__}: {error}",
            model_name=name,
        ) from error


def _convert_in_subprocess(model, name, timeout, lce_kwargs):
    kwargs_json = _encode_kwargs(lce_kwargs)
    with tempfile.TemporaryDirectory(prefix="larq_l1inf_convert_") as tmp:
        saved_model_dir = os.path.join(tmp, "saved_model")
        output_path = os.path.join(tmp, "model.tflite")
        model.save(saved_model_dir, save_format="tf")
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
        # The child imports this package; make sure it finds the same copy as the parent.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        log.info("Converting model '%s' with LCE in a subprocess.", name)
        try:
            result = subprocess.run(
                _worker_command(saved_model_dir, output_path, kwargs_json),
                capture_output=True, text=True, timeout=timeout, env=env,
            )
        except subprocess.TimeoutExpired as error:
            raise ConversionError(
                f"The LCE converter did not finish converting model '{name}' within {timeout} s "
                "and was stopped. Pass a larger `timeout=` to convert(), or simplify the model.",
                model_name=name, output=_tail(_text(error.stderr)),
            ) from None
        if result.returncode != 0:
            code, description = _exit_description(result.returncode)
            crashed = result.returncode < 0 or code > 128
            what = "crashed" if crashed else "failed"
            hint = (
                "The converter process died; this process is unaffected. Try converting a "
                "simpler or smaller variant of the model to find the layer it fails on, and "
                "check that every layer is supported by larq-compute-engine."
                if crashed
                else "See the converter output above for the Python error."
            )
            raise ConversionError(
                f"The LCE converter {what} on model '{name}' ({description}).\n"
                f"Last converter output:\n{textwrap.indent(_tail(result.stderr), '    ')}\n{hint}",
                model_name=name, returncode=code, output=_tail(result.stderr),
            )
        if not os.path.exists(output_path) or os.path.getsize(output_path) == 0:
            raise ConversionError(
                f"The LCE converter exited normally on model '{name}' but wrote no flatbuffer.\n"
                f"Last converter output:\n{textwrap.indent(_tail(result.stderr), '    ')}",
                model_name=name, returncode=0, output=_tail(result.stderr),
            )
        with open(output_path, "rb") as f:
            return f.read()


def save_flatbuffer(flatbuffer, path):
    """Write a flatbuffer to `path` (parent directories are created); returns the path."""
    check_flatbuffer(flatbuffer)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return path


def load_flatbuffer(path):
    """Read a flatbuffer written by `save_flatbuffer` (or any `.tflite` file)."""
    with open(path, "rb") as f:
        flatbuffer = f.read()
    check_flatbuffer(flatbuffer)
    return flatbuffer


# --------------------------------------------------------------------------- inference


class TFLiteModel:
    """A converted model run by the LCE interpreter, with a Keras-like `predict`.

    The flatbuffer's input has a fixed batch size (1 unless converted with
    `convert(model, batch_size=...)`); the LCE interpreter cannot resize it and rejects any
    other batch. `predict` therefore feeds the input in chunks of exactly that size, padding
    the last chunk and dropping the padded outputs.

    !!! example
        ```python
        tflite = TFLiteModel(convert(model), num_threads=1)
        probabilities = tflite.predict(x_test)
        tflite.save("model.tflite")
        ```

    # Arguments
    flatbuffer: bytes of a TFLite model (from `convert` or `load_flatbuffer`).
    num_threads: interpreter threads.
    use_indirect_bgemm: use LCE's optimized indirect BGEMM kernel for `LceBconv2d`.
    use_reference_bconv: use the reference `LceBconv2d` kernel instead.
    use_xnnpack: use TFLite's XNNPack delegate for float operators.
    """

    def __init__(self, flatbuffer, num_threads=1, use_indirect_bgemm=True,
                 use_reference_bconv=False, use_xnnpack=False):
        import larq_compute_engine as lce

        check_flatbuffer(flatbuffer)
        if int(num_threads) < 1:
            raise ValueError(f"`num_threads` must be >= 1, got {num_threads}.")
        self.flatbuffer = bytes(flatbuffer)
        self.interpreter = lce.testing.Interpreter(
            self.flatbuffer,
            num_threads=int(num_threads),
            use_reference_bconv=use_reference_bconv,
            use_indirect_bgemm=use_indirect_bgemm,
            use_xnnpack=use_xnnpack,
        )
        if len(self.interpreter.input_shapes) != 1 or len(self.interpreter.output_shapes) != 1:
            raise ValueError(
                "TFLiteModel supports models with one input and one output; use "
                "lce.testing.Interpreter directly for this flatbuffer."
            )
        self.input_shape = tuple(self.interpreter.input_shapes[0])
        self.output_shape = tuple(self.interpreter.output_shapes[0])

    @property
    def batch_size(self):
        """The flatbuffer's fixed batch size."""
        return int(self.input_shape[0])

    @property
    def size(self):
        """Size of the flatbuffer in bytes."""
        return len(self.flatbuffer)

    def op_counts(self):
        return op_counts(self.flatbuffer)

    def save(self, path):
        """Write the flatbuffer to `path`; returns the path."""
        return save_flatbuffer(self.flatbuffer, path)

    def predict(self, x, batch_size=None, verbose=None):
        """Run the interpreter on every sample of `x`.

        # Arguments
        x: array of shape `(n, *input_shape[1:])`; cast to the input dtype (float32).
        batch_size: samples per interpreter call. The flatbuffer fixes it, so only None or
            the flatbuffer's batch size are accepted; convert with
            `convert(model, batch_size=...)` for another one.
        verbose: show a tqdm progress bar; None shows one for inputs of 1000+ samples.

        # Returns
        Array of shape `(n, *output_shape[1:])`.

        # Raises
        ValueError: for a sample shape that differs from the model's, or a batch size the
            flatbuffer does not have.
        """
        fixed = self.batch_size
        if batch_size is not None and int(batch_size) != fixed:
            raise ValueError(
                f"This flatbuffer has a fixed batch size of {fixed} and the LCE interpreter "
                f"cannot resize it, so batch_size={batch_size} is not possible. Pass "
                f"batch_size=None, or convert with convert(model, batch_size={batch_size})."
            )
        x = np.asarray(x)
        sample_shape = self.input_shape[1:]
        if x.ndim != len(self.input_shape) or tuple(x.shape[1:]) != sample_shape:
            raise ValueError(
                f"Expected input of shape (n, {', '.join(map(str, sample_shape))}) for this "
                f"flatbuffer, got {x.shape}."
            )
        dtype = np.dtype(self.interpreter.input_types[0])
        if np.issubdtype(x.dtype, np.floating) and not np.issubdtype(dtype, np.floating):
            raise ValueError(
                f"This flatbuffer takes {dtype.name} inputs: quantize x first with "
                f"input_scales {self.interpreter.input_scales} and zero points "
                f"{self.interpreter.input_zero_points}, or convert with the default "
                "inference_input_type=tf.float32."
            )
        x = x.astype(dtype, copy=False)
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, *self.output_shape[1:]), dtype=np.float32)
        chunks = range(0, n, fixed)
        if verbose is None:
            verbose = n >= 1000
        if verbose:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, total=math.ceil(n / fixed), desc="TFLite predict", unit="batch")
        outputs = []
        for start in chunks:
            chunk = x[start:start + fixed]
            valid = chunk.shape[0]
            if valid < fixed:  # pad the last chunk to the fixed batch; padded rows are dropped
                pad = np.repeat(chunk[-1:], fixed - valid, axis=0)
                chunk = np.concatenate([chunk, pad])
            out = self.interpreter.interpreter.predict([np.ascontiguousarray(chunk)])[0]
            outputs.append(np.asarray(out)[:valid])
        return np.concatenate(outputs)

    def __repr__(self):
        return (f"TFLiteModel(input_shape={self.input_shape}, output_shape={self.output_shape}, "
                f"size={self.size} bytes)")


def compare_outputs(model, tflite_model, x, batch_size=32):
    """Agreement of a Keras model and its converted flatbuffer on the same inputs.

    # Arguments
    model: the Keras model.
    tflite_model: a `TFLiteModel` or flatbuffer bytes of the same model.
    x: inputs, shape `(n, ...)`.
    batch_size: Keras batch size.

    # Returns
    A dict: `max_abs_diff`, `mean_abs_diff` of the outputs, `argmax_agree` (number of samples
    with the same top class), `n`, and `argmax_agreement` (fraction).

    # Raises
    ValueError: when either output holds NaN or inf (the comparison would be meaningless).
    """
    if not isinstance(tflite_model, TFLiteModel):
        tflite_model = TFLiteModel(tflite_model)
    x = np.asarray(x, dtype=np.float32)
    keras_out = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    tflite_out = tflite_model.predict(x)
    if keras_out.shape != tflite_out.shape:
        raise ValueError(
            f"Keras output shape {keras_out.shape} differs from the flatbuffer's "
            f"{tflite_out.shape}: is the flatbuffer converted from this model?"
        )
    for name, out in (("Keras", keras_out), ("TFLite", tflite_out)):
        if not np.all(np.isfinite(out)):
            raise ValueError(f"The {name} output holds NaN or inf; check the model and inputs.")
    diff = np.abs(keras_out - tflite_out)
    flat_k = keras_out.reshape(len(x), -1)
    flat_t = tflite_out.reshape(len(x), -1)
    agree = int(np.sum(np.argmax(flat_k, axis=1) == np.argmax(flat_t, axis=1)))
    return {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "argmax_agree": agree,
        "n": int(len(x)),
        "argmax_agreement": agree / len(x) if len(x) else 1.0,
    }

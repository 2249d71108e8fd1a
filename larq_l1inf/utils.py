"""Shared helpers of the package: the one JSON writer, renamed arguments, `verbose`.

Every result this project writes as JSON (the `larq-l1inf` commands, `EvaluationResult`,
the benchmarks, the experiments) goes through `write_json`, so every file has the same
layout, folders are created alike, NumPy values are converted alike, and a NaN or inf never
reaches a file unannounced.
"""

import json
import math
import os
import tempfile

import numpy as np

__all__ = ["ends_in_softmax", "renamed_arguments", "write_atomic", "resolve_verbose", "to_json_value", "write_json"]


def to_json_value(value, where="data"):
    """Convert `value` to plain JSON types, refusing non-finite numbers.

    Dicts (string keys), lists and tuples are converted recursively; NumPy scalars and
    arrays become Python numbers and lists.

    # Arguments
    value: the data (dicts, lists, tuples, numbers, strings, booleans, None, NumPy values).
    where: the name of `value` in error messages.

    # Returns
    The same data made of `dict`, `list`, `str`, `int`, `float`, `bool` and `None`.

    # Raises
    ValueError: for a NaN or infinite number, naming its place (e.g. `data.models.keras`);
        store None for "not measured" instead.
    TypeError: for a value JSON cannot hold.
    """
    if isinstance(value, dict):
        return {str(k): to_json_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return to_json_value(value.tolist(), where)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(
                f"{where} is {float(value)}: JSON results must be finite numbers. Store None "
                "for a value that was not measured, or find why the computation diverged."
            )
        return float(value)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{where} has type {type(value).__name__}, which JSON cannot hold.")


def write_json(data, path, indent=2):
    """Write `data` as indented JSON to `path`, creating its folder.

    !!! example
        ```python
        from larq_l1inf.utils import write_json

        write_json({"accuracy": 0.93, "seeds": [0, 1]}, "results/run.json")
        ```

    # Arguments
    data: the result (see `to_json_value` for the accepted types).
    path: the file to write.
    indent: JSON indentation.

    # Returns
    `path`.

    # Raises
    ValueError: for NaN or infinite numbers in `data` (nothing is written).
    TypeError: for values JSON cannot hold.
    """
    write_atomic(path, json.dumps(to_json_value(data), indent=indent) + "\n")
    return path


def write_atomic(path, content):
    """Write text or bytes to `path` through a temporary file and a rename, creating its
    folder: a reader sees the old file or the whole new one, never half of it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    mode = "wb" if isinstance(content, (bytes, bytearray)) else "w"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def renamed_arguments(kwargs, renames, function, stacklevel=3):
    """Accept keyword arguments under their names of version 0.1.0, with a warning.

    For a function that takes `**kwargs` only to catch old names: each old name found in
    `kwargs` warns with a `DeprecationWarning` and is returned under its new name; any other
    name is a `TypeError`, as for a function without `**kwargs`.

    # Arguments
    kwargs: the `**kwargs` the function received.
    renames: dict old name -> new name.
    function: the function's name, for the messages.
    stacklevel: of the warning; 3 points at the caller of the function that calls this.

    # Returns
    A dict new name -> value of the old names given.

    # Raises
    TypeError: for a keyword argument that is neither a parameter nor an old name.
    """
    import warnings

    values = {}
    for name, value in kwargs.items():
        if name not in renames:
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}.")
        warnings.warn(
            f"{function}(): `{name}` is deprecated and will be removed in the next release; "
            f"use `{renames[name]}`.",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        values[renames[name]] = value
    return values


def resolve_verbose(verbose, auto):
    """Keras's `verbose` as an int: 0 silent, 1 progress bar, 2 one line per stage.

    # Arguments
    verbose: 0, 1, 2 or `"auto"`.
    auto: whether `"auto"` shows progress (e.g. for large inputs).

    # Returns
    0, 1 or 2.

    # Raises
    ValueError: for any other value.
    """
    if verbose == "auto":
        return int(bool(auto))
    if verbose not in (0, 1, 2) or isinstance(verbose, float):
        raise ValueError(f'`verbose` must be 0, 1, 2 or "auto", got {verbose!r}.')
    return int(verbose)


def ends_in_softmax(model):
    """Whether a model's last layer outputs probabilities (a softmax) rather than logits."""
    from larq_l1inf._keras import tf

    last = model.layers[-1] if getattr(model, "layers", None) else None
    if isinstance(last, tf.keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is tf.keras.activations.softmax or getattr(
        activation, "__name__", ""
    ) == "softmax"

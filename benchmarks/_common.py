"""What the benchmark scripts share: the JSON writer (`larq_l1inf.utils.write_json`, the one
writer, re-exported) and `time_calls`."""

import time

from larq_l1inf._keras import tf
from larq_l1inf.utils import write_json  # noqa: F401


def time_calls(fn, calls):
    """Mean seconds of `calls` calls of `fn`, each waited for by copying its outputs to host."""
    start = time.perf_counter()
    for _ in range(calls):
        tf.nest.map_structure(lambda t: t.numpy(), fn())  # host copy: the call has finished
    return (time.perf_counter() - start) / calls

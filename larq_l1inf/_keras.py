"""Make sure the Keras that larq and LCE need (tf_keras, Keras 2) is the active one.

Importing this module before TensorFlow sets ``TF_USE_LEGACY_KERAS=1``; if TensorFlow is
already imported with Keras 3 active, it raises instead of failing later in larq.
"""

import os
import sys

_HINT = (
    "larq_l1inf needs Keras 2 (the tf_keras package), as larq and larq-compute-engine do. "
    "Set the environment variable TF_USE_LEGACY_KERAS=1 before TensorFlow is imported "
    "(or import larq_l1inf before tensorflow) and make sure tf_keras 2.16 is installed."
)


def ensure_legacy_keras():
    """Set ``TF_USE_LEGACY_KERAS=1`` if TensorFlow is not yet imported; verify Keras 2 after."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        # The command line hides TensorFlow's C++ start-up lines (cuFFT, cuDNN...) unless -v.
        if os.path.basename(sys.argv[0]) == "larq-l1inf" and not {"-v", "--verbose"} & set(
            sys.argv[1:]
        ):
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    # tf.keras is a lazy loader; the module of its Layer class says which Keras it resolved to.
    module = tf.keras.layers.Layer.__module__
    if not module.startswith("tf_keras"):
        version = getattr(tf.keras, "__version__", "3")
        raise ImportError(f"TensorFlow is using Keras {version} ({module}). {_HINT}")
    return tf


tf = ensure_legacy_keras()

"""Shared test set-up: Keras 2 before TensorFlow, quiet logs, seeded runs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import larq_l1inf  # noqa: E402,F401 - sets TF_USE_LEGACY_KERAS before anything imports TF
import pytest  # noqa: E402

from larq_l1inf._keras import tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_clear():
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    yield

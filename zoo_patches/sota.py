"""larq-zoo sota models (QuickNet, QuickNetSmall, QuickNetLarge) with `kernel_regularizer=`."""

import larq_l1inf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before larq_zoo imports TensorFlow)
import larq_zoo

from zoo_patches._wrap import wrap_module

__all__ = wrap_module(larq_zoo.sota, globals())

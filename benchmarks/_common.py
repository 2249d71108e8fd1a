"""Deprecated: benchmarks write JSON with `larq_l1inf.utils.write_json` (the one writer).

Kept for one release so scripts that still run `from _common import write_json` work.
"""

from larq_l1inf.utils import write_json  # noqa: F401

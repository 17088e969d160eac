"""The second proxy benchmark: a teacher shaped like SAM ViT-B (one global layer in three, a 32 x 32
grid in 7-token windows with partial edge windows), objects sized in tokens as SAM sees COCO, and
the big.LITTLE student against dense students of the same encoder cost, distilled the same way.

- :mod:`.settings`: the geometry, budgets and the dense students' matching (before any stage).
- :mod:`.pipeline`: the stages; :mod:`.rows`: MACs, one-process CPU latency, token-size bins and
  the router's capacity share; :mod:`.report`: targets, the frontier table and plot.
- :mod:`.cli`: ``python -m experiments.proxy2`` (``make proxy-benchmark-v2``).
"""

from .pipeline import run_proxy_v2
from .settings import GEOMETRIES, ProxyV2Settings, dense_matches

__all__ = ["GEOMETRIES", "ProxyV2Settings", "dense_matches", "run_proxy_v2"]

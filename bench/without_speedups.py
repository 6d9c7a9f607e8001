"""``python bench/without_speedups.py -m MODULE ARGS...``: run a module as ``python -m`` would,
with ``websockets.speedups`` hidden, so that anpx masks WebSocket frames in pure Python
(wsproto's own masker) as it did before ``anpx_core.wsmask``. ``compare.py`` runs the pairings
both ways in one run to measure what the C masking gains.
"""

from __future__ import annotations

import runpy
import sys

sys.modules["websockets.speedups"] = None  # type: ignore[assignment]  # import -> ImportError

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        sys.exit(__doc__)
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)

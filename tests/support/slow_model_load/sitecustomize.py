"""Put this folder on PYTHONPATH to make tiny-random load slowly: `SLOW_MODEL_LOAD_S` seconds per load.

Tests only (tests/integration/test_slow_model_load.py): a real model load takes tens of seconds on a replacement
pool process, tiny-random takes a fraction of one. Python imports `sitecustomize` at start-up, before the worker
imports the model loader, which then binds the slowed builder.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

_DELAY_S = float(os.environ.get("SLOW_MODEL_LOAD_S", "0"))

# Only the embedder worker (`python -m services.cli.main worker embedder ...`): the other processes of the test
# stack see the same environment and stay as they are.
if _DELAY_S > 0 and sys.argv[1:3] == ["worker", "embedder"]:
    import services.embedder.model_tiny as _model_tiny

    _build = _model_tiny.build_tiny_random

    def _slow_build(*args: Any, **kwargs: Any) -> Any:
        sys.stderr.write(f"slow model load: sleeping {_DELAY_S:g} s in process {os.getpid()}\n")
        sys.stderr.flush()
        time.sleep(_DELAY_S)
        return _build(*args, **kwargs)

    _model_tiny.build_tiny_random = _slow_build

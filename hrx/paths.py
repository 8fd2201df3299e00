"""Where HRX keeps files it can rebuild: ONNX exports of bundled models, TensorRT engines."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$HRX_CACHE_DIR``, else ``$XDG_CACHE_HOME/hrx``, else ``~/.cache/hrx``."""
    if os.environ.get("HRX_CACHE_DIR"):
        return Path(os.environ["HRX_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hrx"

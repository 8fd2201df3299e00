"""Import spandrel whether or not a working torchvision is installed.

spandrel imports torchvision at import time for two architectures that are not super-resolution:
``LaMa`` (``InterpolationMode``, ``rotate`` from ``torchvision.transforms.functional``) and
``RestoreFormer`` (``normalize`` from the same module). Those are the only torchvision names in
spandrel 0.4.x (checked in its source). A CPU torch paired with the CUDA torchvision that PyPI
resolves fails with "operator torchvision::nms does not exist", and a lean install has no torchvision
at all, so a plain ``import spandrel`` fails although no super-resolution architecture needs it.

:func:`import_spandrel` imports the real torchvision when it works. When it is absent or broken it
puts a stand-in with just those three names into ``sys.modules`` *for the duration of*
``import spandrel`` (then removes it again, so nothing else sees a fake torchvision), and prints one
line saying so (:func:`announce`, once, when a third-party model is loaded). ``normalize`` is the exact formula; ``rotate`` raises, so LaMa fails loudly instead of
computing something wrong.
"""
from __future__ import annotations

import enum
import importlib
import sys
import threading
import types
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

SPANDREL_RANGE = (">=0.4.2", "<0.5")  # the versions whose architecture set and torchvision use were checked
INSTALL_HINT = 'pip install --no-deps "spandrel>=0.4.2,<0.5" einops  (--no-deps: spandrel\'s torchvision is not needed)'

_state: dict[str, Any] = {"module": None, "problem": None, "notice": None}
# one import at a time: the stand-in goes into sys.modules and out again, and _state is written once
_lock = threading.RLock()


class InterpolationMode(enum.Enum):
    """Same members and values as ``torchvision.transforms.InterpolationMode``."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def normalize(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> torch.Tensor:
    """``torchvision.transforms.functional.normalize`` for tensors: ``(x - mean) / std`` per channel."""
    import torch

    out = tensor if inplace else tensor.clone()
    mean_t = torch.as_tensor(mean, dtype=out.dtype, device=out.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=out.dtype, device=out.device).view(-1, 1, 1)
    return out.sub_(mean_t).div_(std_t)


def rotate(*args: Any, **kwargs: Any):
    """Stand-in for ``torchvision.transforms.functional.rotate``: raises, naming what is missing."""
    raise RuntimeError("torchvision is not available here (hrx put a stand-in in its place); the spandrel "
                       "architecture that called torchvision.transforms.functional.rotate (LaMa) needs the real one")


def _stand_in() -> dict[str, types.ModuleType]:
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    functional.normalize = normalize  # type: ignore[attr-defined]
    functional.rotate = rotate  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    transforms.InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    root.transforms = transforms  # type: ignore[attr-defined]
    root.__hrx_stand_in__ = True  # type: ignore[attr-defined]
    root.__version__ = "0+hrx.stand-in"  # type: ignore[attr-defined]
    return {m.__name__: m for m in (root, transforms, functional)}


def torchvision_problem() -> str | None:
    """``None`` when ``import torchvision`` works, else why not (one line)."""
    try:
        importlib.import_module("torchvision.transforms.functional")
        return None
    except Exception as e:  # noqa: BLE001 - a broken C extension raises RuntimeError, not ImportError
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # drop half-imported submodules of the broken package
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"{type(e).__name__}: {text}"


def import_spandrel():
    """The ``spandrel`` module, or ``None`` when it is not installed (see :func:`spandrel_problem`).
    Thread-safe: concurrent callers wait for the first import and share its result."""
    if _state["module"] is not None or _state["problem"] is not None:
        return _state["module"]
    with _lock:
        return _import_once()


def _import_once():
    if _state["module"] is not None or _state["problem"] is not None:
        return _state["module"]
    if importlib.util.find_spec("spandrel") is None:
        _state["problem"] = f"spandrel is not installed ({INSTALL_HINT})"
        return None
    tv_problem = torchvision_problem()
    saved = {}
    if tv_problem is not None:
        saved = {n: sys.modules.get(n) for n in _stand_in()}
        sys.modules.update(_stand_in())
    try:
        module = importlib.import_module("spandrel")
    except Exception as e:  # noqa: BLE001
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _state["problem"] = f"spandrel is installed but does not import ({type(e).__name__}: {text})"
        return None
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    if tv_problem is not None:
        _state["notice"] = (f"hrx: torchvision unusable ({tv_problem}); spandrel loaded with a stand-in, "
                            "so its image-to-image architectures work; LaMa (inpainting, needs torchvision's rotate) does not")
    _state["module"] = module
    return module


def spandrel_problem() -> str | None:
    """``None`` when spandrel imports, else one line saying why not and how to install it."""
    import_spandrel()
    return _state["problem"]


def stand_in_notice() -> str | None:
    """The line printed when the torchvision stand-in was used (``None`` when the real one was)."""
    return _state["notice"]


def announce() -> None:
    """Print the stand-in line to stderr once per process (nothing when the real torchvision is used)."""
    if _state["notice"] and not _state.get("announced"):
        _state["announced"] = True
        print(_state["notice"], file=sys.stderr)

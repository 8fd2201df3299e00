"""Re-exports :class:`hrx.interface.Backend`, the base class every inference backend implements
(its home is below export and runtime)."""
from hrx.interface import Backend

__all__ = ["Backend"]

"""The compiled twins (``tickvault._indicators``, C) of the incremental indicators
(:class:`.incremental.PySMA` and the other ``Py`` classes), of :class:`.bundle.PyIndicatorSet`'s
update and of the numpy ATR and MACD, or None when the extension is not built (no C compiler at
install time): then the Python and numpy forms run, with the same results, slower.

Which pieces are compiled, and why only these, is said in ``src/tickvault/_indicators.c``.
"""

from __future__ import annotations

import logging
from types import ModuleType

log = logging.getLogger("tickvault.indicators")

_FORMAT_VERSION = 3  # what the Python side expects of the module; a stale build is not used

compiled: ModuleType | None
try:
    from tickvault import _indicators as compiled

    if getattr(compiled, "FORMAT_VERSION", None) != _FORMAT_VERSION:
        raise ImportError(f"tickvault._indicators has format {getattr(compiled, 'FORMAT_VERSION', None)}, "
                          f"this package needs {_FORMAT_VERSION}: rebuild with `pip install -e .`")
except ImportError as exc:
    compiled = None
    log.warning("tickvault._indicators is not available (%s); the indicators run in Python "
                "(slower)", exc)

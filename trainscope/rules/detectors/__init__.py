"""Importing this package registers every detector (`@detector(name)` in each module).

A module that fails to import (e.g. still being written) is recorded in IMPORT_ERRORS instead of
breaking the whole engine; the catalogue consistency test reports rules left without a detector.
"""
from __future__ import annotations

import importlib
import pkgutil

# every module of this package except private helpers (_common), in a stable order
MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))
IMPORT_ERRORS: dict[str, str] = {}

for _module in MODULES:
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{_module}":
            IMPORT_ERRORS[_module] = f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - one broken module must not disable the others
        IMPORT_ERRORS[_module] = f"{type(e).__name__}: {e}"

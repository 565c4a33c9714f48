"""Names a package exports but imports on first use (PEP 562), so importing the package stays
light: ``import glassformer`` or building a command's ``--help`` does not import torch.

    __getattr__, __dir__ = lazy_exports(__name__, globals(), {"Trainer": ".trainer", ...})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any],
                 exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: each name of ``exports`` (name -> module, absolute
    or relative to the package) is imported when first asked for, then kept in ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__

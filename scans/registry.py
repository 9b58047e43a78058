"""Name -> scan-pattern factory."""
from __future__ import annotations

import inspect
from typing import Callable

from .base import ScanPattern

_SCANS: dict[str, Callable[..., ScanPattern]] = {}


def register_scan(name: str):
    """Decorator registering a factory (a ScanPattern subclass or function) under ``name``."""
    def wrap(factory):
        if name in _SCANS:
            raise KeyError(f"scan pattern {name!r} is already registered")
        _SCANS[name] = factory
        return factory
    return wrap


def list_scans() -> list[str]:
    return sorted(_SCANS)


def build(name: str, **options) -> ScanPattern:
    """Build the scan pattern registered as ``name`` with its options."""
    if name not in _SCANS:
        raise KeyError(f"unknown scan pattern {name!r}; available: {', '.join(list_scans())}")
    factory = _SCANS[name]
    signature = inspect.signature(factory)
    try:
        signature.bind(**options)
    except TypeError as err:
        raise ValueError(f"scan pattern {name!r} takes options {signature}; got {options}: {err}") from None
    return factory(**options)

"""Selective-scan operator shared by every vssm model: one entry point, several backends."""
from .selective_scan import list_backends, register_backend, resolve_backend, selective_scan

__all__ = ["selective_scan", "register_backend", "list_backends", "resolve_backend"]

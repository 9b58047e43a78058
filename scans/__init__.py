"""Registry of 2D scan patterns: (B, C, H, W) maps <-> K token sequences."""
from . import patterns as _patterns  # noqa: F401  (registers the built-in patterns)
from .base import PAD, ScanPattern
from .registry import build, list_scans, register_scan

__all__ = ["build", "list_scans", "register_scan", "ScanPattern", "PAD"]

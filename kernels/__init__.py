"""Selective-scan operator shared by every vssm model: one entry point, several backends, and its fused
form over a 2D map along a scan pattern; the state-space-duality (SSD, Mamba-2) forms beside it."""
from .scan2d import scan2d
from .selective_scan import list_backends, register_backend, resolve_backend, selective_scan
from .ssd import list_ssd_backends, register_ssd_backend, ssd_bidirectional, ssd_causal, ssd_noncausal
from .step_sizes import project_step_sizes

__all__ = ["selective_scan", "scan2d", "project_step_sizes", "register_backend", "list_backends", "resolve_backend",
           "ssd_causal", "ssd_noncausal", "ssd_bidirectional", "register_ssd_backend", "list_ssd_backends"]

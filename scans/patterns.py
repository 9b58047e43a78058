"""The registered scan patterns of the published visual SSMs."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .base import PAD, ScanPattern, column_major, grid, pad_grid, row_major
from .registry import register_scan

# A direction maps (H, W) to a 1D token order over the flat map (PAD for padding tokens).
Direction = Callable[[int, int], torch.Tensor]


def flipped(direction: Direction) -> Direction:
    return lambda H, W: direction(H, W).flip(0)


class DirectionalScan(ScanPattern):
    """One sequence per direction; all directions must give the same length for a size."""

    def __init__(self, name: str, directions: Sequence[Direction], split_channels: bool = False):
        super().__init__(len(directions))
        self.name = name
        self.directions = tuple(directions)
        self.split_channels = split_channels

    def build_index(self, H: int, W: int) -> torch.Tensor:
        return torch.stack([d(H, W) for d in self.directions])


CROSS_DIRECTIONS = (row_major, column_major, flipped(row_major), flipped(column_major))


@register_scan("cross")
def cross() -> ScanPattern:
    """VMamba SS2D: row-major, column-major, reversed row-major, reversed column-major."""
    return DirectionalScan("cross", CROSS_DIRECTIONS)


@register_scan("group")
def group() -> ScanPattern:
    """GroupMamba: the four cross orders, but channel group k (C // 4 contiguous channels) only in direction k."""
    return DirectionalScan("group", CROSS_DIRECTIONS, split_channels=True)

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


def windowed(size: int) -> Direction:
    """Row-major over ``size x size`` windows, row-major inside each window. A map whose sides are not
    multiples of ``size`` is padded at the bottom/right; the pad slots stay in the sequence as ``PAD``."""
    def order(H: int, W: int) -> torch.Tensor:
        padded = pad_grid(grid(H, W), size, size)
        Hp, Wp = padded.shape
        return padded.view(Hp // size, size, Wp // size, size).permute(0, 2, 1, 3).reshape(-1)
    return order


WINDOW_DIRECTIONS = {
    "h": row_major, "h_flip": flipped(row_major),
    "v": column_major, "v_flip": flipped(column_major),
    "w2": windowed(2), "w2_flip": flipped(windowed(2)),
    "w7": windowed(7), "w7_flip": flipped(windowed(7)),
}


class EndPaddedScan(DirectionalScan):
    """Directions of different lengths: the shorter sequences get ``PAD`` at the end (causal scan: harmless)."""

    def build_index(self, H: int, W: int) -> torch.Tensor:
        orders = [d(H, W) for d in self.directions]
        length = max(len(o) for o in orders)
        return torch.stack([torch.cat([o, o.new_full((length - len(o),), PAD)]) for o in orders])


@register_scan("window")
def window(directions: Sequence[str]) -> ScanPattern:
    """LocalMamba: one sequence per named direction, in the given order (``h``, ``v``: row / column-major;
    ``w2``, ``w7``: windowed; ``*_flip``: the whole sequence, pad slots included, reversed)."""
    if isinstance(directions, str) or len(directions) == 0:
        raise ValueError(f"window: directions must be a non-empty list of names from {', '.join(WINDOW_DIRECTIONS)}")
    unknown = [d for d in directions if d not in WINDOW_DIRECTIONS]
    if unknown:
        raise ValueError(f"window: unknown direction(s) {', '.join(map(repr, unknown))}; valid: "
                         f"{', '.join(WINDOW_DIRECTIONS)}")
    return EndPaddedScan("window", [WINDOW_DIRECTIONS[d] for d in directions])



class AtrousScan(ScanPattern):
    """EfficientVMamba ES2D (step 2): four skip-sampled sub-grids, each position in exactly one sequence, so the
    merge places every output back (no sum of overlaps). Odd sides are padded at the bottom/right and the PAD
    slots stay inside the sequences (input zero, output dropped), as in the official EfficientScan."""

    name = "atrous"
    sequences_cover_map = False

    def __init__(self, step: int = 2):
        if step != 2:
            raise ValueError(f"atrous: only step=2 (the official ES2D) is implemented, got step={step!r}")
        super().__init__(4)
        self.step = step

    def build_index(self, H: int, W: int) -> torch.Tensor:
        padded = pad_grid(grid(H, W), 2, 2)
        return torch.stack([
            padded[0::2, 0::2].reshape(-1),      # (even row, even col), row-major
            padded[1::2, 0::2].t().reshape(-1),  # (odd row, even col), column-major
            padded[0::2, 1::2].reshape(-1),      # (even row, odd col), row-major
            padded[1::2, 1::2].t().reshape(-1),  # (odd row, odd col), column-major
        ])


@register_scan("atrous")
def atrous(step: int = 2) -> ScanPattern:
    """EfficientVMamba ES2D atrous scan (see :class:`AtrousScan`)."""
    return AtrousScan(step)

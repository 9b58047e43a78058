"""Scan patterns as data: an index map per feature-map size, plus gather (flatten) and its inverse (merge)."""
from __future__ import annotations

import contextlib
import itertools
import weakref
from functools import lru_cache
from typing import Sequence

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

PAD = -1  # index-map value of a padding token: zero on input, output dropped on merge
_LIVE_PATTERNS: "weakref.WeakValueDictionary[str, ScanPattern]" = weakref.WeakValueDictionary()  # key -> pattern
_KEYS = itertools.count()


class ScanPattern:
    """K one-dimensional token orders over an (H, W) map.

    Subclasses define :meth:`build_index`. ``split_channels=False``: every sequence sees all C channels.
    ``split_channels=True``: channel group k (``C // K`` contiguous channels) goes to sequence k only.
    ``sequences_cover_map``: every sequence visits every position (False: each visits a part of the map).
    """

    name: str = "pattern"
    split_channels: bool = False
    sequences_cover_map: bool = True

    def __init__(self, num_sequences: int):
        self.K = num_sequences
        self.key = f"{type(self).__name__}-{next(_KEYS)}"  # names this instance in the compiled-graph index op
        _LIVE_PATTERNS[self.key] = self

    def build_index(self, H: int, W: int) -> torch.Tensor:
        """``(K, L)`` int64 tensor of flat positions ``h * W + w`` (``PAD`` for padding tokens); no position twice
        in one sequence (:meth:`merge` reads each position's output once per sequence)."""
        raise NotImplementedError

    def index_map(self, H: int, W: int) -> torch.Tensor:
        """Cached :meth:`build_index` for this size (on the CPU)."""
        if H < 1 or W < 1:
            raise ValueError(f"{self.name}: feature map must be at least 1x1, got {H}x{W}")
        return _cached_index(self, int(H), int(W))

    def sequence_length(self, H: int, W: int) -> int:
        return self.device_index(H, W, "cpu").shape[1]

    def channels_per_sequence(self, channels: int) -> int:
        if not self.split_channels:
            return channels
        if channels % self.K:
            raise ValueError(f"{self.name}: {channels} channels cannot be split into {self.K} equal groups")
        return channels // self.K

    def device_index(self, H: int, W: int, device: torch.device, dtype: torch.dtype = torch.int64,
                     pad: int = PAD) -> torch.Tensor:
        """The index map on ``device`` in ``dtype``, ``PAD`` replaced by ``pad``; cached per (size, device).

        Under ``torch.compile`` it is the opaque op ``vssm::scan_index``: traced through, the map would be rebuilt
        by CPU ops and copied from the host (a stream synchronisation) in every call of the compiled graph."""
        if torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export():
            return torch.ops.vssm.scan_index(self.key, int(H), int(W), torch.device(device), dtype, int(pad))
        with traced_constants():
            return _cached_device_index(self, int(H), int(W), torch.device(device), dtype, int(pad))

    def _device_index(self, H: int, W: int, device: torch.device) -> torch.Tensor:
        """Index map with ``PAD`` replaced by ``H * W`` (a zero slot appended to the flat map)."""
        return self.device_index(H, W, device, pad=H * W)

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` (any memory format) -> ``(B, K, C_k, L)``."""
        if x.dim() != 4:
            raise ValueError(f"{self.name}.flatten expects (B, C, H, W), got shape {tuple(x.shape)}")
        batch, channels, H, W = x.shape
        c_k = self.channels_per_sequence(channels)
        if self.split_channels:
            return self.gather(x.reshape(batch, self.K, c_k, H, W))
        index = self._device_index(H, W, x.device)
        flat = torch.cat([x.reshape(batch, channels, H * W), x.new_zeros(batch, channels, 1)], dim=2)
        # index_select: its backward is an index_add (advanced indexing's is a sort-based index_put, ~10x slower)
        tokens = flat.index_select(2, index.reshape(-1)).view(batch, channels, self.K, index.shape[1])
        return tokens.transpose(1, 2)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, K, c, H, W)`` -> ``(B, K, c, L)``: slice k read in the order of sequence k (zero at padding).

        For per-sequence quantities computed on the 2D map (e.g. the K projections of every token)."""
        if t.dim() != 5 or t.shape[1] != self.K:
            raise ValueError(f"{self.name}.gather expects (B, {self.K}, c, H, W), got shape {tuple(t.shape)}")
        batch, K, c, H, W = t.shape
        index = self._device_index(H, W, t.device)
        flat = torch.cat([t.reshape(batch, K, c, H * W), t.new_zeros(batch, K, c, 1)], dim=3)
        return flat.gather(3, index[None, :, None, :].expand(batch, K, c, index.shape[1]))

    def _sequences_index(self, y: torch.Tensor, size: Sequence[int], caller: str) -> torch.Tensor:
        """The device index map for ``size``, after checking that ``y`` holds K sequences of its length."""
        H, W = size
        index = self._device_index(H, W, y.device)
        if y.dim() != 4 or y.shape[1] != self.K or y.shape[3] != index.shape[1]:
            raise ValueError(f"{self.name}.{caller} expects (B, {self.K}, C_k, {index.shape[1]}) for a {H}x{W} map, "
                             f"got {tuple(y.shape)}")
        return index

    def merge(self, y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """``(B, K, C_k, L)`` -> ``(B, C, H, W)``: each token's output added back at its position."""
        H, W = size
        self._sequences_index(y, size, "merge")  # checks the shape
        batch, _, c_k, length = y.shape
        if self.split_channels:
            return self.scatter(y, size).reshape(batch, self.K * c_k, H, W)
        # a gather and a sum, no scatter-add: its ONNX form (ScatterND, reduction add, repeated targets) gave wrong
        # sums in onnxruntime's CPU provider, different from run to run
        source = self.merge_source(H, W, y.device)
        padded = torch.cat([y, y.new_zeros(batch, self.K, c_k, 1)], dim=3)  # step `length`: zero
        picked = padded.transpose(1, 2).reshape(batch, c_k, self.K * (length + 1)).index_select(2, source)
        return picked.view(batch, c_k, self.K, H * W).sum(2).view(batch, c_k, H, W)

    def merge_source(self, H: int, W: int, device: torch.device) -> torch.Tensor:
        """``(K * H * W,)`` int64, cached per (size, device): for sequence k and position p, where p's output
        sits in the K sequences laid end to end, each followed by one zero step: ``k * (L + 1) + t`` if sequence
        k visits p at step t, else ``k * (L + 1) + L``. Under ``torch.compile`` the op ``vssm::scan_merge_source``."""
        if torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export():
            return torch.ops.vssm.scan_merge_source(self.key, int(H), int(W), torch.device(device))
        with traced_constants():
            return _cached_merge_source(self, int(H), int(W), torch.device(device))

    def scatter(self, y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """``(B, K, c, L)`` -> ``(B, K, c, H, W)``: the inverse of :meth:`gather`, each sequence's outputs at their
        positions in a map of its own (zero where a sequence does not pass; padding tokens dropped)."""
        H, W = size
        index = self._sequences_index(y, size, "scatter")
        batch, K, c, length = y.shape
        out = y.new_zeros(batch, K, c, H * W + 1)
        out = out.scatter_add(3, index[None, :, None, :].expand(batch, K, c, length), y)
        return out[..., : H * W].reshape(batch, K, c, H, W)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, K={self.K}, split_channels={self.split_channels})"


def traced_constants():
    """Context for building cached constant tensors: under ``torch.onnx.export`` (a ``torch.export`` trace with
    fake tensors) they are built as real tensors, so the cache never keeps a fake one for later eager calls;
    the trace takes them as constants. Elsewhere a no-op."""
    return unset_fake_temporarily() if torch.onnx.is_in_onnx_export() else contextlib.nullcontext()


@lru_cache(maxsize=256)
def _cached_index(pattern: ScanPattern, H: int, W: int) -> torch.Tensor:
    index = pattern.build_index(H, W).to(torch.int64)
    if index.dim() != 2 or index.shape[0] != pattern.K:
        raise AssertionError(f"{pattern.name}: index map must be (K={pattern.K}, L), got {tuple(index.shape)}")
    return index


@lru_cache(maxsize=256)
def _cached_device_index(pattern: ScanPattern, H: int, W: int, device: torch.device, dtype: torch.dtype,
                         pad: int) -> torch.Tensor:
    index = pattern.index_map(H, W)
    return torch.where(index == PAD, pad, index).to(device=device, dtype=dtype)


@lru_cache(maxsize=256)
def _cached_merge_source(pattern: ScanPattern, H: int, W: int, device: torch.device) -> torch.Tensor:
    index = pattern.index_map(H, W)
    K, length = index.shape
    source = torch.full((K, H * W + 1), length, dtype=torch.int64)  # slot H * W: where padding tokens land
    source.scatter_(1, torch.where(index == PAD, H * W, index), torch.arange(length).expand(K, length))
    return (source[:, :-1] + torch.arange(K)[:, None] * (length + 1)).reshape(-1).to(device)


@torch.library.custom_op("vssm::scan_merge_source", mutates_args=())
def _scan_merge_source_op(key: str, H: int, W: int, device: torch.device) -> torch.Tensor:
    """:meth:`ScanPattern.merge_source` of the live pattern ``key`` (a copy)."""
    return _cached_merge_source(_LIVE_PATTERNS[key], H, W, device).clone()


@_scan_merge_source_op.register_fake
def _(key, H, W, device):
    return torch.empty(_LIVE_PATTERNS[key].K * H * W, device=device, dtype=torch.int64)


@torch.library.custom_op("vssm::scan_index", mutates_args=())
def _scan_index_op(key: str, H: int, W: int, device: torch.device, dtype: torch.dtype, pad: int) -> torch.Tensor:
    """:meth:`ScanPattern.device_index` of the live pattern ``key`` (a copy: an op's output owns its memory)."""
    return _cached_device_index(_LIVE_PATTERNS[key], H, W, device, dtype, pad).clone()


@_scan_index_op.register_fake
def _(key, H, W, device, dtype, pad):
    pattern = _LIVE_PATTERNS[key]
    with unset_fake_temporarily():  # the real (cached) CPU map, not a fake one built under the tracer
        length = pattern.index_map(H, W).shape[1]
    return torch.empty(pattern.K, length, device=device, dtype=dtype)


# --- building blocks for index maps ------------------------------------------------------------------

def grid(H: int, W: int) -> torch.Tensor:
    """``(H, W)`` tensor of flat positions."""
    return torch.arange(H * W).view(H, W)


def row_major(H: int, W: int) -> torch.Tensor:
    return grid(H, W).reshape(-1)


def column_major(H: int, W: int) -> torch.Tensor:
    return grid(H, W).t().reshape(-1)


def pad_grid(positions: torch.Tensor, multiple_h: int, multiple_w: int) -> torch.Tensor:
    """Pad an ``(H, W)`` position grid at the bottom/right with ``PAD`` up to the given multiples."""
    H, W = positions.shape
    Hp, Wp = -(-H // multiple_h) * multiple_h, -(-W // multiple_w) * multiple_w
    out = torch.full((Hp, Wp), PAD, dtype=positions.dtype)
    out[:H, :W] = positions
    return out

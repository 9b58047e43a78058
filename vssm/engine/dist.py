"""One code path for a single process and for ``torchrun`` (DDP), on timm's process-group set-up."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List

import contextlib

import torch
import torch.distributed as td


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                td.barrier(device_ids=[self.device.index])
            else:
                td.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            td.all_reduce(t, op=td.ReduceOp.SUM)
        return t

    def all_gather_object(self, obj: Any) -> List[Any]:
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        td.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        td.broadcast_object_list(box, src=src)
        return box[0]


def init(device_pref: str = "auto") -> DistEnv:
    """timm's ``init_distributed_device_so``: the process group when launched by torchrun (WORLD_SIZE > 1; NCCL on
    GPUs, gloo on CPU) and the device."""
    from timm.utils.distributed import init_distributed_device_so
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    info = init_distributed_device_so("cuda" if use_cuda else "cpu")
    return DistEnv(rank=info["global_rank"], local_rank=info["local_rank"], world_size=info["world_size"],
                   device=torch.device(info["device"]))


def cleanup() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def autocast(device: torch.device, amp: str):
    """Autocast for ``amp`` (none | bf16 | fp16) on the device's type."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

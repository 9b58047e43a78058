"""One code path for a single process and for ``torchrun`` (DDP): NCCL on GPUs, gloo on CPU."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List

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
    """Set up the process group when launched by torchrun (WORLD_SIZE > 1), pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    if use_cuda:
        n = torch.cuda.device_count()
        device = torch.device("cuda", local_rank % n)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not td.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": device} if use_cuda else {}
        td.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **kwargs)
        rank, world = td.get_rank(), td.get_world_size()
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=device)


def cleanup() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()

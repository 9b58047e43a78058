"""Data pipeline: ImageFolder datasets with timm transforms, distributed samplers, mixup and loss.

Training augmentation is made a pure function of (seed, epoch, sample index): each sample reseeds the
random generators before its transform runs.  Results therefore do not depend on the number of
workers or on whether a run was resumed, and ``--resume`` reproduces an uninterrupted run, also from a
mid-epoch recovery checkpoint (the samplers skip the batches already trained on).
"""
from __future__ import annotations

import random
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from timm.data import Mixup, create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info


def resolve_norm(cfg, model: Optional[torch.nn.Module] = None) -> Tuple[tuple, tuple]:
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = cfg.data.mean if cfg.data.mean is not None else pretrained_cfg.get("mean", IMAGENET_DEFAULT_MEAN)
    std = cfg.data.std if cfg.data.std is not None else pretrained_cfg.get("std", IMAGENET_DEFAULT_STD)
    return tuple(mean), tuple(std)


def build_transforms(cfg, mean, std, is_training: bool):
    d, a = cfg.data, cfg.aug
    if not is_training:
        return create_transform(d.img_size, is_training=False, interpolation=d.interpolation, mean=mean, std=std,
                                crop_pct=d.crop_pct)
    return create_transform(d.img_size, is_training=True, scale=tuple(a.scale), ratio=tuple(a.ratio), hflip=a.hflip,
                            color_jitter=a.color_jitter or 0.0, auto_augment=a.auto_augment or None,
                            interpolation=d.interpolation, mean=mean, std=std, re_prob=a.re_prob, re_mode=a.re_mode,
                            re_count=a.re_count)


class SeededDataset(Dataset):
    """Wraps a dataset; items are fetched by (epoch, index) with RNGs seeded from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self):
        return len(self.dataset)

    def _sample_seed(self, epoch: int, index: int) -> int:
        # a simple integer mix; distinct (seed, epoch, index) give distinct 63-bit seeds
        x = (self.seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB)
        x ^= x >> 29
        return x & 0x7FFFFFFFFFFFFFFF

    def __getitem__(self, key):
        epoch, index = key
        s = self._sample_seed(int(epoch), int(index))
        if get_worker_info() is not None:    # worker process: its RNG streams are ours to set
            return self._fetch(index, s)
        # main process (workers=0): keep the training process' own RNG streams untouched
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                return self._fetch(index, s)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def _fetch(self, index, s):
        random.seed(s)
        np.random.seed(s % (2 ** 32))
        torch.manual_seed(s)
        return self.dataset[index]


class DistributedEvalSampler(DistributedSampler):
    """DistributedSampler for evaluation without padding: every sample is seen exactly once overall."""

    def __init__(self, dataset, num_replicas=None, rank=None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(self.rank, len(self.dataset), self.num_replicas))
        self.total_size = len(self.dataset)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


class EpochIndexSampler(Sampler):
    """Yields (epoch, index) pairs from a DistributedSampler, for :class:`SeededDataset`; ``set_epoch(e, skip)``
    leaves out the first ``skip`` samples of epoch ``e`` (resuming inside an epoch)."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator:
        return ((self.epoch, i) for n, i in enumerate(self.sampler) if n >= self.skip)

    def __len__(self):
        return len(self.sampler) - self.skip


def _loader(cfg, dataset, sampler, batch_size, generator, workers, device_is_cuda, **kwargs) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=generator, num_workers=workers,
                      pin_memory=cfg.data.pin_memory and device_is_cuda,
                      persistent_workers=cfg.data.persistent_workers and workers > 0, **kwargs)


def build_train_loader(cfg, root: str, mean, std, rank: int, world: int, device_is_cuda: bool):
    from torchvision.datasets import ImageFolder
    dataset = ImageFolder(root, transform=build_transforms(cfg, mean, std, True))
    sampler = EpochIndexSampler(DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                   seed=cfg.train.seed, drop_last=True))
    # a private generator: creating loader iterators must not consume the training process' global RNG
    # (else a resumed run, which creates its persistent workers one epoch later, would diverge)
    generator = torch.Generator().manual_seed(cfg.train.seed * 7919 + rank)
    workers = cfg.data.workers
    loader = _loader(cfg, SeededDataset(dataset, cfg.train.seed), sampler, cfg.train.batch_size // (
        world * cfg.train.accum_steps), generator, workers, device_is_cuda, drop_last=True,
        prefetch_factor=4 if workers > 0 else None)
    return dataset, loader


def build_val_loader(cfg, root: str, mean, std, rank: int, world: int, device_is_cuda: bool,
                     batch_size: Optional[int] = None):
    from torchvision.datasets import ImageFolder
    dataset = ImageFolder(root, transform=build_transforms(cfg, mean, std, False))
    sampler = DistributedEvalSampler(dataset, num_replicas=world, rank=rank)
    return dataset, _loader(cfg, dataset, sampler, batch_size, torch.Generator().manual_seed(rank), cfg.data.workers,
                            device_is_cuda)


def build_mixup_and_criterion(cfg, num_classes: int):
    """timm Mixup/CutMix (label smoothing folded into the soft targets) and the matching loss."""
    a = cfg.aug
    if a.mixup > 0 or a.cutmix > 0:
        mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob, switch_prob=a.mixup_switch_prob,
                      mode=a.mixup_mode, label_smoothing=a.label_smoothing, num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if a.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=a.label_smoothing)
    return None, torch.nn.CrossEntropyLoss()


class SyntheticLoader:
    """Random normalised images and labels generated on the device, batch by batch (no data loading).

    Deterministic in (seed, epoch, rank, batch index); mimics the DataLoader attributes the engine uses
    (``sampler.set_epoch(epoch, skip)``, ``dataset`` length, ``len``)."""

    def __init__(self, size: int, batch_size: int, img_size: int, num_classes: int, device, seed: int,
                 rank: int, world: int, drop_last: bool = True):
        self.dataset = range(size)
        self.batch_size, self.img_size, self.num_classes = batch_size, img_size, num_classes
        self.device, self.seed, self.rank, self.world = torch.device(device), seed, rank, world
        per_rank = size // world
        self.n_batches = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
        self.per_rank = per_rank
        self.epoch, self.skip_batches = 0, 0
        self.sampler = self

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip_batches = int(epoch), int(skip) // self.batch_size

    def __len__(self):
        return self.n_batches - self.skip_batches

    def __iter__(self):
        g = torch.Generator(device=self.device)
        g.manual_seed((self.seed * 1_000_003 + self.epoch * 7919 + self.rank) % (2 ** 63))
        for i in range(self.n_batches):
            n = min(self.batch_size, self.per_rank - i * self.batch_size)
            x = torch.randn(n, 3, self.img_size, self.img_size, device=self.device, generator=g)
            y = torch.randint(0, self.num_classes, (n,), device=self.device, generator=g)
            if i >= self.skip_batches:
                yield x, y

"""timm's own training and evaluation, unchanged, on the smallest model of every vssm family (CPU, 64 px).

timm's ``train.py`` and ``validate.py`` are not in the timm wheel (the pip package ships the ``timm`` library
only). With ``VSSM_TIMM_SCRIPTS`` set to a folder holding them (a timm checkout), ``test_timm_train_and_validate``
runs both scripts as they are (``import vssm`` first, then the script as ``__main__``): one epoch with EMA on a
tiny ImageFolder, then ``validate.py --use-ema`` on the checkpoint. Without them (CI) it is skipped, and
``test_timm_training_pieces`` runs, always, what train.py / validate.py do with a model through timm's public
API: the data config, ImageFolder dataset and loader, mixup with soft-target cross-entropy, an optimizer with
layer decay from ``group_matcher`` and ``no_weight_decay``, the scheduler, EMA, timm's ``CheckpointSaver`` and
``load_checkpoint(use_ema=True)`` restoring the EMA model.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import Mixup, create_dataset, create_loader, resolve_data_config
from timm.loss import SoftTargetCrossEntropy
from timm.models import load_checkpoint
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import CheckpointSaver, ModelEmaV3

from _helpers import family_params, family_test_model

torch.set_num_threads(min(2, torch.get_num_threads()))

SCRIPTS = os.environ.get("VSSM_TIMM_SCRIPTS")
NUM_CLASSES, SIZE = 4, 64


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """4 classes, 4 train / 2 val 40x40 RGB images each, told apart by brightness."""
    root = tmp_path_factory.mktemp("tiny_imagefolder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in range(NUM_CLASSES):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((40, 40, 3)) * 60 + 50 * c).astype(np.uint8)).save(d / f"{i}.png")
    return root


def _run_script(name: str, argv) -> None:
    import vssm  # noqa: F401  (registers the vssm models)

    script = os.path.join(SCRIPTS, name)
    old = sys.argv
    sys.argv = [script] + [str(a) for a in argv]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.argv = old


@pytest.mark.skipif(not SCRIPTS, reason="timm's train.py / validate.py are not in the timm wheel: set "
                                        "VSSM_TIMM_SCRIPTS to a timm checkout to run them")
@pytest.mark.parametrize("family", family_params())
def test_timm_train_and_validate(family, image_folder, tmp_path):
    name, kwargs = family_test_model(family)
    model_args = ["--model", name, "--num-classes", NUM_CLASSES, "--input-size", 3, SIZE, SIZE]
    if kwargs:
        model_args += ["--model-kwargs"] + [f"{k}={v!r}".replace(" ", "") for k, v in kwargs.items()]
    common = ["--data-dir", image_folder, "--batch-size", 4, "--workers", 0, "--device", "cpu"]
    _run_script("train.py", common + model_args + [
        "--train-split", "train", "--val-split", "val", "--epochs", 1, "--sched", "cosine", "--warmup-epochs", 0,
        "--model-ema", "--output", tmp_path, "--experiment", "run", "--log-interval", 1])
    with open(tmp_path / "run" / "summary.csv") as f:
        row = next(csv.DictReader(f))
    assert np.isfinite(float(row["train_loss"])) and np.isfinite(float(row["eval_loss"]))
    with torch.serialization.safe_globals([argparse.Namespace]):  # train.py saves its args
        ckpt = torch.load(tmp_path / "run" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"].keys() == ckpt["state_dict_ema"].keys()
    results = tmp_path / "val.json"
    _run_script("validate.py", common + model_args + [
        "--split", "val", "--checkpoint", tmp_path / "run" / "last.pth.tar", "--use-ema",
        "--results-file", results, "--results-format", "json"])
    # train.py reports the EMA model's accuracy when it keeps an EMA: validate.py --use-ema must reproduce it
    assert json.loads(results.read_text())["top1"] == pytest.approx(float(row["eval_top1"]), abs=1e-3)


@pytest.mark.parametrize("family", family_params())
def test_timm_training_pieces(family, image_folder, tmp_path):
    name, kwargs = family_test_model(family)
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=NUM_CLASSES, drop_path_rate=0.1, **kwargs)
    data_cfg = resolve_data_config({"input_size": (3, SIZE, SIZE)}, model=model)
    loader_kwargs = dict(input_size=data_cfg["input_size"], batch_size=4, use_prefetcher=False, num_workers=0,
                         mean=data_cfg["mean"], std=data_cfg["std"], interpolation=data_cfg["interpolation"])
    train = create_loader(create_dataset("", root=str(image_folder), split="train", is_training=True),
                          is_training=True, re_prob=0.25, **loader_kwargs)
    val = create_loader(create_dataset("", root=str(image_folder), split="val"), crop_pct=data_cfg["crop_pct"],
                        **loader_kwargs)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=NUM_CLASSES)
    loss_fn = SoftTargetCrossEntropy()
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=1, warmup_epochs=0,
                                       updates_per_epoch=len(train))
    ema = ModelEmaV3(model, decay=0.5)
    model.train()
    for step, (x, y) in enumerate(train):
        x, y = mixup(x, y)
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (4, NUM_CLASSES)
        loss = loss_fn(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model, step=step)
        scheduler.step_update(step + 1)
        assert torch.isfinite(loss)
    scheduler.step(1)

    saver = CheckpointSaver(model, optimizer, model_ema=ema, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    saver.save_checkpoint(0, metric=0.0)
    restored = timm.create_model(name, num_classes=NUM_CLASSES, **kwargs)
    load_checkpoint(restored, str(tmp_path / "last.pth.tar"), use_ema=True)
    for k, v in ema.module.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k

    restored.eval()
    ema.module.eval()
    with torch.no_grad():  # validate.py's evaluation: the restored EMA model is the trained EMA model
        for x, _ in val:
            out = restored(x)
            torch.testing.assert_close(out, ema.module(x))
            assert out.shape == (x.shape[0], NUM_CLASSES)

"""Training engine tests (CPU): end to end on the embedded digits, exact resume, validate, DDP, bad args."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import family_params, family_test_model

from vssm.engine import config as C
from vssm.engine import train as T
from vssm.engine import validate as V
from vssm.engine.checkpoint import load

REPO = Path(__file__).resolve().parents[1]
MODEL = "vmamba_nano"
# a few steps per epoch, full val split, no augmentation noise, workers in-process (fast start-up)
SMALL = ["--model", MODEL, "--batch-size", "32", "--epochs", "2", "--warmup-epochs", "0",
         "--max-steps-per-epoch", "4", "--lr", "2e-3", "--workers", "0", "--no-progress", "--no-plot",
         "--set", "aug.auto_augment=null", "--set", "aug.re_prob=0", "--set", "aug.scale=[0.9,1.0]",
         "--set", "train.val_batch_size=128"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Digits written once per test session (VSSM_CACHE keeps the user's cache untouched)."""
    d = os.environ.get("VSSM_TEST_CACHE") or str(tmp_path_factory.mktemp("vssm_cache"))
    old = os.environ.get("VSSM_CACHE")
    os.environ["VSSM_CACHE"] = d
    yield Path(d)
    if old is None:
        os.environ.pop("VSSM_CACHE", None)
    else:
        os.environ["VSSM_CACHE"] = old


@pytest.fixture(scope="module")
def run_a(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    assert T.main(SMALL + ["--output", str(out), "--keep-epochs", "2",
                           "--set", "model.drop_path_rate=0.1", "--set", "aug.mixup=0.8"]) == 0
    return out


def _steps(path):
    rows = (path / "train_steps.csv").read_text().strip().splitlines()[1:]
    return [(int(r.split(",")[0]), float(r.split(",")[3])) for r in rows]


def test_digits_layout(run_a, cache):
    root = cache / "digits32"
    assert (root / ".complete").is_file()
    n_train = sum(1 for _ in (root / "train").rglob("*.png"))
    n_val = sum(1 for _ in (root / "val").rglob("*.png"))
    assert n_train + n_val == 1797 and 340 <= n_val <= 380
    assert sorted(p.name for p in (root / "val").iterdir()) == [str(i) for i in range(10)]


def test_end_to_end_outputs_and_learning(run_a):
    for name in ("last.pth", "best.pth", "checkpoint-0001.pth", "config.yaml", "metrics.csv", "metrics.json",
                 "train_steps.csv", "log.txt"):
        assert (run_a / name).is_file(), name
    steps = _steps(run_a)
    assert [s for s, _ in steps] == list(range(1, 9))
    losses = [loss for _, loss in steps]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses        # training loss goes down
    hist = json.loads((run_a / "metrics.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[-1]["top1"] > 20.0                                    # well above chance (10%) already
    for k in ("top5", "ema_top1", "ema_top5", "val_loss", "train_img_s"):
        assert k in hist[-1]
    ck = load(str(run_a / "last.pth"))
    for k in ("model", "state_dict_ema", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "config"):
        assert k in ck, k
    assert ck["epoch"] == 2 and ck["step"] == 8
    # effective config round-trips
    recipe = __import__("yaml").safe_load((run_a / "config.yaml").read_text())
    saved = C.build_config(base=C.merge(C.DEFAULTS, recipe, "t"))
    assert saved == ck["config"]


def test_resume_is_exact(run_a, tmp_path):
    """Resume from the epoch-1 checkpoint: continues at step 5 with the saved optimizer state, and ends
    bit-identical to the uninterrupted run (drop path and mixup on, so RNG restoration matters)."""
    ck1 = load(str(run_a / "checkpoint-0001.pth"))
    assert ck1["epoch"] == 1 and ck1["step"] == 4
    out = tmp_path / "run_b"
    # optimizer state as loaded by the engine equals the saved one
    cfg = C.Config.from_dict(C.build_config(base=C.merge(C.DEFAULTS, ck1["config"], "t")))  # the typed view
    import timm
    import vssm  # noqa: F401
    from vssm.engine.optim import build_optimizer, effective_lr
    m = timm.create_model(MODEL, num_classes=10)
    m.load_state_dict(ck1["model"])
    opt = build_optimizer(m, cfg, effective_lr(cfg))
    opt.load_state_dict(ck1["optimizer"])
    sd = opt.state_dict()
    for i, st in ck1["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(sd["state"][i][k], v)

    assert T.main(["--resume", str(run_a / "checkpoint-0001.pth"), "--output", str(out)]) == 0
    b_steps = _steps(out)
    assert b_steps[0][0] == 5                                         # the next step after the checkpoint
    a_steps = dict(_steps(run_a))
    assert all(a_steps[s] == loss for s, loss in b_steps), (b_steps, a_steps)
    a, b = load(str(run_a / "last.pth")), load(str(out / "last.pth"))
    for part in ("model", "state_dict_ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for i, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(b["optimizer"]["state"][i][k], v)
    assert a["history"][-1]["top1"] == b["history"][-1]["top1"]


def test_validate_reproduces_logged_accuracy(run_a, tmp_path):
    hist = json.loads((run_a / "metrics.json").read_text())[-1]
    res = V.run(V.build_parser().parse_args(["-c", str(run_a / "last.pth"), "--no-progress",
                                             "--throughput-iters", "2", "--batch-size", "64"]))
    assert res["count"] == 359
    assert res["top1"] == pytest.approx(hist["top1"], abs=1e-6)
    assert res["top5"] == pytest.approx(hist["top5"], abs=1e-6)
    assert res["forward_img_s"] > 0
    res = V.run(V.build_parser().parse_args(["-c", str(run_a / "last.pth"), "--ema", "--no-progress",
                                             "--throughput-iters", "0"]))
    assert res["top1"] == pytest.approx(hist["ema_top1"], abs=1e-6)


def test_timm_load_checkpoint_reads_our_ema(run_a):
    """timm's load_checkpoint (weights_only=True, as validate.py --use-ema) takes our EMA and model weights."""
    import timm
    import vssm  # noqa: F401
    from timm.models import load_checkpoint

    path = str(run_a / "last.pth")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []  # tensors and Python values only
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert not torch.equal(ck["state_dict_ema"]["head.fc.weight"], ck["model"]["head.fc.weight"])
    for use_ema, part in ((True, "state_dict_ema"), (False, "model")):
        model = timm.create_model(MODEL, num_classes=10)
        load_checkpoint(model, path, use_ema=use_ema)
        for k, v in model.state_dict().items():
            assert torch.equal(v, ck[part][k]), (part, k)


def test_validate_reads_files_before_state_dict_ema(run_a, tmp_path):
    """Files written before the change keep the EMA under 'ema' and the numpy RNG state as an array."""
    import numpy as np

    ck = load(str(run_a / "last.pth"))
    old = dict(ck, ema=ck.pop("state_dict_ema"))
    old["rng"] = [dict(r, numpy=np.random.get_state()) for r in ck["rng"]]
    path = tmp_path / "old.pth"
    torch.save(old, path)
    hist = json.loads((run_a / "metrics.json").read_text())[-1]
    res = V.run(V.build_parser().parse_args(["-c", str(path), "--ema", "--no-progress", "--throughput-iters", "0"]))
    assert res["top1"] == pytest.approx(hist["ema_top1"], abs=1e-6)


def test_validate_official_layout_checkpoint(run_a, cache, tmp_path, capsys):
    """A bare {'model': state_dict} file (the official release layout) needs --model and --data."""
    ck = load(str(run_a / "last.pth"))
    off = tmp_path / "official.pth"
    torch.save({"model": ck["model"], "epoch": 2}, off)
    with pytest.raises(SystemExit):
        V.main(["-c", str(off)])
    assert "pass --model" in capsys.readouterr().err
    res = V.run(V.build_parser().parse_args(["-c", str(off), "--model", MODEL, "--data", str(cache / "digits32"),
                                             "--config", "digits_vmamba_nano", "--no-progress",
                                             "--throughput-iters", "0"]))
    assert res["top1"] == pytest.approx(ck["history"][-1]["top1"], abs=1e-6)


def test_weight_decay_exclusions():
    import timm
    import vssm  # noqa: F401
    from vssm.engine.optim import split_weight_decay
    m = timm.create_model(MODEL, num_classes=10)
    decay, no_decay = split_weight_decay(m, C.DEFAULTS["optim"]["no_weight_decay_keys"])
    assert decay and no_decay
    params = dict(m.named_parameters())
    for n in decay:
        assert params[n].ndim > 1 and not any(k in n for k in ("A_logs", "Ds", "dt_projs_bias", "norm")), n
    for n, p in params.items():
        if p.ndim <= 1 or n.endswith(".bias") or "A_logs" in n:
            assert n in no_decay, n
    assert set(m.no_weight_decay()) <= set(no_decay)


def test_digits_recipe_yaml_matches_builtin_default():
    a = C.build_config(recipe=None)
    b = C.build_config(recipe=str(REPO / "configs/classification/digits_vmamba_nano.yaml"))
    assert a == b
    for name in ("vmamba_tiny_in1k", "vmamba_small_in1k", "vmamba_base_in1k"):
        cfg = C.build_config(recipe=name)
        C.validate_config(cfg, world_size=8, cuda_available=True, check_paths=False, check_model=False)
        assert cfg["train"]["batch_size"] == 1024 and cfg["sched"]["epochs"] == 300


def test_non_finite_loss_stops_with_step(cache, tmp_path, monkeypatch, capsys):
    from vssm.engine import data as DM
    real = DM.build_mixup_and_criterion

    def poisoned(cfg, n):
        mixup, crit = real(cfg, n)
        calls = {"n": 0}

        def loss(out, target):
            calls["n"] += 1
            v = crit(out, target)
            return v * float("nan") if calls["n"] == 3 else v
        return mixup, loss

    monkeypatch.setattr(DM, "build_mixup_and_criterion", poisoned)
    rc = T.main(SMALL + ["--output", str(tmp_path / "nan")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "non-finite training loss" in err and "global step 3" in err and "epoch 1" in err


@pytest.mark.parametrize("argv,env,msg", [
    (["--data", "/nonexistent/imagenet"], {}, "does not exist"),
    (["--data", "{train_only}"], {}, "has no 'val/' folder"),
    (["--model", "vmamba_does_not_exist"], {}, "unknown model 'vmamba_does_not_exist'"),
    (["--batch-size", "64"], {"WORLD_SIZE": "3"}, "not divisible by world_size x accum_steps"),
    (["--batch-size", "62", "--accum-steps", "2", "--set", "aug.mixup=0.8"], {}, "even per-rank micro-batch"),
    (["--resume", "/nonexistent/last.pth"], {}, "checkpoint '/nonexistent/last.pth' not found"),
    (["--amp", "fp16", "--device", "cpu"], {}, "fp16 needs a CUDA device"),
    (["--set", "optim.lrr=1"], {}, "unknown config key 'optim.lrr'"),
    (["--config", "no_such_recipe"], {}, "config 'no_such_recipe' not found"),
    (["--epochs", "5", "--warmup-epochs", "5"], {}, "must be smaller than sched.epochs"),
    (["--pretrained", "/nonexistent/w.pth"], {}, "model.pretrained: checkpoint '/nonexistent/w.pth' not found"),
])
def test_bad_arguments_fail_fast(argv, env, msg, tmp_path, monkeypatch, capsys):
    only = tmp_path / "train_only"
    (only / "train" / "a").mkdir(parents=True)
    argv = [a.replace("{train_only}", str(only)) for a in argv]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("VSSM_CACHE", str(tmp_path / "must_stay_empty"))
    with pytest.raises(SystemExit) as e:
        T.main(argv + ["--output", str(tmp_path / "out")])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "must_stay_empty").exists()  # no work started


def test_torchrun_ddp_gloo_ranks_agree(cache, tmp_path):
    """2 processes, gloo, gradient accumulation (no_sync on the first micro-step): weights identical."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", VSSM_CACHE=str(cache))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vssm.engine.train"] + SMALL + ["--epochs", "1", "--max-steps-per-epoch", "2", "--accum-steps", "2",
                                                  "--device", "cpu", "--output", str(out)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    hist = json.loads((out / "metrics.json").read_text())
    assert hist[-1]["ranks_in_sync"] is True
    assert "x 2 ranks" in p.stdout and "2 x 8 x 2 accum" in p.stdout
    ck = load(str(out / "last.pth"))
    assert ck["meta"]["world_size"] == 2 and len(ck["rng"]) == 2 and ck["step"] == 2


def test_killed_mid_epoch_resumes_from_recovery_to_the_same_curve(run_a, cache, tmp_path):
    """A real SIGKILL of a training process once it has written a mid-epoch recovery checkpoint; ``--resume auto``
    continues from that step and ends on run_a's per-step losses and weights (the same run, uninterrupted)."""
    import signal
    import time

    out = tmp_path / "killed"
    argv = SMALL + ["--output", str(out), "--set", "model.drop_path_rate=0.1", "--set", "aug.mixup=0.8",
                    "--recovery-interval", "1"]
    env = dict(os.environ, VSSM_CACHE=str(cache))
    proc = subprocess.Popen([sys.executable, "-m", "vssm.engine.train"] + argv, cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    recovery, deadline = out / "recovery.pth", time.time() + 240
    while not recovery.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    ck = load(str(recovery))                                          # written atomically: complete
    k = ck["partial_epoch"]["steps"]
    assert 1 <= k < 4 and ck["step"] == 4 * ck["epoch"] + k           # killed inside an epoch
    assert not list(out.glob(".*.tmp"))
    killed_at = ck["step"]
    assert [s for s, _ in _steps(out)][-1] >= killed_at

    assert T.main(["--resume", "auto", "--output", str(out)]) == 0
    steps = _steps(out)
    assert steps == _steps(run_a), (killed_at, steps)                # the same loss at every step, 1..8
    a, b = load(str(run_a / "last.pth")), load(str(out / "last.pth"))
    for part in ("model", "state_dict_ema"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    assert a["history"][-1]["top1"] == b["history"][-1]["top1"]
    assert not recovery.exists()                                     # the epoch checkpoint supersedes it


@pytest.mark.parametrize("family", family_params())
def test_weight_decay_groups_keep_the_ssm_exclusions(family):
    """timm's create_optimizer_v2 groups (through the models' no_weight_decay()) give no weight decay to exactly
    the parameters the engine excluded before: 1-D tensors, biases, norm layers, names with one of the keys
    (A_logs, Ds, dt_projs_bias, ...) and the model's own list; the decay group comes first, as before."""
    import timm
    import vssm  # noqa: F401
    from vssm.engine.optim import build_optimizer

    cfg = C.Config.from_dict(C.build_config(recipe="vmamba_tiny_in1k"))
    name, kwargs = family_test_model(family)
    model = timm.create_model(name, num_classes=10, **kwargs)
    norms = {f"{m}.{p}" for m, mod in model.named_modules() if "norm" in type(mod).__name__.lower()
             for p, _ in mod.named_parameters(recurse=False)}
    expected = {n for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith(".bias") or n in norms
                or any(k in n for k in cfg.optim.no_weight_decay_keys) or n in set(model.no_weight_decay())}
    ssm = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert ssm and ssm <= expected                                  # A_logs / Ds (2-D for VMamba) are flagged
    opt = build_optimizer(model, cfg, 1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert got == expected, sorted(got ^ expected)[:5]
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.optim.weight_decay, 0.0]


def test_vmamba_a_logs_are_matrices_without_weight_decay():
    import timm
    import vssm  # noqa: F401
    from vssm.engine.optim import split_weight_decay
    model = timm.create_model(MODEL, num_classes=10)
    decay, no_decay = split_weight_decay(model)                     # the models' own no_weight_decay() alone
    a_logs = [n for n, p in model.named_parameters() if "A_logs" in n and p.ndim == 2]
    assert a_logs and set(a_logs) <= set(no_decay) and not set(a_logs) & set(decay)

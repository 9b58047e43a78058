"""GroupMamba family: parameter counts, official checkpoint mapping and logits, CPU forward/backward, timm API,
distillation head and loss, input errors."""
from __future__ import annotations

import os
import re

import pytest
import timm
import torch
import torch.nn.functional as F

from _helpers import n_params, read_key_file, synthetic_official_state_dict

from vssm import scans
import vssm  # noqa: F401  (registers the models)
from vssm import CheckpointMismatchError
from vssm.engine.distill import DistillationLoss, build_teacher, split_outputs
from vssm.groupmamba import GroupMamba, GroupedLinear, checkpoint_filter_fn

torch.set_num_threads(min(2, torch.get_num_threads()))

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# Made by the official GroupMamba code (random weights, naive CPU scan): official-layout state dict of a
# small config, inputs, and the official eval / train outputs. See the file's 'note'.
MICRO = os.path.join(HERE, "data", "groupmamba_official_micro.pt")

OFFICIAL_PARAMS = {"groupmamba_tiny": 23_361_917, "groupmamba_small": 34_781_555, "groupmamba_base": 57_150_838}
MICRO_ARGS = dict(stem_hidden_dim=8, dims=(16, 16, 32, 32), depths=(1, 1, 2, 1), mlp_ratios=(2, 2, 2, 2))


def micro(**kwargs):
    torch.manual_seed(0)
    return GroupMamba(**dict(MICRO_ARGS, num_classes=10, **kwargs))


@pytest.fixture(scope="module")
def micro_ref():
    return torch.load(MICRO, weights_only=True)


# ---- registry, parameter counts ------------------------------------------------------------------------

def test_group_scan_pattern():
    pattern = scans.build("group")
    assert pattern.K == 4 and pattern.split_channels
    # official CrossScan_1..4: row-major, column-major, and both reversed (H=2, W=3)
    assert pattern.index_map(2, 3).tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5],
                                                [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]


def test_registered():
    assert set(OFFICIAL_PARAMS) <= set(timm.list_models("groupmamba*"))
    for name in OFFICIAL_PARAMS:
        assert f"{name}.in1k" in timm.list_pretrained(f"{name}*")


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_count_and_official_layout(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert n_params(model) == OFFICIAL_PARAMS[name]
    official = read_key_file(name)
    assert sum(int(torch.Size(s).numel()) for k, s in official.items()
               if not re.search(r"running_|num_batches", k)) == OFFICIAL_PARAMS[name]
    # every official key maps onto the model, shapes included (meta tensors: shapes only)
    sd = {k: torch.empty(s, device="meta") for k, s in official.items()}
    mapped = checkpoint_filter_fn(sd, model)
    assert set(mapped) == set(model.state_dict())


def test_distillation_false_drops_dist_head():
    with torch.device("meta"):
        model = timm.create_model("groupmamba_tiny", distillation=False)
    assert n_params(model) == OFFICIAL_PARAMS["groupmamba_tiny"] - (448 * 1000 + 1000)
    sd = {k: torch.empty(s, device="meta") for k, s in read_key_file("groupmamba_tiny").items()}
    assert "head.fc_dist.weight" not in checkpoint_filter_fn(sd, model)


# ---- weight-exactness against the official code ---------------------------------------------------------

def test_official_logits_micro(micro_ref):
    model = micro()
    model.load_state_dict(checkpoint_filter_fn(micro_ref["state_dict"], model), strict=True)
    model.eval()
    with torch.no_grad():
        for x, ref in zip(micro_ref["inputs"], micro_ref["eval_logits"]):
            assert (model(x) - ref).abs().max() < 1e-5
        model.train()  # BatchNorm uses batch statistics
        avg = model(micro_ref["inputs"][0])  # distilled training off (the default): the average, as in eval
        model.set_distilled_training(True)  # both heads returned
        head, dist = model(micro_ref["inputs"][0])
    assert torch.allclose(avg, (head + dist) / 2, atol=1e-6)
    assert (head - micro_ref["train_logits"][0]).abs().max() < 1e-5
    assert (dist - micro_ref["train_logits"][1]).abs().max() < 1e-5


def test_official_file_through_timm(micro_ref, tmp_path):
    """Bare state dict (the release format) and {'model': sd} (official training checkpoint) load alike."""
    bare, wrapped = tmp_path / "bare.pth", tmp_path / "wrapped.pth"
    torch.save(micro_ref["state_dict"], bare)
    torch.save({"model": micro_ref["state_dict"], "epoch": 299}, wrapped)
    x = micro_ref["inputs"][1]
    outs = []
    for f in (bare, wrapped):
        m = timm.create_model("groupmamba_tiny", pretrained=True, num_classes=10, **MICRO_ARGS,
                              pretrained_cfg_overlay=dict(file=str(f), num_classes=10)).eval()
        with torch.no_grad():
            outs.append(m(x))
    assert torch.equal(outs[0], outs[1])
    assert (outs[0] - micro_ref["eval_logits"][1]).abs().max() < 1e-5


def test_synthetic_tiny_loads_strictly_and_twice_alike():
    sd = synthetic_official_state_dict("groupmamba_tiny")
    with torch.device("meta"):  # built without init cost; the strict load materialises every tensor
        a = timm.create_model("groupmamba_tiny")
        b = timm.create_model("groupmamba_tiny")
    a.load_state_dict(checkpoint_filter_fn({"model": sd}, a), strict=True, assign=True)
    b.load_state_dict(checkpoint_filter_fn(sd, b), strict=True, assign=True)
    assert not any(t.is_meta for t in list(a.parameters()) + list(a.buffers()))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    # the four official groups land in order: group k -> rows k*c:(k+1)*c
    c = 348 // 4
    assert torch.equal(a.stages[2].blocks[0].mixer.ssm.A_logs[2 * c:3 * c], sd["block3.0.attn.mamba_g3.A_logs"])
    assert torch.equal(a.stages[2].blocks[0].mixer.ssm.in_proj.weight[2 * 2 * c:3 * 2 * c],
                       sd["block3.0.attn.mamba_g3.in_proj.weight"])
    # our own layout passes through
    ours = checkpoint_filter_fn(a.state_dict(), b)
    assert set(ours) == set(b.state_dict())


def test_pretrained_other_num_classes(micro_ref, tmp_path):
    f = tmp_path / "official.pth"
    torch.save(micro_ref["state_dict"], f)
    m = timm.create_model("groupmamba_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(f)),
                          num_classes=7, **MICRO_ARGS)
    assert m.head.fc.out_features == 7 and m.head.fc_dist.out_features == 7
    m = timm.create_model("groupmamba_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(f), num_classes=10),
                          num_classes=10, in_chans=1, **MICRO_ARGS)  # timm adapts the first stem conv
    assert m.stem.conv[0].weight.shape == (8, 1, 7, 7)
    assert torch.allclose(m.stem.conv[0].weight[:, 0], micro_ref["state_dict"]["patch_embed1.conv.0.weight"].sum(1))


def test_checkpoint_errors_name_keys(micro_ref):
    model = micro()
    sd = dict(micro_ref["state_dict"])
    sd.pop("block2.0.mlp.fc1.weight")
    sd.pop("block1.0.attn.mamba_g2.Ds")  # incomplete group set
    sd["block1.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        checkpoint_filter_fn(sd, model)
    msg = str(err.value)
    assert "stages.1.blocks.0.mlp.fc1.weight" in msg
    assert "stages.0.blocks.0.mixer.ssm.Ds" in msg and "mamba_g1.Ds" in msg
    assert "stages.0.blocks.0.mixer.extra" in msg
    sd = dict(micro_ref["state_dict"])
    sd["norm4.weight"] = torch.ones(5)
    with pytest.raises(CheckpointMismatchError, match="norm.weight"):
        checkpoint_filter_fn(sd, model)


# ---- forward / backward, distillation head ---------------------------------------------------------------

def test_forward_backward_train_and_eval():
    model = micro(drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    assert model(x).shape == (2, 10)  # plain logits in training unless distilled training is on (timm's DeiT)
    model.set_distilled_training(True)
    head, dist = model(x)
    assert head.shape == dist.shape == (2, 10)
    (head.square().mean() + F.cross_entropy(dist, torch.tensor([1, 2]))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        out = model(x)
        feat = model.forward_head(model.forward_features(x), pre_logits=True)
        assert out.shape == (2, 10) and feat.shape == (2, 32)
        assert torch.allclose(out, (model.head.fc(feat) + model.head.fc_dist(feat)) / 2, atol=1e-6)
    model.train()
    model.set_distilled_training(False)
    assert model(x).shape == (2, 10)


def test_odd_sizes_and_grad_checkpointing():
    model = micro().eval()
    with torch.no_grad():
        for size in ((33, 47), (1, 1), (100, 20)):
            assert model(torch.randn(1, 3, *size)).shape == (1, 10)
    model.train()
    model.set_distilled_training(True)
    model.set_grad_checkpointing(True)
    head, dist = model(torch.randn(2, 3, 32, 32))
    (head.sum() + dist.sum()).backward()


def test_grouped_linear_is_block_diagonal():
    lin = GroupedLinear(4, 3, 4, split_out=2)
    x = torch.randn(5, 12)
    y = lin(x)
    w = lin.weight.view(4, 4, 3)
    parts = [x[:, 3 * g:3 * g + 3] @ w[g].t() for g in range(4)]
    expect = torch.cat([p[:, :2] for p in parts] + [p[:, 2:] for p in parts], dim=1)
    assert torch.allclose(y, expect, atol=1e-6)


def test_no_distillation_single_output():
    model = micro(distillation=False).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    assert model.get_classifier() is model.head.fc


# ---- timm API ------------------------------------------------------------------------------------------

def test_features_only():
    model = timm.create_model("groupmamba_tiny", features_only=True, out_indices=(0, 1, 2, 3), **MICRO_ARGS)
    assert model.feature_info.channels() == [16, 16, 32, 32]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 16, 16, 24), (1, 16, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3)]


def test_classifier_pooling_and_cfg():  # the shared API: tests/test_timm_contract.py
    model = micro().eval()
    x = torch.randn(1, 3, 64, 64)
    assert any(n.endswith("skip_scale") for n in model.no_weight_decay())
    model.reset_classifier(0)
    assert model(x).shape == (1, 32)
    tokens = model.forward_features(x)
    model.reset_classifier(0, "")  # no pooling: the normed stage-4 tokens
    torch.testing.assert_close(model(x), model.norm(tokens))
    model.reset_classifier(4)  # the classifiers read every token; the pooling stays off
    assert model(x).shape == (1, 2, 2, 4)
    model.reset_classifier(4, "avg")
    assert model(x).shape == (1, 4)
    cfg = timm.create_model("groupmamba_tiny", **MICRO_ARGS).pretrained_cfg
    assert cfg["classifier"] == ("head.fc", "head.fc_dist") and cfg["first_conv"] == "stem.conv.0"
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"


# ---- bad inputs ----------------------------------------------------------------------------------------

def test_bad_inputs():
    model = micro().eval()
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 3, 0, 32))
    with pytest.raises(ValueError, match="divisible by 4"):
        GroupMamba(dims=(16, 30, 32, 32))
    with pytest.raises(ValueError, match="global_pool"):
        micro(global_pool="max")
    with pytest.raises(ValueError, match="global_pool"):
        micro().reset_classifier(0, "token")
    assert timm.create_model("groupmamba_tiny", in_chans=1, **MICRO_ARGS)(torch.randn(1, 1, 32, 32)).shape == (1, 1000)


# ---- distillation loss ---------------------------------------------------------------------------------

class _Teacher(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.seen_training = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return self.logits


def test_distillation_loss_values():
    torch.manual_seed(1)
    x = torch.randn(4, 3, 8, 8)
    cls, dist, t = torch.randn(4, 5), torch.randn(4, 5, requires_grad=True), torch.randn(4, 5)
    target = torch.tensor([0, 1, 2, 3])
    base = torch.nn.CrossEntropyLoss()
    teacher = _Teacher(t)
    hard = DistillationLoss(base, teacher, "hard", alpha=0.5)(x, (cls, dist), target)
    assert torch.allclose(hard, 0.5 * F.cross_entropy(cls, target) + 0.5 * F.cross_entropy(dist, t.argmax(1)))
    tau = 2.0
    soft = DistillationLoss(base, teacher, "soft", alpha=0.3, tau=tau)(x, (cls, dist), target)
    p_t = F.softmax(t / tau, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(dist / tau, 1))).sum() * tau * tau / dist.numel()
    assert torch.allclose(soft, 0.7 * F.cross_entropy(cls, target) + 0.3 * kl, atol=1e-6)
    soft.backward()
    assert dist.grad is not None and not any(teacher.seen_training)
    none = DistillationLoss(base, None, "none")
    assert torch.allclose(none(x, (cls, dist), target), F.cross_entropy(cls, target))
    assert torch.allclose(none(x, cls, target), F.cross_entropy(cls, target))


def test_distillation_loss_errors():
    base = torch.nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="teacher"):
        DistillationLoss(base, None, "hard")
    with pytest.raises(ValueError, match="kind"):
        DistillationLoss(base, _Teacher(None), "medium")
    loss = DistillationLoss(base, _Teacher(torch.randn(2, 5)), "hard")
    with pytest.raises(ValueError, match="dist_logits"):
        loss(torch.randn(2, 3), torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        loss(torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4)), torch.tensor([0, 1]))
    with pytest.raises(TypeError):
        split_outputs((torch.randn(1), torch.randn(1), torch.randn(1)))


def test_distillation_with_timm_teacher(tmp_path):
    """A vssm student with a frozen timm teacher loaded from a local checkpoint ({'model': sd})."""
    teacher_src = timm.create_model("resnet10t", num_classes=10)
    path = tmp_path / "teacher.pth"
    torch.save({"model": teacher_src.state_dict()}, path)
    teacher = build_teacher("resnet10t", str(path), num_classes=10, log=None)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), teacher_src.eval()(x))
    student = micro().train()
    student.set_distilled_training(True)
    crit = DistillationLoss(torch.nn.CrossEntropyLoss(), teacher, "hard").train()
    loss = crit(x, student(x), torch.tensor([1, 2]))
    loss.backward()
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError):
        build_teacher("resnet10t", {"model": {"fc.weight": torch.zeros(3, 3)}}, num_classes=10, log=None)
    with pytest.raises(ValueError, match="teacher-checkpoint"):  # nothing is downloaded, no silent random teacher
        build_teacher("resnet10t", None, num_classes=10, log=None)

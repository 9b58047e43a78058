"""ONNX export (vssm/export.py, tools/export.py): every registered family's smallest model runs in onnxruntime
with the eager logits, at a non-square size and two batch sizes (dynamic batch axis), with standard ONNX
operators only; features_only backbones; the command line's parity report and its errors."""
import os
from collections import defaultdict

import numpy as np
import pytest
import timm
import torch

import vssm  # noqa: F401  (registers the models)
from vssm.export import TOLERANCE, export_onnx, main, onnx_parity

from _helpers import create_meta, n_params

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

torch.set_num_threads(min(2, torch.get_num_threads()))


def smallest_model_per_family():
    """``{module: model name}``: the registered vssm model with the fewest parameters of each family module
    (``vssm.<family>``), so families added later are covered without editing this file."""
    families = defaultdict(list)
    for name in timm.list_models():
        module = timm.models.model_entrypoint(name).__module__
        if module.startswith("vssm."):
            families[module].append(name)
    return {module: min(names, key=lambda n: (_param_count(n), n)) for module, names in sorted(families.items())}


def _param_count(name):
    try:
        return n_params(create_meta(name))
    except NotImplementedError:  # a factory that computes with tensors (meta tensors hold no data)
        return n_params(timm.create_model(name))


FAMILIES = smallest_model_per_family()


def _standard_domains(model_proto):
    """Domains of every node, subgraphs (Scan bodies) and local functions included."""
    domains = set()

    def visit(graph):
        for node in graph.node:
            domains.add(node.domain)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(model_proto.graph)
    local = {f.domain for f in model_proto.functions}
    for f in model_proto.functions:
        for node in f.node:
            domains.add(node.domain)
    return domains - local


def test_every_in_tree_family_is_found():
    assert {"vssm.vmamba", "vssm.localmamba", "vssm.efficientvmamba", "vssm.groupmamba"} <= set(FAMILIES)


@pytest.mark.parametrize("module", sorted(FAMILIES), ids=lambda m: m.split(".")[-1])
def test_family_exports_and_matches_eager_in_onnxruntime(module, tmp_path):
    name = FAMILIES[module]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    path = export_onnx(model, str(tmp_path / f"{name}.onnx"), torch.randn(2, 3, 32, 64))
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert _standard_domains(proto) <= {"", "ai.onnx"}, f"{name}: non-standard ONNX domains"
    # the batch axis is dynamic: a batch the tracer never saw runs too
    rows = onnx_parity(path, model, [torch.randn(2, 3, 32, 64), torch.randn(3, 3, 32, 64)])
    assert len(rows) == 2
    for row in rows:
        assert row["scale"] > 0
        assert row["relative"] <= TOLERANCE, (name, row)


class CrossScan(torch.nn.Module):
    """VMamba-T's stage-1 scan (96 channels, 4 directions, d_state 1, dt rank 6) on a 16x16 map."""

    def __init__(self, channels=96, rank=6):
        super().__init__()
        K = 4
        self.A = torch.nn.Parameter(-torch.rand(K * channels, 1) - 0.5)
        self.D = torch.nn.Parameter(torch.randn(K * channels))
        self.bias = torch.nn.Parameter(0.1 * torch.randn(K * channels))
        self.dt_proj = torch.nn.Parameter(0.3 * torch.randn(K, channels, rank))
        self.proj = torch.nn.Linear(channels, K * (rank + 2))
        self.rank = rank

    def forward(self, x):
        batch, _, H, W = x.shape
        dbc = self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).reshape(batch, 4, self.rank + 2, H * W)
        dt, B, C = dbc.split([self.rank, 1, 1], dim=2)
        return vssm.kernels.scan2d(x, dt.contiguous(), self.A, B.contiguous(), C.contiguous(), self.D, self.bias,
                                   pattern="cross", dt_proj=self.dt_proj)


def test_merge_exports_without_scatter_add(tmp_path):
    """The K directions' outputs are summed by a gather, not by a ScatterND with reduction: onnxruntime's CPU
    provider summed repeated targets wrongly, differently from run to run (0.1-0.5 of the output scale at batch
    sizes other than the traced one). One session, batch sizes in turn, each within tolerance."""
    torch.manual_seed(0)
    model = CrossScan().eval()
    path = export_onnx(model, str(tmp_path / "cross.onnx"), torch.randn(2, 96, 16, 16))
    assert not [n for n in onnx.load(path).graph.node if n.op_type.startswith("Scatter")]
    inputs = [torch.randn(b, 96, 16, 16) for b in (2, 3, 4, 3, 4, 4)]
    for row in onnx_parity(path, model, inputs):
        assert row["relative"] <= TOLERANCE, row


def test_parity_check_sees_a_wrong_model(tmp_path):
    """onnx_parity compares for real: the same file against a model with other weights is far off."""
    model = timm.create_model("vmamba_nano", num_classes=10).eval()
    path = export_onnx(model, str(tmp_path / "nano.onnx"), torch.randn(1, 3, 32, 32), dynamic_batch=False)
    other = timm.create_model("vmamba_nano", num_classes=10).eval()
    (row,) = onnx_parity(path, other, [torch.randn(1, 3, 32, 32)])
    assert row["relative"] > 1e-2


def test_tool_exports_a_checkpoint_as_features_only_backbone(tmp_path, capsys):
    """The command line: checkpoint in, every selected stage out, parity printed; the file holds the
    checkpoint's weights (checked against a model built from the same state dict)."""
    torch.manual_seed(1)
    source = timm.create_model("vmamba_nano")
    ckpt = tmp_path / "nano.pth"
    torch.save({"model": source.state_dict()}, ckpt)
    out = tmp_path / "backbone.onnx"
    code = main(["vmamba_nano", "--checkpoint", str(ckpt), "--features-only", "--out-indices", "1", "2", "3",
                 "--img-size", "32", "48", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "parity ok" in printed and printed.count("onnxruntime vs eager") == 6  # 2 batches x 3 outputs
    x = torch.randn(2, 3, 32, 48)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = source.eval().forward_intermediates(x, indices=(1, 2, 3), intermediates_only=True)
    assert [g.shape for g in got] == [tuple(e.shape) for e in expected] == [(2, 48, 4, 6), (2, 96, 2, 3),
                                                                              (2, 192, 1, 2)]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4 * e.abs().max().item(), rtol=0)


@pytest.mark.parametrize("argv,message", [
    (["vmamba_tinyy"], "unknown model 'vmamba_tinyy'"),
    (["vmamba_nano", "--checkpoint", "/nonexistent/file.pth"], "checkpoint file not found"),
    (["vmamba_nano", "--img-size", "16"], "cannot take a 16x16 input"),
])
def test_tool_rejects_bad_input_clearly(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(argv + ["-o", str(tmp_path / "x.onnx")])
    assert not os.path.exists(tmp_path / "x.onnx")


@pytest.mark.parametrize("argv", [["vmamba_nano", "--img-size", "1", "2", "3"], ["vmamba_nano", "--batch", "0"],
                                  ["vmamba_nano", "--out-indices", "1"]])
def test_tool_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    assert "error:" in capsys.readouterr().err

"""torch.compile over whole models: one graph, no breaks, and no recompilation from one call (or block) to the next.

On the CPU the scan runs through the PyTorch backends inside the ``vssm::selective_scan`` op; the Triton
``vssm::scan2d`` op is covered on the device by tests/test_triton_scan.py and the benchmark's ``--compile`` rows.
"""
import pytest
import timm
import torch

import vssm  # noqa: F401  (registers the models)

torch.set_num_threads(min(2, torch.get_num_threads()))

# one small model of each family: (timm name, options)
SMALL = [
    ("vmamba_nano", {}),
    ("local_vmamba_tiny", dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), d_state=4,
                               directions=[["h", "v_flip", "w2", "w7_flip"]] * 4)),
    ("efficient_vmamba_tiny", dict(dims=(16, 32, 48, 64), depths=(1, 1, 1, 1))),
    ("groupmamba_tiny", dict(stem_hidden_dim=8, dims=(16, 16, 32, 32), depths=(1, 1, 2, 1), mlp_ratios=(2, 2, 2, 2))),
]


@pytest.mark.parametrize("name,options", SMALL, ids=[n for n, _ in SMALL])
def test_whole_model_is_one_graph(name, options):
    torch._dynamo.reset()
    model = timm.create_model(name, num_classes=5, **options).eval()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_training_step_compiles_once():
    """fullgraph compile of forward + backward of a 4-stage model; later steps and the other blocks of the same
    stage reuse the graph (the frame count stays at one compile)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model("vmamba_nano", num_classes=5)
    eager = timm.create_model("vmamba_nano", num_classes=5)
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    from torch._dynamo.utils import counters
    counters.clear()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(compiled(x), target)
        loss.backward()
    assert counters["stats"]["unique_graphs"] == 1
    loss_eager = torch.nn.functional.cross_entropy(eager(x), target)
    loss_eager.backward()
    assert torch.allclose(loss, loss_eager, rtol=1e-4, atol=1e-5)
    for (n, p), q in zip(model.named_parameters(), eager.parameters()):
        assert torch.allclose(p.grad / 3, q.grad, rtol=1e-3, atol=1e-5), n


def _saved_elements(block, x):
    """Elements autograd keeps for the backward of a compiled ``block(x)``."""
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        torch.compile(block, fullgraph=True, backend="aot_eager")(x).sum().backward()
    return sum(saved)


def test_compiled_block_recomputes_activations_instead_of_saving_them():
    """Under compile a VSSBlock saves neither its MLP's GELU output nor SS2D's SiLU output: with plain activations in
    their place it saves at least those two tensors more; the gradients are the same."""
    from vssm.layers import VSSBlock
    torch._dynamo.reset()
    torch.manual_seed(0)
    dim, hidden = 16, 64
    block = VSSBlock(dim, mlp_ratio=hidden / dim, d_state=1, ssm_ratio=1.0, gate=False)
    plain = VSSBlock(dim, mlp_ratio=hidden / dim, d_state=1, ssm_ratio=1.0, gate=False)
    plain.load_state_dict(block.state_dict())
    plain.mlp.act, plain.mixer.act = torch.nn.GELU(), torch.nn.SiLU()
    x = torch.randn(2, 6, 7, dim, requires_grad=True)
    tokens = x.shape[0] * x.shape[1] * x.shape[2]
    saved = _saved_elements(block, x)
    grads = [p.grad.clone() for p in block.parameters()] + [x.grad.clone()]
    x.grad = None
    torch._dynamo.reset()
    saved_plain = _saved_elements(plain, x)
    assert saved_plain - saved >= tokens * (hidden + dim), (saved, saved_plain)
    for g, p in zip(grads, list(plain.parameters()) + [x]):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)


def test_compiled_grad_checkpointing_nests_the_recomputed_activations():
    """timm grad checkpointing (whole blocks) around the activations' own checkpoints compiles as one graph and
    gives eager's loss and gradients."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model("vmamba_nano", num_classes=5)
    eager = timm.create_model("vmamba_nano", num_classes=5)
    eager.load_state_dict(model.state_dict())
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    loss = torch.compile(model, fullgraph=True, backend="aot_eager")(x).square().mean()
    loss.backward()
    loss_eager = eager(x).square().mean()
    loss_eager.backward()
    assert torch.allclose(loss, loss_eager, rtol=1e-5, atol=1e-7)
    for (n, p), q in zip(model.named_parameters(), eager.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), n

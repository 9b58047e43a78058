"""scans: index maps are permutations (plus documented padding), flatten/merge are adjoint, exact orders."""
import pytest
import torch

from vssm import scans
from vssm.scans import PAD

# (name, options, channels) for every registered pattern; channels divisible by K for split patterns
CASES = [
    ("cross", {}, 3),
    ("group", {}, 8),
    ("window", {"directions": ["h", "v_flip", "w2", "w7_flip"]}, 3),
    ("atrous", {"step": 2}, 3),
]
SIZES = [(1, 1), (7, 9), (3, 50), (4, 4), (14, 14)]


def coverage(pattern):
    """How many sequences contain each position: 1 for atrous (disjoint sub-grids), else K."""
    return 1 if pattern.name == "atrous" else pattern.K


def case_id(case):
    name, options, _ = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_index_map_covers_every_position(case, size):
    name, options, _ = case
    pattern = scans.build(name, **options)
    H, W = size
    index = pattern.index_map(H, W)
    assert index.dtype == torch.int64 and index.shape[0] == pattern.K
    assert ((index >= 0) | (index == PAD)).all() and (index < H * W).all()
    for k in range(pattern.K):
        real = index[k][index[k] != PAD]
        assert real.unique().numel() == real.numel(), (k, index[k])  # no position twice in a sequence
    # every position is covered, and equally often (K times, or once for the sub-grid atrous scan)
    counts = torch.bincount(index[index != PAD], minlength=H * W)
    assert counts.min() == counts.max() == coverage(pattern)
    every_sequence_full = all(int((index[k] != PAD).sum()) == H * W for k in range(pattern.K))
    assert every_sequence_full == pattern.sequences_cover_map
    assert pattern.index_map(H, W) is index  # cached per size


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gather_reads_slice_k_in_order_of_sequence_k(case):
    name, options, _ = case
    pattern = scans.build(name, **options)
    H, W = 5, 7
    x = torch.randn(2, pattern.K, 3, H, W)
    out = pattern.gather(x)
    index = pattern.index_map(H, W)
    assert out.shape == (2, pattern.K, 3, index.shape[1])
    for k in range(pattern.K):
        real = index[k] != PAD
        assert torch.equal(out[:, k][..., real], x[:, k].reshape(2, 3, H * W)[..., index[k][real]])
        assert (out[:, k][..., ~real] == 0).all()
    with pytest.raises(ValueError, match="gather expects"):
        pattern.gather(torch.randn(2, pattern.K + 1, 3, H, W))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_scatter_inverts_gather_where_sequences_pass(case):
    """scatter(gather(x)) keeps x where sequence k passes (every position, unless the sequences cover parts) and
    is zero elsewhere; a position passed twice by one sequence would be doubled."""
    name, options, _ = case
    pattern = scans.build(name, **options)
    H, W = 5, 7
    x = torch.randn(2, pattern.K, 3, H, W)
    back = pattern.scatter(pattern.gather(x), (H, W))
    index = pattern.index_map(H, W)
    for k in range(pattern.K):
        passed = torch.zeros(H * W, dtype=torch.bool)
        passed[index[k][index[k] != PAD]] = True
        assert bool(passed.all()) or not pattern.sequences_cover_map
        assert torch.equal(back[:, k].flatten(2)[..., passed], x[:, k].flatten(2)[..., passed])
        assert (back[:, k].flatten(2)[..., ~passed] == 0).all()
    with pytest.raises(ValueError, match="scatter expects"):
        pattern.scatter(torch.randn(2, pattern.K, 3, index.shape[1] + 1), (H, W))


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_flatten_then_merge_counts_each_position_K_times(case, size):
    name, options, channels = case
    pattern = scans.build(name, **options)
    x = torch.randn(2, channels, *size)
    merged = pattern.merge(pattern.flatten(x), size)
    copies = 1 if pattern.split_channels else coverage(pattern)
    assert torch.allclose(merged, copies * x)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_merge_is_adjoint_of_flatten(case):
    name, options, channels = case
    pattern = scans.build(name, **options)
    x = torch.randn(2, channels, 7, 9, dtype=torch.float64, requires_grad=True)
    xs = pattern.flatten(x)
    y = torch.randn_like(xs)
    # <flatten(x), y> == <x, merge(y)>, and the autograd VJP of flatten is merge
    lhs = (xs * y).sum()
    assert torch.allclose(lhs, (x * pattern.merge(y, (7, 9))).sum())
    (grad,) = torch.autograd.grad(lhs, x)
    assert torch.allclose(grad, pattern.merge(y, (7, 9)))
    assert torch.autograd.gradcheck(lambda t: pattern.merge(t, (7, 9)), (y.requires_grad_(),))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_channels_last_input(case):
    name, options, channels = case
    pattern = scans.build(name, **options)
    x = torch.randn(2, channels, 5, 6)
    assert torch.equal(pattern.flatten(x.contiguous(memory_format=torch.channels_last)), pattern.flatten(x))
    # a (B, H, W, C) tensor viewed as (B, C, H, W) works without a copy by the caller
    bhwc = x.permute(0, 2, 3, 1).contiguous()
    assert torch.equal(pattern.flatten(bhwc.permute(0, 3, 1, 2)), pattern.flatten(x))


def grid_tokens(pattern, H, W):
    """Sequences of a single-channel arange map, padding tokens shown as -1."""
    channels = pattern.K if pattern.split_channels else 1
    x = torch.arange(H * W, dtype=torch.float64).view(1, 1, H, W).expand(1, channels, H, W) + 1
    return (pattern.flatten(x)[0, :, 0] - 1).long().tolist()


def test_cross_order_matches_vmamba():
    # VMamba's CrossScan on a 2x3 map: row-major, column-major, then both reversed
    assert grid_tokens(scans.build("cross"), 2, 3) == [
        [0, 1, 2, 3, 4, 5],
        [0, 3, 1, 4, 2, 5],
        [5, 4, 3, 2, 1, 0],
        [5, 2, 4, 1, 3, 0],
    ]


def test_window_order_matches_localmamba():
    # LocalMamba w2 on 3x5: bottom/right zero padding stays inside the edge windows
    P = PAD
    tokens = grid_tokens(scans.build("window", directions=["w2", "h", "v", "h_flip"]), 3, 5)
    assert tokens[0][:24] == [0, 1, 5, 6, 2, 3, 7, 8, 4, P, 9, P, 10, 11, P, P, 12, 13, P, P, 14, P, P, P]


def test_atrous_order_matches_efficientvmamba():
    P = PAD
    assert grid_tokens(scans.build("atrous", step=2), 4, 4) == [[0, 2, 8, 10], [4, 12, 6, 14], [1, 3, 9, 11],
                                                                 [5, 13, 7, 15]]
    assert grid_tokens(scans.build("atrous", step=2), 3, 5) == [
        [0, 2, 4, 10, 12, 14], [5, P, 7, P, 9, P], [1, 3, P, 11, 13, P], [6, P, 8, P, P, P]]


def test_group_scans_one_direction_per_channel_group():
    pattern = scans.build("group")
    assert pattern.split_channels and pattern.K == 4
    assert torch.equal(pattern.index_map(2, 3), scans.build("cross").index_map(2, 3))


def test_unknown_scan_lists_available():
    with pytest.raises(KeyError, match="available: .*cross"):
        scans.build("zigzag_spiral")


def test_unknown_option_is_value_error():
    with pytest.raises(ValueError, match="takes options"):
        scans.build("cross", window=3)


def test_bad_inputs():
    pattern = scans.build("cross")
    with pytest.raises(ValueError, match="expects \\(B, C, H, W\\)"):
        pattern.flatten(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="merge expects"):
        pattern.merge(torch.randn(1, 3, 2, 6), (2, 3))
    with pytest.raises(ValueError, match="at least 1x1"):
        pattern.index_map(0, 4)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_compiled_graph_takes_index_maps_from_the_cache(case):
    """Under torch.compile the index maps come from the ``vssm::scan_index`` op (the cached map), not from the
    build traced into the graph (CPU ops and a host copy in every call); results match eager at two sizes."""
    import torch._dynamo
    name, options, channels = case
    pattern = scans.build(name, **options)

    def roundtrip(x):
        return pattern.merge(pattern.flatten(x), x.shape[2:]) + pattern.sequence_length(*x.shape[2:])

    x = torch.randn(2, channels * pattern.K, 5, 7)
    graph = torch._dynamo.explain(roundtrip)(x).graphs[0].code
    assert "vssm.scan_index" in graph and "arange" not in graph
    assert ("vssm.scan_merge_source" in graph) != pattern.split_channels  # channel-split merges scatter
    compiled = torch.compile(roundtrip, backend="aot_eager", fullgraph=True)
    for size in [(5, 7), (6, 3)]:
        x = torch.randn(2, channels * pattern.K, *size)
        torch.testing.assert_close(compiled(x), roundtrip(x))
    index = torch.ops.vssm.scan_index(pattern.key, 6, 3, torch.device("cpu"), torch.int32, 18)
    assert index.dtype == torch.int32 and torch.equal(index, pattern.device_index(6, 3, "cpu", pad=18).int())

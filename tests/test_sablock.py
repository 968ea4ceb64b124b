"""monai_ext.networks.blocks.SABlock against monai.networks.blocks.SABlock (monai 1.6.1).

Parity tests give both blocks the same random weights and compare eval outputs wherever MONAI's block is correct;
each defect test runs MONAI's block and ours side by side on the same input.
"""

import itertools

import pytest
import torch
from monai.networks.blocks import SABlock as MonaiSABlock

from monai_ext.networks.blocks import DecomposedRelPosBias, SABlock

HIDDEN, HEADS, BATCH, LENGTH = 32, 4, 2, 12
TOL = 1e-5


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) * 0.3)


def _pair(**kwargs) -> tuple[MonaiSABlock, SABlock]:
    """MONAI's block with random weights and ours loaded from its state dict, both in eval mode."""
    monai_block = MonaiSABlock(**kwargs)
    _randomise(monai_block)
    ours = SABlock(**kwargs)
    ours.load_state_dict(monai_block.state_dict())
    return monai_block.eval(), ours.eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _layouts():
    """Every valid combination of the layout arguments; include_fc=False needs num_heads * dim_head == input width."""
    for include_fc, combined, qkv_bias, dim_head, hidden_input_size in itertools.product(
        (True, False), (True, False), (True, False), (None, 6), (None, 20)
    ):
        inner = HIDDEN if dim_head is None else HEADS * dim_head
        if not include_fc and inner != (hidden_input_size or HIDDEN):
            continue
        yield {
            "include_fc": include_fc,
            "use_combined_linear": combined,
            "qkv_bias": qkv_bias,
            "dim_head": dim_head,
            "hidden_input_size": hidden_input_size,
        }


LAYOUTS = list(_layouts())


@pytest.mark.parametrize("save_attn", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_parity_layouts(layout, causal, save_attn):
    kwargs = dict(layout, hidden_size=HIDDEN, num_heads=HEADS, causal=causal, save_attn=save_attn)
    monai_block, ours = _pair(**kwargs, sequence_length=LENGTH if causal else None)
    x = torch.randn(BATCH, LENGTH, layout["hidden_input_size"] or HIDDEN)
    expected = monai_block(x)
    assert _max_diff(ours(x), expected) < TOL
    if save_attn:
        assert _max_diff(ours.att_mat, monai_block.att_mat) < TOL


@pytest.mark.parametrize("save_attn", [False, True])
def test_parity_key_padding_mask(save_attn):
    monai_block, ours = _pair(hidden_size=HIDDEN, num_heads=HEADS, save_attn=save_attn)
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    keep = torch.rand(BATCH, LENGTH) > 0.4
    keep[:, 0] = True
    assert _max_diff(ours(x, keep), monai_block(x, keep)) < TOL


def test_parity_full_mask_with_monai_fused_path():
    # MONAI's fused path passes a (B, 1, N, N) bool mask straight to SDPA, which is correct
    monai_block, ours = _pair(hidden_size=HIDDEN, num_heads=HEADS, use_flash_attention=True)
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    keep = torch.rand(BATCH, 1, LENGTH, LENGTH) > 0.4
    keep[..., 0] = True
    expected = monai_block(x, keep)
    assert _max_diff(ours(x, keep), expected) < TOL
    assert _max_diff(ours(x, keep[:, 0]), expected) < TOL


@pytest.mark.parametrize("use_flash_attention", [False, True])
def test_parity_flash_flag_and_attention_dtype(use_flash_attention):
    monai_block, ours = _pair(
        hidden_size=HIDDEN, num_heads=HEADS, use_flash_attention=use_flash_attention, attention_dtype=torch.float32
    )
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    assert _max_diff(ours(x), monai_block(x)) < TOL


@pytest.mark.parametrize("save_attn", [False, True])
@pytest.mark.parametrize("use_combined_linear", [True, False])
def test_parity_rel_pos_2d(use_combined_linear, save_attn):
    monai_block, ours = _pair(
        hidden_size=HIDDEN,
        num_heads=HEADS,
        rel_pos_embedding="decomposed",
        input_size=(3, 4),
        use_combined_linear=use_combined_linear,
        save_attn=save_attn,
    )
    x = torch.randn(BATCH, 12, HIDDEN)
    assert _max_diff(ours(x), monai_block(x)) < TOL


@pytest.mark.parametrize(
    "config",
    [{}, {"causal": True, "use_combined_linear": False}, {"rel_pos_embedding": "decomposed", "input_size": (3, 4)}],
    ids=["default", "causal-separate", "rel-pos-2d"],
)
def test_parity_gradients(config):
    monai_block, ours = _pair(hidden_size=HIDDEN, num_heads=HEADS, sequence_length=LENGTH, **config)
    x = torch.randn(BATCH, LENGTH, HIDDEN, requires_grad=True)
    grads = []
    for block in (monai_block, ours):
        block.train()
        x.grad = None
        block(x).square().sum().backward()
        grads.append([x.grad.clone()] + [param.grad for _, param in sorted(block.named_parameters())])
    for expected, found in zip(*grads, strict=True):
        torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_parity_rel_pos_3d_at_initialisation():
    # MONAI's 3D bias is only correct while its tables are zero (their initial value), see the defect test below
    monai_block = MonaiSABlock(HIDDEN, HEADS, rel_pos_embedding="decomposed", input_size=(3, 3, 3)).eval()
    ours = SABlock(HIDDEN, HEADS, rel_pos_embedding="decomposed", input_size=(3, 3, 3)).eval()
    ours.load_state_dict(monai_block.state_dict())
    x = torch.randn(BATCH, 27, HIDDEN)
    assert _max_diff(ours(x), monai_block(x)) < TOL


def _brute_force_rel_pos_bias(q: torch.Tensor, tables: list[torch.Tensor], sizes: tuple[int, ...]) -> torch.Tensor:
    """The decomposed bias from its definition, one (query, key) pair at a time."""
    positions = list(itertools.product(*(range(s) for s in sizes)))
    bias = torch.zeros(q.shape[0], q.shape[1], len(positions), len(positions))
    for i, p in enumerate(positions):
        for j, r in enumerate(positions):
            for axis, size in enumerate(sizes):
                bias[:, :, i, j] += q[:, :, i] @ tables[axis][p[axis] - r[axis] + size - 1]
    return bias


@pytest.mark.parametrize("sizes", [(3, 4), (2, 3, 4)])
def test_rel_pos_bias_matches_definition(sizes):
    num_tokens = 1
    for s in sizes:
        num_tokens *= s
    block = DecomposedRelPosBias(sizes, dim_head=5, num_heads=2)
    _randomise(block)
    q = torch.randn(2, 2, num_tokens, 5)
    expected = _brute_force_rel_pos_bias(q, list(block.rel_pos_arr), sizes)
    assert _max_diff(block(q), expected) < TOL


def test_defect_rel_pos_3d_monai_misplaces_terms():
    sizes = (3, 3, 3)
    monai_block, ours = _pair(hidden_size=HIDDEN, num_heads=HEADS, rel_pos_embedding="decomposed", input_size=sizes)
    q = torch.randn(1, HEADS, 27, HIDDEN // HEADS)
    tables = list(ours.rel_positional_embedding.rel_pos_arr)
    expected = _brute_force_rel_pos_bias(q, tables, sizes)
    monai_bias = monai_block.rel_positional_embedding(torch.zeros(1, 27, HIDDEN), torch.zeros(1, HEADS, 27, 27), q)
    assert _max_diff(monai_bias, expected) > 0.1
    assert _max_diff(ours.rel_positional_embedding(q), expected) < TOL
    # MONAI fails outright unless the last two sizes are equal
    monai_block = MonaiSABlock(HIDDEN, HEADS, rel_pos_embedding="decomposed", input_size=(2, 3, 4))
    with pytest.raises(RuntimeError, match="einsum"):
        monai_block(torch.randn(1, 24, HIDDEN))
    assert SABlock(HIDDEN, HEADS, rel_pos_embedding="decomposed", input_size=(2, 3, 4))(
        torch.randn(1, 24, HIDDEN)
    ).shape == (1, 24, HIDDEN)


def test_defect1_dropout_only_while_training():
    monai_block, ours = _pair(hidden_size=HIDDEN, num_heads=HEADS, dropout_rate=0.5, use_flash_attention=True)
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    assert _max_diff(monai_block(x), monai_block(x)) > 0  # MONAI: dropout inside SDPA in eval mode
    no_dropout = SABlock(HIDDEN, HEADS, use_flash_attention=True).eval()
    no_dropout.load_state_dict(ours.state_dict())
    for save_attn in (False, True):
        block = SABlock(HIDDEN, HEADS, dropout_rate=0.5, save_attn=save_attn).eval()
        block.load_state_dict(ours.state_dict())
        assert torch.equal(block(x), block(x))
        assert _max_diff(block(x), no_dropout(x)) < TOL
        block.train()
        assert _max_diff(block(x), block(x)) > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("save_attn", [False, True])
def test_defect2_attention_dtype(dtype, save_attn):
    kwargs = dict(hidden_size=HIDDEN, num_heads=HEADS, save_attn=save_attn, attention_dtype=dtype)
    monai_block, ours = _pair(**kwargs)
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    monai_flash = MonaiSABlock(HIDDEN, HEADS, attention_dtype=dtype, use_flash_attention=True)
    for block in (monai_block, monai_flash):  # MONAI casts q and k but not v
        with pytest.raises(RuntimeError, match="expected scalar type|to have the same dtype"):
            block(x)
    reference = SABlock(HIDDEN, HEADS).eval()
    reference.load_state_dict(ours.state_dict())
    out = ours(x)
    assert out.dtype == torch.float32
    assert 0 < _max_diff(out, reference(x)) < 0.1  # computed in the lower precision, close to float32
    if save_attn:
        assert ours.att_mat.dtype == dtype


def test_defect3_causal_without_length_or_buffer():
    with pytest.raises(ValueError, match="sequence_length"):
        MonaiSABlock(HIDDEN, HEADS, causal=True)
    monai_block, ours = _pair(hidden_size=HIDDEN, num_heads=HEADS, causal=True, sequence_length=LENGTH)
    assert monai_block.state_dict()["causal_mask"].shape == (1, 1, LENGTH, LENGTH)
    assert set(ours.state_dict()) == set(SABlock(HIDDEN, HEADS).state_dict())
    assert not list(ours.buffers())
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    assert _max_diff(ours(x), monai_block(x)) < TOL
    # MONAI fails beyond sequence_length; ours takes any length and stays causal
    longer = torch.randn(BATCH, 2 * LENGTH, HIDDEN)
    with pytest.raises(RuntimeError):
        monai_block(longer)
    out = ours(longer)
    assert _max_diff(out[:, :LENGTH], ours(longer[:, :LENGTH])) < TOL
    # causal and non-causal blocks load each other's weights
    MonaiSABlock(HIDDEN, HEADS).load_state_dict(SABlock(HIDDEN, HEADS, causal=True).state_dict())
    SABlock(HIDDEN, HEADS).load_state_dict(monai_block.state_dict())
    with pytest.raises(RuntimeError, match="causal_mask"):
        MonaiSABlock(HIDDEN, HEADS).load_state_dict(monai_block.state_dict())
    assert _max_diff(torch.jit.script(ours)(longer), out) == 0


def test_defect3_causal_combines_with_masks():
    monai_block, ours = _pair(hidden_size=HIDDEN, num_heads=HEADS, causal=True, sequence_length=LENGTH)
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    keep = torch.rand(BATCH, LENGTH) > 0.3
    keep[:, 0] = True
    with pytest.raises(ValueError, match="Causal attention does not support attention masks"):
        monai_block(x, keep)
    both = keep[:, None, :] & torch.ones(LENGTH, LENGTH, dtype=torch.bool).tril()
    plain = SABlock(HIDDEN, HEADS).eval()
    plain.load_state_dict(ours.state_dict())
    assert _max_diff(ours(x, keep), plain(x, both)) < TOL


def test_defect4_one_mask_meaning_on_every_path():
    # B == N: MONAI's fused path reads a (B, N) key-padding mask as a query-by-key mask and gives other results
    batch = length = 4
    monai_unfused, ours = _pair(hidden_size=HIDDEN, num_heads=HEADS)
    monai_fused = MonaiSABlock(HIDDEN, HEADS, use_flash_attention=True).eval()
    monai_fused.load_state_dict(monai_unfused.state_dict())
    x = torch.randn(batch, length, HIDDEN)
    keep = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 1], [1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    expected = monai_unfused(x, keep)
    assert _max_diff(monai_fused(x, keep), expected) > 0.01
    with pytest.raises(RuntimeError):
        monai_fused(torch.randn(2, length, HIDDEN), keep[:2])  # (B, N) with B != N raises on MONAI's fused path
    ours_explicit = SABlock(HIDDEN, HEADS, save_attn=True).eval()
    ours_explicit.load_state_dict(ours.state_dict())
    ours_flash = SABlock(HIDDEN, HEADS, use_flash_attention=True).eval()
    ours_flash.load_state_dict(ours.state_dict())
    for block in (ours, ours_explicit, ours_flash):
        assert _max_diff(block(x, keep), expected) < TOL
        full = keep[:, None, :].expand(batch, length, length)
        assert _max_diff(block(x, full), expected) < TOL
        assert _max_diff(block(x, full[:, None]), expected) < TOL


def test_defect4_query_without_keys_gets_zeros_on_every_path():
    monai_block, ours = _pair(hidden_size=HIDDEN, num_heads=HEADS, include_fc=False)
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    keep = torch.ones(BATCH, LENGTH, LENGTH, dtype=torch.bool)
    keep[0, 3] = False
    explicit = SABlock(HIDDEN, HEADS, include_fc=False, save_attn=True).eval()
    explicit.load_state_dict(ours.state_dict())
    for block in (ours, explicit):
        out = block(x, keep)
        assert torch.equal(out[0, 3], torch.zeros(HIDDEN))
        assert torch.isfinite(out).all()
    padding = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    padding[1] = False
    assert torch.isnan(monai_block(x, padding)[1]).all()  # MONAI: NaN for a sample with no key
    assert torch.equal(ours(x, padding)[1], torch.zeros(LENGTH, HIDDEN))


@pytest.mark.parametrize(
    "mask",
    [
        torch.ones(BATCH, LENGTH),  # float: ambiguous between keep mask and additive bias
        torch.ones(BATCH, LENGTH, dtype=torch.long),
        torch.ones(LENGTH, dtype=torch.bool),
        torch.ones(BATCH, HEADS, LENGTH, LENGTH, dtype=torch.bool),
        torch.ones(BATCH, LENGTH + 1, dtype=torch.bool),
    ],
    ids=["float", "long", "1d", "per-head", "wrong-length"],
)
def test_defect4_other_masks_refused(mask):
    block = SABlock(HIDDEN, HEADS)
    with pytest.raises(ValueError, match=r"attn_mask must be a bool tensor \(True = attend\)"):
        block(torch.randn(BATCH, LENGTH, HIDDEN), mask)


def test_defect5_decomposed_rel_pos_scripts_and_runs_fused():
    kwargs = dict(hidden_size=HIDDEN, num_heads=HEADS, rel_pos_embedding="decomposed", input_size=(3, 4))
    with pytest.raises(RuntimeError, match="np.ndarray"):
        torch.jit.script(MonaiSABlock(**kwargs))
    with pytest.raises(ValueError, match="rel_pos_embedding must be None"):
        MonaiSABlock(**kwargs, use_flash_attention=True)
    monai_block, ours = _pair(**kwargs)
    x = torch.randn(BATCH, 12, HIDDEN)
    flash = SABlock(**kwargs, use_flash_attention=True).eval()
    flash.load_state_dict(ours.state_dict())
    expected = monai_block(x)
    assert _max_diff(flash(x), expected) < TOL
    assert _max_diff(torch.jit.script(ours)(x), ours(x)) == 0
    # the bias carries gradients to the tables on the fused path as on the explicit one
    explicit = SABlock(**kwargs, save_attn=True).eval()
    explicit.load_state_dict(ours.state_dict())
    for block in (ours, explicit):
        block.zero_grad()
        block(x).square().sum().backward()
    for fused_table, explicit_table in zip(
        ours.rel_positional_embedding.rel_pos_arr, explicit.rel_positional_embedding.rel_pos_arr, strict=True
    ):
        assert fused_table.grad.abs().max() > 0
        torch.testing.assert_close(fused_table.grad, explicit_table.grad, rtol=1e-5, atol=1e-3)


def test_defect6_dim_head_and_include_fc_width():
    with pytest.raises(ValueError, match="divisible"):
        MonaiSABlock(30, 4, dim_head=8)
    block = SABlock(30, 4, dim_head=8)
    assert block(torch.randn(BATCH, LENGTH, 30)).shape == (BATCH, LENGTH, 30)
    # include_fc=False with num_heads * dim_head != input width: MONAI changes the width silently, ours refuses
    assert MonaiSABlock(HIDDEN, HEADS, dim_head=6, include_fc=False)(torch.randn(BATCH, LENGTH, HIDDEN)).shape[-1] == 24
    with pytest.raises(ValueError, match=r"include_fc=False .* = 24, .* hidden_input_size = 32"):
        SABlock(HIDDEN, HEADS, dim_head=6, include_fc=False)
    with pytest.raises(ValueError, match="hidden_size .* divisible by num_heads .* unless dim_head"):
        SABlock(30, 4)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_defect7_fused_and_separate_layouts_load_each_other(qkv_bias):
    fused_monai, fused = _pair(hidden_size=HIDDEN, num_heads=HEADS, qkv_bias=qkv_bias, use_combined_linear=True)
    separate_monai, separate = _pair(hidden_size=HIDDEN, num_heads=HEADS, qkv_bias=qkv_bias, use_combined_linear=False)
    with pytest.raises(RuntimeError, match="to_q.weight"):
        separate_monai.load_state_dict(fused_monai.state_dict())
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    fused_state = fused_monai.state_dict()
    snapshot = {key: value.clone() for key, value in fused_state.items()}
    separate.load_state_dict(fused_state)
    assert fused_state.keys() == snapshot.keys()  # the caller's mapping is left alone
    assert torch.equal(separate(x), fused(x))
    assert torch.equal(separate.to_k.weight, fused_state["qkv.weight"][HIDDEN : 2 * HIDDEN])
    fused.load_state_dict(separate_monai.state_dict())
    separate.load_state_dict(separate_monai.state_dict())
    assert torch.equal(fused(x), separate(x))


@pytest.mark.parametrize("include_fc", [True, False])
def test_defect7_out_proj_mismatch_names_keys_and_flag(include_fc):
    source = SABlock(HIDDEN, HEADS, include_fc=include_fc, qkv_bias=True)
    target = SABlock(HIDDEN, HEADS, include_fc=not include_fc)
    with pytest.raises(RuntimeError) as raised:
        target.load_state_dict(source.state_dict())
    message = str(raised.value)
    if include_fc:
        assert "out_proj.weight, out_proj.bias" in message and "include_fc=True" in message
    else:
        assert "no out_proj.weight" in message and "include_fc=False" in message
    # nested blocks name their full key
    outer_source, outer_target = torch.nn.Sequential(source), torch.nn.Sequential(target)
    with pytest.raises(RuntimeError, match=r"0\.out_proj\.weight"):
        outer_target.load_state_dict(outer_source.state_dict())


SCRIPT_CONFIGS = [
    {},
    {"use_combined_linear": False, "qkv_bias": True},
    {"include_fc": False, "causal": True},
    {"save_attn": True, "causal": True},
    {"dim_head": 6, "hidden_input_size": 20, "attention_dtype": torch.float64},
    {"rel_pos_embedding": "decomposed", "input_size": (2, 2, 3), "causal": True},
    {"rel_pos_embedding": "decomposed", "input_size": (3, 4), "save_attn": True},
]


@pytest.mark.parametrize(
    "config", SCRIPT_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_scripted_matches_eager(config):
    block = SABlock(HIDDEN, HEADS, **config).eval()
    _randomise(block)
    scripted = torch.jit.script(block)
    x = torch.randn(BATCH, LENGTH, config.get("hidden_input_size", HIDDEN))
    keep = torch.rand(BATCH, LENGTH) > 0.3
    keep[:, 0] = True
    assert torch.equal(scripted(x), block(x))
    assert torch.equal(scripted(x, keep), block(x, keep))
    with pytest.raises(torch.jit.Error, match="attn_mask must be a bool tensor"):
        scripted(x, keep.float())

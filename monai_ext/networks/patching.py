"""Swap MONAI's self-attention blocks inside a built network for the corrected ``monai_ext`` SABlock."""

from monai.networks.blocks import SABlock as MonaiSABlock
from torch import nn

from monai_ext.networks.blocks.selfattention import SABlock

__all__ = ["patch_attention"]


def _convert(block: MonaiSABlock, path: str) -> SABlock:
    """Build our SABlock with ``block``'s configuration, weights, device, dtype, mode and frozen parameters."""
    first_projection = block.qkv if block.use_combined_linear else block.to_q
    try:
        ours = SABlock(
            hidden_size=block.inner_dim,
            num_heads=block.num_heads,
            dropout_rate=block.dropout_rate,
            qkv_bias=first_projection.bias is not None,
            save_attn=block.save_attn,
            dim_head=block.dim_head,
            hidden_input_size=block.hidden_input_size,
            causal=block.causal,
            sequence_length=block.sequence_length,
            rel_pos_embedding="decomposed" if block.rel_positional_embedding is not None else None,
            input_size=block.input_size,
            attention_dtype=block.attention_dtype,
            include_fc=block.include_fc,
            use_combined_linear=block.use_combined_linear,
            use_flash_attention=block.use_flash_attention,
        )
    except ValueError as error:
        raise ValueError(f"patch_attention cannot replace the SABlock at '{path}': {error}") from error
    weight = first_projection.weight
    ours.to(device=weight.device, dtype=weight.dtype)
    ours.load_state_dict(block.state_dict())
    frozen = {name for name, param in block.named_parameters() if not param.requires_grad}
    for name, param in ours.named_parameters():
        param.requires_grad_(name not in frozen)
    return ours.train(block.training)


def patch_attention(module: nn.Module) -> nn.Module:
    """
    Replace every ``monai.networks.blocks.SABlock`` inside ``module`` (ViT, UNETR, AutoencoderKL,
    DiffusionModelUNet, ...) by :class:`monai_ext.networks.blocks.SABlock`, in place.

    Each replacement gets the original's configuration, weights, device, dtype, train/eval mode and frozen
    parameters, so eval outputs stay the same (up to float rounding) wherever MONAI's block is correct; where it is
    not (dropout in eval with ``use_flash_attention``, 3D decomposed rel-pos with trained tables, key-padding masks on
    the fused path) the patched network gives the corrected result. A block shared by several parents stays shared.
    Subclasses of MONAI's SABlock are left alone, since they may change its behaviour. Hooks registered on the
    original blocks are not carried over.

    In a bundle config: ``"network": "$monai_ext.networks.patch_attention(@network_def)"``.

    Args:
        module: a network, or a single MONAI SABlock.

    Returns:
        ``module`` itself, patched; for a MONAI SABlock passed directly, the new block (it cannot replace itself).

    Raises:
        ValueError: naming the block's path, if a block's configuration is one our SABlock refuses
            (``include_fc=False`` with ``num_heads * dim_head != hidden_input_size``).
    """
    if type(module) is MonaiSABlock:
        return _convert(module, "")
    replacements: dict[int, SABlock] = {}
    for parent_name, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is MonaiSABlock:
                if id(child) not in replacements:
                    replacements[id(child)] = _convert(child, f"{parent_name}.{name}" if parent_name else name)
                setattr(parent, name, replacements[id(child)])
    return module

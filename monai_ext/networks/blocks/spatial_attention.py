"""Self-attention over the spatial positions of a feature map, as used by autoencoders and diffusion U-Nets."""

from __future__ import annotations

import torch
import torch.nn as nn

from monai_ext.networks.blocks.selfattention import SABlock

__all__ = ["SpatialAttentionBlock"]


class SpatialAttentionBlock(nn.Module):
    """Group norm, then self-attention across all voxels, then a residual connection.

    Drop-in for ``monai.networks.blocks.SpatialAttentionBlock`` (same arguments, defaults and state-dict keys:
    ``norm.*`` and ``attn.*``), built on :class:`monai_ext.networks.blocks.SABlock`, so the fused
    ``scaled_dot_product_attention`` kernel is used by default, and it is TorchScript-scriptable (MONAI's block is not).

    Args:
        spatial_dims: number of spatial dimensions of the input, 1, 2 or 3.
        num_channels: number of input channels, which is also the attention width.
        num_head_channels: channels per attention head; ``None`` means a single head.
        norm_num_groups: number of groups of the group norm; must divide ``num_channels``.
        norm_eps: epsilon of the group norm.
        attention_dtype: compute attention in this dtype (``None``: the input dtype).
        include_fc: whether attention ends with an output linear layer (``attn.out_proj``).
        use_combined_linear: one ``attn.qkv`` linear instead of ``attn.to_q/to_k/to_v``.
        use_flash_attention: accepted for compatibility with MONAI; the fused kernel is used either way.

    Raises:
        ValueError: ``spatial_dims`` is not 1, 2 or 3, ``num_head_channels`` does not divide ``num_channels``, or
            ``norm_num_groups`` does not divide ``num_channels``.
    """

    def __init__(
        self,
        spatial_dims: int,
        num_channels: int,
        num_head_channels: int | None = None,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        attention_dtype: torch.dtype | None = None,
        include_fc: bool = True,
        use_combined_linear: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        if num_head_channels is not None and (num_head_channels <= 0 or num_channels % num_head_channels != 0):
            raise ValueError(
                f"num_head_channels ({num_head_channels}) must be a positive divisor of num_channels ({num_channels})"
            )
        if num_channels % norm_num_groups != 0:
            raise ValueError(f"norm_num_groups ({norm_num_groups}) must divide num_channels ({num_channels})")
        self.spatial_dims = spatial_dims
        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=num_channels, eps=norm_eps, affine=True)
        self.attn = SABlock(
            hidden_size=num_channels,
            num_heads=1 if num_head_channels is None else num_channels // num_head_channels,
            qkv_bias=True,
            attention_dtype=attention_dtype,
            include_fc=include_fc,
            use_combined_linear=use_combined_linear,
            use_flash_attention=use_flash_attention,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, C, *spatial)`` feature map.

        Returns:
            Tensor of the same shape: ``x`` plus attention over its ``prod(spatial)`` positions.
        """
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        return x + self.attn(tokens).transpose(1, 2).reshape(x.shape)

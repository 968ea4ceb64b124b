"""Decomposed relative positional attention bias (MViTv2, https://arxiv.org/abs/2112.01526)."""

from collections.abc import Sequence
from typing import Final

import torch
from torch import nn

__all__ = ["DecomposedRelPosBias"]


class DecomposedRelPosBias(nn.Module):
    """
    Additive attention bias from decomposed relative positions on a 2D or 3D token grid.

    For a query at grid position ``p`` and a key at grid position ``r`` the bias is
    ``sum_a q . T_a[p_a - r_a + S_a - 1]``, one learnt table ``T_a`` of shape ``(2 * S_a - 1, dim_head)`` per spatial
    axis ``a`` of size ``S_a``. The bias is added to the scaled query-key logits, so it can be passed to
    ``F.scaled_dot_product_attention`` as a float ``attn_mask``.

    The parameters are named ``rel_pos_arr.0``, ``rel_pos_arr.1`` (and ``rel_pos_arr.2``) as in MONAI's
    ``DecomposedRelativePosEmbedding``, so checkpoints load unchanged. In 2D both give the same bias. MONAI 1.6.1's 3D
    bias is wrong: it adds the three terms along the wrong key axes and looks the depth table up by the width
    position (so it fails unless W == D); it is correct only while all tables are zero, as they are at initialisation.

    Args:
        input_size: token grid size ``(H, W)`` or ``(H, W, D)``; sequences are flattened from it in row-major order.
        dim_head: size of each attention head.
        num_heads: number of attention heads.

    Raises:
        ValueError: if ``input_size`` does not hold 2 or 3 positive integers, or ``dim_head`` or ``num_heads`` is not
            positive.
    """

    spatial_size: Final[list[int]]
    num_tokens: Final[int]

    def __init__(self, input_size: Sequence[int], dim_head: int, num_heads: int) -> None:
        super().__init__()
        if not isinstance(input_size, Sequence) or len(input_size) not in (2, 3):
            raise ValueError(f"input_size must be (H, W) or (H, W, D) for decomposed rel-pos, got {input_size!r}.")
        sizes = [int(s) for s in input_size]
        if min(sizes) < 1:
            raise ValueError(f"input_size must hold positive sizes, got {input_size!r}.")
        if dim_head < 1 or num_heads < 1:
            raise ValueError(f"dim_head and num_heads must be positive, got {dim_head} and {num_heads}.")
        self.spatial_size = sizes
        num_tokens = 1
        for s in sizes:
            num_tokens *= s
        self.num_tokens = num_tokens
        self.rel_pos_arr = nn.ParameterList([nn.Parameter(torch.zeros(2 * s - 1, dim_head)) for s in sizes])

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """
        Args:
            q: unscaled queries, ``(B, heads, N, dim_head)`` with ``N`` the number of grid tokens.

        Returns:
            The bias, ``(B, heads, N, N)`` in the dtype of ``q``.

        Raises:
            ValueError: if ``N`` is not the number of tokens of ``input_size``.
        """
        batch, heads, length, dim_head = q.shape
        if length != self.num_tokens:
            raise ValueError(
                f"decomposed rel-pos was built for input_size={self.spatial_size} ({self.num_tokens} tokens), "
                f"got a sequence of {length} tokens."
            )
        grid = q.reshape([batch * heads] + self.spatial_size + [dim_head])
        lookups: list[torch.Tensor] = []
        for axis, table in enumerate(self.rel_pos_arr):
            size = self.spatial_size[axis]
            pos = torch.arange(size, device=q.device)
            # lookup[p, r] is the table row for the offset p - r between query position p and key position r
            lookups.append(table.to(q.dtype)[pos[:, None] - pos[None, :] + size - 1])
        if len(lookups) == 2:
            rel_h = torch.einsum("bhwc,hkc->bhwk", grid, lookups[0])
            rel_w = torch.einsum("bhwc,wkc->bhwk", grid, lookups[1])
            bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
        else:
            rel_h = torch.einsum("bhwdc,hkc->bhwdk", grid, lookups[0])
            rel_w = torch.einsum("bhwdc,wkc->bhwdk", grid, lookups[1])
            rel_d = torch.einsum("bhwdc,dkc->bhwdk", grid, lookups[2])
            bias = (
                rel_h[:, :, :, :, :, None, None] + rel_w[:, :, :, :, None, :, None] + rel_d[:, :, :, :, None, None, :]
            )
        return bias.reshape(batch, heads, length, length)

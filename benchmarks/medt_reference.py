"""Straightforward implementation of gated axial attention and MedT's patch loop: the parity and speed reference.

It computes the math of issue 3 literally (materialised relative embeddings, ``torch.cat`` of the three similarity
maps, BatchNorm on the ``L x L`` maps, the ``(sv, sve)`` pairs interleaved before one output BatchNorm, and one
Python iteration per patch). It has the same state-dict keys as :class:`GatedAxialAttention` and
:class:`MedT`, so weights move between the two with ``load_state_dict``. Imported by ``tests/`` and by
``benchmarks/gated_axial.py``; it is not part of the package.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from monai_ext.networks.blocks import GatedAxialAttention
from monai_ext.networks.nets import MedT

__all__ = ["ReferenceAxialAttention", "ReferenceMedT", "reference_copy"]


class ReferenceAxialAttention(GatedAxialAttention):
    """``GatedAxialAttention`` with its forward written the obvious way; same parameters and buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, gp, c = self.num_groups, self.group_channels, self.group_channels // 2
        dim = 2 + self.axis
        moved = x.movedim(1, -1).movedim(dim - 1, -1)  # (N, *others, C, L)
        length = moved.shape[-1]
        rows = moved.reshape(-1, x.shape[1], length)
        batch = rows.shape[0]
        qkv = self.norm_qkv(F.conv1d(rows, self.qkv.weight))
        q, k, v = torch.split(qkv.reshape(batch, g, 2 * gp, length), [c, c, gp], dim=2)
        qk = torch.einsum("bgci,bgcj->bgij", q, k)
        if self.positional:
            index = torch.arange(length)
            flat = (index[:, None] - index[None, :] + self.spatial_size - 1).reshape(-1)
            emb = torch.index_select(self.relative, 1, flat).view(2 * gp, length, length)
            emb_q, emb_k, emb_v = torch.split(emb, [c, c, gp], dim=0)
            qr = torch.einsum("bgci,cij->bgij", q, emb_q)
            kr = torch.einsum("bgci,cij->bgij", k, emb_k).transpose(2, 3)
            if self.gated:
                qr = qr * self.f_qr
                kr = kr * self.f_kr
            stacked = torch.cat([self.norm_qk(qk), self.norm_qr(qr), self.norm_kr(kr)], dim=1)
            similarity = stacked.view(batch, 3, g, length, length).sum(dim=1)
        else:
            similarity = self.norm_qk(qk)
        attn = F.softmax(similarity, dim=3)
        sv = torch.einsum("bgij,bgcj->bgci", attn, v).reshape(batch, self.out_channels, length)
        if self.gated:
            sv = sv * self.f_sv
        out = self.norm_sv(sv)
        if self.positional:
            sve = torch.einsum("bgij,cij->bgci", attn, emb_v).reshape(batch, self.out_channels, length)
            if self.gated:
                sve = sve * self.f_sve
            out = out + self.norm_sve(sve)
        out = out.reshape(*moved.shape[:-2], self.out_channels, length)
        out = out.movedim(-1, dim - 1).movedim(-1, 1)
        if self.stride > 1:
            out = (F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d)(out, self.stride, self.stride)
        return out


class ReferenceMedT(MedT):
    """``MedT`` that runs its local branch once per patch in a Python loop."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global_features = self.global_branch(x)
        local_features = torch.zeros_like(global_features)
        patch = [size // grid for size, grid in zip(x.shape[2:], self.patch_grid, strict=True)]
        for index in itertools.product(*[range(grid) for grid in self.patch_grid]):
            region = (slice(None), slice(None)) + tuple(
                slice(i * p, (i + 1) * p) for i, p in zip(index, patch, strict=True)
            )
            local_features[region] = self.local_branch(x[region])
        return self.head(F.relu(self.fuse(global_features + local_features)))


def reference_copy(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` computing with the reference classes (same state dict, same submodule tree)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if type(module) is GatedAxialAttention:
            module.__class__ = ReferenceAxialAttention
        elif type(module) is MedT:
            module.__class__ = ReferenceMedT
    return model

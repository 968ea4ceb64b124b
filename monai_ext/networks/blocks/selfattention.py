"""Multi-head self-attention block, a corrected drop-in for ``monai.networks.blocks.SABlock``."""

from collections.abc import Sequence
from typing import Final

import torch
import torch.nn.functional as F
from torch import nn

from monai_ext.networks.blocks.rel_pos_bias import DecomposedRelPosBias

__all__ = ["SABlock"]

_QKV_NAMES = ("to_q", "to_k", "to_v")


class SABlock(nn.Module):
    """
    Multi-head self-attention (Dosovitskiy et al., https://arxiv.org/abs/2010.11929) with the constructor arguments,
    defaults and state-dict keys of ``monai.networks.blocks.SABlock`` (monai 1.6.1), so it replaces MONAI's block in
    code, bundle configs and checkpoints, and fixes its defects:

    - dropout acts only while training, on every path;
    - ``attention_dtype`` computes attention in that dtype (queries, keys and values) and returns the input dtype;
    - ``causal`` needs no ``sequence_length``, keeps no N x N buffer (nothing in the state dict) and accepts any N;
    - ``attn_mask`` means the same on every path (see :meth:`forward`);
    - ``rel_pos_embedding="decomposed"`` is scriptable and runs fused, its term passed as an additive bias, and its 3D
      bias follows the definition (see :class:`DecomposedRelPosBias`);
    - ``dim_head`` makes any ``hidden_size`` valid, and ``include_fc=False`` must not change the width;
    - a state dict of either projection layout (fused ``qkv.*`` or ``to_q/to_k/to_v.*``) loads into the other.

    Attention runs through ``F.scaled_dot_product_attention`` unless ``save_attn=True``, which needs the attention
    matrix; ``use_flash_attention`` is accepted for compatibility and changes nothing.

    Args:
        hidden_size: width of the attention (``num_heads * dim_head``) unless ``dim_head`` is given.
        num_heads: number of attention heads.
        dropout_rate: dropout probability on the attention weights and the output, applied only while training.
        qkv_bias: whether the query, key and value projections have a bias.
        save_attn: keep the last attention matrix (after softmax, before dropout) in ``att_mat``.
        dim_head: size of each head. Defaults to ``hidden_size // num_heads``.
        hidden_input_size: width of the input (and output). Defaults to ``hidden_size``.
        causal: each token attends only to itself and earlier tokens.
        sequence_length: accepted for compatibility with MONAI; causal attention works for any length without it.
        rel_pos_embedding: ``"decomposed"`` adds decomposed relative positional terms (https://arxiv.org/abs/2112.01526)
            on the token grid ``input_size``; ``None`` for none.
        input_size: token grid ``(H, W)`` or ``(H, W, D)`` for ``rel_pos_embedding``.
        attention_dtype: compute attention in this floating dtype, e.g. ``torch.float32`` for float16 inputs.
        include_fc: whether to end with the output projection ``out_proj``.
        use_combined_linear: one fused ``qkv`` projection instead of ``to_q``, ``to_k`` and ``to_v``.
        use_flash_attention: accepted for compatibility; the fused kernel is used whenever ``save_attn`` is False.

    Raises:
        ValueError: if ``dropout_rate`` is not in [0, 1], ``num_heads`` or ``dim_head`` is not positive,
            ``hidden_size`` is not divisible by ``num_heads`` and no ``dim_head`` is given, ``include_fc=False``
            would change the width (``num_heads * dim_head != hidden_input_size``), ``save_attn`` and
            ``use_flash_attention`` are both True, ``rel_pos_embedding`` is not None or ``"decomposed"`` or its
            ``input_size`` is not 2D or 3D, or ``attention_dtype`` is not a floating dtype.
    """

    num_heads: Final[int]
    dim_head: Final[int]
    inner_dim: Final[int]
    hidden_input_size: Final[int]
    dropout_rate: Final[float]
    scale: Final[float]
    save_attn: Final[bool]
    causal: Final[bool]
    include_fc: Final[bool]
    use_combined_linear: Final[bool]
    use_flash_attention: Final[bool]
    attention_dtype: Final[torch.dtype | None]

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        save_attn: bool = False,
        dim_head: int | None = None,
        hidden_input_size: int | None = None,
        causal: bool = False,
        sequence_length: int | None = None,
        rel_pos_embedding: str | None = None,
        input_size: Sequence[int] | None = None,
        attention_dtype: torch.dtype | None = None,
        include_fc: bool = True,
        use_combined_linear: bool = True,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout_rate <= 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1], got {dropout_rate}.")
        if num_heads < 1:
            raise ValueError(f"num_heads must be positive, got {num_heads}.")
        if dim_head is None:
            if hidden_size % num_heads != 0:
                raise ValueError(
                    f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}) "
                    "unless dim_head is given."
                )
            dim_head = hidden_size // num_heads
        elif dim_head < 1:
            raise ValueError(f"dim_head must be positive, got {dim_head}.")
        inner_dim = num_heads * dim_head
        hidden_input_size = hidden_input_size if hidden_input_size else hidden_size
        if not include_fc and inner_dim != hidden_input_size:
            raise ValueError(
                f"include_fc=False returns the attention width num_heads * dim_head = {inner_dim}, which differs from "
                f"hidden_input_size = {hidden_input_size}; set include_fc=True or make the two equal."
            )
        if save_attn and use_flash_attention:
            raise ValueError("save_attn=True needs the attention matrix, which use_flash_attention=True never forms.")
        if rel_pos_embedding is not None and str(rel_pos_embedding).lower() != "decomposed":
            raise ValueError(f"rel_pos_embedding must be None or 'decomposed', got {rel_pos_embedding!r}.")
        if rel_pos_embedding is not None and input_size is None:
            raise ValueError("rel_pos_embedding='decomposed' needs input_size, the (H, W) or (H, W, D) token grid.")
        if attention_dtype is not None and not (
            isinstance(attention_dtype, torch.dtype) and attention_dtype.is_floating_point
        ):
            raise ValueError(f"attention_dtype must be None or a floating torch.dtype, got {attention_dtype!r}.")

        self.num_heads = num_heads
        self.dim_head = dim_head
        self.inner_dim = inner_dim
        self.hidden_input_size = hidden_input_size
        self.dropout_rate = float(dropout_rate)
        self.scale = dim_head**-0.5
        self.save_attn = save_attn
        self.causal = causal
        self.sequence_length = sequence_length
        self.include_fc = include_fc
        self.use_combined_linear = use_combined_linear
        self.use_flash_attention = use_flash_attention
        self.attention_dtype = attention_dtype
        self.input_size = tuple(input_size) if input_size is not None else None

        # MONAI registers out_proj before the input projections; optimizer state dicts pair moments with parameters
        # by position, so the same order lets a MONAI optimizer checkpoint resume here and back.
        self.out_proj: nn.Linear | nn.Identity = (
            nn.Linear(inner_dim, hidden_input_size) if include_fc else nn.Identity()
        )
        self.qkv: nn.Linear | nn.Identity
        self.to_q: nn.Linear | nn.Identity
        self.to_k: nn.Linear | nn.Identity
        self.to_v: nn.Linear | nn.Identity
        if use_combined_linear:
            self.qkv = nn.Linear(hidden_input_size, 3 * inner_dim, bias=qkv_bias)
            self.to_q = self.to_k = self.to_v = nn.Identity()
        else:
            self.qkv = nn.Identity()
            self.to_q = nn.Linear(hidden_input_size, inner_dim, bias=qkv_bias)
            self.to_k = nn.Linear(hidden_input_size, inner_dim, bias=qkv_bias)
            self.to_v = nn.Linear(hidden_input_size, inner_dim, bias=qkv_bias)
        self.drop_weights = nn.Dropout(dropout_rate)
        self.drop_output = nn.Dropout(dropout_rate)
        self.rel_positional_embedding: DecomposedRelPosBias | None = (
            DecomposedRelPosBias(input_size, dim_head, num_heads) if rel_pos_embedding is not None else None
        )
        self.att_mat = torch.Tensor()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: tokens, ``(B, N, hidden_input_size)``.
            attn_mask: bool mask, True where attention is allowed: ``(B, N)`` marks the keys every query may attend
                to (key padding), ``(B, N, N)`` or ``(B, 1, N, N)`` gives each query its keys. With ``causal=True``
                both restrictions apply. A query left with no key gets a zero attention output.

        Returns:
            ``(B, N, hidden_input_size)`` in the dtype of ``x``.

        Raises:
            ValueError: if ``attn_mask`` is not bool or not one of the shapes above, or ``N`` does not match
                ``input_size`` with decomposed rel-pos.
        """
        batch, length = x.shape[0], x.shape[1]
        if self.use_combined_linear:
            # unbind, not indexing, and before moving the heads: its backward stacks the three gradients straight into
            # the projection's layout, where indexing would zero-fill and add up one full-size buffer per index
            qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.dim_head).unbind(2)
            q, k, v = qkv[0].transpose(1, 2), qkv[1].transpose(1, 2), qkv[2].transpose(1, 2)
        else:
            q = self.to_q(x).reshape(batch, length, self.num_heads, self.dim_head).transpose(1, 2)
            k = self.to_k(x).reshape(batch, length, self.num_heads, self.dim_head).transpose(1, 2)
            v = self.to_v(x).reshape(batch, length, self.num_heads, self.dim_head).transpose(1, 2)
        if self.attention_dtype is not None:
            q, k, v = q.to(self.attention_dtype), k.to(self.attention_dtype), v.to(self.attention_dtype)

        keep = self._keep_mask(attn_mask, batch, length)
        bias: torch.Tensor | None = None
        if self.rel_positional_embedding is not None:
            bias = self.rel_positional_embedding(q)
        # SDPA's own causal flag only when nothing else is masked: it cannot be combined with attn_mask
        use_causal_flag = self.causal and keep is None and bias is None and not self.save_attn
        if self.causal and not use_causal_flag:
            causal_keep = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            keep = causal_keep if keep is None else keep & causal_keep

        if self.save_attn:
            out = self._explicit_attention(q, k, v, keep, bias)
        else:
            mask = keep
            if bias is not None:
                mask = bias if keep is None else bias.masked_fill(~keep, float("-inf"))
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=self.dropout_rate if self.training else 0.0,
                is_causal=use_causal_flag,
                scale=self.scale,
            )
            if keep is not None:
                # SDPA's result for a query with no allowed key depends on the backend (zeros on CPU); pin it
                out = out.masked_fill(~keep.any(dim=-1, keepdim=True), 0.0)
        out = out.transpose(1, 2).reshape(batch, length, self.inner_dim).to(x.dtype)
        if self.include_fc:
            out = self.out_proj(out)
        return self.drop_output(out)

    def _keep_mask(self, attn_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
        """Validate ``attn_mask`` and return it as a bool mask broadcastable to ``(B, heads, N, N)``."""
        if attn_mask is None:
            return None
        if attn_mask.dtype != torch.bool:
            kind = "floating-point" if attn_mask.is_floating_point() else "non-bool"
            raise ValueError(
                f"attn_mask must be a bool tensor (True = attend), got a {kind} tensor. Convert a 0/1 keep mask with "
                "mask.bool(); additive float masks are not accepted."
            )
        shape = attn_mask.shape
        if attn_mask.dim() == 2 and shape[0] == batch and shape[1] == length:
            return attn_mask[:, None, None, :]
        if attn_mask.dim() == 3 and shape[0] == batch and shape[1] == length and shape[2] == length:
            return attn_mask[:, None]
        if attn_mask.dim() == 4 and shape[0] == batch and shape[1] == 1 and shape[2] == length and shape[3] == length:
            return attn_mask
        raise ValueError(
            f"attn_mask must be a bool tensor (True = attend) of shape (B, N) = ({batch}, {length}) for key padding, "
            f"or (B, N, N) / (B, 1, N, N) = ({batch}, {length}, {length}) / ({batch}, 1, {length}, {length}); "
            f"got shape {list(shape)}."
        )

    def _explicit_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        keep: torch.Tensor | None,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention with the matrix formed, saved in ``att_mat``, with the same semantics as the fused path."""
        logits = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        if bias is not None:
            logits = logits + bias
        if keep is not None:
            logits = logits.masked_fill(~keep, float("-inf"))
        weights = logits.softmax(dim=-1)
        if keep is not None:
            # a query with no allowed key gets zero weights, as on the fused path, not NaN
            weights = weights.masked_fill(~keep.any(dim=-1, keepdim=True), 0.0)
        self.att_mat = weights.detach()
        return torch.matmul(self.drop_weights(weights), v)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """Convert between the fused and separate projection layouts and explain ``include_fc`` mismatches.

        ``nn.Module.load_state_dict`` passes a copy of the caller's mapping down the module tree, so rewriting keys
        here leaves the caller's state dict untouched.
        """
        # MONAI's causal blocks save their tril mask; it is derived, never learnt
        state_dict.pop(prefix + "causal_mask", None)
        for suffix in ("weight", "bias"):
            fused_key = prefix + "qkv." + suffix
            split_keys = [prefix + name + "." + suffix for name in _QKV_NAMES]
            if not self.use_combined_linear and fused_key in state_dict:
                for key, part in zip(split_keys, state_dict.pop(fused_key).chunk(3, dim=0), strict=True):
                    state_dict[key] = part
            elif self.use_combined_linear and all(key in state_dict for key in split_keys):
                state_dict[fused_key] = torch.cat([state_dict.pop(key) for key in split_keys], dim=0)
        out_keys = [key for key in (prefix + "out_proj.weight", prefix + "out_proj.bias") if key in state_dict]
        if strict and not self.include_fc and out_keys:
            error_msgs.append(
                f"{prefix or 'SABlock.'}: the state dict has {', '.join(out_keys)} but this block was built with "
                "include_fc=False; build it with include_fc=True to load the output projection."
            )
        has_projection = any(
            key.startswith(prefix + name + ".") for key in state_dict for name in ("qkv",) + _QKV_NAMES
        )
        if strict and self.include_fc and has_projection and not out_keys:
            error_msgs.append(
                f"{prefix or 'SABlock.'}: the state dict has no {prefix}out_proj.weight / {prefix}out_proj.bias but "
                "this block was built with include_fc=True; build it with include_fc=False to load it."
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

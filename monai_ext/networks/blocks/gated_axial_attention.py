"""Gated axial attention (Valanarasu et al., "Medical Transformer", MICCAI 2021) along one axis of a 2D or 3D input."""

import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GatedAxialAttention"]


def _compute_in_one_dtype(ctx, tensors: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Cast an autograd Function's inputs to the dtype autocast would compute in (else their promoted dtype).

    Autocast is active in a custom Function's forward but not in its backward, so without this the forward returns
    16-bit products while the backward mixes them with 32-bit tables. ``ctx`` remembers the original dtypes, in
    which :func:`_gradients_as_inputs` returns the gradients.
    """
    device_type = tensors[0].device.type
    ctx.input_dtypes = [t.dtype for t in tensors]
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = functools.reduce(torch.promote_types, ctx.input_dtypes)
    ctx.compute_dtype = dtype
    return [t.to(dtype) for t in tensors]


def _gradients_as_inputs(ctx, gradients: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(g.to(dtype) for g, dtype in zip(gradients, ctx.input_dtypes, strict=True))


def _content_logits(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``logits[b, i, j] = sum_c queries[b, i, c] keys[b, j, c]`` for ``(B, L, c)`` queries and keys."""
    if queries.shape[-1] == 1:  # an outer product: a broadcast multiply is an order of magnitude faster than bmm
        return queries * keys.transpose(1, 2)
    return torch.bmm(queries, keys.transpose(1, 2))


def _positional_logits(
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_rows: torch.Tensor,
    key_cols: torch.Tensor,
    emb_q: torch.Tensor,
    emb_k_t: torch.Tensor,
) -> torch.Tensor:
    """Similarity logits with both relative terms, ``(B, L, L)``.

    ``logits[b, i, j] = sum_c queries[b, i, c] keys[b, j, c] + query_rows[b, i, c] emb_q[c, i, j]
    + key_cols[b, j, c] emb_k_t[c, i, j]``, where the first three are ``(B, L, c)`` and the tables ``(c, L, L)``.
    The relative terms accumulate in place (the logits are no view, and no backward needs them). Per channel a
    broadcast product is one pass over the logits; for the query term with more channels one matmul per query row
    is cheaper. Keys stay the unit-stride axis throughout: batching over keys would force copies.
    """
    logits = _content_logits(queries, keys)
    channels = queries.shape[-1]
    if channels <= 2:
        for channel in range(channels):
            logits.addcmul_(query_rows[:, :, channel : channel + 1], emb_q[channel])
    else:
        logits = logits + torch.bmm(query_rows.transpose(0, 1), emb_q.transpose(0, 1).contiguous()).transpose(0, 1)
    for channel in range(channels):
        logits.addcmul_(key_cols[:, :, channel].unsqueeze(1), emb_k_t[channel])
    return logits


class _PositionalLogits(torch.autograd.Function):
    """:func:`_positional_logits` with a backward pass that reduces the ``L x L`` gradient directly.

    Autograd's backward of the broadcast products materialises one ``(B, L, L)`` product per input and channel
    before reducing it; here every reduction is a batched matmul over a view of the gradient, or, for one or two
    channels per key, a single product and sum. Used in eager mode with autograd on; TorchScript and inference
    take :func:`_positional_logits` directly.
    """

    @staticmethod
    def forward(ctx, *inputs):  # type: ignore[override]
        inputs = _compute_in_one_dtype(ctx, inputs)
        ctx.save_for_backward(*inputs)
        with torch.autocast(inputs[0].device.type, enabled=False):
            return _positional_logits(*inputs)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        queries, keys, query_rows, key_cols, emb_q, emb_k_t = ctx.saved_tensors
        grad = grad.to(ctx.compute_dtype).contiguous()
        channels = queries.shape[-1]
        # each reduction is written as (few channels) @ (L x L), the shape MKL's batched matmul runs several times
        # faster than (L x L) @ (few channels)
        d_queries = torch.bmm(keys.transpose(1, 2), grad.transpose(1, 2)).transpose(1, 2)
        d_keys = torch.bmm(queries.transpose(1, 2), grad).transpose(1, 2)
        by_query = grad.transpose(0, 1)  # (L queries, B, L keys), a view
        d_query_rows = torch.bmm(emb_q.transpose(0, 1), by_query.transpose(1, 2)).permute(2, 0, 1)
        d_emb_q = torch.bmm(query_rows.permute(1, 2, 0), by_query).transpose(0, 1)
        if channels <= 2:
            d_key_cols = torch.stack([(grad * emb_k_t[channel]).sum(1) for channel in range(channels)], -1)
            d_emb_k_t = torch.stack(
                [(grad * key_cols[:, :, channel].unsqueeze(1)).sum(0) for channel in range(channels)]
            )
        else:
            by_key = grad.permute(2, 0, 1).contiguous()  # (L keys, B, L queries)
            d_key_cols = torch.bmm(by_key, emb_k_t.permute(2, 1, 0)).transpose(0, 1)
            d_emb_k_t = torch.bmm(key_cols.permute(1, 2, 0), by_key).permute(1, 2, 0)
        return _gradients_as_inputs(ctx, (d_queries, d_keys, d_query_rows, d_key_cols, d_emb_q, d_emb_k_t))


def _table_attention(attn: torch.Tensor, emb_v: torch.Tensor) -> torch.Tensor:
    """``out[i, c, b] = sum_j attn[b, i, j] emb_v[c, i, j]``, ``(L, c, B)``, for ``(B, L, L)`` attention.

    One matmul per query row, as (channels, keys) @ (keys, B): the fast shape for few channels per group.
    """
    return torch.bmm(emb_v.transpose(0, 1), attn.permute(1, 2, 0))


class _TableAttention(torch.autograd.Function):
    """:func:`_table_attention` with a backward pass that keeps to fast matmul shapes and saves no extra tensor.

    Autograd's backward of the strided matmul returns the attention's gradient with the batch as its unit-stride
    axis, which makes the softmax backward several times slower; here it comes back query-major, and the table's
    gradient is (channels, B) @ (B, keys) per query row. ``attn`` is saved by the softmax anyway.
    """

    @staticmethod
    def forward(ctx, *inputs):  # type: ignore[override]
        attn, emb_v = _compute_in_one_dtype(ctx, inputs)
        ctx.save_for_backward(attn, emb_v)
        with torch.autocast(attn.device.type, enabled=False):
            return _table_attention(attn, emb_v)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        attn, emb_v = ctx.saved_tensors
        grad = grad.to(ctx.compute_dtype)
        by_query = attn.transpose(0, 1)  # (L queries, B, L keys), a view
        d_emb_v = torch.bmm(grad, by_query).transpose(0, 1)
        d_attn = torch.bmm(grad.transpose(1, 2), emb_v.transpose(0, 1)).transpose(0, 1)
        return _gradients_as_inputs(ctx, (d_attn, d_emb_v))


class GatedAxialAttention(nn.Module):
    """Multi-head self-attention along one spatial axis, with learned relative positions and gates.

    For every line of length ``L`` along ``axis`` (all other positions are independent lines), with ``num_groups``
    heads of ``gp = out_channels // num_groups`` channels split into ``q``, ``k`` (``gp / 2`` each) and ``v``
    (``gp``), and a learned table ``relative`` of ``2 * gp`` channels over the relative offsets ``-(K-1)..K-1``::

        logits = BN_qk(q^T k) + BN_qr(f_qr * q . R_q) + BN_kr(f_kr * k . R_k)      (softmax over keys, no 1/sqrt(d))
        out    = BN_sv(f_sv * A v) + BN_sve(f_sve * A . R_v)

    Differences from the straightforward formulation, all exact:

    - The additive BatchNorm terms of the similarity (shift and bias) are constant along each softmax row, so they
      cannot change the attention and are not computed; the three scales are folded into ``q`` and ``k`` before the
      products, so no ``L x L`` map is normalised or concatenated. In train mode the batch variance of each map
      is computed exactly from ``L``-sized moments of ``q``, ``k`` and the table, without the map, and
      the running statistics update as BatchNorm's do. Consequently the similarity BatchNorms' biases receive an
      exact zero gradient (zero up to rounding in the straightforward form); they still take part in every step,
      so ``DistributedDataParallel`` needs no ``find_unused_parameters``.
    - The similarity BatchNorms are held as three modules (``norm_qk``, ``norm_qr``, ``norm_kr``) and the output
      BatchNorm as two (``norm_sv``, ``norm_sve``); :func:`monai_ext.legacy.convert_medt_state_dict` splits the
      original's combined ones.
    - The gates multiply *before* BatchNorm, as in the original code, so in eval mode their effect is cancelled by
      the running statistics and in train mode almost entirely by the batch statistics. The order is kept so that
      checkpoints of the original behave identically; see :meth:`set_gates_trainable`.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input.
        out_channels: channels of the output; must be a multiple of ``num_groups`` with an even quotient.
        spatial_size: positional span ``K``, the longest line this layer accepts along ``axis``. Shorter lines use
            the centre of the relative table.
        axis: 0-based index of the attended spatial dimension (for ``(N, C, H, W)``, 0 is H and 1 is W).
        num_groups: number of attention heads.
        stride: when above 1, average pooling with this kernel and stride over all spatial axes follows.
        gated: whether the gates ``f_qr, f_kr, f_sv, f_sve`` exist (initialised 0.1, 0.1, 1.0, 0.1); without
            ``positional`` only ``f_sv``.
        positional: whether the relative position terms exist; without them there is one similarity map per head
            and one output term per channel.
        train_gates: whether the gates start trainable (the original starts them frozen and unfreezes them later).

    Raises:
        ValueError: for unsupported ``spatial_dims``, an ``axis`` outside the spatial dimensions, channels that do
            not split into groups with an even number of channels, or non-positive sizes.
    """

    positional: torch.jit.Final[bool]
    gated: torch.jit.Final[bool]
    spatial_dims: torch.jit.Final[int]
    axis: torch.jit.Final[int]
    num_groups: torch.jit.Final[int]
    group_channels: torch.jit.Final[int]
    out_channels: torch.jit.Final[int]
    spatial_size: torch.jit.Final[int]
    stride: torch.jit.Final[int]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        spatial_size: int,
        axis: int,
        num_groups: int = 8,
        stride: int = 1,
        gated: bool = True,
        positional: bool = True,
        train_gates: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not 0 <= axis < spatial_dims:
            raise ValueError(f"axis must be in [0, {spatial_dims - 1}] for spatial_dims={spatial_dims}, got {axis}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if spatial_size < 1 or stride < 1 or num_groups < 1:
            raise ValueError(
                f"spatial_size, stride and num_groups must be positive, got {spatial_size}, {stride}, {num_groups}"
            )
        if out_channels % num_groups or (out_channels // num_groups) % 2:
            raise ValueError(
                f"out_channels ({out_channels}) must split into num_groups ({num_groups}) groups of an even number "
                "of channels (half of each group's channels are queries and keys)"
            )
        self.spatial_dims = spatial_dims
        self.axis = axis
        self.num_groups = num_groups
        self.group_channels = out_channels // num_groups
        self.out_channels = out_channels
        self.spatial_size = spatial_size
        self.stride = stride
        self.gated = gated
        self.positional = positional

        # (N, C, *spatial) -> (N, *other axes, attended axis, C) and back
        attended = 2 + axis
        self.to_rows = [0] + [d for d in range(2, spatial_dims + 2) if d != attended] + [attended, 1]
        lines_layout = self.to_rows[:-2] + [1, attended]  # (N, *other axes, C, attended axis)
        self.from_lines = [lines_layout.index(d) for d in range(spatial_dims + 2)]

        self.qkv = nn.Conv1d(in_channels, 2 * out_channels, kernel_size=1, bias=False)
        self.norm_qkv = nn.BatchNorm1d(2 * out_channels)
        self.norm_qk = nn.BatchNorm2d(num_groups)
        self.norm_sv = nn.BatchNorm1d(out_channels)
        if positional:
            self.relative = nn.Parameter(torch.empty(2 * self.group_channels, 2 * spatial_size - 1))
            self.norm_qr: nn.BatchNorm2d | None = nn.BatchNorm2d(num_groups)
            self.norm_kr: nn.BatchNorm2d | None = nn.BatchNorm2d(num_groups)
            self.norm_sve: nn.BatchNorm1d | None = nn.BatchNorm1d(out_channels)
            # offset (i - j) of query i and key j, as an index into the relative table (centre at spatial_size - 1)
            positions = torch.arange(spatial_size)
            self.register_buffer(
                "relative_index", positions[:, None] - positions[None, :] + spatial_size - 1, persistent=False
            )
        else:
            self.register_parameter("relative", None)
            self.norm_qr = None
            self.norm_kr = None
            self.norm_sve = None
            self.register_buffer("relative_index", None, persistent=False)
        # without positional terms only f_sv has something to gate
        for name, value, used in (
            ("f_qr", 0.1, positional),
            ("f_kr", 0.1, positional),
            ("f_sv", 1.0, True),
            ("f_sve", 0.1, positional),
        ):
            gate = nn.Parameter(torch.tensor(value), requires_grad=train_gates) if gated and used else None
            self.register_parameter(name, gate)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise ``qkv`` from N(0, 1/in_channels) and ``relative`` from N(0, 1/group_channels) (variances)."""
        nn.init.normal_(self.qkv.weight, 0.0, (1.0 / self.qkv.in_channels) ** 0.5)
        if self.relative is not None:
            nn.init.normal_(self.relative, 0.0, (1.0 / self.group_channels) ** 0.5)

    @torch.jit.unused
    def set_gates_trainable(self, trainable: bool = True) -> None:
        """Unfreeze (or freeze) the four gates, e.g. after a warm-up as the original does after epoch 10.

        Raises:
            RuntimeError: when the layer was built with ``gated=False``.
        """
        if not self.gated:
            raise RuntimeError("this GatedAxialAttention was built with gated=False and has no gates")
        for gate in (self.f_qr, self.f_kr, self.f_sv, self.f_sve):
            if gate is not None:
                gate.requires_grad_(trainable)

    def _scale(
        self,
        total: torch.Tensor,
        total_sq: torch.Tensor,
        count: int,
        gate: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        num_batches_tracked: torch.Tensor,
        momentum: float,
        eps: float,
    ) -> torch.Tensor:
        """Per-group multiplier ``weight / sqrt(var + eps)`` of a similarity BatchNorm applied to ``gate * map``.

        ``total`` and ``total_sq`` are the per-group sums of the map and of its square over batch, queries and keys
        (``count`` elements per group), in float64. In train mode they give the batch variance and update the
        running statistics as ``nn.BatchNorm2d`` does; in eval mode the running variance is used.
        """
        if self.training:
            mean = total / count
            var = (total_sq / count - mean * mean).clamp_min(0.0) * gate * gate
            var = var.to(weight.dtype)
            with torch.no_grad():
                running_mean.mul_(1.0 - momentum).add_((mean * gate).to(weight.dtype), alpha=momentum)
                running_var.mul_(1.0 - momentum).add_(var * (count / max(count - 1, 1)), alpha=momentum)
                num_batches_tracked.add_(1)
        else:
            var = running_var
        # the BatchNorm's shift is constant along each softmax row, so it cancels and its gradient is zero; using the
        # bias with weight zero gives it that gradient, so DistributedDataParallel sees every parameter used
        return weight * torch.rsqrt(var + eps) * gate + 0.0 * bias

    def _relative_moments(self, part: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group sums of ``m[i, j] = sum_c part[c, i] table[c, i, j]`` and of ``m**2`` over batch, i and j.

        ``part`` is ``(B, g, L, c)`` and ``table`` ``(c, L, L)``; computed from ``L``-sized moments, never forming
        ``m``, and combined in float64. Only needed in train mode (empty tensors otherwise).
        """
        if not self.training:
            return torch.empty(0), torch.empty(0)
        table64 = table.double()
        total = torch.einsum("gic,ci->g", part.sum(0).double(), table64.sum(2))
        part64 = part.double()  # before the product: under autocast it would run in 16 bits
        gram = torch.einsum("bgic,bgid->gicd", part64, part64)
        total_sq = torch.einsum("gicd,cdi->g", gram, torch.einsum("cij,dij->cdi", table64, table64))
        return total, total_sq

    def _norm_lines(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        num_batches_tracked: torch.Tensor,
        momentum: float,
        eps: float,
    ) -> torch.Tensor:
        """A BatchNorm1d given by its tensors, in this layer's train/eval mode, on ``(N, C, L)`` or ``(rows, C)``."""
        if self.training:
            num_batches_tracked.add_(1)
        return F.batch_norm(x, running_mean, running_var, weight, bias, self.training, momentum, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend along ``axis``.

        Under ``torch.autocast`` the projections and ``L x L`` products run in the autocast dtype and the softmax in
        float32; the hand-written backward passes compute in the dtype their forward used.

        Args:
            x: ``(N, in_channels, *spatial)`` with ``spatial_dims`` spatial axes.

        Returns:
            ``(N, out_channels, *spatial)``, each spatial axis divided by ``stride`` when ``stride > 1``.

        Raises:
            ValueError: when the attended axis is longer than ``spatial_size``.
        """
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims + 2}D input (N, C, *spatial), got shape {list(x.shape)}")
        length = x.shape[2 + self.axis]
        if length > self.spatial_size:
            raise ValueError(
                f"GatedAxialAttention: input length {length} along spatial axis {self.axis} exceeds spatial_size "
                f"{self.spatial_size}; build the layer with spatial_size >= {length}"
            )
        g, gp, c = self.num_groups, self.group_channels, self.group_channels // 2
        # lines along the attended axis become batch rows: (N, *others, L, C) -> (B, L, C)
        xt = x.permute(self.to_rows)
        lead = list(xt.shape[:-2])
        rows = xt.reshape(-1, x.shape[1])
        batch = rows.shape[0] // length
        bg = batch * g

        qkv = self._norm_lines(
            F.linear(rows, self.qkv.weight.squeeze(-1)),
            self.norm_qkv.weight,
            self.norm_qkv.bias,
            self.norm_qkv.running_mean,
            self.norm_qkv.running_var,
            self.norm_qkv.num_batches_tracked,
            self.norm_qkv.momentum,
            self.norm_qkv.eps,
        )
        qkv = qkv.view(batch, length, g, 2 * gp).transpose(1, 2)  # (B, g, L, 2gp)
        q = qkv[..., :c]
        k = qkv[..., c : 2 * c]
        v = qkv[..., 2 * c :].reshape(bg, length, gp)
        count = batch * length * length
        one = torch.ones((), dtype=x.dtype, device=x.device)
        if self.training:
            # batch statistics of the L x L maps from L-sized moments (exact), combined in float64 against the
            # cancellation in E[m^2] - E[m]^2; the moments stay in the input dtype, as autograd keeps them
            qk_total = (q.sum(2).double() * k.sum(2).double()).sum([0, 2])
            q_gram = torch.einsum("bgic,bgid->bgcd", q, q).double()
            k_gram = torch.einsum("bgic,bgid->bgcd", k, k).double()
            qk_total_sq = (q_gram * k_gram).sum([0, 2, 3])
        else:
            qk_total = qk_total_sq = torch.empty(0)
        norm_qk = self.norm_qk
        scale_qk = self._scale(
            qk_total,
            qk_total_sq,
            count,
            one,
            norm_qk.weight,
            norm_qk.bias,
            norm_qk.running_mean,
            norm_qk.running_var,
            norm_qk.num_batches_tracked,
            norm_qk.momentum,
            norm_qk.eps,
        )
        # the BatchNorm scales fold into the queries; its shifts are constant along softmax rows and drop out
        q_scaled = (q * scale_qk.view(g, 1, 1)).reshape(bg, length, c)
        k_rows = k.reshape(bg, length, c)

        relative_index = self.relative_index
        relative = self.relative
        norm_qr = self.norm_qr
        norm_kr = self.norm_kr
        emb_v = torch.empty(0)
        if relative is not None and relative_index is not None and norm_qr is not None and norm_kr is not None:
            emb = relative[:, relative_index[:length, :length]]  # (2gp, L, L), [c, i, j] = table[c, i - j + K - 1]
            emb_q = emb[:c]  # [c, query i, key j]
            emb_k = emb[c : 2 * c]  # [c, key j, query i]
            emb_v = emb[2 * c :]
            q_total, q_total_sq = self._relative_moments(q, emb_q)
            k_total, k_total_sq = self._relative_moments(k, emb_k)
            scale_qr = self._scale(
                q_total,
                q_total_sq,
                count,
                self.f_qr if self.f_qr is not None else one,
                norm_qr.weight,
                norm_qr.bias,
                norm_qr.running_mean,
                norm_qr.running_var,
                norm_qr.num_batches_tracked,
                norm_qr.momentum,
                norm_qr.eps,
            )
            scale_kr = self._scale(
                k_total,
                k_total_sq,
                count,
                self.f_kr if self.f_kr is not None else one,
                norm_kr.weight,
                norm_kr.bias,
                norm_kr.running_mean,
                norm_kr.running_var,
                norm_kr.num_batches_tracked,
                norm_kr.momentum,
                norm_kr.eps,
            )
            q_rows = (q * scale_qr.view(g, 1, 1)).reshape(bg, length, c)
            k_cols = (k * scale_kr.view(g, 1, 1)).reshape(bg, length, c)
            emb_k_t = emb_k.transpose(1, 2)  # [c, query i, key j]
            if not torch.jit.is_scripting() and torch.is_grad_enabled():
                logits = _PositionalLogits.apply(q_scaled, k_rows, q_rows, k_cols, emb_q, emb_k_t)
            else:
                logits = _positional_logits(q_scaled, k_rows, q_rows, k_cols, emb_q, emb_k_t)
        else:
            logits = _content_logits(q_scaled, k_rows)
        if logits.dtype == torch.float16 or logits.dtype == torch.bfloat16:
            # exponentials of 16-bit logits lose the small weights: compute in float32, as autocast's softmax does
            attn = torch.softmax(logits, dim=-1, dtype=torch.float32).to(logits.dtype)
        elif torch.is_grad_enabled():
            attn = torch.softmax(logits, dim=-1)  # (B g, L, L)
        else:  # reuse the logits' memory: a fresh L x L map costs page faults comparable to the softmax itself
            attn = torch.softmax(logits, dim=-1, out=logits)

        # sv[c, i] = sum_j attn[i, j] v[c, j] and sve[c, i] = sum_j attn[i, j] emb_v[c, i, j] (one matmul per query
        # row), as (B, C, L) for BatchNorm1d. Without autograd sv is computed transposed, (channels, queries) =
        # (channels, keys) @ attn^T, the fast matmul shape for few channels per group; with autograd the plain
        # form keeps the attention's gradient contiguous for the softmax backward.
        if torch.is_grad_enabled():
            sv = torch.bmm(attn, v).view(batch, g, length, gp).permute(0, 1, 3, 2)
        else:
            sv = torch.bmm(v.transpose(1, 2), attn.transpose(1, 2))
        norm_sve = self.norm_sve
        sve = torch.empty(0)
        if norm_sve is not None:
            if not torch.jit.is_scripting() and torch.is_grad_enabled():
                sve = _TableAttention.apply(attn, emb_v)
            else:
                sve = _table_attention(attn, emb_v)
            sve = sve.view(length, gp, batch, g).permute(2, 3, 1, 0)
        sv = sv.reshape(batch, self.out_channels, length)
        if self.f_sv is not None:
            sv = sv * self.f_sv
        out = self._norm_lines(
            sv,
            self.norm_sv.weight,
            self.norm_sv.bias,
            self.norm_sv.running_mean,
            self.norm_sv.running_var,
            self.norm_sv.num_batches_tracked,
            self.norm_sv.momentum,
            self.norm_sv.eps,
        )
        if norm_sve is not None:
            sve = sve.reshape(batch, self.out_channels, length)
            if self.f_sve is not None:
                sve = sve * self.f_sve
            out = out + self._norm_lines(
                sve,
                norm_sve.weight,
                norm_sve.bias,
                norm_sve.running_mean,
                norm_sve.running_var,
                norm_sve.num_batches_tracked,
                norm_sve.momentum,
                norm_sve.eps,
            )

        out = out.view(lead + [self.out_channels, length]).permute(self.from_lines)
        if self.stride > 1:
            if self.spatial_dims == 2:
                out = F.avg_pool2d(out, self.stride, self.stride)
            else:
                out = F.avg_pool3d(out, self.stride, self.stride)
        return out

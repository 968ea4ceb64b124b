"""KL-regularised autoencoder (first stage of latent diffusion) with fused attention and a faithful legacy loader."""

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from monai.networks.blocks import Convolution, Upsample
from monai.networks.nets.autoencoderkl import AEKLDownsample, AEKLResBlock
from monai.utils import ensure_tuple_rep
from torch.jit import Final

from monai_ext.networks.blocks.spatial_attention import SpatialAttentionBlock
from monai_ext.networks.blocks.upsample_conv import NearestUpsampleConv

__all__ = ["AutoencoderKL", "Decoder", "Encoder"]


def _conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int) -> Convolution:
    return Convolution(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=1,
        kernel_size=kernel_size,
        padding=kernel_size // 2,
        conv_only=True,
    )


class _ResBlock(AEKLResBlock):
    """MONAI's ``AEKLResBlock`` (same layers and keys) with two CPU speed-ups that leave its outputs unchanged.

    Without autograd, SiLU and the residual sum run in place: at 64^3 every fresh activation costs page faults, and
    three of the block's seven allocations go. On CPU in float32 the convolutions call oneDNN directly: PyTorch's
    dispatch sends batch-1 inputs with ``channels * D * H <= 20480`` (a 64-channel 16^3 map) to its generic
    im2col path, about 3x slower.
    """

    one_dnn: Final[bool]

    def __init__(
        self, spatial_dims: int, in_channels: int, norm_num_groups: int, norm_eps: float, out_channels: int
    ) -> None:
        super().__init__(spatial_dims, in_channels, norm_num_groups, norm_eps, out_channels)
        self.one_dnn = torch.backends.mkldnn.is_available()

    def _one_dnn_conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ones = [1] * (x.dim() - 2)  # the block's 3-wide convolutions: padding, stride and dilation 1
        return torch.mkldnn_convolution(x, weight, bias, ones, ones, ones, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_place = not torch.is_grad_enabled()
        one_dnn = self.one_dnn and x.device.type == "cpu" and x.dtype == torch.float32
        if not torch.jit.is_scripting():  # torch.export and ONNX trace with fake tensors, which oneDNN refuses
            one_dnn = one_dnn and not torch.compiler.is_compiling()
        h = F.silu(self.norm1(x), inplace=in_place)
        conv1, conv2 = self.conv1.conv, self.conv2.conv
        h = self._one_dnn_conv(h, conv1.weight, conv1.bias) if one_dnn else self.conv1(h)
        h = F.silu(self.norm2(h), inplace=in_place)
        h = self._one_dnn_conv(h, conv2.weight, conv2.bias) if one_dnn else self.conv2(h)
        shortcut = self.nin_shortcut(x)
        return h.add_(shortcut) if in_place else shortcut + h


def _attention(
    spatial_dims: int,
    channels: int,
    norm_num_groups: int,
    norm_eps: float,
    include_fc: bool,
    use_combined_linear: bool,
    use_flash_attention: bool,
) -> SpatialAttentionBlock:
    return SpatialAttentionBlock(
        spatial_dims,
        channels,
        norm_num_groups=norm_num_groups,
        norm_eps=norm_eps,
        include_fc=include_fc,
        use_combined_linear=use_combined_linear,
        use_flash_attention=use_flash_attention,
    )


class _BlockCascade(nn.Module):
    """Runs ``self.blocks`` in order; the shared body of :class:`Encoder` and :class:`Decoder`."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Encoder(_BlockCascade):
    """Convolutional cascade from an image to a spatial latent; same layout as MONAI's ``autoencoderkl.Encoder``.

    Args:
        spatial_dims: number of spatial dimensions, 1, 2 or 3.
        in_channels: number of image channels.
        channels: output channels of each level.
        out_channels: number of latent channels.
        num_res_blocks: residual blocks per level.
        norm_num_groups: groups of every group norm; must divide every entry of ``channels``.
        norm_eps: epsilon of every group norm.
        attention_levels: per level, whether each residual block is followed by spatial attention.
        with_nonlocal_attn: add a residual/attention/residual stage after the last level.
        include_fc: attention blocks end with an output linear layer.
        use_combined_linear: attention blocks use one ``qkv`` linear.
        use_flash_attention: accepted for compatibility with MONAI; attention is fused either way.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        out_channels: int,
        num_res_blocks: Sequence[int],
        norm_num_groups: int,
        norm_eps: float,
        attention_levels: Sequence[bool],
        with_nonlocal_attn: bool = True,
        include_fc: bool = True,
        use_combined_linear: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        def res(cin: int, cout: int) -> nn.Module:
            return _ResBlock(spatial_dims, cin, norm_num_groups, norm_eps, cout)

        def attention(ch: int) -> nn.Module:
            return _attention(
                spatial_dims, ch, norm_num_groups, norm_eps, include_fc, use_combined_linear, use_flash_attention
            )

        blocks: list[nn.Module] = [_conv(spatial_dims, in_channels, channels[0], 3)]
        ch = channels[0]
        for level, level_ch in enumerate(channels):
            for _ in range(num_res_blocks[level]):
                blocks.append(res(ch, level_ch))
                ch = level_ch
                if attention_levels[level]:
                    blocks.append(attention(ch))
            if level < len(channels) - 1:
                blocks.append(AEKLDownsample(spatial_dims, ch))
        if with_nonlocal_attn:
            blocks += [res(ch, ch), attention(ch), res(ch, ch)]
        blocks += [
            nn.GroupNorm(num_groups=norm_num_groups, num_channels=ch, eps=norm_eps, affine=True),
            _conv(spatial_dims, ch, out_channels, 3),
        ]
        super().__init__(blocks)


class Decoder(_BlockCascade):
    """Convolutional cascade from a spatial latent to an image; same layout as MONAI's ``autoencoderkl.Decoder``.

    Args:
        spatial_dims: number of spatial dimensions, 1, 2 or 3.
        channels: output channels of each level, in encoder order (the decoder walks them in reverse).
        in_channels: number of latent channels.
        out_channels: number of image channels.
        num_res_blocks: residual blocks per level, in encoder order.
        norm_num_groups: groups of every group norm; must divide every entry of ``channels``.
        norm_eps: epsilon of every group norm.
        attention_levels: per level, in encoder order, whether each residual block is followed by spatial attention.
        with_nonlocal_attn: add a residual/attention/residual stage before the first level.
        use_convtranspose: upsample with a transposed convolution instead of nearest interpolation plus convolution.
        include_fc: attention blocks end with an output linear layer.
        use_combined_linear: attention blocks use one ``qkv`` linear.
        use_flash_attention: accepted for compatibility with MONAI; attention is fused either way.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int],
        in_channels: int,
        out_channels: int,
        num_res_blocks: Sequence[int],
        norm_num_groups: int,
        norm_eps: float,
        attention_levels: Sequence[bool],
        with_nonlocal_attn: bool = True,
        use_convtranspose: bool = False,
        include_fc: bool = True,
        use_combined_linear: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        def res(cin: int, cout: int) -> nn.Module:
            return _ResBlock(spatial_dims, cin, norm_num_groups, norm_eps, cout)

        def attention(ch: int) -> nn.Module:
            return _attention(
                spatial_dims, ch, norm_num_groups, norm_eps, include_fc, use_combined_linear, use_flash_attention
            )

        def upsample(ch: int) -> nn.Module:
            if use_convtranspose:
                return Upsample(spatial_dims, mode="deconv", in_channels=ch, out_channels=ch)
            return NearestUpsampleConv(spatial_dims, ch, ch)

        ch = channels[-1]
        blocks: list[nn.Module] = [_conv(spatial_dims, in_channels, ch, 3)]
        if with_nonlocal_attn:
            blocks += [res(ch, ch), attention(ch), res(ch, ch)]
        for level in reversed(range(len(channels))):
            for _ in range(num_res_blocks[level]):
                blocks.append(res(ch, channels[level]))
                ch = channels[level]
                if attention_levels[level]:
                    blocks.append(attention(ch))
            if level > 0:
                blocks.append(upsample(ch))
        blocks += [
            nn.GroupNorm(num_groups=norm_num_groups, num_channels=ch, eps=norm_eps, affine=True),
            _conv(spatial_dims, ch, out_channels, 3),
        ]
        super().__init__(blocks)


class AutoencoderKL(nn.Module):
    """Autoencoder with a KL-regularised latent space (Rombach et al. 2022, https://arxiv.org/abs/2112.10752).

    Same constructor, architecture and state-dict keys as ``monai.networks.nets.AutoencoderKL`` (monai 1.6) for
    every ``include_fc`` / ``use_combined_linear`` layout, so MONAI checkpoints load unchanged. It differs where
    MONAI's model falls short:

    - attention uses the fused ``scaled_dot_product_attention`` kernel by default (MONAI materialises the full
      attention matrix unless ``use_flash_attention=True``, several GB for a 32^3 feature map);
    - it is TorchScript-scriptable, also with ``use_checkpoint=True`` (a scripted model runs without activation
      checkpointing, which only trades memory for compute during training), and the scripted model keeps
      :meth:`encode`, :meth:`decode`, :meth:`reconstruct` and the ``*_stage_2_*`` methods;
    - in eval mode :meth:`forward` decodes the latent mean, so it is deterministic; in training mode it samples the
      latent exactly as MONAI's model does;
    - the decoder upsamples with :class:`~monai_ext.networks.blocks.NearestUpsampleConv` (the same result from 30% of
      the multiply-adds in 3D), and the residual blocks compute in place without autograd and call oneDNN directly
      on CPU; keys and outputs are MONAI's;
    - :meth:`load_old_state_dict` reproduces MONAI Generative Models checkpoints exactly (see
      :func:`monai_ext.legacy.convert_autoencoderkl_state_dict`).

    Args:
        spatial_dims: number of spatial dimensions, 1, 2 or 3.
        in_channels: number of image channels.
        out_channels: number of reconstructed image channels.
        num_res_blocks: residual blocks per level, one int for all levels or one per level.
        channels: output channels of each level.
        attention_levels: per level, whether residual blocks are followed by spatial attention.
        latent_channels: number of latent channels.
        norm_num_groups: groups of every group norm; must divide every entry of ``channels``.
        norm_eps: epsilon of every group norm.
        with_encoder_nonlocal_attn: add a residual/attention/residual stage at the end of the encoder.
        with_decoder_nonlocal_attn: add a residual/attention/residual stage at the start of the decoder.
        use_checkpoint: recompute the encoder and decoder activations in the backward pass to save memory.
        use_convtranspose: upsample in the decoder with a transposed convolution.
        include_fc: attention blocks end with an output linear layer (``attn.out_proj``).
        use_combined_linear: attention blocks use one ``attn.qkv`` linear instead of ``attn.to_q/to_k/to_v``.
        use_flash_attention: accepted for compatibility with MONAI; attention is fused either way.

    Raises:
        ValueError: an entry of ``channels`` is not a multiple of ``norm_num_groups``, or ``attention_levels`` or
            ``num_res_blocks`` does not have one entry per level.
    """

    use_checkpoint: Final[bool]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 1,
        out_channels: int = 1,
        num_res_blocks: Sequence[int] | int = (2, 2, 2, 2),
        channels: Sequence[int] = (32, 64, 64, 64),
        attention_levels: Sequence[bool] = (False, False, True, True),
        latent_channels: int = 3,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        with_encoder_nonlocal_attn: bool = True,
        with_decoder_nonlocal_attn: bool = True,
        use_checkpoint: bool = False,
        use_convtranspose: bool = False,
        include_fc: bool = True,
        use_combined_linear: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if any(ch % norm_num_groups != 0 for ch in channels):
            raise ValueError(f"every entry of channels {tuple(channels)} must be a multiple of norm_num_groups")
        if len(attention_levels) != len(channels):
            raise ValueError(
                f"attention_levels {tuple(attention_levels)} needs one entry per level of channels {tuple(channels)}"
            )
        if isinstance(num_res_blocks, int):
            num_res_blocks = ensure_tuple_rep(num_res_blocks, len(channels))
        if len(num_res_blocks) != len(channels):
            raise ValueError(
                f"num_res_blocks {tuple(num_res_blocks)} must be an int or have one entry per level of channels "
                f"{tuple(channels)}"
            )
        attention = {
            "include_fc": include_fc,
            "use_combined_linear": use_combined_linear,
            "use_flash_attention": use_flash_attention,
        }
        self.encoder = Encoder(
            spatial_dims,
            in_channels,
            channels,
            latent_channels,
            num_res_blocks,
            norm_num_groups,
            norm_eps,
            attention_levels,
            with_nonlocal_attn=with_encoder_nonlocal_attn,
            **attention,
        )
        self.decoder = Decoder(
            spatial_dims,
            channels,
            latent_channels,
            out_channels,
            num_res_blocks,
            norm_num_groups,
            norm_eps,
            attention_levels,
            with_nonlocal_attn=with_decoder_nonlocal_attn,
            use_convtranspose=use_convtranspose,
            **attention,
        )
        self.quant_conv_mu = _conv(spatial_dims, latent_channels, latent_channels, 1)
        self.quant_conv_log_sigma = _conv(spatial_dims, latent_channels, latent_channels, 1)
        self.post_quant_conv = _conv(spatial_dims, latent_channels, latent_channels, 1)
        self.latent_channels = latent_channels
        self.use_checkpoint = use_checkpoint

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode an image into the mean and standard deviation of its latent distribution.

        Args:
            x: ``(B, in_channels, *spatial)`` image.

        Returns:
            ``(z_mu, z_sigma)``, each ``(B, latent_channels, *latent_spatial)``.
        """
        if self.use_checkpoint and not torch.jit.is_scripting():
            h = torch.utils.checkpoint.checkpoint(self.encoder, x, use_reentrant=False)
        else:
            h = self.encoder(x)
        z_mu = self.quant_conv_mu(h)
        z_log_var = torch.clamp(self.quant_conv_log_sigma(h), -30.0, 20.0)
        return z_mu, torch.exp(z_log_var / 2)

    def sampling(self, z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
        """Draw ``z_mu + eps * z_sigma`` with ``eps`` standard normal (the reparameterisation trick).

        Args:
            z_mu: latent mean from :meth:`encode`.
            z_sigma: latent standard deviation from :meth:`encode`.

        Returns:
            A latent sample of the same shape.
        """
        return z_mu + torch.randn_like(z_sigma) * z_sigma

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode a latent into an image.

        Args:
            z: ``(B, latent_channels, *latent_spatial)`` latent.

        Returns:
            ``(B, out_channels, *spatial)`` image.
        """
        z = self.post_quant_conv(z)
        if self.use_checkpoint and not torch.jit.is_scripting():
            return torch.utils.checkpoint.checkpoint(self.decoder, z, use_reentrant=False)
        return self.decoder(z)

    @torch.jit.export
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` and decode its latent mean.

        Args:
            x: ``(B, in_channels, *spatial)`` image.

        Returns:
            The reconstruction, ``(B, out_channels, *spatial)``.
        """
        return self.decode(self.encode(x)[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, take a latent (a sample while training, the mean in eval mode) and decode it.

        Args:
            x: ``(B, in_channels, *spatial)`` image.

        Returns:
            ``(reconstruction, z_mu, z_sigma)``.
        """
        z_mu, z_sigma = self.encode(x)
        z = self.sampling(z_mu, z_sigma) if self.training else z_mu
        return self.decode(z), z_mu, z_sigma

    @torch.jit.export
    def encode_stage_2_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` and sample its latent, the input of a latent diffusion model.

        Args:
            x: ``(B, in_channels, *spatial)`` image.

        Returns:
            A latent sample ``(B, latent_channels, *latent_spatial)``.
        """
        z_mu, z_sigma = self.encode(x)
        return self.sampling(z_mu, z_sigma)

    @torch.jit.export
    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        """Decode a latent produced by a latent diffusion model (same as :meth:`decode`)."""
        return self.decode(z)

    @torch.jit.unused
    def load_old_state_dict(
        self,
        old_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
        verbose: bool = False,
        proj_attn_applied: bool = False,
    ) -> None:
        """Load a MONAI Generative Models checkpoint (or a MONAI/monai_ext one, in any attention layout).

        Same name as MONAI's method, but it reproduces the legacy outputs exactly, checks every key, reads paths and
        wrapped checkpoints, and leaves ``old_state_dict`` untouched. See
        :func:`monai_ext.legacy.convert_autoencoderkl_state_dict`.

        Args:
            old_state_dict: checkpoint path or state dict.
            verbose: log (at INFO level) every key that was renamed, merged or dropped.
            proj_attn_applied: the checkpoint comes from code whose attention applied ``proj_attn`` (released MONAI
                Generative Models never did).

        Raises:
            monai_ext.legacy.LegacyCheckpointError: the checkpoint does not fit this model; the message names every
                missing, unexpected and mis-shaped key.
        """
        from monai_ext.legacy.autoencoderkl import convert_autoencoderkl_state_dict

        converted = convert_autoencoderkl_state_dict(
            old_state_dict, self, proj_attn_applied=proj_attn_applied, verbose=verbose
        )
        self.load_state_dict(converted)

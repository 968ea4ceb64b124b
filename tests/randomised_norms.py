"""Moves normalisation layers (and gates) away from their initial values, so that eval mode exercises all of them."""

import torch


def randomise_batch_norms(module: torch.nn.Module, shift_scale: float = 1.0, gates: bool = False) -> None:
    """Draw every BatchNorm's weight, bias and running statistics, and optionally the gated-axial gates (seeded).

    ``shift_scale`` scales the biases and running means: deep networks need small shifts to keep activations sane.
    """
    generator = torch.Generator().manual_seed(1)
    for sub in module.modules():
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
            sub.weight.data = torch.rand(sub.weight.shape, generator=generator) + 0.5
            sub.bias.data = torch.randn(sub.bias.shape, generator=generator) * shift_scale
            sub.running_mean = torch.randn(sub.running_mean.shape, generator=generator) * shift_scale
            sub.running_var = torch.rand(sub.running_var.shape, generator=generator) + 0.5
    if gates:
        for name, param in module.named_parameters():
            if name.split(".")[-1] in ("f_qr", "f_kr", "f_sv", "f_sve"):
                param.data.fill_(float(torch.rand((), generator=generator)) + 0.3)

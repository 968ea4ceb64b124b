"""Training pieces for a KL autoencoder in an Ignite ``SupervisedTrainer``: loss, discriminator step, inferer.

MONAI's ``AdversarialTrainer`` feeds the generator output straight to the discriminator and to a two-argument
reconstruction loss, so it cannot see the posterior (``z_mu``, ``z_sigma``) that the KL term needs. The bundle
therefore trains the autoencoder with ``SupervisedTrainer`` and :class:`AutoencoderKLLoss`, and when the adversarial
term is on, updates MONAI's ``PatchDiscriminator`` after every generator step with :class:`DiscriminatorStep`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from monai.losses import PatchAdversarialLoss
from monai.utils import CommonKeys
from torch import nn

__all__ = ["AutoencoderKLLoss", "DiscriminatorStep", "ReconstructionInferer", "kl_divergence"]


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(z_mu, z_sigma^2) from N(0, 1), summed over latent elements and averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2).clamp_min(1e-12)) - 1.0)
    return kl.flatten(1).sum(1).mean()


class AutoencoderKLLoss(nn.Module):
    """L1 reconstruction + ``kl_weight`` * KL (+ ``adversarial_weight`` * patch-adversarial generator loss).

    Args:
        kl_weight: weight of :func:`kl_divergence`.
        adversarial_weight: weight of the generator's adversarial loss; 0 turns it off.
        discriminator: the patch discriminator judging reconstructions; required when ``adversarial_weight > 0``.
        criterion: ``PatchAdversarialLoss`` criterion (``"least_squares"``, ``"bce"`` or ``"hinge"``).

    Raises:
        ValueError: for negative weights, or a positive ``adversarial_weight`` without a discriminator.
    """

    def __init__(
        self,
        kl_weight: float = 1e-6,
        adversarial_weight: float = 0.0,
        discriminator: nn.Module | None = None,
        criterion: str = "least_squares",
    ) -> None:
        super().__init__()
        if kl_weight < 0 or adversarial_weight < 0:
            raise ValueError(f"weights must be non-negative, got kl={kl_weight}, adversarial={adversarial_weight}.")
        if adversarial_weight > 0 and discriminator is None:
            raise ValueError("adversarial_weight > 0 needs a discriminator.")
        self.kl_weight = kl_weight
        self.adversarial_weight = adversarial_weight
        # a plain attribute, not a submodule: the discriminator has its own optimizer and checkpoint entry
        self.__dict__["discriminator"] = discriminator
        self.adversarial = PatchAdversarialLoss(criterion=criterion)

    def forward(self, pred: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Return the loss of ``pred = (reconstruction, z_mu, z_sigma)`` (``AutoencoderKL`` output) for ``target``."""
        if not isinstance(pred, (tuple, list)) or len(pred) != 3:
            raise ValueError("pred must be the (reconstruction, z_mu, z_sigma) tuple of AutoencoderKL.forward.")
        reconstruction, z_mu, z_sigma = pred
        loss = torch.nn.functional.l1_loss(reconstruction.float(), target.float())
        loss = loss + self.kl_weight * kl_divergence(z_mu.float(), z_sigma.float())
        if self.adversarial_weight > 0:
            logits = self.discriminator(reconstruction.contiguous().float())[-1]
            generator_loss = self.adversarial(logits, target_is_real=True, for_discriminator=False)
            loss = loss + self.adversarial_weight * generator_loss
        return loss


class DiscriminatorStep:
    """Ignite handler: after each generator iteration, one optimizer step of the patch discriminator.

    It reads the real images and the ``(reconstruction, ...)`` prediction from ``engine.state.output`` (so the trainer
    must run with ``decollate=False``) and records the discriminator loss in ``engine.state.metrics``.

    Args:
        discriminator: MONAI ``PatchDiscriminator`` (its last output is the patch logits).
        optimizer: optimizer over the discriminator's parameters.
        criterion: ``PatchAdversarialLoss`` criterion, the same as the generator's.
        metric_name: key of the recorded loss in ``engine.state.metrics``.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: str = "least_squares",
        metric_name: str = "discriminator_loss",
    ) -> None:
        self.discriminator = discriminator
        self.optimizer = optimizer
        self.adversarial = PatchAdversarialLoss(criterion=criterion)
        self.metric_name = metric_name

    def attach(self, engine: Any) -> None:
        """Run after every iteration of ``engine``."""
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        output = engine.state.output
        if not isinstance(output, dict):
            raise ValueError("DiscriminatorStep needs the batch output: set the trainer's decollate to false.")
        real = output[CommonKeys.IMAGE].float().contiguous()
        fake = output[CommonKeys.PRED][0].detach().float().contiguous()
        self.discriminator.train()
        self.optimizer.zero_grad(set_to_none=True)
        # one forward over fakes and reals together: DistributedDataParallel allows one forward per backward
        logits_fake, logits_real = self.discriminator(torch.cat([fake, real]))[-1].split([len(fake), len(real)])
        loss_fake = self.adversarial(logits_fake, target_is_real=False, for_discriminator=True)
        loss_real = self.adversarial(logits_real, target_is_real=True, for_discriminator=True)
        loss = 0.5 * (loss_fake + loss_real)
        loss.backward()
        self.optimizer.step()
        engine.state.metrics[self.metric_name] = loss.item()


class ReconstructionInferer(Inferer):
    """Run another inferer on ``network.reconstruct`` so evaluators and savers get the reconstruction only.

    Args:
        inferer: the inferer to wrap, e.g. ``SlidingWindowInferer`` with the training patch size.
    """

    def __init__(self, inferer: Inferer) -> None:
        super().__init__()
        self.inferer = inferer

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        """Return ``inferer(inputs, network.reconstruct)``, unwrapping ``DistributedDataParallel`` first."""
        model = getattr(network, "module", network)
        return self.inferer(inputs, model.reconstruct, *args, **kwargs)

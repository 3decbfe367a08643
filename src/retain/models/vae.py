"""A small variational autoencoder for inputs in [0, 1] (the generator of generative replay).

MLP encoder and decoder on flattened inputs, a Gaussian latent with a standard-normal prior, and
a Bernoulli decoder: the decoder outputs a probability per input value and the reconstruction
loss is the binary cross-entropy, which is well defined for grey levels in [0, 1], not only for
0/1 pixels. Samples are the decoder's probabilities (its mean), not Bernoulli draws: for grey
images the mean is the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class VAE(nn.Module):
    """``loss(x)`` is the negative ELBO per sample (nats); ``sample(n)`` decodes prior draws.

    Examples:
        >>> vae = VAE((1, 8, 8), latent_dim=4, hidden=32)
        >>> vae.sample(3).shape
        torch.Size([3, 1, 8, 8])
    """

    def __init__(
        self, input_shape: tuple[int, ...], latent_dim: int = 8, hidden: int = 256
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        n = math.prod(self.input_shape)
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.to_stats = nn.Linear(hidden, 2 * latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n),
        )

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        logits = self.decoder(z)
        recon = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (recon + kl).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)
        return self.decode(z)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The inputs that latent codes ``z`` (``[n, latent_dim]``) stand for."""
        p = next(self.parameters())
        z = z.to(device=p.device, dtype=p.dtype)
        return torch.sigmoid(self.decoder(z)).view(len(z), *self.input_shape)

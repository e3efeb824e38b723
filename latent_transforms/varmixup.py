"""VarMixup: mixup in a VAE's latent space (Mangla et al., 2020; Pattern Recognition Letters 2021)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .codec_transform import CodecTransform
from .latent_cache import LatentCache
from .codecs import Codec, ConvVAE
from .labels import mix_labels
from .rng import MIN_ALPHA, random_partners, sample_beta
from .validation import check_bool, check_choice, check_number, setting

__all__ = ["VarMixup"]


_POSTERIORS = ("mean", "sample")


class VarMixup(CodecTransform):
    """Mix each sample's latent with a random partner's, decode, and mix the labels with the same weight.

    ``lam ~ Beta(alpha, alpha)``; ``x2 = decode(lam * z + (1 - lam) * z[partner])``;
    ``y2 = lam * y + (1 - lam) * y[partner]`` (soft labels, rows sum to 1).

    The paper's details are not public (no official code); the choices made here, each a parameter:

    - ``posterior="mean"``: latents are the posterior means (``"sample"`` draws from the posterior);
    - ``per_sample=True``: one lambda per sample (``False``: one per batch, as mixup-cifar10);
    - decoded images *replace* the selected samples, a share ``p`` of each batch (0.25 by default, calibrated on a
      CIFAR-10 validation split with the shipped VAE, where ``p=1``, every sample (the paper's share is not known),
      cost 8.7 points: VAE decodes are blurry, so training only on them creates a train/test gap;
      docs/calibration.md);
    - partners are drawn among the selected samples, never the sample itself (a random cycle through them, as
      mixup's shuffled batch rolled by one); a sample selected alone has no partner and is left as it is, not
      counted as transformed (a batch of one with ``p=1`` is mixed with itself);
    - ``keep_detail=True`` adds back the same mix of the two samples' reconstruction residuals,
      ``lam * (x - D(z)) + (1 - lam) * (x[partner] - D(z[partner]))``: the detail a blurry VAE loses is mixed as
      in input mixup, the content in the latent (``lam = 1`` gives back ``x``). An extension of ours, on by default
      because on a CIFAR-10 validation split it was worth 1.7 points with the shipped VAE and 4 with a blurrier one
      (docs/calibration.md); the reconstructions are decoded in the same call as the mixes (twice the batch), and
      with an exact codec it changes nothing. ``False``: the decode alone, the paper's mix as far as it is known.

    Args:
        codec: hub name, path or Codec (default ``"vae-cifar10"``; any codec works, a flow too).
        alpha: Beta parameter (1.0, mixup's usual CIFAR default), at least 0.001; the second positional argument
            (``VarMixup(codec, 10)`` is ``alpha=10``: ``num_classes`` is keyword-only).
        posterior: ``"mean"`` (default) or ``"sample"``, see above.
        per_sample: one lambda per sample (default) or one per batch.
        keep_detail: add back the mixed reconstruction residuals, see above (default True).
        levels: latent levels to mix (all by default; the others keep the sample's own latent).
        cache: a ``LatentCache`` (posterior means) to look latents up with ``index=``
            (not with ``posterior="sample"``).
        p: probability, per sample, of being replaced by a mix (default 0.25, see above; 1.0 mixes every sample
            (the paper's share is not known) and suits a VAE whose decodes keep the class; see
            ``LatentTransform``).
        generator: ``None``, an ``int`` seed or a ``torch.Generator`` (see ``LatentTransform``).
        num_classes: needed for class-index labels.

    Shape:
        x: (B, C, H, W) float in [0, 1]; y: (B,) int64 or (B, K). Returns (B, K) soft labels.

    Convention:
        Identity in ``eval()`` mode (labels returned as given). ``last_params`` holds ``lam`` and ``partner`` (an index
        among the selected samples, ``last_params["selected"]``), and with ``posterior="sample"`` ``posterior_noise``
        (N, D).
    """

    mixes_labels = True
    index_params = ("partner",)
    weight_params = ("lam",)
    alpha = setting("alpha", check_number, low=MIN_ALPHA)  # below, the weights are all but 0 or 1: no mixing
    per_sample, keep_detail = setting("per_sample", check_bool), setting("keep_detail", check_bool)

    def __init__(self, codec: Codec | str = "vae-cifar10", alpha: float = 1.0, *, num_classes: int | None = None,
                 posterior: str = "mean", per_sample: bool = True, keep_detail: bool = True,
                 levels: Sequence[int] | None = None,
                 cache: LatentCache | None = None,
                 p: float = 0.25, generator: torch.Generator | int | None = None):
        self.alpha = alpha  # settings: checked whenever set, these before the codec is loaded
        check_choice("posterior", posterior, _POSTERIORS)
        super().__init__(codec, levels=levels, cache=cache, p=p, generator=generator, num_classes=num_classes)
        self.posterior, self.per_sample, self.keep_detail = posterior, per_sample, keep_detail

    @property
    def posterior(self) -> str:
        """``"mean"`` or ``"sample"``; assigned, checked as the constructor's (``"sample"`` needs a VAE and no cache)."""
        return self._posterior

    @posterior.setter
    def posterior(self, posterior: str) -> None:
        check_choice("posterior", posterior, _POSTERIORS)
        if posterior == "sample" and not isinstance(self.codec, ConvVAE):
            raise ValueError(f"posterior='sample' needs a VAE codec, got a {self.codec.kind} codec")
        if posterior == "sample" and self.cache is not None:
            raise ValueError("posterior='sample' draws from the posterior, which a LatentCache (posterior means) "
                             "does not hold: use posterior='mean' with a cache, or no cache")
        self._posterior = posterior

    def _check_settings(self) -> None:
        super()._check_settings()
        if "_posterior" in self.__dict__:  # a codec or a cache assigned later: posterior='sample' refuses them too
            self.posterior = self.posterior

    def _num_classes_hint(self) -> str:
        if self.alpha < 2 or self.alpha != int(self.alpha):  # not a class count: no hint
            return ""
        return (f"; alpha={self.alpha:g} is the Beta parameter, the second positional argument: VarMixup(codec, "
                f"{self.alpha:g}) gives no num_classes")

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, posterior={self.posterior!r}, per_sample={self.per_sample}, "
                f"keep_detail={self.keep_detail}, " + super().extra_repr())

    def _draw_selection(self, batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """As every method's, but a sample selected alone is left out: it has no partner to be mixed with."""
        selected = super()._draw_selection(batch, generator, device)
        return selected & (selected.sum() > 1)  # on the device: no host sync

    def make_params(self, n: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """``lam``: (n,) weights; ``partner``: (n,) indices among the selected samples; with ``posterior="sample"``,
        ``posterior_noise``: (n, D) the standard normal draws of the posterior samples."""
        params = {}
        if self.posterior == "sample":
            params["posterior_noise"] = torch.randn((n, self.codec.latent_dim), generator=generator, device=device,
                                                    dtype=self.codec.dtype)
        partner = random_partners(n, generator, device)  # none is its own partner (n >= 2)
        lam = sample_beta(self.alpha, n if self.per_sample else 1, generator, device).expand(n)
        return {**params, "lam": lam, "partner": partner}

    def transform(self, x: torch.Tensor, y: torch.Tensor | None, model: nn.Module | None,
                  params: dict[str, torch.Tensor], index: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if y is None:  # forward refuses it first: transform called directly
            raise self._labels_needed()
        if self.posterior == "sample":
            with torch.no_grad():
                z = self.codec.encode_flat(x, sample=True, noise=params["posterior_noise"])
        else:
            z = self.encode_flat(x, index)
        b = z.shape[0]
        lam, partner = params["lam"], params["partner"]
        weight = lam.unsqueeze(1).to(z.dtype)
        mixed = self.on_levels(weight * z + (1 - weight) * z[partner], z)  # the sample's own latent elsewhere
        with torch.no_grad():
            if self.keep_detail:  # one decode call for the mixes and the reconstructions
                x2, recon = self.decode_flat(torch.cat([mixed, z])).split(b)
                residual = x - recon.to(x.dtype)
                w = weight.to(x.dtype).view(b, *([1] * (x.dim() - 1)))
                x2 = x2 + w * residual + (1 - w) * residual[partner]
            else:
                x2 = self.decode_flat(mixed)
        return x2, mix_labels(y, partner, lam, self.num_classes)

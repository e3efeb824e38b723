"""Image codecs: a Glow flow and a convolutional VAE behind one interface (``Codec``)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..validation import WrongTypeError
from ..torch_defaults import codec_build_defaults
from .base import OWN_CODEC_DOCS, Codec, Latents, flatten_latents, unflatten_latents
from .glow import Glow
from .precision import exact_math
from .vae import ConvVAE

CODECS: dict[str, type[Codec]] = {"glow": Glow, "vae": ConvVAE}


def build_codec(config: Mapping[str, Any]) -> Codec:
    """An untrained codec from its config (``{"kind": "glow" | "vae", ...}``, as ``codec.config`` returns; any
    mapping, such as the ``DictConfig`` Hydra's ``instantiate`` passes): float32, on the CPU, whatever torch's
    default dtype and device."""
    if not isinstance(config, Mapping):
        raise WrongTypeError(f"a codec config is a dict such as codec.config, got {type(config).__name__}")
    config = dict(config)
    kind = config.pop("kind", None)
    if not isinstance(kind, str) or kind not in CODECS:
        own = (f" (a Codec class of your own: add it first, latent_transforms.codecs.CODECS[{kind!r}] = YourCodec; "
               f"{OWN_CODEC_DOCS})" if isinstance(kind, str) else "")
        raise ValueError(f"unknown codec kind {kind!r}; known: {sorted(CODECS)}{own}")
    try:
        with codec_build_defaults():
            return CODECS[kind](**config)
    except TypeError as e:
        raise ValueError(f"bad config for a {kind} codec: {e}") from None


def resolve_codec(codec: Codec | str | os.PathLike[str]) -> Codec:
    """A codec object as given, or a hub name / ``.safetensors`` path loaded (frozen) from the hub."""
    if isinstance(codec, Codec):
        codec.checked_latent_shapes()  # a codec of one's own: its latent_shapes told apart before any use
        return codec
    if isinstance(codec, (str, os.PathLike)):
        from .. import hub

        return hub.load(codec)
    own = (f" (a model of your own: wrap it in a Codec subclass that implements latent_shapes, _encode and _decode, "
           f"{OWN_CODEC_DOCS})" if isinstance(codec, nn.Module) else "")
    raise WrongTypeError(f"codec must be a hub name, a .safetensors path or a Codec, got {type(codec).__name__}{own}")


__all__ = ["Codec", "Latents", "Glow", "ConvVAE", "build_codec", "resolve_codec", "exact_math", "flatten_latents",
           "unflatten_latents", "CODECS"]

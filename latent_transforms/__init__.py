"""latent-transforms: semantic data augmentation in the latent space of flows, VAEs and classifiers."""
from .base import LatentTransform
from .compose import Compose

__all__ = ["LatentTransform", "Compose"]
__version__ = "0.1.0"

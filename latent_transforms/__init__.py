"""latent-transforms: semantic data augmentation in the latent space of flows, VAEs and classifiers."""
from . import hub  # so that `import latent_transforms` is enough for latent_transforms.hub.load(...)
from .base import LatentTransform
from .codec_transform import CodecTransform
from .codecs import Codec, ConvVAE, Glow, build_codec
from .compose import Compose
from .feature_covariance import FeatureCovariance
from .isda import ISDA, ISDALoss, isda_logits
from .latent_adversarial import LatentAdversarial
from .latent_cache import LatentCache
from .latent_noise import LatentNoise
from .mixup_inference import LatentMixupInference
from .varmixup import VarMixup

__all__ = [
    "LatentTransform", "CodecTransform", "Compose", "LatentNoise", "LatentAdversarial", "VarMixup", "ISDA",
    "ISDALoss", "FeatureCovariance", "isda_logits", "LatentMixupInference", "LatentCache", "Codec", "Glow", "ConvVAE",
    "build_codec",
]
__version__ = "0.1.0"

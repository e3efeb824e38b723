"""The contract every transform honours; each method's tests call ``check_transform_contract``, which is public
(``latent_transforms.testing``): users check their own methods with it."""
from latent_transforms.testing import _assert_model_unchanged as assert_model_unchanged
from latent_transforms.testing import check_transform_contract, model_state, replayed

__all__ = ["assert_model_unchanged", "check_transform_contract", "model_state", "replayed"]

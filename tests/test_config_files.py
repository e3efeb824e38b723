"""Transforms built from config files (audit 154): Hydra's ``instantiate`` with its default ``_convert_`` (YAML lists
reach the constructors as OmegaConf ``ListConfig``s, mappings as ``DictConfig``s), jsonargparse / LightningCLI from
the constructors' type hints, and plain dicts of values a YAML or JSON reader gives. Hydra, OmegaConf and
jsonargparse are not dependencies: their tests run where they are installed."""
from __future__ import annotations

import collections
import types

import pytest
import torch

from latent_transforms import Compose, LatentAdversarial, LatentNoise, VarMixup, build_codec
from latent_transforms.validation import WrongTypeError

from conftest import tiny_glow

pytestmark = pytest.mark.usefixtures("offline_hub")

GLOW = tiny_glow()


# -- what any config reader gives ------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [collections.UserList([0]), range(1), (0,), [0]])
def test_levels_are_taken_from_any_sequence(levels):
    """Hydra passes `levels: [0]` as a ListConfig, a sequence that is not a list: it was refused with "levels must
    be a list ..., got [0]"."""
    for t in (LatentNoise(GLOW, levels=levels), LatentAdversarial(GLOW, levels=levels),
              VarMixup(tiny_glow(), num_classes=10, levels=levels)):
        assert t.levels == [0] and type(t.levels) is list


@pytest.mark.parametrize("levels", ["0", b"0", bytearray(b"\x00"), {0}, torch.tensor([0]), 0])
def test_levels_that_are_not_a_sequence_of_indices_are_still_refused(levels):
    with pytest.raises(WrongTypeError, match="levels must be a "):
        LatentNoise(GLOW, levels=levels)


def test_a_codec_config_may_be_any_mapping():
    """Hydra passes a nested `config: {kind: glow, ...}` as a DictConfig: build_codec refused all but a dict."""
    config = {"kind": "glow", "image_shape": collections.UserList([1, 8, 8]), "levels": 2, "steps": 1, "hidden": 4}
    codec = build_codec(types.MappingProxyType(config))
    assert codec.config == build_codec({**config, "image_shape": [1, 8, 8]}).config
    with pytest.raises(WrongTypeError, match="a codec config is a dict such as codec.config, got list"):
        build_codec([("kind", "glow")])


def test_compose_tells_a_mapping_of_steps_and_a_steps_config_from_a_list_of_steps():
    noise = LatentNoise(GLOW)
    with pytest.raises(WrongTypeError, match=r"transforms must be a list of steps, got dict; named steps\? pass their "
                                             r"list, list\(steps.values\(\)\)"):
        Compose({"noise": noise})  # it iterated over the keys: "steps must be callable, got str at step 0"
    with pytest.raises(WrongTypeError, match=r"got mappingproxy; named steps\? pass their list"):
        Compose(types.MappingProxyType({"noise": noise}))  # a mapping that is not a dict, as Hydra's DictConfig
    with pytest.raises(WrongTypeError, match=r"got mappingproxy at step 1; a step's config, not the step\? "
                                             r"instantiate it first"):
        Compose([noise, types.MappingProxyType({"_target_": "latent_transforms.LatentNoise"})])
    with pytest.raises(WrongTypeError, match=r"^Compose steps must be callable, got int at step 0$"):
        Compose([3])
    assert len(Compose(collections.UserList([noise]))) == 1


@pytest.mark.parametrize("make, message", [
    (lambda: LatentNoise(GLOW, eps="1e-3"),
     r"eps must be a finite number in \[0, inf\), got '1e-3'; a string: YAML 1.1 readers such as PyYAML read 1e-3 "
     r"\(no dot\) as one, write 1.0e-3$"),
    (lambda: LatentAdversarial(GLOW, step_size="2E+1"), r"got '2E\+1'; a string: .* write 2.0E\+1$"),
    (lambda: LatentNoise(GLOW, p="0.5"), r"got '0.5'; a string: convert it with float\('0.5'\)$"),
    (lambda: LatentAdversarial(GLOW, steps="2"), r"steps must be an int >= 0, got '2'; a string: convert it with "
                                                 r"int\('2'\)$"),
    (lambda: LatentNoise(GLOW, generator="7"), r"got str; a string: convert it with int\('7'\)$"),
    (lambda: LatentNoise(GLOW, norm="None"), r"norm must be one of \('l2', 'linf', None\), got 'None'; a string: "
                                             r"YAML's None is null, unquoted \(None is read as the string 'None'\)$"),
    (lambda: LatentNoise(GLOW, generator="null"), r"got str; a string: YAML's None is null, unquoted"),
    # YAML reads Null and NULL as null too (any case is told); text from the environment may keep its newline
    (lambda: LatentNoise(GLOW, generator="NULL"), r"got str; a string: YAML's None is null, unquoted"),
    (lambda: LatentNoise(GLOW, norm=" none\n"), r"got ' none\\n'; a string: YAML's None is null, unquoted"),
    (lambda: LatentNoise(GLOW, eps="-1e-3"), r"got '-1e-3'; a string: .* read -1e-3 \(no dot\) as one, write -1.0e-3$"),
    (lambda: LatentNoise(GLOW, eps="1e-3\n"), r"got '1e-3\\n'; a string: .* read 1e-3 \(no dot\) as one, write "
                                               r"1.0e-3$"),
    # PyYAML's float also needs the exponent's sign: it reads 1.0e3 as a string (the hint said to write 1.0e3 for 1e3)
    (lambda: LatentNoise(GLOW, eps="1e3"), r"got '1e3'; a string: .* read 1e3 \(no dot and no sign in the exponent\) "
                                           r"as one, write 1.0e\+3$"),
    (lambda: LatentNoise(GLOW, eps="1.5E2"), r"got '1.5E2'; a string: .* read 1.5E2 \(no sign in the exponent\) as one, "
                                             r"write 1.5E\+2$"),
])
def test_a_number_or_none_written_as_text_is_refused_with_what_to_write(make, message):
    """Numbers are not parsed from text (no coercion: `eps="1"` stays a WrongTypeError), but a config file's text is
    told apart from other wrong types: PyYAML (YAML 1.1) reads `eps: 1e-3` as a string, YAML's `None` is one."""
    with pytest.raises(ValueError, match=message):  # a WrongTypeError but for norm's 'None', a str as its choices
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: LatentNoise(GLOW, eps="abc"), r"got 'abc'$"),
    (lambda: LatentNoise(GLOW, eps="nan"), r"got 'nan'$"),  # float('nan') would be refused next: no hint to it
    (lambda: LatentAdversarial(GLOW, target="None"), r"got 'None'$"),  # None is not one of its choices
    (lambda: LatentAdversarial(GLOW, steps=1.0), r"steps must be an int >= 0, got 1.0$"),  # a float: refused as before
    (lambda: LatentNoise(GLOW, eps=b"1e-3"), r"got b'1e-3'$"),  # bytes are not text from a config file
])
def test_other_text_and_wrong_types_get_no_text_hint(make, message):
    with pytest.raises(ValueError, match=message):  # a WrongTypeError but for target's 'None', a str
        make()


def test_values_as_pyyaml_and_json_read_them():
    yaml = pytest.importorskip("yaml")
    import json

    assert LatentNoise(GLOW, **json.loads('{"eps": 1, "levels": [0], "generator": 0, "p": 1}')).eps == 1.0
    assert LatentNoise(GLOW, **yaml.safe_load("eps: 1.0e-3\nnorm: null\nlevels: [-1]")).levels == [1]
    for text in ("1e-3", "1e3", "1.0e3"):  # what the hint says to write is what PyYAML reads as a number
        with pytest.raises(WrongTypeError, match="write ") as e:
            LatentNoise(GLOW, **yaml.safe_load(f"eps: {text}"))
        written = str(e.value).rsplit("write ", 1)[1]
        assert LatentNoise(GLOW, **yaml.safe_load(f"eps: {written}")).eps == float(text)


# -- Hydra ------------------------------------------------------------------------------------------------------------
HYDRA_CONFIG = """
noise:
  _target_: latent_transforms.LatentNoise
  codec: glow-digits
  eps: 1
  levels: [0]
  generator: 0
adversarial:
  _target_: latent_transforms.LatentAdversarial
  codec: glow-digits
  eps: 1
  steps: 2
  norm: linf
  levels: [-1]
varmixup:
  _target_: latent_transforms.VarMixup
  codec: vae-digits
  num_classes: 10
  levels: [0]
  p: 1
isda:
  _target_: latent_transforms.ISDA
  num_classes: 10
  covariance: diagonal
  sync_stats: false
  generator: 0
isda_loss:
  _target_: latent_transforms.ISDALoss
  num_classes: 10
  lambda0: 1
covariance:
  _target_: latent_transforms.FeatureCovariance
  num_classes: 10
  feature_dim: 8
codec:
  _target_: latent_transforms.build_codec
  config: {kind: glow, image_shape: [1, 8, 8], levels: 2, steps: 1, hidden: 4}
compose:
  _target_: latent_transforms.Compose
  num_classes: 10
  transforms:
    - _target_: torchvision.transforms.v2.ToDtype
      dtype: {_target_: hydra.utils.get_object, path: torch.float32}
      scale: true
    - _target_: latent_transforms.LatentNoise
      codec: glow-digits
      levels: [1]
      generator: 1
    - _target_: kornia.augmentation.RandomHorizontalFlip
    - _target_: torchvision.transforms.v2.MixUp
      num_classes: 10
"""


def test_hydra_instantiates_every_transform_from_yaml_with_its_default_convert():
    pytest.importorskip("hydra")
    from hydra.utils import instantiate
    from omegaconf import ListConfig, OmegaConf

    config = OmegaConf.create(HYDRA_CONFIG)
    assert isinstance(config.noise.levels, ListConfig)
    built = {name: instantiate(config[name]) for name in config}
    assert built["noise"].levels == [0] and built["adversarial"].levels == [1] and built["varmixup"].levels == [0]
    assert built["isda"].covariance == "diagonal" and not built["isda"].sync_stats
    assert built["codec"].image_shape == (1, 8, 8)
    compose = built["compose"]
    x, y = (torch.rand(4, 1, 8, 8) * 255).to(torch.uint8), torch.tensor([0, 1, 2, 3])
    x2, y2 = compose(x, y)
    assert x2.dtype == torch.float32 and y2.shape == (4, 10)
    # the same configs, converted to plain lists and dicts first
    assert instantiate(config.noise, _convert_="all").levels == [0]


def test_hydra_without_recursion_gets_the_steps_configs_named():
    pytest.importorskip("hydra")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.create(HYDRA_CONFIG).compose
    with pytest.raises(Exception, match="got DictConfig at step 0; a step's config, not the step"):
        instantiate(config, _recursive_=False)


# -- jsonargparse (LightningCLI) --------------------------------------------------------------------------------------
def test_jsonargparse_builds_the_transforms_from_their_type_hints():
    """`Codec | str`, `torch.Generator | int | None`, `list[int] | None`, `bool | dist.ProcessGroup` and Compose's
    `Sequence[Callable]` parse: what LightningCLI does with `augment: LatentNoise` in a LightningModule."""
    jsonargparse = pytest.importorskip("jsonargparse")
    from latent_transforms import ISDA

    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--noise", type=LatentNoise)
    parser.add_argument("--isda", type=ISDA)
    parser.add_argument("--compose", type=Compose)
    config = parser.parse_args([
        "--noise", '{"class_path": "latent_transforms.LatentNoise", "init_args": {"codec": "glow-digits", '
                   '"eps": 1, "levels": [0], "generator": 0}}',
        "--isda", '{"class_path": "latent_transforms.ISDA", "init_args": {"num_classes": 10, "sync_stats": false}}',
        "--compose", '{"class_path": "latent_transforms.Compose", "init_args": {"transforms": [{"class_path": '
                     '"latent_transforms.VarMixup", "init_args": {"codec": "vae-digits", "num_classes": 10}}]}}',
    ])
    built = getattr(parser, "instantiate", None) or parser.instantiate_classes  # jsonargparse < 4.49: the latter
    built = built(config)
    assert built.noise.levels == [0] and built.noise.eps == 1.0 and built.noise._rng.spec == 0
    assert not built.isda.sync_stats
    assert isinstance(built.compose[0], VarMixup)

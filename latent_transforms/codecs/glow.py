"""Multi-scale Glow (Kingma & Dhariwal, 2018) built from normflows blocks, as an image codec."""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, TypeVar, cast

import normflows as nf
import torch
import torch.nn.functional as F

from ..base import submodules_changed
from ..casts import TensorFn
from ..validation import check_count, check_number, setting, wide_float
from .base import Codec, Latents, shapes_weights

if TYPE_CHECKING:
    from torch.nn.modules.module import _IncompatibleKeys

__all__ = ["Glow"]

_GlowT = TypeVar("_GlowT", bound="Glow")  # what freeze() and init_actnorm() return: the Glow's own class


class BoundedAffineCoupling(nf.flows.AffineCoupling):
    """Glow's sigmoid affine coupling with the scale kept in ``[floor, 1]`` in both directions.

    Decoding divides by the scale; normflows' plain sigmoid lets it approach 0, so a perturbed latent
    can blow up to inf/NaN. With the floor each coupling magnifies by at most ``1 / floor``; the map
    stays exactly invertible because both directions use the same scale.
    """

    def __init__(self, param_map: torch.nn.Module, floor: float):
        super().__init__(param_map, scale=True, scale_map="sigmoid")
        self.floor = floor

    def _shift_scale(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        param = self.param_map(z1)
        return param[:, 0::2], self.floor + (1 - self.floor) * torch.sigmoid(param[:, 1::2] + 2)

    def forward(self, z: Latents) -> tuple[Latents, torch.Tensor]:  # latent -> image direction
        z1, z2 = z
        shift, scale = self._shift_scale(z1)
        return [z1, z2 / scale + shift], -torch.log(scale).flatten(1).sum(1)

    def inverse(self, z: Latents) -> tuple[Latents, torch.Tensor]:  # image -> latent direction
        z1, z2 = z
        shift, scale = self._shift_scale(z1)
        return [z1, (z2 - shift) * scale], torch.log(scale).flatten(1).sum(1)


class SyncFreeActNorm(nf.flows.ActNorm):
    """normflows' ActNorm (initialised from the first batch it sees) that, once initialised, no longer reads its
    ``data_dep_init_done`` buffer on every call: that read is a graph break under ``torch.compile`` (the loss was 23
    graphs, now one) and, for a buffer on a GPU (a loaded or moved Glow), a device-to-host sync per Glow step.
    ``checked``, a Python flag, says it is initialised; loading a state dict sets it from the loaded buffer, read once.
    """

    def __init__(self, shape: tuple[int, ...]):
        super().__init__(shape)
        self.checked = False
        self.register_load_state_dict_post_hook(_recheck_after_load)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._affine("forward", z)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._affine("inverse", z)

    def _affine(self, direction: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.checked:  # the plain affine map, no buffer read
            return cast("tuple[torch.Tensor, torch.Tensor]", getattr(nf.flows.AffineConstFlow, direction)(self, z))
        flag = self.data_dep_init_done
        out: tuple[torch.Tensor, torch.Tensor] = getattr(nf.flows.ActNorm, direction)(self, z)
        if self.data_dep_init_done is not flag:  # normflows' torch.tensor(1.0): torch's default dtype and device
            self.data_dep_init_done: torch.Tensor = flag.fill_(1.0)
        self.checked = True
        return out


def _recheck_after_load(actnorm: SyncFreeActNorm, incompatible_keys: _IncompatibleKeys) -> None:
    flag = actnorm.data_dep_init_done
    actnorm.checked = not flag.is_meta and bool(flag > 0)  # a meta tensor has no value: read at the next call


def _glow_step(channels: int, hidden: int, floor: float) -> nf.flows.GlowBlock:
    with warnings.catch_warnings():  # normflows' LU init calls the deprecated torch.lu
        warnings.filterwarnings("ignore", message="torch.lu is deprecated")
        block = nf.flows.GlowBlock(channels, hidden, split_mode="channel", scale=True, scale_map="sigmoid")
    coupling_block = block.flows[0]
    coupling_block.flows[1] = BoundedAffineCoupling(coupling_block.flows[1].param_map, floor)
    block.flows[2] = SyncFreeActNorm((channels, 1, 1))
    return block


class Glow(Codec):
    """Glow with L levels of K steps each (normflows ``GlowBlock``/``Squeeze``/``Merge``/``MultiscaleFlow``).

    Preprocessing inside: ``x`` in [0, 1] -> ``logit(alpha + (1 - 2 alpha) x)``, undone exactly on decode (the
    official flow-lp code returns ``0.05 + 0.9 x`` after a round trip; this one returns ``x``). Each level has a
    learned diagonal Gaussian prior; ``encode`` returns latents standardised by it, coarsest level first.

    Args:
        image_shape: (C, H, W); H and W divisible by 2**levels (``most_levels(H, W)`` levels at most).
        levels: L, the number of scales.
        steps: K, the flow steps per level.
        hidden: the coupling networks' width.
        alpha: logit margin, in (0, 0.5).
        scale_floor: lower bound of every coupling scale (numerically safe decoding), in (0, 1).
        num_bins: intensity levels of the data (256 for 8-bit images), for dequantisation and bits/dim; at least 2.
    """

    kind = "glow"
    # checked whenever set (read at each call); the other arguments shape the flow, fixed at construction
    alpha = setting("alpha", check_number, high=0.5, low_open=True, high_open=True)
    # at most what torch takes as a number: num_bins=10**400 was built, then the first loss() (init_actnorm's, a
    # training step's) met "OverflowError: int too big to convert", naming nothing
    num_bins = setting("num_bins", check_count, low=2, high=torch.iinfo(torch.int64).max)
    levels = shapes_weights("levels", check_count, low=1, why="it shapes the flow and its weights")
    steps = shapes_weights("steps", check_count, low=1, why="it shapes the flow and its weights")
    hidden = shapes_weights("hidden", check_count, low=1, why="it shapes the flow and its weights")
    scale_floor = shapes_weights("scale_floor", check_number, low_open=True, high=1, high_open=True,
                                 why="the couplings were built with it")

    def __init__(self, image_shape: tuple[int, int, int] | list[int] = (3, 32, 32), *, levels: int = 3,
                 steps: int = 8, hidden: int = 128, alpha: float = 0.05, scale_floor: float = 0.05,
                 num_bins: int = 256):
        super().__init__(image_shape)
        levels, steps, hidden = self._check_positive(levels=levels, steps=steps, hidden=hidden)
        # checked as the settings are whenever set (one message for each, here and after): before the levels' fit
        self.alpha, self.scale_floor, self.num_bins = alpha, scale_floor, num_bins
        c, h, w = self.image_shape
        # compared, 2**levels is not computed: levels=2**31 hung, 20000 gave Python's "Exceeds the limit (4300 digits)
        # for integer string conversion"
        fit = self.most_levels(h, w)
        if levels > fit:
            fewer = f"at most {fit} level{'s fit' if fit > 1 else ' fits'} {h}x{w}; or resize or crop the images" \
                if fit else "an odd side takes no level: resize or crop the images to even sides, or train a VAE " \
                            "(latent-transforms train vae), which takes images of any size"
            raise ValueError(f"image height and width must be divisible by 2**levels = "
                             f"{2**levels if levels <= 64 else f'2**{levels}'}, got {h}x{w}: {fewer}")
        self.levels, self.steps, self.hidden = levels, steps, hidden
        q0, merges, flows = [], [], []
        for i in range(levels):
            level = [_glow_step(c * 2 ** (levels + 1 - i), hidden, self.scale_floor) for _ in range(steps)]
            flows.append(level + [nf.flows.Squeeze()])
            if i > 0:
                merges.append(nf.flows.Merge())
                shape = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
            else:
                shape = (c * 2 ** (levels + 1), h // 2**levels, w // 2**levels)
            q0.append(nf.distributions.DiagGaussian(shape))
            # normflows keeps the size as np.prod(shape), a NumPy scalar: in a pickle (a transform saved whole, a
            # copy sent to a spawned worker) it needs NumPy's major version (NumPy 1 lacks NumPy 2's numpy._core)
            q0[-1].d = int(q0[-1].d)
        self.flow = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)
        self._folded = False
        self.register_load_state_dict_post_hook(_refold_after_load)

    @staticmethod
    def most_levels(h: int, w: int) -> int:
        """The most levels a Glow takes for (H, W) images: the halvings of both sides (2 for 28x28, 0 for 15x16)."""
        return ((h | w) & -(h | w)).bit_length() - 1

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "image_shape": list(self.image_shape), "levels": self.levels, "steps": self.steps,
                "hidden": self.hidden, "alpha": self.alpha, "scale_floor": self.scale_floor, "num_bins": self.num_bins}

    @property
    def latent_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(q.shape) for q in self.flow.q0]

    def _to_logit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * x
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
        return torch.log(s) - torch.log1p(-s), logdet

    def _encode_with_logdet(self, x: torch.Tensor) -> tuple[Latents, torch.Tensor]:
        xl, logdet_pre = self._to_logit(x)
        z, logdet = self.flow.inverse_and_log_det(xl)
        u = [(zi - q.loc) * torch.exp(-q.log_scale) for zi, q in zip(z, self.flow.q0)]
        logdet_std = -sum(q.log_scale.sum() for q in self.flow.q0)
        return u, logdet_pre + logdet + logdet_std

    def _encode(self, x: torch.Tensor) -> Latents:
        if not self.use_fast_path:
            return self._encode_with_logdet(x)[0]
        h = self._to_logit(x)[0]
        z: Latents = [None] * self.levels  # type: ignore[list-item]
        for i in range(self.levels - 1, -1, -1):
            *steps, squeeze = self.flow.flows[i]  # K steps, then its Squeeze (a slice: a new ModuleList per call)
            h = squeeze.inverse(h)[0]
            for block in reversed(steps):
                h = F.conv2d(h, block.enc_weight, block.enc_bias)
                h = _couple(block, h, decode=False)
            if i > 0:
                h, z[i] = h.chunk(2, dim=1)
            else:
                z[i] = h
        return [(zi - q.loc) * torch.exp(-q.log_scale) for zi, q in zip(z, self.flow.q0)]

    def _decode(self, z: Latents) -> torch.Tensor:
        zs = [q.loc + torch.exp(q.log_scale) * ui for ui, q in zip(z, self.flow.q0)]
        if not self.use_fast_path:
            xl, _ = self.flow.forward_and_log_det(zs)
        else:
            xl = zs[0]
            for i in range(self.levels):
                if i > 0:
                    xl = torch.cat([xl, zs[i]], dim=1)
                *steps, squeeze = self.flow.flows[i]
                for block in steps:
                    xl = F.conv2d(_couple(block, xl, decode=True), block.dec_weight, block.dec_bias)
                xl = squeeze(xl)[0]
        return (torch.sigmoid(xl) - self.alpha) / (1 - 2 * self.alpha)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density (nats) of continuous ``x: (B, C, H, W)`` in [0, 1]: (B,)."""
        self.check_input(x)
        return self._log_prob(x)

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log_prob`` of checked images."""
        u, logdet = self._encode_with_logdet(x.to(self.dtype))  # as encode: float64 images into a float32 codec
        log_base = sum(-0.5 * (ui**2).flatten(1).sum(1) for ui in u) - 0.5 * self.latent_dim * math.log(2 * math.pi)
        return log_base + logdet

    def init_actnorm(self: _GlowT, x: torch.Tensor) -> _GlowT:
        """Initialise every ActNorm from a batch ``x: (B, C, H, W)`` in [0, 1] (normflows' ActNorm takes its scale and
        shift from the first batch it sees: make it a representative one) by one forward of ``loss``, without
        gradient. Returns ``self``; do it before training or, for a random-init codec, before ``freeze()``."""
        with torch.no_grad():
            self.loss(x)
        return self

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean bits/dim of uniformly dequantised ``x: (B, C, H, W)`` in [0, 1] (the usual discrete-data bound), as
        ``(scalar, {"bits/dim": scalar})``; x checked as ``log_prob``'s."""
        self.check_input(x)  # before the dequantisation, which failed deep in torch for uint8 images or a list
        levels = torch.round(x * (self.num_bins - 1))
        x_deq = (levels + torch.rand_like(x)) / self.num_bins
        bpd = self._bits_per_dim(x_deq).mean()  # x_deq checked as x: in [0, 1)
        return bpd, {"bits/dim": bpd.detach()}

    def bits_per_dim(self, x_deq: torch.Tensor) -> torch.Tensor:
        """Per-sample bits/dim ``(B,)`` of dequantised images ``x_deq: (B, C, H, W)`` in [0, 1) (``num_bins`` levels
        plus uniform noise of one level), on the discrete data's scale."""
        self.check_input(x_deq)
        return self._bits_per_dim(x_deq)

    def _bits_per_dim(self, x_deq: torch.Tensor) -> torch.Tensor:
        """``bits_per_dim`` of checked images."""
        d = math.prod(self.image_shape)
        return -self._log_prob(x_deq) / (d * math.log(2)) + math.log2(self.num_bins)

    @property
    def use_fast_path(self) -> bool:
        """Frozen Glows run a folded path: per step one coupling and one 1x1 convolution with bias, whose weights
        (the LU-parametrised mixing, its inverse and the ActNorm affine) are computed once, in float64, at
        ``freeze()``. It matches the plain normflows path to float32 rounding (tested) and has no host syncs."""
        return self.frozen and self._folded

    def freeze(self: _GlowT) -> _GlowT:
        """``Codec.freeze``, and its ActNorm layers marked initialised (no later batch re-initialises them) and the
        fast path folded (``use_fast_path``). Returns self."""
        for m in self.modules():
            if isinstance(m, nf.flows.ActNorm):
                m.data_dep_init_done.fill_(1.0)
        super().freeze()
        first = not self._folded  # new buffers, which a DDP model holding the codec's transform still broadcasts
        self._fold_weights()
        if first:
            submodules_changed()  # left out of the broadcast at the next call, as a codec assigned later is
        return self

    def _apply(self: _GlowT, fn: TensorFn, recurse: bool = True) -> _GlowT:
        # .double() and the like: fold again from the cast weights (the folded ones were rounded to the old dtype)
        dtype = self.dtype
        super()._apply(fn, recurse)
        if self._folded and self.dtype != dtype:
            self._fold_weights()
        elif self._folded:  # .to(device): the folded weights moved along; the tensors may be new objects
            self._record_fold_sources()
        return self

    def _fold_weights(self) -> None:
        with torch.no_grad():
            for level in self.flow.flows:
                for block in level[:-1]:
                    for name, value in zip(("enc_weight", "enc_bias", "dec_weight", "dec_bias"), _fold(block)):
                        block.register_buffer(name, value.to(self.dtype).to(self.device), persistent=False)
        self._folded = True
        self._record_fold_sources()

    def _record_fold_sources(self) -> None:
        """Keep the tensors the folded weights come from, their version counters, which an in-place write (``copy_``,
        ``load_state_dict``) moves, and their data addresses, which other storage (``p.data = ...``,
        ``vector_to_parameters``, ``swap_tensors``) moves: read before every call, from this list (walking the modules
        each time took 0.25 ms per call with glow-cifar10, reading the counters 13 us; the data addresses read with
        them make it about 3 times that). A write through ``.data``
        (``p.data.copy_(...)``) moves neither: refold by hand with ``freeze()``."""
        self._fold_sources = [t for level in self.flow.flows for block in level[:-1]
                              for t in (*block.flows[1].parameters(), *block.flows[1].buffers(),
                                        *block.flows[2].parameters())]
        self._folded_versions = self._fold_source_versions()

    def _fold_source_versions(self) -> tuple[int, ...]:
        return tuple(n for t in self._fold_sources for n in (t._version, t.data_ptr()))

    def _refresh_derived(self) -> None:
        if self._folded and self._fold_source_versions() != self._folded_versions:  # weights written in place
            self._fold_weights()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a deep copy or an unpickled Glow: its tensors are new, their counters start afresh (and could equal the
        # recorded ones), and its folded weights are copies of the original's, which match them: record them anew
        super().__setstate__(state)
        if self.__dict__.get("_folded"):
            self._record_fold_sources()


def _refold_after_load(glow: Glow, incompatible_keys: _IncompatibleKeys) -> None:
    """New weights loaded into a frozen Glow must not leave the folded fast path on the old ones, nor let a state saved
    before its ActNorms were initialised make them initialise themselves from the next batch (a frozen codec updates
    no statistics)."""
    if glow.frozen:
        for m in glow.modules():
            if isinstance(m, nf.flows.ActNorm):
                m.data_dep_init_done.fill_(1.0)
    if glow._folded:
        glow._fold_weights()


def _fold(block: nf.flows.GlowBlock) -> tuple[torch.Tensor, ...]:
    """A Glow step's 1x1 convolution and ActNorm as one affine map per direction, in float64 (to be cast): on the
    weights' device, on the CPU where that device has no float64 (MPS)."""
    conv, actnorm = block.flows[1], block.flows[2]
    c = conv.num_channels
    where = conv.L.device if wide_float(conv.L.device) == torch.float64 else torch.device("cpu")

    def wide(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(where).double()  # moved, then cast: MPS cannot hold the float64 copy

    lower = torch.tril(wide(conv.L), -1) + torch.eye(c, dtype=torch.float64, device=where)
    upper = torch.triu(wide(conv.U), 1) + torch.diag(wide(conv.sign_S) * torch.exp(wide(conv.log_S)))
    w = wide(conv.P) @ lower @ upper
    s, t = wide(actnorm.s).flatten(), wide(actnorm.t).flatten()
    enc_w = w * torch.exp(-s)[None, :]  # image -> latent: ActNorm inverse, then W
    dec_w = torch.exp(s)[:, None] * torch.linalg.inv(w)  # latent -> image: W^-1, then ActNorm
    return enc_w[..., None, None], -(enc_w @ t), dec_w[..., None, None], t


def _couple(block: nf.flows.GlowBlock, h: torch.Tensor, decode: bool) -> torch.Tensor:
    """The affine coupling of a Glow step (channel split), without the log-determinant."""
    z1, z2 = h.chunk(2, dim=1)
    shift, scale = block.flows[0].flows[1]._shift_scale(z1)
    return torch.cat([z1, z2 / scale + shift if decode else (z2 - shift) * scale], dim=1)

"""Host syncs per call (issue 8): on a GPU every device-to-host read in a transform call stalls the host until the GPU
has finished everything queued (the previous training step included). The number of syncs is device-independent,
so it is counted here on the CPU and pinned per method: a change that adds one fails; a change that removes one
fails too, until its number is lowered here (a ratchet). With ``pytest --device cuda`` the calls run on the GPU, and
the syncs CUDA itself reports (``torch.cuda.set_sync_debug_mode``) must not exceed the pinned numbers either.

Counted: explicit reads (``.item()``, ``.tolist()``, ``bool/int/float`` of a tensor, ``.cpu()``, ...), implicit ones
inside ops (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``, ``repeat_interleave`` without
``output_size``, scalar reads), and two that only CUDA makes: ``torch.bincount`` (reads min and max) and
``torch.tensor``/``torch.as_tensor`` of Python data with ``device=`` (a blocking host-to-device copy). Not counted:
``F.one_hot``'s range check, which runs on the CPU only (CUDA relies on scatter's device asserts).
"""
from __future__ import annotations

import copy
import os
import traceback
import warnings
from collections import Counter
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TinyNet, tiny_glow, tiny_vae
from latent_transforms import ISDA, Compose, ISDALoss, LatentAdversarial, LatentCache, LatentNoise, VarMixup

_TORCH_DIR = os.path.dirname(torch.__file__)
_EXPLICIT = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__format__", "__complex__",
             "is_nonzero", "cpu", "numpy", "__array__"}
_CPU_ONLY = {"one_hot"}
_SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique", "aten::_unique2",
             "aten::unique_dim", "aten::unique_consecutive", "aten::unique_dim_consecutive", "aten::equal",
             "aten::is_nonzero", "aten::allclose"}


class _Functions(TorchFunctionMode):
    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name, c = getattr(func, "__name__", ""), self.counter
        outer = c.outer
        if outer is None:
            if name in _EXPLICIT:
                c.add(name)
            elif name == "bincount":  # _bincount_cuda: self.min().cpu(), self.max().cpu()
                c.add(name, 2)
            elif name in ("tensor", "as_tensor") and kwargs.get("device") is not None and args \
                    and not isinstance(args[0], torch.Tensor):  # a blocking H2D copy on CUDA
                c.add(f"{name}(device=)")
        c.outer = name if outer is None else outer
        try:
            return func(*args, **kwargs)
        finally:
            c.outer = outer


class _Ops(TorchDispatchMode):
    def __init__(self, counter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
            sync = any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in (args[1] or ()))
        elif name == "aten::repeat_interleave":
            sync = kwargs.get("output_size") is None and (len(args) < 3 or args[-1] is None)
        else:
            sync = name in _SYNC_OPS
        c = self.counter
        if sync and c.outer not in _EXPLICIT and c.outer not in _CPU_ONLY:  # an explicit read is counted once
            c.add(name)
        return func(*args, **kwargs)


class HostSyncs:
    """``with HostSyncs() as s: ...``; ``s.total``, ``s.sites`` (Counter of "file:function what")."""

    def __init__(self):
        self.sites: Counter = Counter()
        self.outer = None
        self._modes = [_Functions(self), _Ops(self)]

    def add(self, what: str, n: int = 1) -> None:
        frames = [f for f in traceback.extract_stack()[:-2]
                  if not os.path.abspath(f.filename).startswith(_TORCH_DIR) and os.path.abspath(f.filename) != os.path.abspath(__file__)]
        f = frames[-1]
        self.sites[f"{os.path.basename(f.filename)}:{f.name} {what}"] += n

    def __enter__(self):
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)

    def total(self) -> int:
        return sum(self.sites.values())


def test_the_counter_sees_each_kind_of_sync_once():
    x = torch.rand(8)
    m, y = x > 0.5, torch.randint(0, 5, (8,))
    cases = [(lambda: x.sum().item(), 1), (lambda: x.tolist(), 1), (lambda: bool(m.any()), 1), (lambda: int(y.max()), 1),
             (lambda: f"{x.sum():.2f}", 1), (lambda: m.nonzero(), 1), (lambda: x[m], 1), (lambda: x.masked_select(m), 1),
             (lambda: torch.unique(y), 1), (lambda: torch.stack(torch.aminmax(x)).tolist(), 1),
             (lambda: torch.bincount(y, minlength=5), 2), (lambda: torch.tensor(3, device=x.device), 1),
             (lambda: F.one_hot(y, 5), 0), (lambda: x[y], 0), (lambda: torch.where(m, x, 0.0), 0),
             (lambda: torch.full((), 3, device=x.device), 0), (lambda: x.index_copy(0, y, x), 0)]
    for fn, expected in cases:
        with HostSyncs() as s:
            fn()
        assert s.total() == expected, s.sites


B = 16


@pytest.fixture(scope="module")
def setup(device):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(B, 1, 8, 8, generator=g).to(device), torch.randint(0, 10, (B,), generator=g).to(device)
    glow, vae = tiny_glow().to(device), tiny_vae().to(device)
    torch.manual_seed(0)
    return x, y, glow, vae, TinyNet().to(device), LatentCache(glow, x, progress=False)


def _isda_step(net, x, y):
    isda = ISDA(10, generator=0)
    isda.set_progress(0.5)

    def step():
        isda(x, y, net)
        F.cross_entropy(net(x), y).backward()
    return step


def _isda_loss(net, x, y):
    loss = ISDALoss(10)
    loss.set_progress(0.5)
    return lambda: loss(net.features(x), net.fc, y).backward()


def _v2():
    import torchvision.transforms.v2

    return torchvision.transforms.v2


def _flip_then(t):
    import kornia

    return Compose([kornia.augmentation.RandomHorizontalFlip(), t])


# name -> (the call, from (x, y, glow, vae, net, cache); its host syncs: the one value read of the batch, plus the
# p < 1 selection)
CASES = {
    "LatentNoise p=1": (lambda x, y, glow, vae, net, cache: partial(LatentNoise(glow, 1.0, generator=0), x, y), 1),
    "LatentNoise y=None": (lambda x, y, glow, vae, net, cache: partial(LatentNoise(glow, 1.0, generator=0), x), 1),
    "LatentNoise soft y": (lambda x, y, glow, vae, net, cache: partial(LatentNoise(glow, 1.0, generator=0), x,
                                                                        F.one_hot(y, 10).float()), 1),
    "LatentNoise p=0.5": (lambda x, y, glow, vae, net, cache: partial(LatentNoise(glow, 1.0, p=0.5, generator=0),
                                                                       x, y), 2),
    "LatentNoise cache": (lambda x, y, glow, vae, net, cache: partial(
        LatentNoise(glow, 1.0, cache=cache, generator=0), x, y, index=torch.arange(B, device=x.device)), 1),
    "LatentAdversarial pred": (lambda x, y, glow, vae, net, cache: partial(LatentAdversarial(glow, generator=0),
                                                                            x, y, net), 1),
    "LatentAdversarial true 3 steps": (lambda x, y, glow, vae, net, cache: partial(
        LatentAdversarial(glow, steps=3, target="true", generator=0), x, y, net), 2),  # + the labels' fit, once
    "VarMixup p=1": (lambda x, y, glow, vae, net, cache: partial(VarMixup(vae, num_classes=10, p=1.0, generator=0),
                                                                  x, y), 1),
    "VarMixup p=0.25": (lambda x, y, glow, vae, net, cache: partial(VarMixup(vae, num_classes=10, generator=0),
                                                                     x, y), 2),
    "ISDA step": (lambda x, y, glow, vae, net, cache: _isda_step(net, x, y), 1),
    "ISDALoss": (lambda x, y, glow, vae, net, cache: _isda_loss(net, x, y), 1),
    "Compose LatentNoise then flip": (lambda x, y, glow, vae, net, cache: partial(Compose(
        [LatentNoise(glow, 1.0, generator=0), __import__("kornia").augmentation.RandomHorizontalFlip()]), x, y), 1),
    "Compose flip then LatentNoise": (lambda x, y, glow, vae, net, cache: partial(
        _flip_then(LatentNoise(glow, 1.0, generator=0)), x, y), 2),  # the batch, then the flipped batch
    # the batch read once (Compose takes MixUp's num_classes without reading it again), + MixUp's own float(lam)
    "Compose LatentNoise then MixUp": (lambda x, y, glow, vae, net, cache: partial(Compose(
        [LatentNoise(glow, 1.0, generator=0), _v2().MixUp(num_classes=10)]), x, y), 2),
    # num_classes given to the Compose, not to its first step: that step checks the labels against it (it was 2)
    "Compose(num_classes) LatentNoise then flip": (lambda x, y, glow, vae, net, cache: partial(Compose(
        [LatentNoise(glow, 1.0, generator=0), __import__("kornia").augmentation.RandomHorizontalFlip()],
        num_classes=10), x, y), 1),
    "LatentNoise eval": (lambda x, y, glow, vae, net, cache: partial(LatentNoise(glow, 1.0, generator=0).eval(),
                                                                      x, y), 1),
    # eval() mode: the first latent step's checks (its read of the batch: the Compose reads nothing of its own), also
    # in a nested Compose, with a latent cache's image check, of ISDA
    "Compose eval LatentNoise": (lambda x, y, glow, vae, net, cache: partial(Compose(
        [LatentNoise(glow, 1.0, generator=0)], num_classes=10).eval(), x, y), 1),
    "Compose eval nested LatentNoise": (lambda x, y, glow, vae, net, cache: partial(Compose(
        [Compose([LatentNoise(glow, 1.0, generator=0)])]).eval(), x, y), 1),
    "Compose eval LatentNoise cache": (lambda x, y, glow, vae, net, cache: partial(Compose(
        [LatentNoise(glow, 1.0, cache=cache, generator=0)]).eval(), x, y, index=torch.arange(B, device=x.device)), 1),
    "Compose eval ISDA": (lambda x, y, glow, vae, net, cache: partial(Compose([ISDA(10)]).eval(), x, y,
        copy.deepcopy(net).eval()), 1),  # validation: a training model beside an eval Compose warns
    # VarMixup() checks the labels against the Compose's classes, then makes them soft: still one read
    "Compose(num_classes) VarMixup()": (lambda x, y, glow, vae, net, cache: partial(Compose(
        [VarMixup(vae, p=1.0, generator=0)], num_classes=10), x, y), 1),
    # audit 241: a codec called directly reads its images' values once, as a transform's call (none before: images in
    # [0, 255] gave a VAE finite latents of nothing); not again for a Glow's loss through its log_prob
    "Glow.encode": (lambda x, y, glow, vae, net, cache: partial(glow.encode, x), 1),
    "Glow.loss": (lambda x, y, glow, vae, net, cache: partial(glow.loss, x), 1),
    "ConvVAE.loss": (lambda x, y, glow, vae, net, cache: partial(vae.loss, x), 1),
    "ConvVAE.encode(sample=True)": (lambda x, y, glow, vae, net, cache: partial(vae.encode, x, sample=True), 1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_host_syncs_per_call_are_pinned(setup, name):
    make, pinned = CASES[name]
    if "flip" in name:
        import kornia
        if tuple(int(v) for v in kornia.__version__.split(".")[:2]) < (0, 9):
            pytest.skip("kornia < 0.9's RandomHorizontalFlip syncs the host itself (13 times a call)")
    call = make(*setup)
    call()  # warm up: an int seed's generator is made, lazily sized ISDA statistics allocated
    with HostSyncs() as s:
        call()
    got = s.total()
    assert got == pinned, (f"{name}: {got} host syncs per call, pinned {pinned} (fewer: lower the pin; more: on a GPU "
                           f"each one stalls the host) at {dict(s.sites)}")
    if setup[0].is_cuda:
        assert _cuda_syncs(call) <= pinned, f"{name}: CUDA reports more syncs than the {pinned} counted"


def _cuda_syncs(call) -> int:
    """How many synchronizing CUDA operations ``call()`` makes, as ``torch.cuda.set_sync_debug_mode`` warns of them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_the_size_exchange_of_synced_statistics_reads_the_host_once(monkeypatch):
    # under DDP an ISDA step cost 2 + world syncs: a blocking torch.tensor(..., device=) and one int() per rank
    import torch.distributed as dist

    from latent_transforms import feature_covariance

    world = 4

    def all_gather(parts, t, group=None):  # every rank with this rank's rows
        for p in parts:
            p.copy_(t)

    monkeypatch.setattr(dist, "get_world_size", lambda group=None: world)
    monkeypatch.setattr(dist, "all_gather", all_gather)
    a, y = torch.randn(5, 3), torch.randint(0, 10, (5,))
    with HostSyncs() as s:
        a2, y2 = feature_covariance._all_gather_rows(a, y)
    assert s.total() == 1, dict(s.sites)
    assert torch.equal(a2, a.repeat(world, 1)) and torch.equal(y2, y.repeat(world))


def test_a_process_group_this_rank_is_not_in_is_named():
    import torch.distributed as dist

    with pytest.raises(ValueError, match="a process group this rank is not a member of"):
        ISDA(10, sync_stats=dist.GroupMember.NON_GROUP_MEMBER)


def test_the_label_fit_checks_read_the_host_once_and_never_per_batch():
    # check_labels_fit reads y's maximum (fit_classifier's first step, LatentAdversarial's first); the check of an
    # augment's labels that fit_classifier runs every batch reads nothing: once check_labels_fit's made_by= mode
    from latent_transforms.labels import check_labels_fit, check_returned_labels_fit

    y, soft = torch.randint(0, 5, (8,)), torch.full((8, 5), 0.2)
    for check, labels, syncs in ((check_labels_fit, y, 1), (check_labels_fit, soft, 0),
                                 (partial(check_returned_labels_fit, step="augment"), y, 0),
                                 (partial(check_returned_labels_fit, step="augment"), soft, 0)):
        with HostSyncs() as s:
            check(labels, 5, "fit_classifier")
        assert s.total() == syncs, (check, labels.shape, dict(s.sites))

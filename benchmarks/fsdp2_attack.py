"""``LatentAdversarial`` on an FSDP2 model (``fully_shard``, its classifier in an FSDP unit of its own) on two gloo
ranks of the CPU: each rank attacks its half of a batch of digits; its images against those of the unwrapped model
on the same half and seed, the ``.grad`` the attack left on the sharded parameters, and a training step's gradient
after the attack against one process's on the whole batch. Prints a Markdown table.

``--no-sync``: gradient accumulation instead (``docs/reliability.md``, DDP): 3 SGD steps of 2 micro-batches each,
every micro-batch attacked before its forward. Under DDP (a classifier with BatchNorm), the first micro-batch under
``no_sync()`` against syncing every micro-batch, with ``broadcast_buffers`` on and off, and with no attack; under
FSDP2, ``set_requires_gradient_sync(True)`` before the last micro-batch's attack (the docs' order) against after it:
each step's accumulated gradient, and the sharded parameters whose ``.grad`` the last micro-batch's attack wrote.

    python benchmarks/fsdp2_attack.py
    python benchmarks/fsdp2_attack.py --no-sync
    python benchmarks/fsdp2_attack.py --smoke   # a tiny random-init Glow and random images: checks the script
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import inspect
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from latent_transforms import LatentAdversarial
from latent_transforms.data import load_images
from latent_transforms.validation import POSITIVE_INT, check_number, option

from models import DIGITS_SHAPE, argument_parser, load_codec, run_script, tiny_codecs

RANKS = 2
OPTIMIZER_STEPS, MICRO_BATCHES = 3, 2  # --no-sync: per run, and per optimizer step


def classifier(batchnorm: bool = False) -> nn.Module:
    """A small CNN for 1x8x8 digits, without BatchNorm (whose batch statistics differ between a rank's half and the
    whole batch: the gradients of the two ranks then average to the whole batch's) unless ``batchnorm`` (one after
    each convolution: DDP broadcasts its running statistics, which the attack reads)."""
    def norm(channels: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(channels)] if batchnorm else []

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), *norm(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         *norm(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def against_unwrapped(rank: int, glow, x: torch.Tensor, y: torch.Tensor, args) -> list[float]:
    """The default mode's figures on this rank: the attack's images against the unwrapped model's, the sharded
    parameters with a ``.grad`` after the attack, and a training step's gradient against one process's."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = classifier()
    unwrapped = copy.deepcopy(model)
    fully_shard(model[-1])  # the classifier in an FSDP unit of its own
    fully_shard(model)
    mine = slice(rank, None, RANKS)  # a DistributedSampler's shard, without shuffling
    attack = dict(eps=args.eps, steps=args.steps)
    x2 = LatentAdversarial(glow, generator=rank, **attack)(x[mine], y[mine], model)[0]
    reference = LatentAdversarial(glow, generator=rank, **attack)(x[mine], y[mine], unwrapped)[0]
    images = (x2 - reference).abs().max()
    grads_left = sum(p.grad is not None for p in model.parameters())
    F.cross_entropy(model(x2), y[mine]).backward()  # FSDP averages the ranks' gradients
    gathered = [torch.empty_like(x2) for _ in range(RANKS)]
    dist.all_gather(gathered, x2)
    whole = torch.empty_like(x)
    for r in range(RANKS):
        whole[r::RANKS] = gathered[r]
    F.cross_entropy(unwrapped(whole), y).backward()
    step = max(float((full(p.grad) - q.grad).abs().max()) for p, q in zip(model.parameters(), unwrapped.parameters()))
    return [float(images), float(grads_left), step]


Sync = Callable[[bool, bool], contextlib.AbstractContextManager]  # (last micro-batch, forward) -> the sync around it


def accumulate(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor, sync: Sync) -> tuple[list, int]:
    """``OPTIMIZER_STEPS`` SGD steps over this rank's ``x: (B, C, H, W)``, ``y: (B,)``, ``MICRO_BATCHES`` each, each
    micro-batch ``attack``ed inside ``sync(last, False)``, then its forward and backward inside ``sync(last, True)``.
    -> (each step's accumulated gradient, flat and whole; the parameters whose ``.grad`` the last micro-batch's attack
    changed, summed over the steps)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads, written = [], 0
    for xs, ys in zip(x.chunk(OPTIMIZER_STEPS), y.chunk(OPTIMIZER_STEPS)):
        opt.zero_grad(set_to_none=True)
        for i, (xm, ym) in enumerate(zip(xs.chunk(MICRO_BATCHES), ys.chunk(MICRO_BATCHES))):
            last = i == MICRO_BATCHES - 1
            with sync(last, False):
                before = [None if p.grad is None else full(p.grad).clone() for p in model.parameters()] if last else []
                x2, y2 = attack(xm, ym, model)
            if last:
                written += sum((p.grad is not None) if g is None else not torch.equal(g, full(p.grad))
                               for g, p in zip(before, model.parameters()))
            with sync(last, True):
                F.cross_entropy(model(x2), y2).backward()
        grads.append(torch.cat([full(p.grad).flatten() for p in model.parameters()]))
        opt.step()
    return grads, written


def largest_difference(a: list, b: list) -> float:
    """The largest absolute difference between two runs' gradients, over their steps."""
    return max(float((g - h).abs().max()) for g, h in zip(a, b))


def accumulation(rank: int, glow, x: torch.Tensor, y: torch.Tensor, args) -> list[float]:
    """``--no-sync``'s figures on this rank: DDP's ``no_sync()`` against syncing every micro-batch
    (``broadcast_buffers`` on, off, and on with no attack), FSDP2's sync turned on before the last micro-batch's attack
    against after it, and the sharded parameters per step whose ``.grad`` that attack wrote in either order."""
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    mine = slice(rank, None, RANKS)

    def run(model: nn.Module, sync: Sync, attack: bool = True) -> tuple[list, int]:
        transform = LatentAdversarial(glow, eps=args.eps, steps=args.steps, generator=rank) if attack else \
            (lambda xm, ym, model: (xm, ym))
        return accumulate(model, transform, x[mine], y[mine], sync)

    # torch 2.13 deprecated DDP's broadcast_buffers for forward_sync_buffers, which still broadcasts the buffers when
    # DDP wraps the model: the same here, as a fresh BatchNorm's buffers are equal on both ranks
    sync_buffers = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else \
        "broadcast_buffers"

    def ddp(broadcast_buffers: bool, no_sync: bool, attack: bool) -> list:
        torch.manual_seed(0)
        model = DDP(classifier(batchnorm=True), **{sync_buffers: broadcast_buffers})
        return run(model, lambda last, _: model.no_sync() if no_sync and not last else contextlib.nullcontext(),
                   attack)[0]

    def fsdp2(before_attack: bool) -> tuple[list, int]:
        torch.manual_seed(0)
        model = classifier()
        fully_shard(model[-1])
        fully_shard(model)

        def sync(last: bool, forward: bool) -> contextlib.AbstractContextManager:
            model.set_requires_gradient_sync(last and (forward or before_attack))
            return contextlib.nullcontext()
        return run(model, sync)

    figures = [largest_difference(ddp(broadcast, True, attack), ddp(broadcast, False, attack))
               for broadcast, attack in ((True, True), (False, True), (True, False))]
    (early, written_early), (late, written_late) = fsdp2(True), fsdp2(False)
    return [*figures, largest_difference(early, late), written_early / OPTIMIZER_STEPS, written_late / OPTIMIZER_STEPS]


def worker(rank: int, store: str, args, glow) -> None:
    """One rank: the figure of ``measure`` on the Glow ``main`` loaded (its tensors shared with the ranks by
    ``mp.spawn``, not copied)."""
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=RANKS,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    n = args.batch * (OPTIMIZER_STEPS if args.no_sync else 1)
    if args.smoke:
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(n, *DIGITS_SHAPE, generator=g), torch.arange(n) % 10
    else:
        x, y, _ = load_images("digits", "test")
        x, y = x[:n], y[:n]
    measure = accumulation if args.no_sync else against_unwrapped
    result = torch.tensor(measure(rank, glow, x, y, args), dtype=torch.float64)
    dist.all_reduce(result, op=dist.ReduceOp.MAX)
    if rank == 0:
        torch.save(result, Path(store.removeprefix("file://")).with_name("result.pt"))
    # measure()'s DDP and FSDP2 models live on in reference cycles, holding the process group: freed here, not at the
    # interpreter's exit after the group (a rank once aborted there in CI, "terminate called without an active
    # exception")
    gc.collect()
    dist.destroy_process_group()


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--glow", help="the flow of 1x8x8 images (hub name or .safetensors path; default: glow-digits; "
                                   "smoke: a tiny random-init Glow)")
    ap.add_argument("--batch", type=POSITIVE_INT, default=32,
                    help=f"images, split between the {RANKS} ranks: a multiple of {RANKS} (--no-sync: at least "
                         f"{RANKS * MICRO_BATCHES}, {MICRO_BATCHES} micro-batches on each rank)")
    ap.add_argument("--eps", type=option(check_number, float), default=1.0, help="LatentAdversarial's eps")
    ap.add_argument("--steps", type=POSITIVE_INT, default=3, help="LatentAdversarial's PGD steps")
    ap.add_argument("--no-sync", action="store_true",
                    help=f"gradient accumulation under DDP's no_sync() and FSDP2 instead: {OPTIMIZER_STEPS} optimizer "
                         f"steps of {MICRO_BATCHES} micro-batches, each step on --batch images")
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny random-init Glow (unless --glow is given) and random images: checks the script")
    args = ap.parse_args()
    if torch.__version__ < "2.9":  # 2.4, 2.5: a private FSDP2 that makes CUDA streams; 2.6-2.8: below
        ap.error(f"FSDP2 on the CPU (torch.distributed.fsdp.fully_shard) needs torch >= 2.9, this is "
                 f"{torch.__version__}: torch 2.6's fails (\"'Stream' object has no attribute 'record_event'\"), "
                 f"torch 2.7 and 2.8 give other gradients than one process on the whole batch")
    # checked here: a rank's error was a traceback of each rank (an odd batch: ranks of unequal halves; --no-sync's
    # micro-batches of a rank's image or none: no micro-batch under no_sync())
    if args.batch % RANKS or args.no_sync and args.batch < RANKS * MICRO_BATCHES:
        ap.error(f"--batch must be a multiple of {RANKS}" + (f" and at least {RANKS * MICRO_BATCHES} with --no-sync"
                                                             if args.no_sync else "") + f", got {args.batch}")
    if not args.smoke:
        args.glow = args.glow or "glow-digits"
        digits = len(load_images("digits", "test")[0])  # x[:n] took fewer images than the table said
        if args.batch * (OPTIMIZER_STEPS if args.no_sync else 1) > digits:
            ap.error(f"--batch {args.batch}" + (f" x {OPTIMIZER_STEPS} optimizer steps" if args.no_sync else "")
                     + f" is more than the {digits} digits of the test split")
    # an unknown name, a VAE or a flow of other images: now, not in each rank; loaded once, the ranks get it
    cpu = torch.device("cpu")
    glow = tiny_codecs(shape=DIGITS_SHAPE)[0] if args.glow is None else load_codec("glow", args.glow, cpu)
    if glow.image_shape != DIGITS_SHAPE:
        raise ValueError(f"--glow {args.glow} codes images of shape {glow.image_shape}; this benchmark attacks digits "
                         f"of shape {DIGITS_SHAPE}: give a flow of them (glow-digits)")
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(f"file://{tmp}/store", args, glow), nprocs=RANKS)
        result = torch.load(Path(tmp) / "result.pt").tolist()
    glow_name = "tiny random-init Glow (smoke)" if args.glow is None else args.glow
    data = "random 8x8 images (smoke)" if args.smoke else "digits"
    (print_accumulation if args.no_sync else print_against_unwrapped)(result, glow_name, data, args)


def print_against_unwrapped(result: list[float], glow_name: str, data: str, args) -> None:
    images, grads_left, step = result
    print(f"\nLatentAdversarial({glow_name}, eps={args.eps:g}, steps={args.steps}) on {args.batch} {data}, "
          f"{args.batch // RANKS} per rank, {RANKS} gloo ranks of the CPU, fully_shard (classifier sharded too) "
          f"against the unwrapped model; torch {torch.__version__}\n")
    print("| figure | largest over the ranks |")
    print("|---|---|")
    print(f"| max abs difference of the attack's images, sharded vs unwrapped model | {images:.1e} |")
    print(f"| sharded parameters with a .grad after the attack | {int(grads_left)} |")
    print(f"| max abs difference of a training step's gradient after the attack, sharded vs one process on the whole "
          f"batch | {step:.1e} |")


def print_accumulation(result: list[float], glow_name: str, data: str, args) -> None:
    ddp_broadcast, ddp_own, no_attack, fsdp2, written_early, written_late = result
    print(f"\nGradient accumulation, {OPTIMIZER_STEPS} SGD steps of {MICRO_BATCHES} micro-batches on {args.batch} "
          f"{data} each, {args.batch // RANKS} per rank, {RANKS} gloo ranks of the CPU; every micro-batch attacked "
          f"by LatentAdversarial({glow_name}, eps={args.eps:g}, steps={args.steps}) before its forward; torch "
          f"{torch.__version__}\n")
    print("| figure | largest over the ranks and steps |")
    print("|---|---|")
    print(f"| DDP, BatchNorm classifier: max abs difference of the accumulated gradient, no_sync() before the last "
          f"micro-batch vs syncing every micro-batch | {ddp_broadcast:.1e} |")
    print(f"| the same with broadcast_buffers=False (forward_sync_buffers=False) | {ddp_own:.1e} |")
    print(f"| the same with broadcast_buffers on and no attack | {no_attack:.1e} |")
    print(f"| FSDP2: max abs difference of the accumulated gradient, set_requires_gradient_sync(True) before the last "
          f"micro-batch's attack vs after it | {fsdp2:.1e} |")
    print(f"| FSDP2: sharded parameters per step whose .grad the last micro-batch's attack wrote, sync on before it "
          f"/ after it | {written_early:g} / {written_late:g} |")


if __name__ == "__main__":
    run_script(main)

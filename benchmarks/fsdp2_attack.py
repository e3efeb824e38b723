"""``LatentAdversarial`` on an FSDP2 model (``fully_shard``, its classifier in an FSDP unit of its own) on two gloo
ranks of the CPU: each rank attacks its half of a batch of digits; its images against those of the unwrapped model
on the same half and seed, the ``.grad`` the attack left on the sharded parameters, and a training step's gradient
after the attack against one process's on the whole batch. Prints a Markdown table.

    python benchmarks/fsdp2_attack.py
    python benchmarks/fsdp2_attack.py --smoke   # a tiny random-init Glow and random images: checks the script
"""
from __future__ import annotations

import copy
import datetime
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from latent_transforms import LatentAdversarial
from latent_transforms.data import load_images
from latent_transforms.validation import POSITIVE_INT

from models import argument_parser, load_codec, run_script, tiny_codecs

RANKS = 2


def classifier() -> nn.Module:
    """A small CNN for 1x8x8 digits without BatchNorm (whose batch statistics differ between a rank's half and the
    whole batch): the gradients of the two ranks then average to the whole batch's."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def worker(rank: int, store: str, args) -> None:
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=RANKS,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    glow = tiny_codecs(shape=(1, 8, 8))[0] if args.smoke else load_codec("glow", args.glow, torch.device("cpu"))
    if args.smoke:
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(args.batch, 1, 8, 8, generator=g), torch.arange(args.batch) % 10
    else:
        x, y, _ = load_images("digits", "test")
        x, y = x[:args.batch], y[:args.batch]
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
    result = torch.tensor([float(images), float(grads_left), step], dtype=torch.float64)
    dist.all_reduce(result, op=dist.ReduceOp.MAX)
    if rank == 0:
        torch.save(result, Path(store.removeprefix("file://")).with_name("result.pt"))
    dist.destroy_process_group()


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--glow", default="glow-digits", help="the flow (hub name or .safetensors path)")
    ap.add_argument("--batch", type=POSITIVE_INT, default=32, help="images, split between the two ranks")
    ap.add_argument("--eps", type=float, default=1.0, help="LatentAdversarial's eps")
    ap.add_argument("--steps", type=POSITIVE_INT, default=3, help="LatentAdversarial's PGD steps")
    ap.add_argument("--smoke", action="store_true", help="a tiny random-init Glow and random images: checks the script")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(f"file://{tmp}/store", args), nprocs=RANKS)
        images, grads_left, step = torch.load(Path(tmp) / "result.pt").tolist()
    glow_name = "tiny random-init Glow (smoke)" if args.smoke else args.glow
    print(f"\nLatentAdversarial({glow_name}, eps={args.eps:g}, steps={args.steps}) on {args.batch} digits, "
          f"{args.batch // RANKS} per rank, {RANKS} gloo ranks of the CPU, fully_shard (classifier sharded too) "
          f"against the unwrapped model; torch {torch.__version__}\n")
    print("| figure | largest over the ranks |")
    print("|---|---|")
    print(f"| max abs difference of the attack's images, sharded vs unwrapped model | {images:.1e} |")
    print(f"| sharded parameters with a .grad after the attack | {int(grads_left)} |")
    print(f"| max abs difference of a training step's gradient after the attack, sharded vs one process on the whole "
          f"batch | {step:.1e} |")


if __name__ == "__main__":
    run_script(main)

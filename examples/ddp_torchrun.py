"""Every transform in a DistributedDataParallel training step; per-rank randomness; ISDA statistics shared by ranks.

    torchrun --nproc_per_node=2 examples/ddp_torchrun.py --smoke     # CPU + gloo, tiny random codecs, seconds
    torchrun --nproc_per_node=8 examples/ddp_torchrun.py             # GPUs + NCCL, CIFAR-10, glow/vae-cifar10
    D=../shared/data/cifar10                                         # offline, from the repo root: the shared npz files
    torchrun --nproc_per_node=2 examples/ddp_torchrun.py --train npz:$D/train-5k.npz --test npz:$D/test.npz

(``python -m torch.distributed.run`` is the same as ``torchrun``.) What it shows:

1. **Per-rank randomness.** With ``generator=None`` (the default) every transform seeds a private stream from
   torch's global RNG *plus an offset per rank*: even with the same ``torch.manual_seed`` on all ranks, ranks draw
   different noise, so the global batch is not augmented k times the same way. ``generator=<int>`` gives every
   rank the same draws (the same seed means the same stream).
2. **Every transform in a DDP step.** ``LatentNoise``, ``LatentAdversarial`` (attacks the local module: no gradient
   sync during the attack), ``VarMixup`` (soft labels), ``Compose`` with torchvision, and ``ISDA`` each run in
   front of the DDP forward, and the DDP backward all-reduces the gradients as usual.
3. **ISDA statistics are shared.** With ``sync_stats=True`` (the default) each update gathers every rank's
   features first, so all ranks hold the covariance of the *global* batch (the official code keeps per-GPU
   statistics). The script checks that the ranks' statistics are identical.

Codecs must be identical on all ranks: ``hub.load`` gives that; the ``--smoke`` codecs are built from a fixed seed.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchvision.transforms import v2

from common import (add_data_args, add_smoke_arg, add_width_arg, count_correct, example_data, load_codec, parse_args,
                    tiny_glow, tiny_vae)
from latent_transforms import Compose, ISDA, LatentAdversarial, LatentMixupInference, LatentNoise, VarMixup
from latent_transforms.models import CifarResNet18
from latent_transforms.validation import POSITIVE_INT

SMOKE = {"epochs": 2, "batch_size": 8, "width": 8}  # 64 images / 2 ranks / 8 = 4 steps per epoch


def setup() -> tuple[int, int, torch.device]:
    if "RANK" not in os.environ:  # plain `python ddp_torchrun.py`: a world of one process
        # port 0: its store listens on a port the system picks as it binds, which no other process can have taken
        # (a port found free and released first could be lost to another process before the store bound it)
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def rank_0_first(rank: int, load):
    """``load()`` on rank 0, then on the other ranks (rank 0 downloads CIFAR-10 if it is not there yet). Where it
    ends rank 0 (data that cannot be loaded: a one-line error) every rank ends with that exit status, and where it
    raises another exception, with status 1, rank 0 alone saying why: the ranks that waited for rank 0 were a
    traceback each ("Connection closed by peer") below its line. Rank 0 says why before it tells the others (told
    first, they ended, and torchrun could stop rank 0 before its exit printed it). Every rank destroys the process
    group as it ends (left to exit, NCCL's warns: "destroy_process_group() was not called before program exit")."""
    code = [None]
    if rank == 0:
        try:
            result = load()
        except SystemExit as e:
            code = [e.code if e.code is not None else 0]
            if isinstance(code[0], str):  # Python prints such a message at exit, with status 1: printed now
                print(code[0], file=sys.stderr, flush=True)
                code = [1]
        except Exception:
            traceback.print_exc()  # now, as the exit would (stderr: unbuffered)
            dist.broadcast_object_list([1], src=0)  # the others end with status 1
            dist.destroy_process_group()
            raise SystemExit(1) from None
    dist.broadcast_object_list(code, src=0)     # the other ranks wait here for rank 0
    if code[0] is not None:
        dist.destroy_process_group()
        raise SystemExit(code[0])  # rank 0 said why
    return result if rank == 0 else load()


def gather(t: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_args(parser)                        # --train, --test, --data-root
    parser.add_argument("--glow", default="glow-cifar10", help="hub name or .safetensors path (default: glow-cifar10)")
    parser.add_argument("--vae", default="vae-cifar10", help="hub name or .safetensors path (default: vae-cifar10)")
    parser.add_argument("--epochs", type=POSITIVE_INT, default=1, help="default: 1")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="per rank (default: 64)")
    add_width_arg(parser)
    add_smoke_arg(parser, "64 synthetic images, tiny random codecs", SMOKE)
    args = parse_args(parser, SMOKE, ("--train", "--test", "--data-root", "--glow", "--vae"))
    rank, world, device = setup()
    say = print if rank == 0 else (lambda *a, **k: None)
    if args.smoke:
        torch.set_num_threads(1)
    torch.manual_seed(0)  # the SAME seed on every rank: the same initial weights; the library's transforms still
    #                       draw differently per rank (torchvision/kornia steps do not: see the reseed below)

    # -- data, codecs, model ---------------------------------------------------------------------------
    # every rank holds all; the sampler shards
    x_train, y_train, x_test, y_test = rank_0_first(rank, lambda: example_data(parser, args))
    num_classes = int(y_train.max()) + 1
    if args.smoke:
        glow, vae = tiny_glow(), tiny_vae()
    else:
        glow, vae = load_codec(parser, "--glow", args.glow, device), load_codec(parser, "--vae", args.vae, device)
    glow, vae = glow.to(device), vae.to(device)
    sampler = DistributedSampler(TensorDataset(x_train, y_train), shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, sampler=sampler, drop_last=True)
    model = DDP(CifarResNet18(num_classes, width=args.width).to(device),
                device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    torch.manual_seed(1 + rank)  # torchvision/kornia steps (the flips and MixUp below) draw from the global RNG

    # -- 1. per-rank randomness ------------------------------------------------------------------------
    x0, y0 = x_train[:8].to(device), y_train[:8].to(device)     # the same batch on every rank
    for label, gen in (("generator=None (default)", None), ("generator=1234", 1234)):
        t = LatentNoise(glow, eps=5.0, generator=gen)
        t(x0, y0)
        deltas = gather(t.last_params["delta"])
        same = all(torch.equal(deltas[0], d) for d in deltas[1:])
        say(f"{label}: ranks drew {'the SAME' if same else 'different'} noise "
            f"(first coordinate per rank: {[round(float(d[0, 0]), 3) for d in deltas]})")
        if world > 1:
            assert same == (gen is not None)

    # -- 2. every transform in a DDP training step -----------------------------------------------------
    isda = ISDA(num_classes=num_classes, lambda0=0.5).to(device)      # sync_stats=True: global statistics
    transforms = {
        "LatentNoise": LatentNoise(glow, eps=5.0),
        "LatentAdversarial": LatentAdversarial(glow, steps=1),
        "VarMixup": VarMixup(vae, num_classes=num_classes, p=0.5),
        "Compose": Compose([v2.RandomHorizontalFlip(), LatentNoise(glow, eps=5.0, p=0.5),
                            v2.MixUp(num_classes=num_classes)]),
        "ISDA": isda,
    }
    names = list(transforms)
    isda_features, step = 0, 0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)                 # a different shard order each epoch
        isda.set_epoch(epoch, args.epochs)       # the official ramp: lambda = lambda0 * epoch / epochs
        model.train()
        for x, y in loader:
            name = names[step % len(names)]      # a different transform each step, to show them all
            x, y = x.to(device), y.to(device)
            x, y = transforms[name](x, y, model)        # <- the one line, whatever the transform
            loss = F.cross_entropy(model(x), y)         # DDP forward (ISDA's hook fires inside it)
            optimizer.zero_grad()
            loss.backward()                             # DDP all-reduces the gradients
            optimizer.step()
            if name == "ISDA":
                isda_features += len(x) * world
            say(f"epoch {epoch} step {step}: {name:<17} loss {loss.item():.3f}, labels {tuple(y.shape)}")
            step += 1

    # -- 3. checks: replicas identical, ISDA statistics identical on every rank and global ------------------
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert all(torch.equal(params, p) for p in gather(params)), "DDP replicas diverged"
    if isda_features:
        counts = gather(isda.estimator.count)
        covs = gather(isda.estimator.cov)
        assert all(torch.equal(counts[0], c) for c in counts[1:]), "ISDA counts differ between ranks"
        assert all(torch.allclose(covs[0], c) for c in covs[1:]), "ISDA covariances differ between ranks"
        assert int(counts[0].sum()) == isda_features, (int(counts[0].sum()), isda_features)
        say(f"ISDA statistics identical on all {world} ranks: {int(counts[0].sum())} features "
            f"(the global batch of every ISDA step), cov {tuple(covs[0].shape)}")
    else:  # the transforms take turns, one a step
        say(f"ISDA never ran: {step} steps in all, fewer than {names.index('ISDA') + 1}; more --epochs or a smaller "
            f"--batch-size give it a turn")
    for name, t in transforms.items():
        if hasattr(t, "stats"):  # per-rank counts (Compose has none; its steps do)
            say(f"{name} stats on rank 0: {t.stats}")

    # -- evaluation: plain model, or latent mixup inference (robust prediction) --------------------------
    model.eval()
    if x_test is not None:  # every rank scores its share of the test set; the counts are summed over the ranks
        mine = slice(rank, None, world)
        scores = torch.tensor([count_correct(model.module, x_test[mine], y_test[mine], device), len(x_test[mine])],
                              device=device)
        dist.all_reduce(scores)
        say(f"test accuracy: {100 * int(scores[0]) / int(scores[1]):.2f}% on {int(scores[1])} images "
            f"(a share on each of the {world} ranks)")
    mi = LatentMixupInference(model.module, vae, references=x_train[:32].to(device), num_mixes=2)
    with torch.no_grad():
        probs = mi(x0)
    say(f"LatentMixupInference: probabilities {tuple(probs.shape)}, rows sum to {float(probs.sum(1).mean()):.3f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    gc.collect()  # frees the DDP model while the interpreter lives (docs/reliability.md: "A rank that aborts at exit")

"""A compiled codec (``codec.compile_fast_path()``) against the eager one, on the CPU: eager and compiled calls
alternated in one process after both have run once (the compiled one's graphs built), the median of ``--iters`` of
each, per batch size: the Glow round trip with L2 noise, ``LatentNoise``, ``LatentAdversarial`` (1 PGD step, a CIFAR
ResNet-18) and the decode's forward and backward. Prints a Markdown table (eager -> compiled ms, and eager ÷
compiled: above 1x the compiled codec is faster) and each column's first compiled call (compiling included).

    python benchmarks/compile_speedup.py            # glow-cifar10, batches 8 and 32, 8 pairs, 1 thread
    python benchmarks/compile_speedup.py --smoke    # a tiny Glow, batch 4, 2 pairs, Dynamo alone: checks the script
"""
from __future__ import annotations

import statistics
import sys

import torch

from latent_transforms import LatentAdversarial, LatentNoise
from latent_transforms.models import CifarResNet18
from latent_transforms.validation import POSITIVE_INT, THREADS

from models import (CIFAR_NOISE_EPS, argument_parser, compiled_copy, load_codec, parse_args_with_smoke, run_script,
                    smoke_defaults_help, timed, tiny_codecs)
from throughput import codec_roundtrip

DYNAMIC = {"auto": None, "true": True, "false": False}  # --dynamic: torch.compile's dynamic=
SMOKE_DEFAULTS = {"batch_sizes": [4], "iters": 2, "width": 4, "backend": "eager"}
CPU = torch.device("cpu")


def columns(glow, model: torch.nn.Module, width: int, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Each column's call on ``glow`` (eager or compiled), its draws reseeded per call."""
    noise, adversarial = LatentNoise(glow, generator=0), LatentAdversarial(glow, steps=1, generator=0)
    z = glow.encode_flat(x).detach()

    def decode_backward():
        u = z.clone().requires_grad_()
        glow.decode_flat(u).sum().backward()

    return {"Glow encode + noise + decode": lambda: codec_roundtrip(glow, x, CIFAR_NOISE_EPS,
                                                                     torch.Generator().manual_seed(0)),
            "LatentNoise": lambda: noise(x, y),
            f"LatentAdversarial, 1 PGD step (ResNet-18 width {width})": lambda: adversarial(x, y, model),
            "decode forward + backward": decode_backward}


def main(argv=None) -> dict:
    ap = argument_parser(__doc__)
    ap.add_argument("--glow", help="the flow (hub name or .safetensors path; default: glow-cifar10; smoke: a tiny "
                                   "random-init Glow)")
    ap.add_argument("--batch-sizes", type=POSITIVE_INT, nargs="+", default=[8, 32], help="a table row each")
    ap.add_argument("--iters", type=POSITIVE_INT, default=8, help="timed calls of each path per cell (median)")
    ap.add_argument("--width", type=POSITIVE_INT, default=16, help="the attacked ResNet-18's width")
    ap.add_argument("--dynamic", choices=sorted(DYNAMIC), default="auto",
                    help="torch.compile's dynamic: auto (None: the first batch size as is, then a symbolic one), true, "
                         "false")
    ap.add_argument("--backend", default="inductor", help="torch.compile's backend (eager: Dynamo alone, no code made)")
    ap.add_argument("--threads", type=THREADS, default=1, help="CPU threads for torch")
    ap.add_argument("--no-progress", action="store_true", help="no line on stderr as each cell is done")
    ap.add_argument("--smoke", action="store_true", help="checks the script in seconds: a tiny random-init Glow "
                    "(unless --glow is given) and these defaults instead of the others: "
                    + smoke_defaults_help(SMOKE_DEFAULTS))
    args = parse_args_with_smoke(ap, SMOKE_DEFAULTS, argv=argv)
    torch.set_num_threads(args.threads)
    if not args.smoke:
        args.glow = args.glow or "glow-cifar10"
    eager = tiny_codecs()[0] if args.glow is None else load_codec("glow", args.glow, CPU)  # smoke: unless given
    compiled = compiled_copy(eager, f"--backend {args.backend}", dynamic=DYNAMIC[args.dynamic], backend=args.backend)
    model = CifarResNet18(10, args.width)
    cells, firsts = {}, {}  # (batch, column) -> (eager s, compiled s); column -> first compiled call at each batch
    for batch in args.batch_sizes:
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(batch, *eager.image_shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
        paths = columns(eager, model, args.width, x, y), columns(compiled, model, args.width, x, y)
        for column in paths[0]:
            calls = paths[0][column], paths[1][column]
            calls[0]()
            firsts.setdefault(column, []).append(timed(calls[1], CPU))
            times = [], []
            for i in range(args.iters):  # alternated: eager first, then compiled first
                for path in (0, 1) if i % 2 == 0 else (1, 0):
                    times[path].append(timed(calls[path], CPU))
            cells[batch, column] = statistics.median(times[0]), statistics.median(times[1])
            if not args.no_progress:
                print(f"batch {batch}, {column}: done", file=sys.stderr, flush=True)
    names = list(paths[0])
    glow_name = "tiny random-init Glow (smoke)" if args.glow is None else args.glow
    print(f"\n{glow_name}, compile_fast_path(dynamic={DYNAMIC[args.dynamic]}, backend={args.backend!r}), eager -> "
          f"compiled, median of "
          f"{args.iters} calls each, alternated in one process; cpu, {args.threads} thread(s), torch "
          f"{torch.__version__}\n")
    print("| batch | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for batch in args.batch_sizes:
        print(f"| {batch} | " + " | ".join(f"{cells[batch, c][0] * 1e3:.1f} -> {cells[batch, c][1] * 1e3:.1f} ms "
                                           f"({cells[batch, c][0] / cells[batch, c][1]:.2f}x)" for c in names) + " |")
    print("\nFirst compiled call (compiling included), per batch size in order: "
          + "; ".join(f"{c} " + ", ".join(f"{s:.1f} s" for s in firsts[c]) for c in names) + ".")
    return {"cells": cells, "first_call_seconds": firsts}


if __name__ == "__main__":
    run_script(main)

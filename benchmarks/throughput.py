#!/usr/bin/env python
"""Throughput benchmark (issue 8): every method against torchvision/kornia augmentations and the training step.

One run, one table: LatentNoise, LatentAdversarial (1 and 3 PGD steps), VarMixup and ISDA; LatentNoise and
LatentAdversarial (1 step) also on the plain path (the same Glow not frozen) and, with VarMixup, with a latent cache;
torchvision v2 RandAugment (one draw per batch, and per image as the accuracy benchmark uses it) and MixUp; kornia
RandAugment; the plain naive normflows path of the same Glow (``flow.inverse_and_log_det``, add noise,
``flow.forward_and_log_det``) next to the library codec's ``encode``/``decode`` (the folded fast path of a frozen
Glow); with ``--compile`` (default on CUDA; ``--compile-mode`` picks torch.compile's mode) the Glow round trip,
LatentNoise and LatentAdversarial again with ``codec.compile_fast_path()``; and a CIFAR ResNet-18 training step (bf16
autocast on a GPU, fp32 on the CPU). The JSON also records how far the two Glow paths' outputs differ, and the
compiled from the eager codec's, on images the flow generates. The Markdown ends with issue 8's targets, each
pass / fail / not measured on their setting (a CUDA GPU, batch 256, the default codecs, a width-64 ResNet-18 in
bf16, ISDA's full covariance), n/a on any other.

Each row: median over ``--iters`` timed iterations after ``--warmup`` untimed ones, with device synchronisation
around every iteration; milliseconds per batch, images per second, cost as a multiple of one training step, the first
call's time (for the compiled rows: compiling included), and on CUDA the peak memory allocated during the row's timed
calls (the counter reset after the warm-up: what the warm-up kept counts, what it only borrowed, such as cuDNN's
autotuning workspace, does not) above what was allocated before its first call (``torch.cuda.max_memory_allocated``);
a cache row also gives its cache's size and a 50,000-image one's. A row that fails (a compiler error, out of memory)
is recorded as failed and the others go on; on CUDA, 2 s of training steps come before the first row. The ISDA step alternates with a plain step, iteration by
iteration, and its overhead is the median of the paired ratios.
Writes ``OUT/throughput.json`` and ``OUT/throughput.md`` after every row (marked partial until the last, so a run
killed at a time limit keeps every finished row) and prints the table.

Examples::

    python benchmarks/throughput.py --out runs/throughput                      # GPU, batch 256
    python benchmarks/throughput.py --compile-mode reduce-overhead             # ... compiled rows with CUDA graphs
    python benchmarks/throughput.py --device cpu --iters 2                     # small (batch 8), on a CPU
    python benchmarks/throughput.py --device cpu --compile                     # ... with the compiled rows
    python benchmarks/throughput.py --smoke --device cpu --out /tmp/tp-smoke   # tiny codecs, seconds
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import (CIFAR_NOISE_EPS, PerSampleRandAugment, add_device_argument, argument_parser,  # noqa: E402
                    build_classifier, compiled_copy, load_codec, parse_args_with_smoke, random_init_codec,
                    run_script, setup_device, smoke_defaults_help, timed, tiny_codecs, write_json, write_text)

from latent_transforms.codecs import flatten_latents, unflatten_latents  # noqa: E402
from latent_transforms.validation import (POSITIVE_INT, THREADS, check_count, check_number, option,  # noqa: E402
                                          output_folder)
from latent_transforms.isda import ISDA  # noqa: E402
from latent_transforms.latent_adversarial import LatentAdversarial  # noqa: E402
from latent_transforms.latent_noise import LatentNoise  # noqa: E402
from latent_transforms.latent_cache import LatentCache  # noqa: E402
from latent_transforms.modelutils import describe_device  # noqa: E402
from latent_transforms.varmixup import VarMixup  # noqa: E402

NUM_CLASSES = 10
CIFAR10_TRAIN_IMAGES = 50_000
TARGET_MIN_ITERS = 10  # timed iterations at least, for a verdict
TARGET_BATCH = 256  # issue 8's targets: a CUDA GPU, this batch, the default CIFAR-10 codecs, the default step and ISDA
TARGET_CODECS = {"glow": "glow-cifar10", "vae": "vae-cifar10"}
TARGET_STEP = {"width": 64, "precision": "bf16", "isda_covariance": "full"}  # as the config records them
MEMORY_LIMIT_GB = 2.0
FORMAT = "latent-transforms-throughput/1"
SPIN_UP_SECONDS = 2.0  # CUDA: training steps run before the first row, so that the GPU is at its clocks


def memory_baseline(device: torch.device) -> int | None:
    """CUDA: the bytes allocated now, the peak counter reset to them (a row's peak is measured from here); else None."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def measure(fn: Callable[[], object], device: torch.device, warmup: int, iters: int,
            paired: Callable[[], object] | None = None) -> dict:
    """Median seconds of ``fn`` over ``iters`` synchronised iterations after ``warmup``; the first call's seconds
    (compile time included); CUDA: the peak bytes allocated during the timed calls above those allocated before the
    row's first call (what the warm-up allocates and keeps, e.g. ISDA's covariances, counts; what it only borrows,
    e.g. the workspace of cuDNN's autotuning at a convolution's first shape, does not).
    ``paired``: a baseline called next to ``fn`` in every iteration, ``fn`` first in even iterations and second in
    odd ones; adds the baseline's median seconds and the median over timed iterations of ``fn``'s / its seconds."""
    base = memory_baseline(device)
    calls = [(fn,) if paired is None else (fn, paired) if i % 2 == 0 else (paired, fn) for i in range(warmup + iters)]
    seconds = []
    for i, call in enumerate(calls):
        if i == warmup and base is not None:  # the peak from here on: to what is allocated now, kept from the warm-up
            torch.cuda.reset_peak_memory_stats(device)
        seconds.append({f: timed(f, device) for f in call})
    times = [s[fn] for s in seconds[warmup:]]
    result = {"seconds": statistics.median(times), "all_seconds": times, "first_call_seconds": seconds[0][fn],
              "peak_extra_bytes": None if base is None else torch.cuda.max_memory_allocated(device) - base}
    if paired is not None:
        baseline = [s[paired] for s in seconds[warmup:]]
        result.update(paired_seconds=statistics.median(baseline), paired_all_seconds=baseline,
                      vs_paired=statistics.median([a / b for a, b in zip(times, baseline)]))
    return result


def resolve_codecs(args, device: torch.device) -> tuple[dict, dict]:
    """Glow and VAE on ``device``: given names/paths, else the hub's CIFAR-10 ones, else random-init (timing only)."""
    codecs, notes = {}, {}
    tiny = tiny_codecs() if args.smoke else None
    for i, kind in enumerate(("glow", "vae")):
        given = getattr(args, kind)
        if given is None and tiny is not None:
            codecs[kind], notes[kind] = tiny[i].to(device), "tiny random-init (smoke)"
            continue
        name = given or f"{kind}-cifar10"
        try:
            codecs[kind], notes[kind] = load_codec(kind, name, device), name
        except Exception as e:  # noqa: BLE001
            if given is not None:
                raise SystemExit(f"cannot load the {kind} codec {given!r} ({type(e).__name__}: {e})") from None
            codecs[kind] = random_init_codec(kind).to(device)
            notes[kind] = (f"random-init, library default CIFAR size ({name!r} not available: "
                           f"{type(e).__name__}); speed does not depend on the weights")
    return codecs, notes


def normflows_roundtrip(glow, x: torch.Tensor, noise_eps: float, generator: torch.Generator) -> torch.Tensor:
    """The naive path a normflows user writes, on the same Glow's weights: logit, ``flow.inverse_and_log_det``,
    standardise, add L2 noise of norm ``noise_eps``, un-standardise, ``flow.forward_and_log_det``, sigmoid.
    No folding, no checks: what the library's codec is compared with."""
    from latent_transforms.codecs import exact_math

    a = glow.alpha
    with torch.no_grad(), exact_math(x.device.type):
        s = a + (1 - 2 * a) * x
        z, _ = glow.flow.inverse_and_log_det(torch.log(s) - torch.log1p(-s))
        u = flatten_latents([(zi - q.loc) * torch.exp(-q.log_scale) for zi, q in zip(z, glow.flow.q0)])
        if noise_eps:
            noise = torch.randn(u.shape, generator=generator, device=u.device)
            u = u + noise_eps * noise / noise.norm(dim=1, keepdim=True)
        zs = [q.loc + torch.exp(q.log_scale) * ui
              for ui, q in zip(unflatten_latents(u, glow.latent_shapes), glow.flow.q0)]
        xl, _ = glow.flow.forward_and_log_det(zs)
        return (torch.sigmoid(xl) - a) / (1 - 2 * a)


def codec_roundtrip(codec, x: torch.Tensor, noise_eps: float, generator: torch.Generator) -> torch.Tensor:
    """The same through the library's codec API (``encode``/``decode``: the folded fast path of a frozen Glow)."""
    with torch.no_grad():
        u = codec.encode_flat(x)
        if noise_eps:
            noise = torch.randn(u.shape, generator=generator, device=u.device)
            u = u + noise_eps * noise / noise.norm(dim=1, keepdim=True)
        return codec.decode_flat(u)


def cache_sizes(cache: LatentCache) -> dict[str, int]:
    """Bytes of the cache's (N, D) latents, and of a cache of the 50,000 CIFAR-10 training images (50,000 x D x 4
    bytes in fp32)."""
    latents = cache.latents
    return {"cache_bytes": latents.numel() * latents.element_size(),
            "cifar10_cache_bytes": CIFAR10_TRAIN_IMAGES * latents.shape[1] * latents.element_size()}


def noting_selection(row: dict, t, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn``, whose first call (a warm-up) also records in ``row["samples_mixed"]`` how many samples its call of
    ``t`` mixed: a row with p < 1 repeats one selection, and at a small batch it may hold no sample (the row then
    times a pass-through). Only the first: reading ``t.stats`` synchronises the host with the device."""
    def call():
        if "samples_mixed" in row:
            return fn()
        before = t.stats["transformed"]
        result = fn()
        row["samples_mixed"] = t.stats["transformed"] - before
        return result
    return call


def build_rows(args, device: torch.device, codecs: dict) -> list[dict]:
    """Each row: key, method, what is timed, and the function to time (the training step first; the compiled rows,
    on a copy of the Glow, come last so their compiling cannot disturb the others)."""
    import kornia
    from torchvision.transforms import v2

    b = args.batch_size
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(b, 3, 32, 32, generator=g, device=device)
    y = torch.randint(0, NUM_CLASSES, (b,), generator=g, device=device)
    torch.manual_seed(0)
    model = build_classifier(NUM_CLASSES, args.width, device, args.precision)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    glow, vae = codecs["glow"], codecs["vae"]
    precision = "bf16 autocast" if args.precision == "bf16" else "fp32"
    glow_path = "folded fast path" if getattr(glow, "use_fast_path", False) else "no fast path"

    def train_step(augment=None):
        def step():
            xb, yb = (x, y) if augment is None else augment(x, y, model)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    train_step()()  # the classifier's gradients and optimiser state exist before the first row: no row counts them
    if device.type == "cuda":  # an idle GPU's clocks ramp up under load: the first row, every ratio's denominator,
        spin_up = time.perf_counter()  # must not time the ramp (its few warm-up steps take milliseconds)
        while time.perf_counter() - spin_up < SPIN_UP_SECONDS:
            timed(train_step(), device)
    isda = ISDA(num_classes=NUM_CLASSES, lambda0=0.5, covariance=args.isda_covariance)
    isda.set_progress(1.0)  # full strength: at progress 0 the correction is skipped and nothing would be timed
    ra_batch = v2.RandAugment()
    ra_sample = PerSampleRandAugment()
    mixup = v2.MixUp(num_classes=NUM_CLASSES)
    kornia_ra = kornia.augmentation.auto.RandAugment(n=2, m=10)
    noise = LatentNoise(glow, eps=args.noise_eps, generator=0)
    adversarial_0 = LatentAdversarial(glow, steps=0, generator=0)  # the fixed cost of the attack
    adversarial = LatentAdversarial(glow, steps=1, generator=0)
    glow_plain = glow.unfrozen_copy()  # not frozen: the plain normflows path
    noise_plain = LatentNoise(glow_plain, eps=args.noise_eps, generator=0)
    adversarial_plain = LatentAdversarial(glow_plain, steps=1, generator=0)
    adversarial_3 = LatentAdversarial(glow, steps=3, step_size=0.5, generator=0)  # the official CIFAR setting
    # p < 1 makes the codec's batch size vary from call to call, and cuDNN autotunes every new size once: reseeding
    # the generator before each call keeps one selection, so the warm-up absorbs the tuning (the steady state)
    vm_gen, vm_cached_gen = torch.Generator(device=device), torch.Generator(device=device)

    def reseeded(gen: torch.Generator, fn: Callable[[], object]) -> Callable[[], object]:
        return lambda: (gen.manual_seed(0), fn())

    varmixup = VarMixup(vae, num_classes=NUM_CLASSES, generator=vm_gen)
    varmixup_all = VarMixup(vae, num_classes=NUM_CLASSES, p=1.0, generator=0)
    index = torch.arange(b, device=device)
    glow_cache, vae_cache = LatentCache(glow, x, progress=False), LatentCache(vae, x, progress=False)
    noise_cached = LatentNoise(glow, eps=args.noise_eps, generator=0, cache=glow_cache)
    adversarial_cached = LatentAdversarial(glow, steps=1, generator=0, cache=glow_cache)
    varmixup_cached = VarMixup(vae, num_classes=NUM_CLASSES, generator=vm_cached_gen, cache=vae_cache)

    rows = [
        {"key": "train_step", "method": f"ResNet-18 training step ({precision})",
         "timed": "forward + backward + SGD step", "fn": train_step()},
        {"key": "tv_randaugment_batch", "method": "torchvision v2 RandAugment, one draw per batch",
         "timed": "ra(x)", "fn": lambda: ra_batch(x)},
        {"key": "tv_randaugment_sample", "method": "torchvision v2 RandAugment, per image (accuracy.py)",
         "timed": "a loop of ra(x[i])", "fn": lambda: ra_sample(x)},
        {"key": "tv_mixup", "method": "torchvision v2 MixUp", "timed": "mixup(x, y)", "fn": lambda: mixup(x, y)},
        {"key": "kornia_randaugment", "method": "kornia RandAugment (n=2, m=10)", "timed": "ra(x)",
         "fn": lambda: kornia_ra(x)},
        {"key": "glow_normflows", "method": "Glow encode + noise + decode, naive normflows path",
         "timed": "flow.inverse_and_log_det, L2 noise, flow.forward_and_log_det",
         "fn": lambda: normflows_roundtrip(glow, x, args.noise_eps, g)},
        {"key": "glow_codec", "method": f"Glow encode + noise + decode, library codec ({glow_path})",
         "timed": "codec.encode, L2 noise, codec.decode", "fn": lambda: codec_roundtrip(glow, x, args.noise_eps, g)},
        {"key": "latent_noise", "method": "LatentNoise", "timed": "t(x, y)", "fn": lambda: noise(x, y)},
        {"key": "latent_noise_plain", "method": "LatentNoise, plain path (the same Glow not frozen)",
         "timed": "t(x, y)", "fn": lambda: noise_plain(x, y)},
        {"key": "latent_adversarial_0", "method": "LatentAdversarial, 0 PGD steps (its fixed cost)",
         "timed": "t(x, y, model): encode, the clean forward (target), random start, decode",
         "fn": lambda: adversarial_0(x, y, model)},
        {"key": "latent_adversarial_1", "method": "LatentAdversarial, 1 PGD step", "timed": "t(x, y, model)",
         "fn": lambda: adversarial(x, y, model)},
        {"key": "latent_adversarial_1_plain", "method": "LatentAdversarial, 1 PGD step, plain path (not frozen)",
         "timed": "t(x, y, model)", "fn": lambda: adversarial_plain(x, y, model)},
        {"key": "latent_adversarial_3", "method": "LatentAdversarial, 3 PGD steps (official CIFAR)",
         "timed": "t(x, y, model)", "fn": lambda: adversarial_3(x, y, model)},
        {"key": "varmixup", "method": f"VarMixup (default p {varmixup.p:g}: that share of the batch mixed)",
         "timed": "t(x, y), the same selection each call", "fn": reseeded(vm_gen, lambda: varmixup(x, y))},
        {"key": "varmixup_all", "method": "VarMixup, p=1.0 (every sample mixed, the paper's share)", "timed": "t(x, y)",
         "fn": lambda: varmixup_all(x, y)},
        {"key": "latent_noise_cached", "method": "LatentNoise with a LatentCache", "timed": "t(x, y, index=i)",
         "fn": lambda: noise_cached(x, y, index=index), **cache_sizes(glow_cache)},
        {"key": "latent_adversarial_1_cached", "method": "LatentAdversarial, 1 PGD step, with a LatentCache",
         "timed": "t(x, y, model, index=i)", "fn": lambda: adversarial_cached(x, y, model, index=index),
         **cache_sizes(glow_cache)},
        {"key": "varmixup_cached", "method": "VarMixup with a LatentCache",
         "timed": "t(x, y, index=i), the same selection each call",
         "fn": reseeded(vm_cached_gen, lambda: varmixup_cached(x, y, index=index)), **cache_sizes(vae_cache)},
        {"key": "train_step_isda", "method": f"ResNet-18 training step + ISDA ({args.isda_covariance} covariance)",
         "timed": "the whole step, ISDA armed, alternating with a plain step", "fn": train_step(isda),
         "paired": train_step()},
    ]
    selecting = {"varmixup": varmixup, "varmixup_cached": varmixup_cached}  # p < 1: rows that time one selection
    for row in rows:
        if row["key"] in selecting:
            row["fn"] = noting_selection(row, selecting[row["key"]], row["fn"])
    if args.compile:
        glow_c = codecs["glow_compiled"]
        mode = f", mode={args.compile_mode}" if args.compile_mode else ""
        noise_c = LatentNoise(glow_c, eps=args.noise_eps, generator=0)
        adversarial_c = LatentAdversarial(glow_c, steps=1, generator=0)
        rows += [
            {"key": "glow_codec_compiled",
             "method": f"Glow encode + noise + decode, library codec, compiled{mode} ({glow_path})",
             "timed": "codec.encode, L2 noise, codec.decode after codec.compile_fast_path()",
             "fn": lambda: codec_roundtrip(glow_c, x, args.noise_eps, g)},
            {"key": "latent_noise_compiled", "method": f"LatentNoise, compiled codec{mode}", "timed": "t(x, y)",
             "fn": lambda: noise_c(x, y)},
            {"key": "latent_adversarial_1_compiled", "method": f"LatentAdversarial, 1 PGD step, compiled codec{mode}",
             "timed": "t(x, y, model)", "fn": lambda: adversarial_c(x, y, model)},
        ]
    return rows


def mib(n: float, digits: int = 0) -> str:
    """Bytes as MiB, e.g. ``12 MiB``."""
    return f"{n / 2**20:,.{digits}f} MiB"


def memory_cell(r: dict) -> str:
    """The peak extra memory column: the CUDA peak (``-`` elsewhere); a cache row adds its cache, which was allocated
    before the row, and what a cache of the 50,000 CIFAR-10 training images takes."""
    peak = "-" if r["peak_extra_bytes"] is None else mib(r["peak_extra_bytes"])
    if "cache_bytes" not in r:
        return peak
    return f"{peak}; cache {mib(r['cache_bytes'], 1)} (50,000 images: {mib(r['cifar10_cache_bytes'])})"


def isda_own_memory(by_key: dict) -> int | None:
    """ISDA's own peak extra bytes: its training step's peak minus the plain step's (None off CUDA)."""
    peaks = [by_key.get(k, {}).get("peak_extra_bytes") for k in ("train_step_isda", "train_step")]
    return None if None in peaks else peaks[0] - peaks[1]


def largest_method_memory(by_key: dict) -> tuple[str, float] | None:
    """(method, bytes) of this project's method with the largest peak extra memory: a cache row with a full CIFAR-10
    cache added, ISDA its own share, plain-path rows (the reference) left out; None off CUDA."""
    memory = {r["method"]: r["peak_extra_bytes"] + r.get("cifar10_cache_bytes", 0) for k, r in by_key.items()
              if k.startswith(("latent_noise", "latent_adversarial", "varmixup")) and not k.endswith("_plain")
              and r.get("peak_extra_bytes") is not None}
    isda = isda_own_memory(by_key)
    if isda is not None:
        memory["ISDA (its own share)"] = isda
    return max(memory.items(), key=lambda item: item[1], default=None)


def fastest(by_key: dict, *keys: str) -> dict | None:
    """The fastest measured row of ``keys`` (a method's eager and compiled rows), or None."""
    return min((by_key[k] for k in keys if "seconds" in by_key.get(k, {})), key=lambda r: r["seconds"], default=None)


def target(name: str, value: float | None, bound: float, fmt: str, source: str | None = None,
           at_least: bool = False) -> dict:
    """One of issue 8's targets: the measured ``value`` (None: not measured), shown with ``fmt`` and the row it comes
    from, and whether it is met (at most ``bound``, or at least with ``at_least``)."""
    met = None if value is None else value >= bound if at_least else value <= bound
    measured = "-" if value is None else fmt.format(value) + (f" ({source})" if source else "")
    return {"target": name, "measured": measured, "met": met}


def targets(by_key: dict) -> list[dict]:
    """Issue 8's targets, measured on this run's rows (LatentNoise and LatentAdversarial on the faster of their eager
    and compiled rows; ISDA on its side-by-side pairing with the plain step)."""
    noise = fastest(by_key, "latent_noise", "latent_noise_compiled") or {}
    adversarial = fastest(by_key, "latent_adversarial_1", "latent_adversarial_1_compiled") or {}
    naive, varmixup = by_key.get("glow_normflows", {}), by_key.get("varmixup", {})
    speedup = naive["seconds"] / noise["seconds"] if "seconds" in noise and "seconds" in naive else None
    isda = by_key.get("train_step_isda", {}).get("vs_paired")
    memory_source, memory = largest_method_memory(by_key) or (None, None)
    return [
        target("LatentNoise <= 0.5x a training step", noise.get("vs_train_step"), 0.5, "{:.3g}x", noise.get("method")),
        target("LatentNoise >= 10x faster than the naive normflows path", speedup, 10, "{:.3g}x as fast",
               noise.get("method"), at_least=True),
        target("LatentAdversarial, 1 PGD step, <= 2x a training step", adversarial.get("vs_train_step"), 2, "{:.3g}x",
               adversarial.get("method")),
        target("VarMixup (default p) <= 0.15x a training step", varmixup.get("vs_train_step"), 0.15, "{:.3g}x"),
        target("ISDA adds <= 10% to a plain training step", None if isda is None else isda - 1, 0.1, "{:+.1%}",
               "timed side by side"),
        target("peak extra memory of every method <= 2 GB (a cache row: with a 50,000-image cache)",
               None if memory is None else memory / 1e9, MEMORY_LIMIT_GB, "{:.2f} GB", memory_source),
    ]


def off_target(cfg: dict) -> list[str]:
    """What of this run is not issue 8's targets' setting, in words (nothing: the targets are judged)."""
    width, precision, covariance = (cfg.get(k) for k in TARGET_STEP)
    differs = {cfg["device_name"]: not cfg.get("device", "").startswith("cuda"),
               f"batch {cfg['batch_size']}": cfg["batch_size"] != TARGET_BATCH,
               "smoke run": cfg["smoke"],
               f"ResNet-18 width {width}": width != TARGET_STEP["width"],
               f"classifier in {precision}": precision != TARGET_STEP["precision"],
               f"ISDA {covariance} covariance": covariance != TARGET_STEP["isda_covariance"],
               **{f"{kind}: {cfg['codecs'].get(kind)}": cfg["codecs"].get(kind) != name
                  for kind, name in TARGET_CODECS.items()},
               # a median of a few iterations, or no warm-up (first-call costs timed), judges nothing
               f"{cfg.get('iters')} timed iterations": (cfg.get("iters") or 0) < TARGET_MIN_ITERS,
               f"{cfg.get('warmup')} warm-up iterations": (cfg.get("warmup") or 0) < 1,
               f"LatentNoise eps {cfg.get('noise_eps')}": cfg.get("noise_eps") != CIFAR_NOISE_EPS}
    return [text for text, off in differs.items() if off]


def format_targets(result: dict) -> list[str]:
    """Markdown lines: each of issue 8's targets, measured, with pass / fail / not measured; n/a for every one when
    the run is not the targets' setting (a CUDA GPU, batch 256, the default CIFAR-10 codecs, a width-64 ResNet-18 in
    bf16, ISDA's full covariance, no smoke), the sentence above naming what differs."""
    off = off_target(result["config"])
    lines = ["", f"Issue 8's targets are for a CUDA GPU at batch {TARGET_BATCH} with the default CIFAR-10 codecs, a "
                 f"width-{TARGET_STEP['width']} ResNet-18 training step in {TARGET_STEP['precision']} and ISDA's "
                 f"{TARGET_STEP['isda_covariance']} covariance." +
             (f" This run is not that setting ({', '.join(off)}): its figures are shown, the targets marked n/a, not "
              f"judged." if off else ""),
             "", "| target | measured | verdict |", "|---|---|---|"]
    for t in targets({r["key"]: r for r in result["rows"] if "error" not in r}):
        verdict = "n/a" if off else "not measured" if t["met"] is None else "pass" if t["met"] else "fail"
        lines.append(f"| {t['target']} | {t['measured']} | {verdict} |")
    return lines


def format_table(result: dict) -> str:
    cfg = result["config"]
    by_key = {r["key"]: r for r in result["rows"]}
    isda_mem = isda_own_memory(by_key)
    lines = []
    if cfg["smoke"]:
        lines += ["**SMOKE RUN**: tiny codecs and classifier, 2 iterations; it checks the script, the numbers mean "
                  "nothing.", ""]
    lines += [f"Batch {cfg['batch_size']} of 3x32x32 images on {cfg['device_name']}, torch {cfg['torch']}; median of "
              f"{cfg['iters']} timed iterations after {cfg['warmup']} warm-up; Glow: {cfg['codecs']['glow']}; "
              f"VAE: {cfg['codecs']['vae']}; classifier: CIFAR ResNet-18 width {cfg['width']}.", "",
              "| method | what is timed | ms / batch | img/s | × training step | peak extra memory |",
              "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['timed']} | failed: {r['error']} | | | |")
            continue
        mixed = f", {r['samples_mixed']} of {cfg['batch_size']} samples mixed" if "samples_mixed" in r else ""
        lines.append(f"| {r['method']} | {r['timed']}{mixed} | {1000 * r['seconds']:.2f} | "
                     f"{r['images_per_second']:,.0f} | "
                     f"{r['vs_train_step']:.3g}x | {memory_cell(r)} |")
    lines += ["", "× training step: this row's time per batch divided by one plain training step's, so an augmentation "
              "at 0.5x makes each step about 1.5x as long; the ISDA row is a whole step: its × is the median, over "
              "its iterations, of its time divided by that of the plain step timed beside it, and its memory is a "
              "whole step's" + (f" (ISDA's own: {isda_mem / 2**20:.0f} MiB more than the plain step's peak)"
                                if isda_mem is not None else "") + ". Peak extra memory: the peak during the row's "
              "timed calls minus what was allocated before its first call (what the warm-up kept counts); a cache "
              "row's cache, "
              "allocated before, is listed beside it.",
              f"Glow round trip, naive normflows path vs library codec, no noise: max |difference| "
              f"{cfg['max_abs_diff_normflows_vs_codec_roundtrip']:.1e}; max |decode(encode(x)) - x|: library codec "
              f"{cfg['max_abs_roundtrip_error_codec']:.1e}, normflows path {cfg['max_abs_roundtrip_error_normflows']:.1e}"
              f" (on images the flow generates)."]
    isda = by_key.get("train_step_isda", {})
    if "vs_paired" in isda:
        lines.append(f"ISDA timed side by side with a plain training step ({len(isda['all_seconds'])} pairs, the "
                     f"order alternating): median {1000 * isda['seconds']:.2f} ms against "
                     f"{1000 * isda['paired_seconds']:.2f} ms; ISDA adds {isda['vs_paired'] - 1:+.1%} (median of the "
                     f"per-pair ratios).")
    steps = {k: by_key[f"latent_adversarial_{k}"]["seconds"] for k in (0, 1, 3)
             if "seconds" in by_key.get(f"latent_adversarial_{k}", {})}
    if len(steps) == 3:
        one, per = steps[1] - steps[0], (steps[3] - steps[1]) / 2
        lines.append(f"LatentAdversarial cost in PGD steps: fixed {1000 * steps[0]:.2f} ms, first step "
                     f"{1000 * one:.2f} ms, each of steps 2-3 {1000 * per:.2f} ms (linear when these two agree)"
                     + ("; below 0, the three rows' times are noise (a busy machine, or too few --iters), not a "
                        "step's cost." if min(one, per) < 0 else "."))
    compiled = [r for r in result["rows"] if r["key"].endswith("_compiled") and "seconds" in r]  # those that ran
    if compiled:
        firsts = ", ".join(f"{r['method']} {r['first_call_seconds']:.1f} s" for r in compiled)
        agreement = cfg["max_abs_diff_compiled_vs_eager_codec_roundtrip"]  # None until both Glow round trips ran
        lines.append(f"Compiled rows (`codec.compile_fast_path()`, one copy of the Glow shared by them): first call, "
                     f"including the compiling of the graphs the earlier compiled rows had not built: {firsts}."
                     + (f" Glow round trip, compiled vs eager codec, no noise: max |difference| {agreement:.1e}."
                        if agreement is not None else ""))
    return "\n".join(lines + format_targets(result))


SMOKE_DEFAULTS = {"batch_size": 8, "iters": 2, "warmup": 1, "width": 8, "threads": 1}


def parse_args(argv=None) -> argparse.Namespace:
    p = argument_parser(__doc__)
    add_device_argument(p)
    p.add_argument("--batch-size", type=option(check_count, low=2),
                   help="images per timed call (default: 256 on CUDA, the issue's targets', 8 on a CPU)")
    p.add_argument("--iters", type=POSITIVE_INT, default=20, help="timed iterations per row (median reported)")
    p.add_argument("--warmup", type=option(check_count), default=5, help="untimed iterations per row first")
    p.add_argument("--width", type=POSITIVE_INT, default=64, help="ResNet-18 base width")
    p.add_argument("--precision", choices=("bf16", "fp32"), help="classifier precision (default: bf16 on CUDA)")
    p.add_argument("--glow", help="hub name or path (default: glow-cifar10, else a random-init Glow of default size)")
    p.add_argument("--vae", help="hub name or path (default: vae-cifar10, else a random-init VAE of default size)")
    p.add_argument("--noise-eps", type=option(check_number, float), default=CIFAR_NOISE_EPS,
                   help="LatentNoise L2 radius (default: the library's for a codec of 3x32x32 images, %(default)s)")
    p.add_argument("--isda-covariance", choices=("full", "diagonal"), default="full",
                   help="the class-conditional feature covariance ISDA estimates")
    p.add_argument("--threads", type=THREADS, help="CPU threads for torch (default: torch's; smoke: 1)")
    p.add_argument("--out", default="runs/throughput", help="output folder")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="add rows with codec.compile_fast_path() (default: on CUDA; on a CPU compiling takes minutes)")
    p.add_argument("--compile-mode", help="torch.compile's mode for those rows, e.g. reduce-overhead (CUDA graphs); "
                                          "turns --compile on (default: torch's)")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny codecs, and these defaults instead of the others: {smoke_defaults_help(SMOKE_DEFAULTS)}")
    args = parse_args_with_smoke(p, SMOKE_DEFAULTS, argv=argv)  # an option given beside --smoke wins
    if args.batch_size is None:
        args.batch_size = 256 if args.device.startswith("cuda") else 8
    if args.precision is None:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.compile is None:
        args.compile = args.device.startswith("cuda") or args.compile_mode is not None
    if args.compile_mode and not args.compile:
        p.error("--compile-mode is for the compiled rows: drop --no-compile")
    return args


def probe_images(glow, n: int, device: torch.device) -> torch.Tensor:
    """(n, 3, 32, 32) images the flow itself generates (temperature 0.7): the agreement checks compare two paths on
    data the flow models; on uniform noise images a trained flow inverts neither path, so a check there says nothing."""
    return glow.sample(n, temperature=0.7, generator=torch.Generator(device=device).manual_seed(1))


def write_report(out: Path, args, device: torch.device, notes: dict, glow, rows: list[dict], agreement: float,
                 roundtrip_errors: dict[str, float], compiled_agreement: float | None, start: float,
                 partial: bool) -> dict:
    """Writes ``OUT/throughput.{json,md}`` for the rows measured so far (``partial``: more were to come, so a call
    killed at its time limit keeps a complete report of every finished row). Returns the JSON's content."""
    done = [r for r in rows if "seconds" in r or "error" in r]
    step = next(r["seconds"] for r in done if r["key"] == "train_step")
    for r in done:
        if "error" not in r:
            r["vs_train_step"] = r.get("vs_paired", r["seconds"] / step)
    device_name = describe_device(device)
    result = {"format": FORMAT, "partial": partial,
              "config": {"smoke": args.smoke, "device": str(device), "device_name": device_name, "torch": torch.__version__,
                         "batch_size": args.batch_size, "iters": args.iters, "warmup": args.warmup, "width": args.width,
                         "precision": args.precision, "noise_eps": args.noise_eps,
                         "isda_covariance": args.isda_covariance, "codecs": notes,
                         "glow_fast_path": bool(getattr(glow, "use_fast_path", False)),
                         "max_abs_diff_normflows_vs_codec_roundtrip": agreement, **roundtrip_errors,
                         "compile": args.compile, "compile_mode": args.compile_mode,
                         "max_abs_diff_compiled_vs_eager_codec_roundtrip": compiled_agreement},
              "rows": done, "wall_seconds": time.perf_counter() - start}
    write_json(out / "throughput.json", result)
    table = format_table(result)
    if partial:
        table += f"\n\n**Partial**: {len(rows) - len(done)} of {len(rows)} rows not measured yet."
    write_text(out / "throughput.md", table + "\n")
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    out = output_folder(args.out, "--out")
    device = setup_device(args.device, args.threads)
    codecs, notes = resolve_codecs(args, device)
    if args.compile:  # a misspelt mode ended the run in torch's traceback
        codecs["glow_compiled"] = compiled_copy(codecs["glow"], f"--compile-mode {args.compile_mode}",
                                                mode=args.compile_mode)
    rows = build_rows(args, device, codecs)
    probe = probe_images(codecs["glow"], min(args.batch_size, 16), device)
    naive, fast = normflows_roundtrip(codecs["glow"], probe, 0.0, None), codec_roundtrip(codecs["glow"], probe, 0.0, None)
    agreement = float((naive - fast).abs().max())
    roundtrip_errors = {"max_abs_roundtrip_error_codec": float((fast - probe).abs().max()),
                        "max_abs_roundtrip_error_normflows": float((naive - probe).abs().max())}
    out.mkdir(parents=True, exist_ok=True)
    report = dict(out=out, args=args, device=device, notes=notes, glow=codecs["glow"], rows=rows,
                  agreement=agreement, roundtrip_errors=roundtrip_errors, start=start)
    for r in rows:
        fn = r.pop("fn")
        try:
            r.update(measure(fn, device, args.warmup, args.iters, r.pop("paired", None)))
        except Exception as e:  # noqa: BLE001 - a failing row (a compiler error, out of memory) must not cost the others
            if r["key"] == "train_step":  # every ratio's denominator
                raise
            r["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            print(f"  {r['method']}: failed ({r['error']}) [{time.perf_counter() - start:.0f} s]", file=sys.stderr)
        else:
            r["images_per_second"] = args.batch_size / r["seconds"]
            print(f"  {r['method']}: {1000 * r['seconds']:.2f} ms / batch [{time.perf_counter() - start:.0f} s]",
                  file=sys.stderr)
        write_report(**report, compiled_agreement=None, partial=True)
    compiled_agreement = None
    measured = {r["key"] for r in rows if "seconds" in r}
    # the compiled and eager Glow round trips compared if both of their rows ran (the compiled codec has its graphs
    # for this batch size), whatever other rows failed
    if {"glow_codec", "glow_codec_compiled"} <= measured:
        x = probe_images(codecs["glow"], args.batch_size, device)
        compiled_agreement = float((codec_roundtrip(codecs["glow_compiled"], x, 0.0, None)
                                    - codec_roundtrip(codecs["glow"], x, 0.0, None)).abs().max())
    result = write_report(**report, compiled_agreement=compiled_agreement, partial=False)
    print((out / "throughput.md").read_text(encoding="utf-8").rstrip())
    print(f"\nWrote {out / 'throughput.json'} and {out / 'throughput.md'} in {time.perf_counter() - start:.0f} s.")
    return result


if __name__ == "__main__":
    run_script(main)

"""The figures docs/quickstart.md quotes (also lightning.md and reliability.md), measured in one run on the CPU:
one ``LatentNoise`` call on a batch against one call per image, the size a latent transform adds to a state_dict
and to an exported module, a ``LatentCache``'s size, ``ISDA``'s statistics merged over micro-batches, what
``LatentNoise`` does to the pixels per eps and when the latent transforms warn of destroyed outputs, and
``LatentMixupInference``'s accuracy on one process and on two ranks' shards, and what a SIGTERM during
``torch.save`` leaves of a checkpoint saved in place or to another name and renamed. Prints a Markdown table.

    python benchmarks/quickstart_figures.py   # CIFAR-10 through torchvision's download
    python benchmarks/quickstart_figures.py --data npz:../shared/data/cifar10/test.npz \
        --train npz:../shared/data/cifar10/train-5k.npz   # the same images from the shared copy
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tempfile
import warnings

import torch
from torch import nn

from latent_transforms import LatentAdversarial, LatentCache, LatentMixupInference, LatentNoise, hub
from latent_transforms.base import saturated
from latent_transforms.data import DEFAULT_DATA_ROOT, check_data_root_used, load_images
from latent_transforms.evaluation import accuracy, fit_classifier, predict_proba
from latent_transforms.feature_covariance import FeatureCovariance
from latent_transforms.models import CifarResNet18, digits_cnn
from latent_transforms.validation import POSITIVE_INT, THREADS

from models import argument_parser, median_seconds, run_script, tiny_codecs

IMAGES = 64  # the batch of every row
WARNING_CALLS = 4  # calls on batches of IMAGES training images for the rows that look for a warning
# LatentMixupInference on several processes: a digits_cnn trained on TRAINED images for 10 epochs, REFERENCES clean
# training images, TESTED test digits with the quickstart's corruption (+ 0.1 N(0, 1), clipped), seeds 0, 1, 2
TRAINED, REFERENCES, TESTED, SEEDS, RANKS = 500, 300, 400, (0, 1, 2), 2
CIFAR10_TRAIN = 50_000  # the images a full CIFAR-10 cache holds
CHECKPOINT_MB = 256  # the checkpoint a SIGTERM interrupts halfway through its save (--smoke: 64)
# a process that saves a checkpoint of MB megabytes to PATH in place (MODE "in place") or to PATH.part and then
# os.replace-s it onto PATH (the quickstart's way); prints "saving" as it starts and "half" once half of it is on disk,
# where it waits to be signalled (it took the signal at a point of the parent's polling: a save of 64 MB that ended
# before a busy machine's parent looked again had no half-written file to show)
SAVER = """
import os, sys, time, torch
path, mb, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
state = {"weights": torch.zeros(mb * 10**6 // 4)}


class HalfThenWait:
    def __init__(self, file):
        self.file, self.told = file, False

    def write(self, data):
        first = len(data) if self.told else max(0, mb * 10**6 // 2 - self.file.tell())
        if first >= len(data):
            return self.file.write(data)
        self.file.write(memoryview(data)[:first])
        self.file.flush()
        self.told = True
        print("half", flush=True)
        time.sleep(600)
        return first + self.file.write(memoryview(data)[first:])

    def flush(self):
        self.file.flush()


print("saving", flush=True)
with open(path if mode == "in place" else path + ".part", "wb") as file:
    torch.save(state, HalfThenWait(file))
if mode != "in place":
    os.replace(path + ".part", path)
"""

def megabytes(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def export_megabytes(module: nn.Module, x: torch.Tensor) -> float:
    """The size of ``torch.export.save`` of ``module`` exported on ``x`` (saved with it: a view would save the
    whole storage it views)."""
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(module.eval(), (x.clone(),)), buffer)
    return buffer.getbuffer().nbytes / 1e6


def destroyed_warning(t: nn.Module, x: torch.Tensor, model: nn.Module | None = None) -> str:
    """What ``t``'s warning of destroyed outputs says ("N of M") over calls on ``x``'s batches of ``IMAGES``, or that
    it did not warn."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(0, len(x), IMAGES):
            t(x[i:i + IMAGES], None, model)
    found = [re.search(r"(\d+ of \d+) transformed samples came out destroyed", str(w.message)) for w in caught]
    return next((f"warned: {m.group(1)} destroyed" for m in found if m), "no warning")


def mixup_inference_rows(vae, x: torch.Tensor, y: torch.Tensor, test: tuple[torch.Tensor, torch.Tensor], *,
                         epochs: int) -> list[tuple[str, str]]:
    """``LatentMixupInference``'s accuracy on the corrupted test images per seed, in one process and split over
    ``RANKS`` ranks (rank r predicts ``x[r::RANKS]``, a ``DistributedSampler``'s shard without shuffling, with its own
    instance seeded ``seed`` or ``seed + r``: what each process computes, no collective call being made)."""
    model = digits_cnn()
    fit_classifier(model, x[:TRAINED], y[:TRAINED], epochs=epochs, progress=False)
    model.eval()
    references = x[TRAINED:TRAINED + REFERENCES] if len(x) >= TRAINED + REFERENCES else x[:REFERENCES]
    xt, yt = test
    noisy = (xt + 0.1 * torch.randn(xt.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)

    def robust(seed: int) -> LatentMixupInference:
        return LatentMixupInference(model, vae, references=references, generator=seed)

    def split(seed_of_rank) -> float:  # the ranks' predictions pooled
        probs = torch.cat([robust(seed_of_rank(r))(noisy[r::RANKS]) for r in range(RANKS)])
        return accuracy(probs, torch.cat([yt[r::RANKS] for r in range(RANKS)]))

    rows = [(f"a digits_cnn ({epochs} epoch{'s' if epochs != 1 else ''} on {TRAINED} digits) on {len(xt)} corrupted test digits",
             f"{100 * accuracy(predict_proba(model, noisy), yt):.1f}%")]
    one, same, own = [], [], []
    for seed in SEEDS:
        one.append(accuracy(robust(seed)(noisy), yt))
        same.append(split(lambda r: seed))
        own.append(split(lambda r: seed + r))
    for name, values in (("one process", one), (f"{RANKS} ranks, the same seed", same),
                         (f"{RANKS} ranks, seed + rank", own)):
        rows.append((f"LatentMixupInference (vae, {len(references)} references) on them, seeds "
                     f"{', '.join(map(str, SEEDS))}: {name}", " / ".join(f"{100 * v:.1f}%" for v in values)))
    return rows


def interrupted_save_rows(mb: int) -> list[tuple[str, str]]:
    """A process saving a checkpoint of ``mb`` megabytes over the last one is sent SIGTERM (``terminate()``) once half
    of it is written: what is left at the checkpoint's path, saved in place and saved to another name then
    ``os.replace``-d onto it."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "checkpoint.pt")
        for mode in ("in place", "to checkpoint.pt.part, then os.replace"):
            torch.save({"weights": torch.ones(4)}, path)  # the last checkpoint
            with subprocess.Popen([sys.executable, "-c", SAVER, path, str(mb), mode], stdout=subprocess.PIPE,
                                  text=True) as proc:  # its pipe closed on leaving
                if proc.stdout.readline().strip() != "saving":
                    raise RuntimeError(f"the saving process ended before its save (exit status {proc.wait()})")
                proc.stdout.readline()  # "half": it waits there; "" if it ended first
                proc.terminate()
                finished = proc.wait() == 0
            try:
                loaded = torch.load(path, weights_only=True)["weights"].numel() * 4 / 1e6
                left = f"torch.load reads the {'new' if loaded > 1e-3 else 'last'} checkpoint"
            except Exception as e:  # a truncated zip: EOFError, RuntimeError, ... whatever torch.load raises
                left = f"torch.load refuses it ({type(e).__name__})"
            rows.append((f"a {mb} MB checkpoint saved {mode}, SIGTERM once half of it is written: the checkpoint",
                         f"{os.path.getsize(path):,} bytes, {left}"
                         + (" (the save ended before the signal)" if finished else "")))
    return rows


class Holder(nn.Module):
    """A LightningModule's shape: the classifier and a transform as submodules; ``forward`` runs the classifier."""

    def __init__(self, net: nn.Module, augment: nn.Module):
        super().__init__()
        self.net, self.augment = net, augment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--data", default="cifar10", help="images (data spec; its test split): their first 64 are used")
    ap.add_argument("--train", default="cifar10-5k",
                    help="training images for the warning rows (data spec): their first 256 are used")
    ap.add_argument("--data-root", help=f"download folder for cifar10 and cifar10-5k, only with them (default: "
                                        f"{DEFAULT_DATA_ROOT})")
    ap.add_argument("--glow", default="glow-cifar10", help="the flow (hub name or .safetensors path)")
    ap.add_argument("--vae", default="vae-cifar10", help="the VAE (hub name or .safetensors path)")
    ap.add_argument("--digits-glow", default="glow-digits", help="the flow of the digits warning rows")
    ap.add_argument("--digits-vae", default="vae-digits", help="the VAE of the LatentMixupInference rows")
    ap.add_argument("--repeats", type=POSITIVE_INT, default=5, help="timed calls per timing row (median)")
    ap.add_argument("--threads", type=THREADS, default=1, help="CPU threads for torch")
    ap.add_argument("--smoke", action="store_true", help="tiny random-init codecs and random images (no data or codec "
                    "option): checks the script")
    args = ap.parse_args()
    replaced = [f"--{dest.replace('_', '-')}" for dest in ("data", "train", "data_root", "glow", "vae", "digits_glow",
                                                           "digits_vae") if getattr(args, dest) != ap.get_default(dest)]
    if args.smoke and replaced:  # they were left unread without a word
        ap.error(f"--smoke runs on tiny random-init codecs and random images: drop {', '.join(replaced)}")
    try:  # as `latent-transforms train`
        check_data_root_used(args.data_root, {"--data": args.data, "--train": args.train})
    except ValueError as e:
        ap.error(str(e))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_train = WARNING_CALLS * IMAGES
    if args.smoke:
        (glow, vae), (digits_glow, digits_vae) = tiny_codecs(), tiny_codecs(shape=(1, 8, 8))
        g = torch.Generator().manual_seed(0)
        x, x_train, digits, test_digits = (torch.rand(n, *shape, generator=g) for n, shape in (
            (IMAGES, (3, 32, 32)), (n_train, (3, 32, 32)), (TRAINED, (1, 8, 8)), (TESTED, (1, 8, 8))))
        digits_y, test_y = torch.arange(TRAINED) % 10, torch.arange(TESTED) % 10
    else:
        glow, vae = hub.load(args.glow), hub.load(args.vae)
        digits_glow, digits_vae = hub.load(args.digits_glow), hub.load(args.digits_vae)
        x = load_images(args.data, "test", args.data_root)[0][:IMAGES]
        x_train = load_images(args.train, "train", args.data_root)[0][:n_train]
        digits, digits_y, _ = load_images("digits", "train")
        test_digits, test_y, _ = load_images("digits", "test")
    digits_test = (test_digits[:TESTED], test_y[:TESTED])
    y = torch.zeros(len(x), dtype=torch.long)  # LatentNoise reads no labels
    rows = []

    def row(figure: str, value: str) -> None:
        rows.append((figure, value))
        print(f"{figure}: {value}", flush=True)

    noise = LatentNoise(glow, generator=0)
    batch = median_seconds(lambda: noise(x, y), x.device, args.repeats)
    one_by_one = median_seconds(lambda: [noise(x[i:i + 1], y[i:i + 1]) for i in range(len(x))], x.device,
                                args.repeats)
    row(f"LatentNoise, one call on {len(x)} images", f"{batch:.2f} s")
    row(f"LatentNoise, {len(x)} calls on one image each", f"{one_by_one:.2f} s")
    row(f"LatentNoise, {len(x)} calls on one image each against one call on {len(x)} images",
        f"{one_by_one / batch:.1f}x")

    for name, codec in (("glow", glow), ("vae", vae)):
        row(f"a LatentNoise's state_dict (the {name} codec's weights)",
            f"{megabytes(LatentNoise(codec).state_dict().values()):.2f} MB")
    cache = LatentCache(glow, x, progress=False)
    per_image = cache.latents[0].numel()
    row("a LatentCache of the glow: floats per image, and a cache of 50,000 images",
        f"{per_image:,}, {megabytes([cache.latents]) * CIFAR10_TRAIN / len(x):.0f} MB")

    net = CifarResNet18(width=4).eval()
    row("torch.export of a width-4 CIFAR ResNet-18 alone", f"{export_megabytes(net, x[:2]):.2f} MB")
    row("torch.export of a module holding it and a LatentNoise of the vae (forward: the classifier)",
        f"{export_megabytes(Holder(net, LatentNoise(vae)), x[:2]):.2f} MB")

    captured = []  # the features: what the classifier's fc takes, ISDA's statistics' input
    hook = net.fc.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    with torch.no_grad():
        net(x)
    hook.remove()
    features, labels = captured[0], torch.arange(len(x)) % 10
    whole, pieces = FeatureCovariance(10), FeatureCovariance(10)
    whole.update(features, labels)
    for i in range(0, len(x), 8):
        pieces.update(features[i:i + 8], labels[i:i + 8])
    gap = max(float((a - b).abs().max()) for a, b in zip((whole.mean, whole.cov), (pieces.mean, pieces.cov)))
    row(f"ISDA's statistics of {len(x)} features merged from 8 micro-batches of 8, largest difference", f"{gap:.1e}")

    for eps in (10, 20, 30, 50, 100):
        t = LatentNoise(glow, eps=eps, generator=0)
        x2, _ = t(x, y)
        row(f"LatentNoise(glow, eps={eps}): mean pixel change, rejected, destroyed",
            f"{float((x2 - x).abs().mean()):.3f}, {t.stats['rejected']}, {int(saturated(x2, x).sum())} of {len(x)}")
    x2, _ = LatentNoise(vae, eps=100, generator=0)(x, y)
    row("LatentNoise(vae, eps=100): mean pixel change", f"{float((x2 - x).abs().mean()):.2f}")
    noise_images = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    x2, _ = LatentNoise(glow, generator=0)(noise_images, y)
    row("LatentNoise(glow) on torch.rand images: destroyed", f"{int(saturated(x2, noise_images).sum())} of {len(x)}")

    net.train()  # an untrained classifier, as a training loop has it at its start: LatentAdversarial attacks it
    warning_rows = [(f"LatentNoise(glow, eps={eps})", LatentNoise(glow, eps=eps, generator=0), x_train, None)
                    for eps in (40, 50)]
    warning_rows += [(f"LatentAdversarial(glow, eps={eps}) attacking the untrained ResNet",
                      LatentAdversarial(glow, eps=eps, generator=0), x_train, net) for eps in (1, 20, 50)]
    warning_rows += [(f"LatentNoise(digits glow, eps={eps}) on digits", LatentNoise(digits_glow, eps=eps, generator=0),
                      digits[:n_train], None) for eps in (10, 20)]
    for name, t, images, model in warning_rows:
        row(f"{name}, {WARNING_CALLS} calls on {IMAGES} training images", destroyed_warning(t, images, model))

    for figure, value in mixup_inference_rows(digits_vae, digits, digits_y, digits_test, epochs=1 if args.smoke else 10):
        row(figure, value)
    for figure, value in interrupted_save_rows(64 if args.smoke else CHECKPOINT_MB):
        row(figure, value)

    print(f"\n{'smoke: tiny random-init codecs, random images' if args.smoke else f'{args.data}, {args.train}'}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}\n")
    print("| figure | measured |\n|---|---|")
    for figure, value in rows:
        print(f"| {figure} | {value} |")


if __name__ == "__main__":
    run_script(main)

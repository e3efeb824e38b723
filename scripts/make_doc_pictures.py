"""Write the pictures of the documentation into docs/images/ with the registered (shipped) checkpoints.

    python scripts/make_doc_pictures.py                                          # digits, and CIFAR-10 if registered
    python scripts/make_doc_pictures.py --cifar-data npz:../shared/data/cifar10/test.npz

Pictures, one per method and data set, each a labelled grid of rows (``latent_transforms.visualize.save_rows``):

* ``demo.png``: what every method makes of the same digits (the picture of ``latent-transforms demo``);
* ``latent_noise_<data>.png``, ``latent_adversarial_<data>.png``, ``varmixup_<data>.png``,
  ``mixup_inference_<data>.png``, for ``<data>`` = ``digits`` (``glow-digits``, ``vae-digits``) and ``cifar10``
  (``glow-cifar10``, ``vae-cifar10``).

A checkpoint that is not registered is skipped with a message (the flow pictures need the glow, the VarMixup and
mixup-inference pictures the VAE, ``demo.png`` both). Everything is seeded: the same
checkpoints give the same pictures.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from latent_transforms import LatentAdversarial, LatentNoise, VarMixup, hub
from latent_transforms.data import load_images
from latent_transforms.demo import ADV_EPS, ADV_STEP_SIZE, ADV_STEPS, NOISE_EPS, overview_picture
from latent_transforms.evaluation import fit_classifier
from latent_transforms.models import digits_cnn
from latent_transforms.visualize import save_rows

ROOT = Path(__file__).resolve().parents[1]
N = 10  # images per row


def small_cnn(channels: int, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def weak_classifier(x: torch.Tensor, y: torch.Tensor, digits: bool) -> nn.Module:
    """A classifier to attack, trained briefly on (x, y): enough for the attack to have a direction."""
    torch.manual_seed(0)
    model = digits_cnn() if digits else small_cnn(x.shape[1])
    fit_classifier(model, x, y, epochs=5 if digits else 3, batch_size=64, progress=False)
    return model.eval()


def decode_mix(codec, a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """decode(lam * encode(a) + (1 - lam) * encode(b)), lam per sample."""
    with torch.no_grad():
        za, zb = codec.encode_flat(a), codec.encode_flat(b)
        w = lam.view(-1, 1)
        return codec.decode_flat(w * za + (1 - w) * zb).clamp(0, 1)


def amplified_difference(x2: torch.Tensor, x: torch.Tensor, gain: float = 4.0) -> torch.Tensor:
    """0.5 + gain * (x2 - x), mid-grey where nothing changed."""
    return (0.5 + gain * (x2 - x)).clamp(0, 1)


def pictures(tag: str, glow, vae, x: torch.Tensor, y: torch.Tensor, x_fit: torch.Tensor, y_fit: torch.Tensor,
             noise_eps: list[float], adv: dict, out: Path) -> list[Path]:
    """The pictures of one data set: the flow's (``glow`` may be None) and the VAE's (``vae`` may be None)."""
    digits = tag == "digits"
    written = []
    model = weak_classifier(x_fit, y_fit, digits) if glow is not None else None

    if glow is not None:
        # LatentNoise: growing eps; eps 0 shows the exact round trip of the flow
        rows = {"original": x}
        for eps in noise_eps:
            rows[f"LatentNoise eps={eps:g}"] = LatentNoise(glow, eps=eps, generator=0)(x, y)[0]
        written.append(save_rows(rows, out / f"latent_noise_{tag}.png"))

        # LatentAdversarial: the attacked images and what changed (amplified)
        t = LatentAdversarial(glow, generator=0, **adv)
        x_adv = t(x, y, model)[0]
        with torch.no_grad():
            before, after = model(x).argmax(1), model(x_adv).argmax(1)
        label = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in adv.items())
        rows = {"original": x, "LatentAdversarial": x_adv, "difference x4": amplified_difference(x_adv, x)}
        written.append(save_rows(rows, out / f"latent_adversarial_{tag}.png"))
        print(f"{tag}: LatentAdversarial({label}) flipped the weak classifier's prediction on "
              f"{int((before != after).sum())}/{len(x)} images")

    if vae is not None:
        # VarMixup: the two inputs, the latent mix, and the pixel mix with the same weights
        t = VarMixup(vae, num_classes=10, keep_detail=False, p=1.0, generator=0)  # every image mixed
        x_mix, _ = t(x, y)
        partner, lam = t.last_params["partner"], t.last_params["lam"]
        pixel = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[partner]
        recon = vae.reconstruct(x)
        detail = VarMixup(vae, num_classes=10, p=1.0, generator=0)(x, y)[0]  # keep_detail=True; same partners and weights
        rows = {"x": x, "partner": x[partner], "decode only": x_mix, "keep_detail (default)": detail,
                "pixel mixup": pixel,
                "VAE reconstruction": recon}
        written.append(save_rows(rows, out / f"varmixup_{tag}.png"))

        # Latent mixup inference: an input, its references, and the decoded latent mixes the classifier sees
        refs = x_fit[torch.randperm(len(x_fit), generator=torch.Generator().manual_seed(0))[:len(x)]]
        lam_mi = torch.full((len(x),), 0.6)
        rows = {"input": x, "reference": refs, "latent mix 0.6": decode_mix(vae, x, refs, lam_mi),
                "pixel mix 0.6": 0.6 * x + 0.4 * refs}
        written.append(save_rows(rows, out / f"mixup_inference_{tag}.png"))

    if digits and glow is not None and vae is not None:  # the overview picture of the index page and the demo
        written.append(overview_picture(glow, vae, out / "demo.png"))  # the very picture the demo writes
    return written


def load_registered(name: str, registered: set[str]):
    if name in registered:
        return hub.load(name)
    print(f"{name} is not registered: skipping its pictures")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    default_cifar = ROOT.parent / "shared" / "data" / "cifar10" / "test.npz"
    parser.add_argument("--cifar-data", default=f"npz:{default_cifar}" if default_cifar.is_file() else "cifar10",
                        help="CIFAR-10 test images: cifar10 (torchvision download) or npz:PATH")
    parser.add_argument("--data-root", help="download dir for cifar10")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = Path(args.out)
    registered = {row["name"] for row in hub.list_checkpoints()}
    written: list[Path] = []

    glow, vae = load_registered("glow-digits", registered), load_registered("vae-digits", registered)
    if glow is not None or vae is not None:
        x_train, y_train, _ = load_images("digits", "train")
        x_test, y_test, _ = load_images("digits", "test")
        adv = dict(eps=ADV_EPS, steps=ADV_STEPS, step_size=ADV_STEP_SIZE)
        written += pictures("digits", glow, vae, x_test[:N], y_test[:N], x_train, y_train,
                            noise_eps=[0.0, NOISE_EPS / 2, NOISE_EPS, 2 * NOISE_EPS], adv=adv, out=out)

    glow, vae = load_registered("glow-cifar10", registered), load_registered("vae-cifar10", registered)
    if glow is not None or vae is not None:
        x_test, y_test, _ = load_images(args.cifar_data, "test", args.data_root)
        pick = torch.cat([(y_test == c).nonzero()[0] for c in range(10)])  # one image of each class
        fit = torch.arange(1000, 3000)  # for the weak classifier and the references, apart from the pictured ones
        # LatentNoise: the official CIFAR-10 setting is L2 noise of norm 20 over 3,072 dims (about 0.36 per dim)
        written += pictures("cifar10", glow, vae, x_test[pick], y_test[pick], x_test[fit], y_test[fit],
                            noise_eps=[0.0, 10.0, 20.0, 40.0], adv=dict(eps=1.0, steps=3, step_size=0.5), out=out)

    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""How good is a codec's latent space? Test bits/dim (flows) or MSE/KL (VAEs), and whether decodes keep class
identity: a classifier trained on clean images is scored on clean test images and on reconstructions.
Writes a PNG of originals, reconstructions and latent interpolations.

    python benchmarks/codec_quality.py --codec vae-digits --train digits --test digits
    python benchmarks/codec_quality.py --codec vae-cifar10 --train npz:../shared/data/cifar10/train-5k.npz \
        --test npz:../shared/data/cifar10/test.npz --width 32 --epochs 15
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from latent_transforms import hub
from latent_transforms.codecs import flatten_latents, unflatten_latents
from latent_transforms.data import load_images
from latent_transforms.models import digits_cnn
from latent_transforms.evaluation import accuracy, fit_classifier, predict_proba
from latent_transforms.train import eval_codec
from latent_transforms.visualize import save_rows

from models import CifarResNet18


@torch.no_grad()
def reconstruct(codec, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([codec.decode(codec.encode(x[i:i + batch_size])).clamp(0, 1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def interpolations(codec, a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> dict[str, torch.Tensor]:
    za, zb = flatten_latents(codec.encode(a)), flatten_latents(codec.encode(b))
    rows = {}
    for i in range(len(a)):
        ws = torch.linspace(0, 1, steps).unsqueeze(1)
        z = (1 - ws) * za[i] + ws * zb[i]
        rows[f"interpolation {i + 1}"] = codec.decode(unflatten_latents(z, codec.latent_shapes)).clamp(0, 1)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codec", required=True)
    ap.add_argument("--train", required=True, help="data spec of the classifier's training images")
    ap.add_argument("--test", required=True)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--width", type=int, default=32, help="ResNet-18 width for RGB data")
    ap.add_argument("--limit-test", type=int, default=2000, help="test images used (CPU budget)")
    ap.add_argument("--out", default="runs/codec-quality")
    args = ap.parse_args()
    torch.manual_seed(0)
    codec = hub.load(args.codec)
    x_train, y_train, _ = load_images(args.train, "train")
    x_test, y_test, _ = load_images(args.test, "test")
    x_test, y_test = x_test[: args.limit_test], y_test[: args.limit_test]
    quality = {k: round(v, 4) for k, v in eval_codec(codec, x_test).items()}
    model = digits_cnn() if x_train.shape[1:] == (1, 8, 8) else CifarResNet18(width=args.width)
    fit_classifier(model, x_train, y_train, epochs=args.epochs, batch_size=64, lr=0.05, desc="clean classifier")
    clean = accuracy(predict_proba(model, x_test), y_test)
    recon = reconstruct(codec, x_test)
    on_recon = accuracy(predict_proba(model, recon), y_test)
    quality.update(classifier_clean_accuracy=round(clean, 4), classifier_on_reconstructions=round(on_recon, 4))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.codec).stem
    rows = {"original": x_test[:10], "reconstruction": recon[:10], **interpolations(codec, x_test[10:13], x_test[13:16])}
    save_rows(rows, out / f"{name}-quality.png")
    (out / f"{name}-quality.json").write_text(json.dumps(quality, indent=2))
    print(json.dumps({"codec": args.codec, "test_images": len(x_test), **quality}, indent=2))
    print(f"picture: {out / f'{name}-quality.png'}")


if __name__ == "__main__":
    main()

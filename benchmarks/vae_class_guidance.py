"""Fine-tune a VAE so that its reconstructions keep the class a frozen guide classifier sees (issue 9's study of
the VAE's class identity; results in docs/checkpoints.md).

Loss: the VAE's negative ELBO plus w times a guide term, on the reconstruction of a posterior sample:
``logits``, KL(guide(x) || guide(reconstruction)) in nats; or ``features``, the squared error of the guide's stage
outputs relative to their size on x (CIFAR ResNet-18 guides only). The guide is trained on the VAE's own training
images (``--guide-width``, ``--guide-epochs``; weights and batch order from seed 1, plus crops and flips with
``--flips``), so it is not the scorer of ``codec_quality.py`` (seed 0, no crops); ``--guide FILE`` keeps it. w is
set once, on the first batch, so that the term's gradient on the decoder is ``--balance`` times the ELBO's;
``--balance 0`` runs the same fine-tune without the term (the control). Adam with a cosine decay to 0, no warm-up.
Writes the fine-tuned checkpoint (float16, like the shipped vae-cifar10) and a JSON of the same stem beside it
(``--out cg/b1.safetensors``: ``cg/b1.json``; settings, w, loss history).
Score it beside the original with ``codec_quality.py``:

    python benchmarks/vae_class_guidance.py --codec vae-cifar10 --train npz:../shared/data/cifar10/train-5k.npz \\
        --flips --guide runs/guide.safetensors --out runs/guided/vae.safetensors
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from latent_transforms import hub
from latent_transforms.data import load_images
from latent_transforms.models import CifarResNet18
from latent_transforms.pixel_shift import random_shift_flip
from latent_transforms.progress import progress_bar
from latent_transforms.train import total_norm
from latent_transforms.validation import POSITIVE_FLOAT, POSITIVE_INT, THREADS, check_number, option, output_folder

from codec_quality import clean_classifier
from models import DIGITS_SHAPE, argument_parser, run_script, write_json

GUIDE_SEED = 1  # codec_quality.py's scorer is seed 0


def stage_outputs(guide: CifarResNet18, x: torch.Tensor) -> list[torch.Tensor]:
    """The stem's output and each of the four stages' (two blocks each), for x: (B, 3, H, W) in [0, 1]."""
    h = guide.stem((x - guide.mean) / guide.std)
    outputs = [h]
    for i, block in enumerate(guide.layers):
        h = block(h)
        if i % 2 == 1:
            outputs.append(h)
    return outputs


def guide_term(guide: torch.nn.Module, term: str, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """The guide's disagreement between x and recon, both (B, C, H, W) in [0, 1]: a scalar with a graph to recon."""
    if term == "features":
        with torch.no_grad():
            target = stage_outputs(guide, x)
        return sum(((r - t) ** 2).mean() / (t**2).mean() for r, t in zip(stage_outputs(guide, recon), target))
    with torch.no_grad():
        target = F.log_softmax(guide(x), 1)
    return F.kl_div(F.log_softmax(guide(recon), 1), target, log_target=True, reduction="batchmean")


def gradient_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of loss's gradient on params (the graph is kept for the step's backward)."""
    return total_norm(torch.autograd.grad(loss, params, retain_graph=True))


def main() -> None:
    ap = argument_parser(__doc__)
    ap.add_argument("--codec", required=True, help="the VAE to fine-tune: a hub name or a .safetensors path")
    ap.add_argument("--train", required=True, help="data spec of the training images (the guide's too)")
    ap.add_argument("--out", required=True,
                    help="the fine-tuned checkpoint (.safetensors); a .json of the same stem beside it")
    ap.add_argument("--term", choices=["logits", "features"], default="logits",
                    help="the guide's disagreement between input and reconstruction: the KL of its predictions, or "
                         "the relative squared error of its stage outputs (RGB images only)")
    ap.add_argument("--balance", type=option(check_number, float), default=1.0,
                    help="the guide term's gradient on the decoder, as a multiple of the ELBO's (0: no term)")
    ap.add_argument("--steps", type=POSITIVE_INT, default=2000, help="fine-tuning steps")
    ap.add_argument("--lr", type=POSITIVE_FLOAT, default=5e-4, help="Adam's peak learning rate (cosine decay to 0)")
    ap.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="training images per step")
    ap.add_argument("--flips", action="store_true", help="random horizontal flips (and the guide's crops)")
    ap.add_argument("--guide", metavar="FILE", help="the guide's .safetensors: loaded if it exists (trained with the "
                    "same --train, --guide-width, --guide-epochs and --flips), else trained and written there")
    ap.add_argument("--guide-width", type=POSITIVE_INT, default=16, help="ResNet-18 width for RGB data")
    ap.add_argument("--guide-epochs", type=POSITIVE_INT, default=10, help="the guide's training epochs")
    ap.add_argument("--threads", type=THREADS, help="CPU threads (default: torch's)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (the guide's and the fine-tune's)")
    args = ap.parse_args()
    out = output_folder(Path(args.out).parent, "--out's folder") / Path(args.out).name
    if out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the checkpoint's file name, e.g. {args.out}/vae.safetensors")
    if out.suffix != ".safetensors":  # hub.save_checkpoint's rule, checked now, not after the fine-tune
        raise ValueError(f"--out {args.out}: the checkpoint's file name must end in .safetensors")
    if args.threads:
        torch.set_num_threads(args.threads)
    vae = hub.load(args.codec).float()
    if vae.kind != "vae":
        raise SystemExit(f"--codec {args.codec} is a {vae.kind}; this study fine-tunes VAEs")
    if args.balance and args.term == "features" and vae.image_shape == DIGITS_SHAPE:  # now, not after the guide trains
        raise SystemExit("--term features needs the CIFAR ResNet-18 guide (RGB images); use --term logits")
    x, y, _ = load_images(args.train, "train")
    if x.shape[1:] != vae.image_shape:
        raise SystemExit(f"--train images are {tuple(x.shape[1:])}; {args.codec} codes {vae.image_shape}")

    guide = None
    if args.balance:
        torch.manual_seed(GUIDE_SEED)
        spec = argparse.Namespace(train=args.train, width=args.guide_width, epochs=args.guide_epochs,
                                  classifier=args.guide)
        guide = clean_classifier(spec, x, y, seed=GUIDE_SEED, crop_flip=args.flips, flag="--guide",
                                 progress=not args.no_progress)
        guide.eval().requires_grad_(False)

    torch.manual_seed(0)  # the posterior samples
    vae.train().requires_grad_(True)
    optimizer = torch.optim.Adam(vae.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(0)  # batches and flips
    weight, history, start = 0.0, [], time.perf_counter()
    bar = progress_bar(range(args.steps), desc="guided fine-tune" if guide else "fine-tune", disable=args.no_progress)
    for step in bar:
        xb = x[torch.randint(0, len(x), (args.batch_size,), generator=g)]
        if args.flips:
            xb = random_shift_flip(xb, 0, True, generator=g)
        terms = vae.elbo_terms(xb)
        elbo = terms["rec"].mean() + vae.beta * terms["kl"].mean()
        recon = torch.sigmoid(terms["logits"])
        loss, guided = elbo, torch.zeros(())
        if guide is not None:
            guided = guide_term(guide, args.term, xb, recon)
            if step == 0:
                decoder = list(vae.decoder.parameters())
                weight = float(args.balance * gradient_norm(elbo, decoder) / gradient_norm(guided, decoder))
                print(f"guide term weight {weight:.4g}", flush=True)
            loss = elbo + weight * guided
        lr = args.lr * 0.5 * (1 + torch.cos(torch.tensor(step / args.steps * math.pi)).item())
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            mse = float(F.mse_loss(recon.detach(), xb))
            history.append({"step": step, "elbo": elbo.detach().item(), "guide_term": guided.detach().item(), "mse": mse,
                            "elapsed_s": round(time.perf_counter() - start, 1)})
            last = history[-1]
            bar.set_postfix(elbo=f"{last['elbo']:.1f}", guide=f"{last['guide_term']:.3f}", mse=f"{mse:.4f}",
                            refresh=False)
    vae.eval().requires_grad_(False)
    out.parent.mkdir(parents=True, exist_ok=True)
    sha = hub.save_checkpoint(vae, out, dtype=torch.float16)
    minutes = (time.perf_counter() - start) / 60
    write_json(out.with_suffix(".json"), {"settings": vars(args), "guide_seed": GUIDE_SEED, "weight": weight,
                                          "sha256": sha, "minutes": round(minutes, 2), "history": history})
    steps = f"{args.steps} step{'s' if args.steps != 1 else ''}"
    print(f"wrote {out} (sha256 {sha[:12]}) and {out.with_suffix('.json')}: {steps} in {minutes:.1f} min; "
          f"score it with codec_quality.py --codec {args.codec} {out}", file=sys.stderr)


if __name__ == "__main__":
    run_script(main)

"""Every method under torch.distributed: two gloo processes on the CPU, one spawn for all checks.

1. Randomness is per rank by default (``generator=None``) and shared across ranks with an int seed.
2. A DDP training step with each method (and a Compose) leaves identical, finite parameters on both ranks.
3. ISDA's class statistics are the same on both ranks after the step.
4. A DDP run stopped and resumed as docs/reliability.md says (every rank's random states gathered into rank 0's
   checkpoint) ends with the weights of the uninterrupted run.
5. Gradient accumulation with ``no_sync()``: the transforms leave the accumulated gradients as they are.
6. Evaluation as docs/reliability.md says (a DistributedSampler's padding left out, the bin sums all-reduced) scores
   a test set on two ranks as one process does.
7. Transforms inside the DDP-wrapped module (a LightningModule's shape) keep their buffers out of its broadcast.
8. LatentMixupInference draws per rank by default, alike with an int seed.
9. Uneven numbers of batches under DDP's join() with ISDA(sync_stats=False); a bad batch refused on its own rank.

Each rank writes what it saw to ``tmp_path/rank{r}.pt``; the parent process compares.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os

import kornia.augmentation
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from latent_transforms import (ISDA, Compose, Glow, LatentAdversarial, LatentCache, LatentMixupInference,
                               LatentNoise, VarMixup)
from latent_transforms.isda import ISDALoss

from conftest import gloo_group, needs_source_tree, spawn_two_ranks
from doc_pages import DOCS, SNIPPET

B = 8
METHODS = ("LatentNoise", "LatentAdversarial", "VarMixup", "ISDA", "Compose")
JOINED_SIZES = ((B, B, B), (B, 1))  # per rank: its batches' sizes under join()


def _same_x() -> torch.Tensor:
    return torch.rand(B, 1, 8, 8, generator=torch.Generator().manual_seed(42))


def _rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    return torch.rand(B, 1, 8, 8, generator=g), torch.randint(0, 10, (B,), generator=g)


def _flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    with gloo_group(rank, init_method, out_dir) as out:
        from conftest import TinyNet, tiny_glow, tiny_vae

        glow, vae = tiny_glow(), tiny_vae()  # identical on both ranks (seeded inside)
        x = _same_x()
        y = torch.zeros(B, dtype=torch.int64)

        # 1. per-rank randomness by default, shared with an explicit seed. These ranks are multiprocessing's
        # children 1 and 2, which alone told their streams apart: here, as under torchrun, the rank must
        multiprocessing.current_process()._identity = ()
        for tag, gen in (("default", None), ("seeded", 123)):
            torch.manual_seed(0)  # as users do, identically on every rank
            noise = LatentNoise(glow, eps=1.0, generator=gen)
            out[f"noise_{tag}"] = noise(x, y)[0]
            out[f"noise_{tag}_transformed"] = torch.tensor(noise.stats["transformed"])
            torch.manual_seed(0)
            mix = VarMixup(vae, num_classes=10, p=1.0, generator=gen)  # every sample: lam and partner for all
            out[f"mix_{tag}_y"] = mix(x, y)[1]
            out[f"mix_{tag}_lam"] = mix.last_params["lam"].clone()
            out[f"mix_{tag}_partner"] = mix.last_params["partner"].clone()
        torch.manual_seed(0)  # the same global seed on the same rank reproduces the default stream
        out["noise_default_again"] = LatentNoise(glow, eps=1.0)(x, y)[0]

        # 2. one DDP step with every method; rank r trains on its own batch
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(TinyNet())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        isda = ISDA(num_classes=10)
        isda.set_epoch(1, 2)
        compose_isda = ISDA(num_classes=10, lambda0=1.0)
        compose_isda.set_progress(1.0)
        transforms = {
            "LatentNoise": LatentNoise(glow, eps=1.0),
            "LatentAdversarial": LatentAdversarial(glow, eps=1.0, steps=1, step_size=0.5),
            "VarMixup": VarMixup(vae, num_classes=10),
            "ISDA": isda,
            "Compose": Compose([LatentNoise(glow, eps=1.0), compose_isda]),
        }
        xb, yb = _rank_batch(rank)
        model.train()
        for name in METHODS:
            t = transforms[name]
            opt.zero_grad(set_to_none=True)
            x2, y2 = t(xb, yb, model)
            loss = F.cross_entropy(model(x2), y2)
            loss.backward()
            out[f"grad_{name}"] = torch.cat([p.grad.flatten() for p in model.parameters()]).clone()
            opt.step()
            out[f"loss_{name}"] = loss.detach().clone()
            out[f"params_{name}"] = _flat_params(model)
            out[f"x2_{name}"] = x2.detach().clone()

        # 3. ISDA statistics (gathered over both ranks' batches)
        for tag, est in (("isda", isda.estimator), ("compose_isda", compose_isda.estimator)):
            for n, buf in est.named_buffers():
                out[f"{tag}_{n}"] = buf.clone()

        # 5. two micro-batches per optimizer step, the first under no_sync (docs/reliability.md)
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(TinyNet())
        accumulated_isda = ISDA(num_classes=10)
        accumulated_isda.set_epoch(1, 2)
        accumulate = Compose([LatentAdversarial(glow, eps=1.0, steps=1, step_size=0.5, p=1.0), accumulated_isda])
        for i, (xm, ym) in enumerate(zip(xb.chunk(2), yb.chunk(2))):
            with model.no_sync() if i == 0 else contextlib.nullcontext():
                before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
                x2, y2 = accumulate(xm, ym, model)
                after = [p.grad for p in model.parameters() if p.grad is not None]
                out[f"accumulated_untouched_{i}"] = torch.tensor(len(before) == len(after) and all(
                    torch.equal(a, b) for a, b in zip(before, after)))
                F.cross_entropy(model(x2), y2).backward()
        out["accumulated_grad"] = torch.cat([p.grad.flatten() for p in model.parameters()]).clone()
        out["accumulated_isda_count"] = accumulated_isda.estimator.count.sum()
        out["outside_ignored"] = sorted(model.parameters_to_ignore)  # the Compose is not DDP's: nothing to leave out

        # 7. the transforms inside the DDP-wrapped module: a LightningModule holds them, its training_step runs inside
        # DDP's forward; per-rank statistics (sync_stats=False) stay each rank's own
        from conftest import ClassifierWithItsAugmentation

        torch.manual_seed(0)
        held_isda, in_forward_loss = ISDA(10, lambda0=1.0, sync_stats=False), ISDALoss(10, sync_stats=False)
        held_isda.set_progress(1.0)
        # a pixel step's buffer too (a kornia blur's tensor sigma): the Compose leaves its steps' out, not only the
        # latent steps', which get the model (mutation audit 362)
        blur = kornia.augmentation.RandomGaussianBlur((3, 3), torch.tensor([0.1, 2.0]), p=1.0)
        held = torch.nn.parallel.DistributedDataParallel(
            ClassifierWithItsAugmentation(TinyNet(), Compose([blur, LatentNoise(glow, eps=1.0), held_isda])))
        in_forward = torch.nn.parallel.DistributedDataParallel(_LossInForward(TinyNet(), in_forward_loss))
        for _ in range(2):
            x2, y2 = held.module.augment(xb, yb, held)
            F.cross_entropy(held(x2), y2).backward()
            in_forward(xb, yb).backward()
        out["held_count"] = held_isda.estimator.count.clone()
        out["in_forward_count"] = in_forward_loss.estimator.count.clone()
        out["broadcast"] = sorted(held.named_module_buffers) + sorted(in_forward.named_module_buffers)
        out["ignored"] = sorted(held.parameters_to_ignore) + sorted(in_forward.parameters_to_ignore)
        out["transform_buffers"] = sorted(n for n, _ in held.module.augment.named_buffers(prefix="augment")) + sorted(
            n for n, _ in in_forward.module.loss.named_buffers(prefix="loss"))  # the statistics' too, sized later
        for tag, given in (("isda_given_ddp", lambda ddp: ddp), ("isda_given_its_module", lambda ddp: ddp.module)):
            alone = torch.nn.parallel.DistributedDataParallel(  # found by ISDA's forward, or by its hook in DDP's
                ClassifierWithItsAugmentation(TinyNet(), ISDA(10, sync_stats=False)))
            if tag == "isda_given_ddp":  # per-rank statistics before DDP's first forward (a resumed rank's own)
                alone.module.augment(xb, yb, alone.module.net)
                alone.module.net(xb)
            x2, y2 = alone.module.augment(xb, yb, given(alone))
            F.cross_entropy(alone(x2), y2).backward()
            out[tag] = (sorted(alone.parameters_to_ignore),
                        sorted(n for n, _ in alone.module.augment.named_buffers(prefix="augment")),
                        alone.module.augment.estimator.count.clone())

        # 8. LatentMixupInference given the DDP model (its local module): its references drawn per rank by default,
        # alike with an int seed (docs/reliability.md, Evaluating on several processes)
        evaluated = torch.nn.parallel.DistributedDataParallel(TinyNet()).eval()
        for tag, gen in (("default", None), ("seeded", 7)):
            torch.manual_seed(0)
            out[f"mixup_inference_{tag}"] = LatentMixupInference(evaluated, vae, references=x, num_mixes=2,
                                                                 generator=gen)(x[:3])

        # 9. uneven numbers of batches under DDP's join(), rank 1's last of one sample: ISDA with sync_stats=False
        # makes no collective call there (docs/reliability.md, ISDA statistics are global)
        torch.manual_seed(0)
        joined = torch.nn.parallel.DistributedDataParallel(TinyNet())
        own_isda = ISDA(10, lambda0=1.0, sync_stats=False)
        own_isda.set_progress(1.0)
        augment = Compose([LatentAdversarial(glow, eps=1.0, steps=1, step_size=0.5, p=0.5), own_isda])
        opt = torch.optim.SGD(joined.parameters(), lr=0.1)
        with joined.join():
            for n in JOINED_SIZES[rank]:
                opt.zero_grad(set_to_none=True)
                x2, y2 = augment(xb[:n], yb[:n], joined)
                F.cross_entropy(joined(x2), y2).backward()
                opt.step()
        out["joined_params"] = _flat_params(joined)  # the last joiner's, which join() gives every rank at its end
        out["joined_count"] = own_isda.estimator.count.clone()

        # 10. a bad batch is refused on its own rank before any collective call: a gather's size exchange made
        # before the check would pair with the other rank's all_reduce below (docs/reliability.md)
        if rank == 1:
            try:
                ISDALoss(10)(torch.randn(B, 32), joined.module.fc, torch.full((B,), 10))
            except ValueError as e:
                out["refused"] = str(e)
        total = torch.full((3,), rank + 1.0)
        dist.all_reduce(total)
        out["sum_after_refusal"] = total


class _LossInForward(torch.nn.Module):
    """A LightningModule's shape under DDP: its forward (Lightning's training_step) gives ISDALoss's loss."""

    def __init__(self, net: torch.nn.Module, loss: ISDALoss):
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.net.features(x), self.net.fc, y)


def _compiled_ddp_worker(rank: int, init_method: str, out_dir: str) -> None:
    """torch.compile(DDP(model)), the order PyTorch recommends, attacked on rank 0 only: the other rank hung (the
    attack went through DDP's forward, whose buffer broadcast is a collective call)."""
    with gloo_group(rank, init_method, out_dir) as out:
        from conftest import ClassifierWithItsAugmentation, TinyNet, tiny_glow

        torch.manual_seed(0)
        adv = LatentAdversarial(tiny_glow(), eps=1.0, steps=1, step_size=0.5, p=1.0 if rank == 0 else 0.0)
        ddp = torch.nn.parallel.DistributedDataParallel(ClassifierWithItsAugmentation(TinyNet(), adv))  # held in it
        compiled = torch.compile(ddp, backend="eager")
        xb, yb = _rank_batch(rank)
        for _ in range(2):
            compiled.zero_grad(set_to_none=True)
            x2, y2 = adv(xb, yb, compiled)
            F.cross_entropy(compiled(x2), y2).backward()
        out["grad"] = torch.cat([p.grad.flatten() for p in ddp.module.net.parameters()])
        out["ignored"] = sorted(ddp.parameters_to_ignore)  # found through the compiled module given as the model
        out["transformed"] = torch.tensor(adv.stats["transformed"])


def gathered(state: torch.Tensor) -> list[torch.Tensor]:
    """docs/reliability.md's helper: every rank's ``state``, in rank order (a list of one outside DDP)."""
    if not dist.is_initialized():
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


RESUMED = (("compose", True), ("varmixup", True), ("adversarial", False), ("adversarial", True))  # (method, BN)


def _resume_worker(rank: int, init_method: str, out_dir: str) -> None:
    """Four steps in one go, then two, a checkpoint on rank 0, everything built again and two more: per method."""
    with gloo_group(rank, init_method, out_dir) as out:
        from torchvision.transforms import v2

        from conftest import TinyNet, tiny_glow, tiny_vae, train_steps

        glow, vae = tiny_glow(), tiny_vae()
        data = torch.Generator().manual_seed(5 + rank)
        batches = [(torch.rand(B, 1, 8, 8, generator=data), torch.randint(0, 4, (B,), generator=data))
                   for _ in range(4)]
        path = os.path.join(out_dir, "checkpoint.pt")

        def build(method: str, batchnorm: bool):
            torch.manual_seed(0)
            net = TinyNet(num_classes=4)
            if not batchnorm:
                net.features[1] = torch.nn.Identity()
            model = torch.nn.parallel.DistributedDataParallel(net)
            torch.manual_seed(1 + rank)  # torchvision's flips: a stream per rank
            g = torch.Generator().manual_seed(100 + rank)  # the transforms': reproducible, and one per rank
            isda = ISDA(num_classes=4, lambda0=1.0, p=0.5, generator=g)
            isda.set_progress(0.5)
            if method == "compose":
                augment = Compose([v2.RandomHorizontalFlip(), LatentNoise(glow, eps=1.0, p=0.5, generator=g), isda])
            elif method == "varmixup":
                augment = VarMixup(vae, num_classes=4, p=0.5, generator=g)
            else:
                augment = LatentAdversarial(glow, eps=1.0, steps=1, step_size=0.5, p=0.5, generator=g)
            return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), isda, augment, g

        for method, batchnorm in RESUMED:
            tag = f"{method}_bn{int(batchnorm)}"
            model, optimizer, isda, augment, g = build(method, batchnorm)
            train_steps(model, optimizer, augment, batches)
            out[f"{tag}_uninterrupted"] = _flat_params(model)
            model, optimizer, isda, augment, g = build(method, batchnorm)
            train_steps(model, optimizer, augment, batches[:2])
            states = {"augment_rng": gathered(g.get_state()), "torch_rng": gathered(torch.get_rng_state())}
            if rank == 0:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "isda": isda.state_dict(), **states}, path)
            dist.barrier()
            model, optimizer, isda, augment, g = build(method, batchnorm)  # a new run
            checkpoint = torch.load(path, weights_only=True)
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            isda.load_state_dict(checkpoint["isda"])
            g.set_state(checkpoint["augment_rng"][rank])
            torch.set_rng_state(checkpoint["torch_rng"][rank])
            train_steps(model, optimizer, augment, batches[2:])
            out[f"{tag}_resumed"] = _flat_params(model)
            out[f"{tag}_isda_count"] = isda.estimator.count.clone() if isda.estimator.count is not None else \
                torch.zeros(4, dtype=torch.int64)
            dist.barrier()  # every rank has read the checkpoint before rank 0 writes the next


EVAL_N = 17  # odd: the sampler repeats one image, which lands alone in rank 1's last batch of 8


def _evaluation_snippet() -> str:
    """docs/reliability.md's snippet that scores a test set split over ranks (Evaluating on several processes)."""
    page = (DOCS / "reliability.md").read_text(encoding="utf-8")
    return next(code for code in SNIPPET.findall(page) if "DistributedSampler(test_set" in code)


def _evaluation_setup() -> tuple[torch.nn.Module, torch.utils.data.DataLoader]:
    from conftest import TinyNet

    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(EVAL_N, 1, 8, 8, generator=g), torch.randint(0, 3, (EVAL_N,), generator=g)
    torch.manual_seed(0)
    model = TinyNet(num_classes=3).eval()
    return model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _evaluation_worker(rank: int, init_method: str, out_dir: str) -> None:
    with gloo_group(rank, init_method, out_dir) as out:
        from conftest import tiny_vae
        from latent_transforms import LatentMixupInference

        net, test_loader = _evaluation_setup()
        model = torch.nn.parallel.DistributedDataParallel(net)
        namespace = {"test_loader": test_loader, "model": model}
        exec(_evaluation_snippet(), namespace)
        if rank == 0:  # on rank 0 alone: no collective call (DDP's forward would wait for rank 1's buffers)
            LatentMixupInference(model, tiny_vae(), references=test_loader.dataset.tensors[0][:4])(
                test_loader.dataset.tensors[0][:2])
        out.update((key, namespace[key]) for key in ("test_accuracy", "test_ece", "n"))


@needs_source_tree
def test_the_documented_evaluation_on_two_ranks_scores_the_test_set_as_one_process(tmp_path):
    """The padded repeat falls in a batch of its own on rank 1: reliability_bins of no rows raised there (it gives
    zeros now), and rank 0 waited in its all_reduce."""
    from latent_transforms.evaluation import accuracy, expected_calibration_error, predict_proba

    model, test_loader = _evaluation_setup()
    x, y = test_loader.dataset.tensors
    probs = predict_proba(model, x)
    one = {"model": model, "test_loader": test_loader}
    exec(_evaluation_snippet(), one)  # without a process group: one process
    for r in [one, *spawn_two_ranks(_evaluation_worker, tmp_path)]:
        assert int(r["n"]) == EVAL_N  # the repeat counted once
        assert float(r["test_accuracy"]) == pytest.approx(accuracy(probs, y), abs=1e-6)
        assert float(r["test_ece"]) == pytest.approx(expected_calibration_error(probs, y), abs=1e-6)  # batches of 8


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return spawn_two_ranks(_worker, tmp_path_factory.mktemp("ddp"))


pytestmark = pytest.mark.slow


def test_randomness_is_per_rank_by_default_and_shared_with_a_seed(ranks):
    r0, r1 = ranks
    for r in ranks:
        assert int(r["noise_default_transformed"]) == B and int(r["noise_seeded_transformed"]) == B
        assert torch.equal(r["noise_default"], r["noise_default_again"])  # torch.manual_seed reproduces a rank
    # generator=None: a private stream per rank, although both ranks called torch.manual_seed(0)
    assert not torch.allclose(r0["noise_default"], r1["noise_default"])
    assert not torch.allclose(r0["mix_default_lam"], r1["mix_default_lam"])
    assert not torch.equal(r0["mix_default_partner"], r1["mix_default_partner"])
    # generator=123: the same draws on every rank
    assert torch.equal(r0["noise_seeded"], r1["noise_seeded"])
    assert torch.equal(r0["mix_seeded_lam"], r1["mix_seeded_lam"])
    assert torch.equal(r0["mix_seeded_partner"], r1["mix_seeded_partner"])
    assert torch.equal(r0["mix_seeded_y"], r1["mix_seeded_y"])


@pytest.mark.parametrize("name", METHODS)
def test_ddp_step_keeps_ranks_in_sync(ranks, name):
    r0, r1 = ranks
    assert not torch.equal(r0[f"x2_{name}"], r1[f"x2_{name}"])  # the ranks did train on different data
    assert torch.isfinite(r0[f"loss_{name}"]) and torch.isfinite(r1[f"loss_{name}"])
    for key in (f"grad_{name}", f"params_{name}"):
        assert torch.isfinite(r0[key]).all(), key
        assert torch.equal(r0[key], r1[key]), f"{key} differs between ranks"
    assert r0[f"grad_{name}"].abs().sum() > 0


def test_an_attack_on_a_compiled_ddp_model_makes_no_collective_call(tmp_path):
    r0, r1 = spawn_two_ranks(_compiled_ddp_worker, tmp_path)  # timed out (60 s) when it did
    assert int(r0["transformed"]) == 2 * B and int(r1["transformed"]) == 0
    assert torch.equal(r0["grad"], r1["grad"])
    assert r0["ignored"] and all(name.startswith("augment.") for name in r0["ignored"])


def test_isda_statistics_are_equal_on_both_ranks(ranks):
    r0, r1 = ranks
    for tag in ("isda", "compose_isda"):
        for buf in ("mean", "cov", "count"):
            key = f"{tag}_{buf}"
            assert torch.equal(r0[key], r1[key]), f"{key} differs between ranks"
        assert int(r0[f"{tag}_count"].sum()) == 2 * B  # both ranks' batches
        assert torch.isfinite(r0[f"{tag}_cov"]).all()


def test_accumulated_gradients_under_no_sync_are_kept(ranks):
    """docs/reliability.md (DDP, gradient accumulation): the attack's passes on the local module leave the gradients
    the first micro-batch accumulated under no_sync as they are, the ranks agree once the last one syncs, and ISDA
    counts every micro-batch of both ranks once."""
    r0, r1 = ranks
    for r in ranks:
        assert bool(r["accumulated_untouched_0"]) and bool(r["accumulated_untouched_1"])
        assert int(r["accumulated_isda_count"]) == 2 * B
    assert torch.isfinite(r0["accumulated_grad"]).all() and r0["accumulated_grad"].abs().sum() > 0
    assert torch.equal(r0["accumulated_grad"], r1["accumulated_grad"])


def test_transforms_inside_the_ddp_module_keep_their_buffers_out_of_its_broadcast(ranks):
    """DDP broadcasts rank 0's buffers of its module in every forward: ISDA's and ISDALoss's per-rank statistics
    (sync_stats=False) held inside it, as a LightningModule holds them, were rank 0's on rank 1 after each step, and
    the codec's constants went over the network every step."""
    for rank, r in enumerate(ranks):
        counts = 2 * torch.bincount(_rank_batch(rank)[1], minlength=10)
        assert torch.equal(r["held_count"], counts) and torch.equal(r["in_forward_count"], counts), rank
    for rank, r in enumerate(ranks):
        assert r["broadcast"] and all(name.startswith("net.features.1.") for name in r["broadcast"])  # BatchNorm's
        assert r["ignored"] == r["transform_buffers"] and r["outside_ignored"] == []
        for tag, steps in (("isda_given_ddp", 2), ("isda_given_its_module", 1)):
            assert r[tag][0] == r[tag][1], tag
            assert torch.equal(r[tag][2], steps * torch.bincount(_rank_batch(rank)[1], minlength=10)), (tag, rank)


def test_mixup_inference_draws_per_rank_by_default_and_alike_with_a_seed(ranks):
    r0, r1 = ranks
    assert not torch.equal(r0["mixup_inference_default"], r1["mixup_inference_default"])  # an untrained net's
    assert torch.equal(r0["mixup_inference_seeded"], r1["mixup_inference_seeded"])


def test_uneven_batches_under_join_and_a_bad_batch_refused_on_its_own_rank(ranks):
    """docs/reliability.md: ``sync_stats=False`` inside ``model.join()`` (rank 0 runs 3 batches, rank 1 two, its
    last of one sample): each rank's statistics of its own batches, the replicas alike at the end; rank 1's labels
    out of range refused before any collective call, so the next all_reduce pairs with the other rank's."""
    r0, r1 = ranks
    for rank, r in enumerate(ranks):
        y = _rank_batch(rank)[1]
        counts = sum(torch.bincount(y[:n], minlength=10) for n in JOINED_SIZES[rank])
        assert torch.equal(r["joined_count"], counts), rank
        assert torch.equal(r["sum_after_refusal"], torch.full((3,), 3.0)), rank
    assert torch.isfinite(r0["joined_params"]).all() and torch.equal(r0["joined_params"], r1["joined_params"])
    assert "refused" not in r0 and r1["refused"].startswith("y has class index 10, out of range for num_classes=10")


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of this process alone (a DDP to build in a second, no spawn), destroyed after the test."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace the builtin")  # torch's own, tracing the DDP
# torch's own too: Dynamo hides it (hasattr(t, "grad") on a non-leaf input) but `pytest -W error` raises it
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_isda_and_isda_loss_in_a_ddp_forward_keep_their_buffers_out_of_its_broadcast(one_rank_group, compiled):
    """What the two ranks check above, in this process: ISDA armed with ``model.module`` (its hook runs in DDP's
    forward) and ISDALoss in the forward leave their buffers, and only theirs, out of the broadcast; a transform
    outside the DDP module leaves nothing out. Under ``torch.compile(DDP(model))`` the hook and the loss run in
    compiled code, where this was skipped: ISDA(sync_stats=False)'s statistics became rank 0's in every forward."""
    from conftest import ClassifierWithItsAugmentation, TinyNet

    xb, yb = _rank_batch(0)
    isda, loss = ISDA(10, lambda0=1.0, sync_stats=False), ISDALoss(10, lambda0=1.0, sync_stats=False)
    isda.set_progress(1.0)
    loss.set_progress(1.0)
    held = torch.nn.parallel.DistributedDataParallel(ClassifierWithItsAugmentation(TinyNet(), isda))
    in_forward = torch.nn.parallel.DistributedDataParallel(_LossInForward(TinyNet(), loss))
    Compose([kornia.augmentation.RandomGaussianBlur((3, 3), torch.tensor([0.1, 2.0]), p=1.0)])(xb, yb, held)
    assert held.parameters_to_ignore == set()  # its blur is not in the DDP module
    run_held, run_in_forward = (torch.compile(m, backend="eager") if compiled else m for m in (held, in_forward))
    for _ in range(2):  # the second forward broadcasts without them
        x2, y2 = held.module.augment(xb, yb, held.module)
        F.cross_entropy(run_held(x2), y2).backward()
        run_in_forward(xb, yb).backward()
    for ddp, name in ((held, "augment"), (in_forward, "loss")):
        buffers = {n for n, _ in getattr(ddp.module, name).named_buffers(prefix=name)}
        assert buffers and ddp.parameters_to_ignore == buffers, name  # the statistics' too, sized by the first step
        assert set(ddp.named_module_buffers) == {f"net.features.1.{n}" for n, _ in
                                                 ddp.module.net.features[1].named_buffers()}, name  # BatchNorm's


def test_a_codec_or_cache_assigned_after_the_first_call_stays_out_of_the_broadcast_too(one_rank_group):
    """A transform inside the DDP module was checked once: a cache assigned to it later (``t.cache = ...``), or
    another codec, was broadcast from rank 0 in every forward (a CIFAR-10 cache: 586 MiB a step)."""
    from conftest import ClassifierWithItsAugmentation, TinyNet, tiny_glow

    xb, yb = _rank_batch(0)
    noise = LatentNoise(tiny_glow(), eps=1.0)
    held = torch.nn.parallel.DistributedDataParallel(ClassifierWithItsAugmentation(TinyNet(), Compose([noise])))
    for assigned in (None, "codec", "cache"):
        if assigned == "codec":
            noise.codec = tiny_glow(seed=1, levels=3)  # buffers of a third level besides
        elif assigned == "cache":
            noise.cache = LatentCache(noise.codec, xb, progress=False)
        x2, y2 = held.module.augment(xb, yb, held, index=torch.arange(B) if noise.cache is not None else None)
        F.cross_entropy(held(x2), y2).backward()
        assert all(name.startswith("net.") for name in held.named_module_buffers), assigned  # BatchNorm's alone


def test_a_glow_frozen_after_the_first_call_keeps_its_folded_weights_out_of_the_broadcast(one_rank_group):
    """``freeze()`` registers a Glow's folded weights as buffers: frozen after the transform's first call in the DDP
    module (checked once), they were broadcast from rank 0 in every forward (audit 406)."""
    from conftest import ClassifierWithItsAugmentation, TinyNet

    xb, yb = _rank_batch(0)
    torch.manual_seed(0)
    glow = Glow((1, 8, 8), levels=2, steps=2, hidden=16).init_actnorm(torch.rand(32, 1, 8, 8)).requires_grad_(False)
    noise = LatentNoise(glow, eps=1.0)
    held = torch.nn.parallel.DistributedDataParallel(ClassifierWithItsAugmentation(TinyNet(), noise))
    for step in range(2):
        if step:
            glow.freeze()
        x2, y2 = held.module.augment(xb, yb, held)
        F.cross_entropy(held(x2), y2).backward()
    assert glow.use_fast_path and any(name.endswith("enc_weight") for name, _ in glow.named_buffers())
    assert all(name.startswith("net.") for name in held.named_module_buffers)  # BatchNorm's alone


def test_a_ddp_run_resumed_as_the_docs_say_ends_with_the_weights_of_the_uninterrupted_one(tmp_path):
    """docs/reliability.md (Checkpoints and resuming under DDP): each rank's generator and torch RNG states gathered
    into rank 0's checkpoint, each rank restoring its own, resume bit for bit; LatentAdversarial on a model with
    BatchNorm does not (it attacks the local module, whose running statistics on rank 1 are its own until DDP's next
    forward broadcasts rank 0's)."""
    r0, r1 = spawn_two_ranks(_resume_worker, tmp_path)
    for r in (r0, r1):
        for method, batchnorm in RESUMED:
            tag = f"{method}_bn{int(batchnorm)}"
            same = torch.equal(r[f"{tag}_uninterrupted"], r[f"{tag}_resumed"])
            assert same == (method != "adversarial" or not batchnorm), tag
        assert int(r["compose_bn1_isda_count"].sum()) == 2 * 4 * B  # both ranks' batches, over the stop
    for method, batchnorm in RESUMED:
        tag = f"{method}_bn{int(batchnorm)}"
        assert torch.equal(r0[f"{tag}_resumed"], r1[f"{tag}_resumed"])  # the replicas agree all the same

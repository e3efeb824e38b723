"""Property tests of the base class bookkeeping, through a minimal transform and through real ones."""
import gc
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_transforms import Compose, LatentTransform
from latent_transforms.base import keep_plausible
from latent_transforms.labels import mix_labels
from latent_transforms.rng import GeneratorSource, draw_generator


class AddNoise(LatentTransform):
    """Pixel noise: the smallest transform that exercises the base class."""

    def make_params(self, n, generator, device):
        return {"noise": torch.randn(n, generator=generator, device=device)}

    def transform(self, x, y, model, params, index=None):
        return x + 0.1 * params["noise"].view(-1, 1, 1, 1).to(x.dtype), y


class Mix(LatentTransform):
    mixes_labels = True

    def make_params(self, n, generator, device):
        return {"partner": torch.randperm(n, generator=generator), "lam": torch.rand(n, generator=generator)}

    def transform(self, x, y, model, params, index=None):
        partner, lam = params["partner"], params["lam"]
        w = lam.view(-1, 1, 1, 1).to(x.dtype)
        return w * x + (1 - w) * x[partner], mix_labels(y, partner, lam, self.num_classes)


class Explode(LatentTransform):
    def transform(self, x, y, model, params, index=None):
        out = x.clone()
        out[0] = float("nan")
        if len(out) > 1:
            out[1] = 5.0
        return out, y


class _Unwrapping(torch.Tensor):
    """A tensor subclass of no torchvision type which, as tv_tensors do, keeps its type through ``detach`` only."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs)
        return out.as_subclass(torch.Tensor) if isinstance(out, cls) and func is not torch.Tensor.detach else out


shapes = st.tuples(st.integers(1, 9), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))


def _batch(shape, soft, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g).to(dtype)
    y = torch.randint(0, 5, (shape[0],), generator=g)
    if soft:
        y = torch.softmax(torch.randn(shape[0], 5, generator=g), 1)
    return x, y


@settings(max_examples=60)
@given(shape=shapes, soft=st.booleans(), p=st.floats(0, 1), seed=st.integers(0, 1000),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]), cls=st.sampled_from([AddNoise, Mix]))
def test_base_properties(shape, soft, p, seed, dtype, cls):
    x, y = _batch(shape, soft, seed, dtype)
    t = cls(p=p, generator=seed, num_classes=5)
    x2, y2 = t(x, y)
    assert x2.shape == x.shape and x2.dtype == x.dtype and x2.device == x.device
    assert x2.min() >= 0 and x2.max() <= 1
    # unselected samples are bit-identical, and there are at most `transformed` changed ones
    changed = (x2 != x).flatten(1).any(1)
    assert int(changed.sum()) <= t.stats["transformed"] <= shape[0]
    if cls is Mix:
        assert y2.shape == (shape[0], 5) and torch.allclose(y2.sum(1), torch.ones(shape[0], dtype=y2.dtype), atol=1e-5)
        assert y2.min() >= 0
        same = ~changed
        ref = y if soft else torch.nn.functional.one_hot(y, 5).float()
        assert torch.allclose(y2[same & (t.stats["transformed"] == 0)], ref[same & (t.stats["transformed"] == 0)])
    else:
        assert y2 is y
    # same seed -> same output
    x3, y3 = cls(p=p, generator=seed, num_classes=5)(x, y)
    assert torch.equal(x2, x3) and torch.equal(y2, y3)
    # eval -> identity
    xe, ye = cls(p=p, generator=seed, num_classes=5).eval()(x, y)
    assert xe is x and ye is y


def test_p_zero_is_identity_and_p_validated():
    x, y = _batch((4, 1, 3, 3), False, 0)
    assert torch.equal(AddNoise(p=0.0)(x, y)[0], x)
    for bad in (-0.1, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match="p must be"):
            AddNoise(p=bad)


def test_explicit_generator_leaves_global_rng_alone():
    x, y = _batch((4, 1, 3, 3), False, 0)
    state = torch.get_rng_state()
    AddNoise(generator=torch.Generator().manual_seed(3))(x, y)
    AddNoise(generator=3)(x, y)
    assert torch.equal(state, torch.get_rng_state())


def test_generator_on_wrong_device_is_named():
    with pytest.raises(ValueError, match="generator is on cpu but the data is on cuda"):
        GeneratorSource(torch.Generator()).get(torch.device("cuda"))
    # a codec's own draws (codec.sample, a VAE's posterior sample) too: torch's error named neither device's fix
    with pytest.raises(ValueError, match="generator is on cpu but the data is on cuda"):
        draw_generator(torch.Generator(), torch.device("cuda"))
    g = torch.Generator()
    assert draw_generator(g, torch.device("cpu")) is g
    for bad in ("seed", 1.5, True, np.float64(3)):
        with pytest.raises(TypeError, match="generator must be"):
            GeneratorSource(bad)
    x, y = _batch((2, 1, 3, 3), False, 0)  # a NumPy int seed is a seed, as other NumPy settings are numbers
    assert torch.equal(AddNoise(generator=np.int64(3))(x, y)[0], AddNoise(generator=3)(x, y)[0])


def test_a_generator_of_another_gpu_is_refused_and_one_of_the_same_or_an_unnumbered_gpu_taken():
    """cuda:1's generator cannot draw for cuda:0 data (torch's own error named neither fix); a device given without an
    index ("cuda") matches either. Stand-ins carry the devices: this runs without two GPUs."""
    from types import SimpleNamespace

    from latent_transforms.rng import _check_generator_device

    on_gpu1 = SimpleNamespace(device=torch.device("cuda", 1))
    with pytest.raises(ValueError, match=r"^the generator is on cuda:1 but the data is on cuda:0; pass "
                                         r"torch.Generator\(device='cuda:0'\) or an int seed$"):
        _check_generator_device(on_gpu1, torch.device("cuda", 0))
    assert _check_generator_device(on_gpu1, torch.device("cuda", 1)) is on_gpu1
    assert _check_generator_device(on_gpu1, torch.device("cuda")) is on_gpu1
    unnumbered = SimpleNamespace(device=torch.device("cuda"))
    assert _check_generator_device(unnumbered, torch.device("cuda", 0)) is unnumbered


def test_default_generator_follows_torch_manual_seed():
    x, y = _batch((4, 1, 3, 3), False, 0)
    torch.manual_seed(5)
    a = AddNoise()(x, y)[0]
    torch.manual_seed(5)
    b = AddNoise()(x, y)[0]
    assert torch.equal(a, b)


class _AugmentInGetitem(torch.utils.data.Dataset):
    """A transform called inside a DataLoader worker (e.g. a CPU-side pipeline)."""

    def __init__(self, t):
        self.t = t

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.t(torch.full((1, 1, 3, 3), 0.5), torch.zeros(1, dtype=torch.int64))[0][0]


def test_default_generator_is_fresh_in_each_dataloader_worker_and_epoch():
    t = AddNoise()
    t(*_batch((2, 1, 3, 3), False, 0))  # a call in the main process creates the generator the workers inherit
    loader = torch.utils.data.DataLoader(_AugmentInGetitem(t), batch_size=1, num_workers=2)
    first, second = torch.cat(list(loader)), torch.cat(list(loader))
    assert len({tuple(row.flatten().tolist()) for row in first}) == 4  # items 0 and 1 come from different workers
    assert not torch.equal(first, second)


def test_used_transforms_go_to_spawned_workers():
    # a torch.Generator (given, or cached by a first call) pickled as a tensor, which Linux's default file_descriptor
    # sharing could not send to spawned workers ("unable to resize file": the worker died)
    given, default = AddNoise(generator=torch.Generator().manual_seed(3)), AddNoise()
    for t in (given, default):
        t(*_batch((2, 1, 3, 3), False, 0))  # used once in the main process
    ref = AddNoise(generator=torch.Generator())
    ref._rng.spec.set_state(given._rng.spec.get_state())
    both = torch.utils.data.ConcatDataset([_AugmentInGetitem(given), _AugmentInGetitem(default)])  # one spawn: 2 s
    loader = torch.utils.data.DataLoader(both, batch_size=1, num_workers=1, multiprocessing_context="spawn")
    out = torch.cat(list(loader))
    assert out.shape == (8, 1, 3, 3)
    for t, drawn in zip((given, default), out.split(4)):
        assert len({tuple(r.flatten().tolist()) for r in drawn}) == 4
        if t is given:  # the worker's copy continues the given generator's stream
            assert torch.equal(drawn[0], _AugmentInGetitem(ref)[0])


def _draw(t) -> list:
    return t(torch.full((1, 1, 3, 3), 0.5), torch.zeros(1, dtype=torch.int64))[0].flatten().tolist()


def _draw_in_child(t, queue):
    import multiprocessing

    queue.put((multiprocessing.current_process()._identity, _draw(t)))


def _draws_of_two_forks(t) -> list:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    out = []
    for _ in range(2):  # one after the other: the order started is what tells them apart
        queue = ctx.Queue()
        child = ctx.Process(target=_draw_in_child, args=(t, queue))
        child.start()
        out.append(queue.get(timeout=60))
        child.join()
    return out


def test_default_generator_differs_in_each_forked_process_and_follows_torch_manual_seed(monkeypatch):
    # a fork copies torch's global RNG: every process of a multiprocessing pool drew the same augmentations
    import multiprocessing

    torch.manual_seed(0)
    (first_id, first), (second_id, second) = _draws_of_two_forks(AddNoise())
    assert first != second
    for identity, draw in ((first_id, first), (second_id, second)):  # reproducible: the same seed, the same order
        monkeypatch.setattr(multiprocessing.current_process(), "_identity", identity)
        torch.manual_seed(0)
        assert _draw(AddNoise()) == draw


def test_processes_started_by_other_parents_get_other_child_numbers(monkeypatch):
    # a pool's worker's identity is the path from the main process: (1, 2), the second child of the first child, must
    # not share its offset (and so its default stream) with (2, 1) or (3,)
    import multiprocessing

    from latent_transforms import rng

    numbers = []
    for identity in ((), (1, 2), (2, 1), (3,)):
        monkeypatch.setattr(multiprocessing.current_process(), "_identity", identity)
        numbers.append(rng._child_number())
    assert numbers[0] == 0 and len(set(numbers)) == 4


def test_a_process_deep_in_a_tree_of_pools_still_seeds_its_default_generator(monkeypatch):
    # mutation round (audit 377): a worker three pools down, (5, 5, 5), has an offset past 2**64, the largest seed
    # torch.Generator.manual_seed takes; no test reached the seed's reduction modulo 2**63
    import multiprocessing

    from latent_transforms import rng

    monkeypatch.setattr(multiprocessing.current_process(), "_identity", (5, 5, 5))
    assert rng._child_number() * rng._CHILD_STRIDE >= 2**64
    torch.manual_seed(0)
    assert 0 <= GeneratorSource(None).get(torch.device("cpu")).initial_seed() < 2**63


def test_dataloader_workers_draw_the_same_under_the_same_torch_manual_seed_whatever_ran_before():
    # the offset for processes multiprocessing started counted every worker ever started: a second run in one process
    # (a notebook, a sweep, a validation loader with workers before) drew other augmentations
    def run():
        torch.manual_seed(1)
        loader = torch.utils.data.DataLoader(_AugmentInGetitem(AddNoise()), batch_size=1, num_workers=2)
        return torch.cat(list(loader))

    first = run()
    assert len({tuple(r.flatten().tolist()) for r in first}) == 4 and torch.equal(run(), first)


def test_a_run_resumed_with_its_generators_saved_state_makes_the_same_draws():
    # the recipe of reliability.md (Determinism): the generator's state is the user's to save
    x, y = _batch((4, 1, 3, 3), False, 0)
    g = torch.Generator().manual_seed(0)
    t = AddNoise(generator=g)
    t(x, y)
    saved = g.get_state()
    uninterrupted = [t(x, y)[0] for _ in range(2)]
    g2 = torch.Generator()
    g2.set_state(saved.clone())  # a new process: a new transform, the saved state
    assert all(torch.equal(a, AddNoise(generator=g2)(x, y)[0]) for a in uninterrupted)


def test_a_copy_of_a_seeded_transform_continues_its_stream_where_the_original_is():
    """A pickled or deep-copied transform (a spawned DataLoader worker, a checkpoint of the module) keeps its private
    generator's state: it draws what the original draws next, not the seed's first draws again."""
    import copy
    import pickle

    x = torch.full((3, 1, 2, 2), 0.5)
    t = AddNoise(generator=0)
    first = t(x)[0]
    for c in (copy.deepcopy(t), pickle.loads(pickle.dumps(t))):
        out = c(x)[0]
        assert not torch.equal(out, first) and torch.equal(out, copy.deepcopy(t)(x)[0])


def test_a_deepcopy_keeps_a_transform_on_the_generator_its_user_holds():
    import copy

    g = torch.Generator().manual_seed(0)
    state = copy.deepcopy({"augment": AddNoise(generator=g), "generator": g})
    assert state["augment"]._rng.spec is state["generator"]  # reseeding the copied generator drives the copy
    assert copy.deepcopy(AddNoise(generator=g))._rng.spec is not g


@pytest.mark.parametrize("make", [lambda p: AddNoise(p=p, generator=0), lambda p: Mix(p=p, generator=0, num_classes=5)])
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_channels_last_in_channels_last_out(make, p):
    x, y = _batch((6, 3, 5, 5), False, 0)
    xc = x.contiguous(memory_format=torch.channels_last)
    out, y_out = make(p)(xc, y)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()  # came back NCHW
    ref, y_ref = make(p)(x, y)
    assert torch.equal(out, ref) and torch.equal(y_out, y_ref) and ref.is_contiguous()
    assert make(p)(x[..., ::2], y)[0].is_contiguous()  # a strided view of NCHW images is no channels_last batch


@pytest.mark.parametrize("make", [lambda p: AddNoise(p=p, generator=0), lambda p: Mix(p=p, generator=0, num_classes=5)])
def test_a_torchvision_image_comes_back_an_image_whichever_samples_are_drawn(make):
    from torchvision import tv_tensors

    x, y = _batch((6, 3, 5, 5), False, 0)
    for p in (0.0, 0.5, 1.0):  # was an Image when no sample was drawn (a copy), a plain tensor otherwise
        t = make(p)
        out, _ = t(tv_tensors.Image(x), y)
        assert type(out) is tv_tensors.Image, p
        assert torch.equal(out.as_subclass(torch.Tensor), make(p)(x, y)[0]), p
        assert type(t.eval()(tv_tensors.Image(x), y)[0]) is tv_tensors.Image
    assert type(make(1.0)(x, y)[0]) is torch.Tensor  # a plain tensor stays one
    own = x.as_subclass(_Unwrapping)  # another subclass: not made one (tv_tensors.wrap would, without its metadata)
    assert type(make(1.0)(own, y)[0]) is type(make(0.5)(own, y)[0]) is torch.Tensor


def test_non_finite_and_implausible_outputs_are_rejected_and_counted():
    x, y = _batch((5, 1, 3, 3), False, 0)
    t = Explode(generator=0)
    x2, _ = t(x, y)
    assert torch.equal(x2[:2], x[:2]) and torch.isfinite(x2).all()
    assert t.stats == {"seen": 5, "transformed": 3, "rejected": 2}
    t(x, y)
    assert t.stats["seen"] == 10
    t.reset_stats()
    assert t.stats["seen"] == 0


def test_mixing_needs_classes():
    """Class indices without num_classes are refused by the call's checks, in eval() mode too (a validation run
    before training would pass and the first training step fail)."""
    x, y = _batch((4, 1, 3, 3), False, 0)
    t = Mix(generator=0)
    for mode in (t.train, t.eval):
        with pytest.raises(ValueError, match=r"^Mix mixes labels: pass num_classes=\.\.\. or \(B, K\) soft labels "
                                             r"\(num_classes to the constructor: Mix\(\.\.\., num_classes=K\) for a "
                                             r"K-class model\)$"):
            mode()(x, y)


def test_default_generator_offsets_by_torchruns_rank_before_the_process_group_exists(monkeypatch):
    draws = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        torch.manual_seed(0)
        draws[rank] = torch.rand(4, generator=GeneratorSource(None).get(torch.device("cpu")))
    assert not torch.equal(draws["0"], draws["1"])


def test_a_copy_in_a_process_without_rank_keeps_the_rank_it_came_from(monkeypatch):
    # a DataLoader worker started with "spawn" under mp.spawn sees no process group and no RANK: every rank's worker
    # reseeded as rank 0 and drew the same augmentations (found with 2 gloo ranks)
    import pickle

    from latent_transforms import rng

    draws = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        blob = pickle.dumps(GeneratorSource(None))  # made and sent by the rank's main process
        monkeypatch.delenv("RANK")
        monkeypatch.setattr(rng, "_process", lambda: (-1, 0))  # unpickled in another process (the worker)
        copy = pickle.loads(pickle.dumps(pickle.loads(blob)))  # copied again there (mutation round 44): still the rank
        monkeypatch.undo()
        monkeypatch.setattr(rng, "_process", lambda: (-1, 0))
        torch.manual_seed(0)  # DataLoader seeds the workers of every rank alike when the main seeds are equal
        draws[rank] = copy.get(torch.device("cpu")).initial_seed()
        monkeypatch.undo()
    assert draws["1"] - draws["0"] == rng._RANK_STRIDE


def test_a_copy_of_an_int_seeded_source_in_another_process_goes_on_from_where_it_was_copied(monkeypatch):
    """Mutation round 44: only a source without a seed seeds afresh in another process; an int-seeded one's generator
    travels with its state, as in a deepcopy, and is not restarted from the seed there."""
    import pickle

    from latent_transforms import rng

    source, cpu = GeneratorSource(5), torch.device("cpu")
    torch.rand(3, generator=source.get(cpu))
    blob = pickle.dumps(source)
    expected = torch.rand(3, generator=source.get(cpu))
    monkeypatch.setattr(rng, "_process", lambda: (-1, 0))
    assert torch.equal(torch.rand(3, generator=pickle.loads(blob).get(cpu)), expected)


class MixThenExplode(LatentTransform):
    """Mixes every label half-and-half with the next sample's, and returns NaN for the first selected sample."""

    mixes_labels = True

    def transform(self, x, y, model, params, index=None):
        partner = torch.arange(x.shape[0]).roll(1)
        out = x.clone()
        out[0] = float("nan")
        return out, mix_labels(y, partner, torch.full((x.shape[0],), 0.5), self.num_classes)


@pytest.mark.parametrize("soft", [False, True])
def test_a_rejected_sample_of_a_label_mixing_transform_keeps_its_own_label(soft):
    x, y = _batch((4, 1, 3, 3), soft, 0)
    y = torch.tensor([0, 1, 2, 3]) if not soft else y
    x2, y2 = MixThenExplode(num_classes=5, generator=0)(x, y)
    own = y if soft else torch.nn.functional.one_hot(y, 5).float()
    assert torch.equal(x2[0], x[0])  # rejected: the input back ...
    assert torch.equal(y2[0], own[0])  # ... and its own label, not the half-mixed one
    assert torch.allclose(y2[1:], 0.5 * own[1:] + 0.5 * own[:-1])  # the others are mixed


class Nudge(LatentTransform):
    """Each sample moves by +0.01 and its label gets a per-sample mark: outputs are identifiable per sample."""

    mixes_labels = True

    def transform(self, x, y, model, params, index=None):
        soft = torch.nn.functional.one_hot(y, self.num_classes).float()
        return x + 0.01, 0.9 * soft + 0.1 / self.num_classes


def test_transformed_samples_go_back_to_their_own_rows():
    g = torch.Generator().manual_seed(0)
    x = 0.9 * torch.rand(16, 1, 3, 3, generator=g)
    y = torch.arange(16) % 5
    t = Nudge(p=0.5, generator=0, num_classes=5)
    x2, y2 = t(x, y)
    changed = (x2 != x).flatten(1).any(1)
    assert 2 <= int(changed.sum()) == t.stats["transformed"] < 16  # several selected, several passed through
    torch.testing.assert_close(x2[changed], x[changed] + 0.01)  # each transformed sample lands on its own row
    assert torch.equal(x2[~changed], x[~changed])  # the others are bit-identical
    one_hot = torch.nn.functional.one_hot(y, 5).float()
    torch.testing.assert_close(y2[changed], 0.9 * one_hot[changed] + 0.02)
    assert torch.equal(y2[~changed], one_hot[~changed])


def test_sample_beta_below_one_draws_only_from_the_given_generator():
    from latent_transforms.rng import _sample_log_gamma, sample_beta

    state = torch.get_rng_state()
    for alpha in (0.4, 0.2):  # alpha < 1: Gamma(alpha) boosted from Gamma(alpha + 1) by a uniform
        a = sample_beta(alpha, 500, torch.Generator().manual_seed(7), torch.device("cpu"))
        b = sample_beta(alpha, 500, torch.Generator().manual_seed(7), torch.device("cpu"))
        assert torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
        g1 = _sample_log_gamma(alpha, 500, torch.Generator().manual_seed(3), torch.device("cpu"))
        g2 = _sample_log_gamma(alpha, 500, torch.Generator().manual_seed(3), torch.device("cpu"))
        assert torch.equal(g1, g2)
    assert torch.equal(state, torch.get_rng_state())  # torch's global RNG untouched


@pytest.mark.parametrize("shape", [0.3, 1.0, 4.0])
def test_sample_log_gamma_has_gammas_mean_and_variance_and_a_fixed_draw_count(shape):
    # the proposals are made _GAMMA_ROUNDS at a time and the first accepted one is kept (no rejection loop on the host)
    from latent_transforms.rng import _GAMMA_ROUNDS, _sample_log_gamma

    g = torch.Generator().manual_seed(0)
    draws = _sample_log_gamma(shape, 40_000, g, torch.device("cpu")).double().exp()
    assert abs(float(draws.mean()) - shape) < 4 * (shape / 40_000) ** 0.5  # Gamma(a, 1): mean a, variance a
    assert abs(float(draws.var()) / shape - 1) < 0.06
    for seed in range(5):  # the generator advances by the same draws whatever was accepted
        g, reference = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        _sample_log_gamma(shape, 64, g, torch.device("cpu"))
        torch.randn(64, _GAMMA_ROUNDS, generator=reference)
        torch.rand(64, _GAMMA_ROUNDS, generator=reference)
        if shape < 1:
            torch.rand(64, generator=reference)
        assert torch.equal(g.get_state(), reference.get_state())


def test_a_gamma_draw_whose_proposals_are_all_refused_is_their_centre(monkeypatch):
    """None of _GAMMA_ROUNDS proposals accepted (p < 1e-20): log d, not 0 nor a refused proposal's (mutation round
    44). Forced by normals of -100, each a negative v = (1 + c x)^3."""
    import math

    from latent_transforms.rng import _sample_log_gamma

    monkeypatch.setattr(torch, "randn", lambda *size, **kw: torch.full(size, -100.0, dtype=kw["dtype"]))
    out = _sample_log_gamma(4.0, 3, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(out, torch.full((3,), math.log(4.0 - 1 / 3)))


@pytest.mark.parametrize("n", [1, 2, 5, 64])
def test_random_partners_is_one_cycle_through_the_samples_drawn_from_the_generator(n):
    # public for a mixing method of one's own (docs/extending.md): VarMixup's partners, none its own for n >= 2
    from latent_transforms.rng import random_partners

    state = torch.get_rng_state()
    partner = random_partners(n, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert partner.shape == (n,) and partner.dtype == torch.int64
    assert torch.equal(partner.sort().values, torch.arange(n))  # a permutation: every sample is someone's partner
    assert n == 1 or not (partner == torch.arange(n)).any()
    seen, i = set(), 0
    while i not in seen:  # one cycle: following partners from sample 0 visits every sample
        seen.add(i)
        i = int(partner[i])
    assert len(seen) == n
    assert torch.equal(partner, random_partners(n, torch.Generator().manual_seed(3), torch.device("cpu")))
    drawn = {tuple(random_partners(n, torch.Generator().manual_seed(s), torch.device("cpu")).tolist())
             for s in range(8)}
    assert n < 64 or len(drawn) == 8  # another seed, another cycle (mutation audit 177: not a fixed one)
    assert torch.equal(state, torch.get_rng_state())  # torch's global RNG untouched


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.4, 2.0])
def test_sample_beta_matches_torch_beta_also_for_tiny_alpha(alpha):
    # Gamma(0.01) draws underflowed to 0 a third of the time and both-zero pairs gave lam 0: mean 0.37, not 0.5
    from latent_transforms.rng import sample_beta

    lam = sample_beta(alpha, 20_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    ref = torch.distributions.Beta(alpha, alpha).sample((20_000,))
    assert abs(float(lam.mean()) - 0.5) < 0.015  # symmetric: mean 1/2 (std of the mean <= 0.0036)
    assert abs(float((lam < 0.5).float().mean()) - 0.5) < 0.015
    assert abs(float(lam.var()) - float(ref.var())) < 0.01  # var 1 / (4 (2 alpha + 1))


def test_the_mixing_helpers_refuse_what_they_cannot_draw_or_mix():
    """Audit 271's fuzzing of the helpers for a method of one's own (docs/extending.md): sample_beta(0) gave NaN
    weights, alpha < 0 torch's '"gt_cpu" not implemented for 'ComplexFloat'', n = -1 "negative dimension"; mix_labels
    given float partners met an IndexError, a 0.5 lam an AttributeError, (B, 1) labels a broadcasting error."""
    from latent_transforms.labels import to_soft
    from latent_transforms.rng import random_partners, sample_beta

    g, cpu = torch.Generator().manual_seed(0), torch.device("cpu")
    for alpha in (0.0, -1.0, float("nan"), float("inf"), 1e-300):
        with pytest.raises(ValueError, match=r"^alpha must be a finite number in \[0.001, inf\), got"):
            sample_beta(alpha, 4, g, cpu)
    for draw in (lambda n: sample_beta(1.0, n, g, cpu), lambda n: random_partners(n, g, cpu)):
        with pytest.raises(ValueError, match=r"^n must be an int >= 0, got -1$"):
            draw(-1)
        with pytest.raises(TypeError, match=r"^n must be an int >= 0, got 2.0$"):
            draw(2.0)
    y, partner, lam = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0]), torch.full((3,), 0.5)
    for p, w in ((partner.float(), lam), (partner, 0.5), (partner, lam[:1]), (partner[:2], lam),
                 (partner[:, None], lam)):  # (B, 1) partners: (B, B, K) labels by broadcasting (mutation round 38)
        with pytest.raises(ValueError, match=r"^partner must be \(B,\) int64 indices into the batch and lam \(B,\) "
                                             r"weights in \[0, 1\], got partner"):
            mix_labels(y, p, w, 3)
    with pytest.raises(ValueError, match=r"class indices must be \(B,\) \(y.squeeze\(1\)\)"):
        mix_labels(y[:, None], partner, lam, 3)
    # mutation round 38: soft labels of another width than num_classes came back as they were, and the batch is
    # named as the partners' (mix_labels has no x)
    with pytest.raises(ValueError, match=r"^y soft labels have 5 classes, expected num_classes=3$"):
        mix_labels(torch.full((3, 5), 0.2), partner, lam, 3)
    with pytest.raises(ValueError, match=r"^batch sizes differ: partner has 3 samples, y has 2$"):
        mix_labels(y[:2], partner, lam, 3)
    with pytest.raises(ValueError, match=r"^num_classes must be an int >= 1, got -1$"):  # one_hot's -1 infers it
        to_soft(y, -1)
    # torch's one_hot said "only applicable to index tensor of type LongTensor" (mutation round 44: untested)
    with pytest.raises(ValueError, match=r"^y class indices must be int64 to be made soft labels, got torch.int32$"):
        to_soft(y.int(), 3)


def test_to_soft_keeps_the_dtype_of_soft_labels():
    from latent_transforms.labels import to_soft

    for dtype in (torch.float64, torch.float16):
        y = torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1).to(dtype)
        out = to_soft(y, None)
        assert out.dtype == dtype and torch.equal(out, y)
    assert to_soft(torch.tensor([0, 2]), 3, torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="needs num_classes"):  # not one_hot's TypeError about None
        to_soft(torch.tensor([0, 2]), None)


def test_mixed_soft_labels_keep_their_dtype():
    """lam is drawn in float32: 16-bit soft labels mixed with it stay 16-bit (VarMixup with p=1 returns them as
    mixed), as the labels of the samples left alone do."""
    from latent_transforms.labels import mix_labels

    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        y = torch.softmax(torch.randn(4, 3), 1).to(dtype)
        out = mix_labels(y, torch.tensor([1, 2, 3, 0]), torch.tensor([0.25, 0.5, 0.75, 1.0]), None)
        assert out.dtype == dtype
        torch.testing.assert_close(out[0], 0.25 * y[0] + 0.75 * y[1])


def test_a_generator_shared_by_two_transforms_stays_shared_in_copies():
    # each transform pickled its generator's state separately: the copies drew the same numbers (same samples picked)
    import copy
    import pickle

    g = torch.Generator().manual_seed(0)
    a, b = AddNoise(generator=g), AddNoise(generator=g)
    held = sys.getrefcount(g)  # a torch.Generator takes no weak reference before torch 2.13: count its references
    for a2, b2 in (copy.deepcopy([a, b]), pickle.loads(pickle.dumps([a, b]))):
        assert a2._rng.spec is b2._rng.spec and a2._rng.spec is not g
        assert torch.equal(a2._rng.spec.get_state(), g.get_state())
    del a2, b2
    gc.collect()
    assert sys.getrefcount(g) == held  # the pickling stand-in does not keep the generator alive


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_every_sample_of_a_batch_is_counted_as_seen_however_few_are_selected(p):
    x, y = _batch((4, 1, 3, 3), False, 0)
    t = AddNoise(p=p, generator=0)
    t(x, y)
    t(x, y)
    stats = t.stats
    selected = stats["transformed"] + stats["rejected"]
    assert stats["seen"] == 8 and (selected == 0 if p == 0 else 0 < selected < 8)


class MixInTheImagesDtype(Mix):
    """Returns its soft labels in the images' dtype (float64 here), not in the float32 of the labels made soft."""

    def transform(self, x, y, model, params, index=None):
        x2, y2 = super().transform(x, y, model, params, index)
        return x2, y2.to(x.dtype)


def test_soft_labels_a_transform_returns_in_another_dtype_join_the_batchs_in_its_dtype():
    x, y = _batch((8, 1, 3, 3), False, 0, torch.float64)
    t = MixInTheImagesDtype(p=0.5, generator=0, num_classes=5)
    _, y2 = t(x, y)
    assert 0 < t.stats["transformed"] < 8  # the selected rows' labels go into the others'
    assert y2.dtype == torch.float32 and torch.allclose(y2.sum(1), torch.ones(8))


class DecodesInFloat64(AddNoise):
    """Returns its images in float64 (a codec kept in double precision) for float32 images."""

    def transform(self, x, y, model, params, index=None):
        x2, y2 = super().transform(x, y, model, params, index)
        return x2.double(), y2


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_images_a_transform_returns_in_another_dtype_come_back_in_the_batchs_dtype(p):
    x, y = _batch((8, 1, 3, 3), False, 0)
    x2, _ = DecodesInFloat64(p=p, generator=0)(x, y)
    assert x2.dtype == torch.float32 and torch.equal(x2, AddNoise(p=p, generator=0)(x, y)[0])


def test_an_empty_batch_passes_a_transform_of_ones_own_without_drawing_or_counting():
    """B = 0 passes every transform (a DDP rank's batch; torchvision's and kornia's take it too): make_params and
    transform are not called, the generator is not advanced, nothing is counted, and the outputs keep their form."""
    t = Mix(generator=0, num_classes=4)
    t.make_params = t.transform = None  # called: a TypeError
    x0, y0 = t(torch.rand(0, 1, 3, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.int64))
    assert x0.shape == (0, 1, 3, 3) and x0.dtype == torch.float64 and y0.shape == (0, 4)
    assert t.stats == {"seen": 0, "transformed": 0, "rejected": 0}
    x, y = _batch((4, 1, 3, 3), False, 0)
    assert torch.equal(AddNoise(generator=0)(x[:0], y[:0])[0], x[:0])
    after_empty = AddNoise(generator=0)
    after_empty(x[:0], y[:0])
    assert torch.equal(after_empty(x, y)[0], AddNoise(generator=0)(x, y)[0])  # the stream did not move


def test_an_int_seed_seeds_exactly_that_and_other_seeds_draw_otherwise():
    x, y = _batch((4, 1, 3, 3), False, 0)
    assert not torch.equal(AddNoise(generator=1)(x, y)[0], AddNoise(generator=2)(x, y)[0])
    assert torch.equal(AddNoise(generator=5)(x, y)[0], AddNoise(generator=torch.Generator().manual_seed(5))(x, y)[0])


def test_threads_sharing_a_transform_count_every_sample():
    # stats were updated by an unguarded read-modify-write of one tensor: calls from several threads lost counts
    import sys
    import threading
    t = AddNoise(generator=0)
    x, y = _batch((2, 1, 3, 3), False, 0)
    calls, barrier = 1000, threading.Barrier(4)

    def work():
        barrier.wait()
        for _ in range(calls):
            t(x, y)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as a busy server (or free-threaded Python) does
    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert t.stats["seen"] == 4 * calls * 2
    assert t.stats["transformed"] + t.stats["rejected"] == 4 * calls * 2


def test_threads_making_their_first_draw_at_once_share_one_generator(monkeypatch):
    # the generator was made by a check-then-insert: two first calls at once each made one (with an int seed, both
    # drew the same numbers) and one of them was lost
    import threading
    import time

    from latent_transforms import rng

    def slow_rank(default=0):  # widens the window between the check and the insert
        time.sleep(0.05)
        return default

    monkeypatch.setattr(rng, "_rank", slow_rank)
    source, barrier, got = rng.GeneratorSource(None), threading.Barrier(2), []

    def first_draw():
        barrier.wait()
        got.append(source.get(torch.device("cpu")))

    threads = [threading.Thread(target=first_draw) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert len(got) == 2 and got[0] is got[1]


def test_a_decode_exactly_max_overshoot_outside_is_kept_and_clipped_a_larger_one_rejected():
    """'More than 0.5 outside [0, 1]' is rejected: 0.5 itself (1.5, -0.5: exact in float) is clipped and kept."""
    fallback = torch.full((4, 1, 1, 2), 0.25)
    decoded = torch.tensor([1.5, -0.5, 1.5 + 2**-20, -0.5 - 2**-20]).view(4, 1, 1, 1).expand(4, 1, 1, 2)
    images, ok = keep_plausible(decoded, fallback)
    assert ok.tolist() == [True, True, False, False]
    assert images.flatten(1)[:, 0].tolist() == [1.0, 0.0, 0.25, 0.25]


def test_one_pixel_far_outside_rejects_its_sample_whatever_the_others():
    """The worst pixel judges a sample: one pixel 1.0 outside among 63 in range (a mean overshoot of 0.016) is
    rejected, and so is one NaN or inf pixel."""
    fallback = torch.full((5, 1, 8, 8), 0.25)
    decoded = torch.full((5, 1, 8, 8), 0.5)
    decoded[0, 0, 0, 0], decoded[1, 0, 3, 3], decoded[2, 0, 1, 1], decoded[3, 0, 7, 7] = 2.0, -1.0, float("nan"), \
        float("inf")
    images, ok = keep_plausible(decoded, fallback)
    assert ok.tolist() == [False, False, False, False, True]
    assert torch.equal(images[:4], fallback[:4]) and torch.equal(images[4], decoded[4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_a_non_finite_pixel_rejects_its_sample_in_every_float_dtype(dtype):
    """Non-finite samples are found by their overshoot (NaN for a NaN pixel, inf for an infinite one), with no
    isfinite pass of their own: a NaN, +inf or -inf pixel, or a sample of NaN only, is rejected in any dtype."""
    fallback = torch.full((5, 1, 2, 2), 0.25, dtype=dtype)
    decoded = torch.full((5, 1, 2, 2), 0.5, dtype=dtype)
    decoded[0, 0, 1, 1], decoded[1, 0, 0, 1], decoded[2, 0, 1, 0], decoded[3] = float("nan"), float("inf"), \
        -float("inf"), float("nan")
    images, ok = keep_plausible(decoded, fallback)
    assert ok.tolist() == [False, False, False, False, True]
    assert torch.equal(images[:4], fallback[:4]) and torch.equal(images[4], decoded[4])


def test_p_one_draws_no_selection_from_the_generator():
    """With p=1 every sample is taken without a draw: the call's draws are make_params' first from the seed."""
    x, y = _batch((5, 1, 3, 3), False, 0)
    t = AddNoise(generator=3)
    t(x, y)
    expected = t.make_params(5, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert torch.equal(t.last_params["noise"], expected["noise"])
    assert torch.equal(t.last_params["selected"], torch.arange(5))


def test_a_selection_draw_equal_to_p_is_not_selected(monkeypatch):
    """Bernoulli(p) as ``U[0, 1) < p``: a draw of exactly p (0.0 with p=0) leaves its sample alone."""
    monkeypatch.setattr(torch, "rand", lambda n, **kwargs: torch.full((n,), 0.5) if n == 3 else torch.zeros(n))
    g = torch.Generator()
    assert not AddNoise(p=0.0)._draw_selection(4, g, torch.device("cpu")).any()
    assert not AddNoise(p=0.5)._draw_selection(3, g, torch.device("cpu")).any()


def test_an_int_seed_draws_alike_on_every_rank(monkeypatch):
    """An int seed is exactly that seed on every rank (only the default generator is offset per rank)."""
    draws = {}
    for rank in ("0", "3"):
        monkeypatch.setenv("RANK", rank)
        g = GeneratorSource(5).get(torch.device("cpu"))
        draws[rank] = (g.initial_seed(), torch.rand(4, generator=g))
    assert draws["0"][0] == draws["3"][0] == 5 and torch.equal(draws["0"][1], draws["3"][1])


def test_a_seed_outside_manual_seeds_range_is_refused_when_given():
    """[-2**63, 2**64): refused at construction with the range named, not by torch at the first call."""
    for seed in (2**64, -2**63 - 1):
        with pytest.raises(ValueError, match=r"seed must be in \[-2\*\*63, 2\*\*64\)"):
            AddNoise(generator=seed)
    # audit 422: an int of more than 4,300 digits raised Python's "Exceeds the limit (4300 digits) for integer string
    # conversion", naming nothing (validation.shown)
    with pytest.raises(ValueError, match=r"seed must be in \[-2\*\*63, 2\*\*64\) .*, got an int near -10\*\*5000$"):
        AddNoise(generator=-10**5000)
    for seed in (2**64 - 1, -2**63):
        GeneratorSource(seed).get(torch.device("cpu"))


def test_replayed_draws_on_another_device_are_refused_naming_the_device():
    """A draw on another device than the batch is named, as a wrong dtype is (not torch's device error), and the
    message says where it is (it read "must be (4,) torch.float32 on cpu, got torch.float32 of shape (4,)")."""
    x, y = _batch((4, 1, 3, 3), False, 0)
    t = AddNoise(generator=0)
    t(x, y)
    with pytest.raises(ValueError, match=r"params\['noise'\] must be \(4,\) torch.float32 on cpu, got "
                                         r"torch.float32 of shape \(4,\) on meta$"):
        t(x, y, params={**t.last_params, "noise": t.last_params["noise"].to("meta")})
    with pytest.raises(ValueError, match=r"params\['selected'\] must be \(N,\) int64 batch rows on cpu, got "
                                         r"torch.int64 of shape \(4,\) on meta$"):
        t(x, y, params={**t.last_params, "selected": t.last_params["selected"].to("meta")})


def test_replayed_params_of_another_form_are_named_not_left_to_torch_or_taken():
    """A draw replaced by a 0-dim tensor raised "len() of a 0-d tensor" (audit 174 named it where make_params returns
    one, not in a replay), rows given for an empty batch raised torch's "index out of range in self", and a bool
    batch_size passed as the count 1 (a bool int is refused)."""
    x, y = _batch((4, 1, 3, 3), False, 0)
    t = AddNoise(generator=0)
    t(x, y)
    with pytest.raises(ValueError, match=r"params lacks \['noise'\] for 4 selected samples"):
        t(x, y, params={**t.last_params, "noise": torch.tensor(0.5)})
    with pytest.raises(ValueError, match=r"params\['selected'\] must be distinct rows of this batch of 0, got rows "
                                         r"0\.\.3 \(from a call"):
        t(x[:0], y[:0], params={"selected": t.last_params["selected"]})
    one = {"selected": torch.tensor([0]), "noise": torch.zeros(1)}
    for flag in (True, torch.tensor(True)):
        with pytest.raises(ValueError, match=r"params are of a batch of (bool|torch.bool of shape \(\)), this one "
                                             r"has 1 samples"):
            t(x[:1], y[:1], params={**one, "batch_size": flag})
    assert torch.equal(t(x[:1], y[:1], params={**one, "batch_size": torch.tensor(1, dtype=torch.int32)})[0], x[:1])


def test_a_replayed_key_the_method_neither_draws_nor_computes_is_refused_naming_it():
    """A misspelt key beside the draws was dropped without a word (audit 406): ``{**t.last_params, "nosie": ...}``
    replayed the old noise as if the new one had been taken. Keys ``transform`` computes (``params.update``) are in
    ``last_params`` and replay as before; a refused replay leaves ``last_params`` as it was."""
    class Shifted(AddNoise):
        def transform(self, x, y, model, params, index=None):
            params.update(shift=0.1 * params["noise"])
            return x + params["shift"].view(-1, 1, 1, 1).to(x.dtype), y

    x, y = _batch((4, 1, 3, 3), False, 0)
    for t in (AddNoise(generator=0), Shifted(generator=0)):
        x2, _ = t(x, y)
        kept = t.last_params
        name = type(t).__name__
        with pytest.raises(ValueError, match=rf"^params has \['nosie'\], which {name} neither draws nor computes "
                                             rf"\(it draws \['noise'\]\): a misspelt key\?"):
            t(x, y, params={**kept, "nosie": torch.zeros(4)})
        assert t.last_params is kept
        assert torch.equal(t(x, y, params=kept)[0], x2)  # its own last_params, computed keys too, replay
    assert set(kept) == {"batch_size", "selected", "noise", "shift"}


def test_a_replayed_misspelt_key_is_refused_when_no_sample_is_selected_too():
    """Audit 412: at p < 1 a replay selecting no row returned before the check of its keys: ``{"nosie": ...}`` was
    taken without a word there, refused on any other batch."""
    x, y = _batch((4, 1, 3, 3), False, 0)
    t = AddNoise(p=0.5, generator=0)
    empty = {"batch_size": 4, "selected": torch.zeros(0, dtype=torch.int64), "noise": torch.zeros(0)}
    assert torch.equal(t(x, y, params=empty)[0], x)
    kept = t.last_params
    with pytest.raises(ValueError, match=r"^params has \['nosie'\], which AddNoise neither draws nor computes"):
        t(x, y, params={**empty, "nosie": torch.zeros(0)})
    assert t.last_params is kept


def test_dataset_positions_in_the_model_slot_are_refused_by_a_transform_without_a_model():
    """t(x, y, idx) would ignore the positions (and the latent cache with them): told index=idx."""
    x, y = _batch((4, 1, 3, 3), False, 0)
    with pytest.raises(TypeError, match=r"model must be the classifier \(an nn.Module\) or None, got .*; dataset "
                                        r"positions go as index=idx"):
        AddNoise(generator=0)(x, y, torch.arange(4))


class Returning(LatentTransform):
    """A method of one's own whose ``transform`` returns ``out(x, y)`` (docs/extending.md's two methods, wrong)."""

    def __init__(self, out, mixes_labels=False, **kw):
        super().__init__(**kw)
        self.out, self.mixes_labels = out, mixes_labels

    def transform(self, x, y, model, params, index=None):
        return self.out(x, y)


@pytest.mark.parametrize("p", [1.0, 0.5])
@pytest.mark.parametrize("out, mixes, message", [
    (lambda x, y: x[:1], False, r"must return \(x2, y2\), got torch.float32 of shape \(1, 1, 3, 3\)"),
    (lambda x, y: None, False, r"must return \(x2, y2\), got NoneType"),
    (lambda x, y: (x, y, None), False, r"must return \(x2, y2\), got \[torch.float32 of shape \(\d, 1, 3, 3\), "
                                        r"torch.int64 of shape \(\d,\), NoneType\]"),
    (lambda x, y: (x.tolist(), y), False, r"must return \(x2, y2\), got \[\[.*\], torch.int64 of shape \(\d,\)\]"),
    (lambda x, y: (x[:1], y), False, r"returned x2 of shape \(1, 1, 3, 3\) and y2 of shape \(\d,\) for the selected "
                                     r"samples' x of shape \(\d, 1, 3, 3\): it must return images of x's shape"),
    (lambda x, y: (x[:, :, :1], y), False, r"returned x2 of shape \(\d, 1, 1, 3\) and y2 of shape \(\d,\)"),
    (lambda x, y: (x, y[:1]), False, r"returned .* y2 of shape \(1,\) .* and y2 of shape \(\d,\) \(y as given\)$"),
    (lambda x, y: (x, None), False, r"returned .* and y2 None for the selected .* and y2 of shape \(\d,\) \(y as "
                                    r"given\)$"),  # the labels dropped
    (lambda x, y: (x, y), True, r"returned .* y2 of shape \(\d,\) .* and y2 of shape \(\d, 4\) \(soft labels: "
                                r"mixes_labels is set\)$"),
])
def test_a_transform_returning_another_form_than_its_input_is_named(out, mixes, message, p):
    """First-hour audit 174: forward broadcast what ``transform`` returned into the batch. One image returned for a
    batch of 8 came back as 8 copies of it (``stats`` counting 1 transformed), a (B, 1, H, W) result for RGB input
    was copied into every channel, and a non-mixing method's labels of another size came back as they were at p=1
    and were dropped at p<1; an image tensor returned alone failed to unpack ('too many values to unpack'), or, for
    a batch of two, was unpacked into two images."""
    x, y = _batch((8, 1, 3, 3), False, 0)
    t = Returning(out, mixes, p=p, generator=0, num_classes=4)
    with pytest.raises(ValueError, match=r"Returning\.transform " + message):
        t(x, y % 4)
    assert t.stats["seen"] == 0 and not t.last_params  # nothing counted or kept


class Refusing(AddNoise):
    """A method whose own model or codec refuses the selected samples: a ValueError raised in ``transform``."""

    def transform(self, x, y, model, params, index=None):
        raise ValueError("the codec refuses these latents")


def test_an_error_raised_in_transform_reaches_the_caller_as_raised_blaming_no_previous_step():
    """A Compose names the previous step when a step refuses that step's output; the method's own error (raised in
    ``transform``, after the call's checks passed) is no such refusal, and comes through as it was raised."""
    x, y = _batch((4, 1, 3, 3), False, 0)
    for t in (Refusing(generator=0), Compose([AddNoise(generator=1), Refusing(generator=0)])):
        with pytest.raises(ValueError, match=r"^the codec refuses these latents$"):
            t(x, y)


@pytest.mark.parametrize("draws, message", [
    (lambda n, g: {"s": 0.1}, r"got 's': float$"),
    (lambda n, g: {"s": torch.rand((), generator=g)}, r"got 's': torch.float32 of shape \(\)$"),
    (lambda n, g: {"s": torch.rand(1, generator=g)}, r"got 's': torch.float32 of shape \(1,\)$"),
    (lambda n, g: torch.rand(n, generator=g), r"got torch.float32 of shape \(8,\)$"),
])
def test_draws_that_a_replay_would_refuse_are_named_when_made(draws, message):
    """First-hour audit 174: ``make_params`` returning a float or a draw per call (not per sample) passed the call
    and made its ``last_params`` unreplayable: the replay said "params lacks ['s'] ...: pass an earlier call's
    t.last_params" (which it was) or raised "len() of a 0-d tensor"; a tensor in place of the dict raised "'Tensor'
    object is not a mapping"."""
    t = AddNoise(generator=0)
    t.make_params = lambda n, generator, device: draws(n, generator)
    x, y = _batch((8, 1, 3, 3), False, 0)
    with pytest.raises(ValueError, match=r"AddNoise\.make_params must return a dict of tensors with one row per "
                                         r"selected sample \(8\), " + message):
        t(x, y)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_check_call_raises_what_the_call_would_and_draws_and_counts_nothing(mode):
    """docs/reliability.md: ``t.check_call(x, y, model, index=idx)`` runs a call's checks alone, in either mode."""
    x, y = _batch((4, 1, 3, 3), False, 0)
    y = y % 4
    bad = [((x * 3, y), r"x values must lie in \[0, 1\]"), ((x, y[:3]), "batch sizes differ"),
           ((x, y + 10), "out of range for num_classes=4"), ((x, None), "Mix needs labels")]
    for args, message in bad:
        for run in (lambda t: t.check_call(*args), lambda t: t(*args)):
            with pytest.raises(ValueError, match=message):
                run(getattr(Mix(generator=0, num_classes=4), mode)())
    t = getattr(Mix(generator=0, num_classes=4), mode)()
    assert t.check_call(x, y) is None
    assert t.stats == {"seen": 0, "transformed": 0, "rejected": 0} and not t.last_params  # nothing counted or kept
    x2, y2 = t(x, y)
    x3, y3 = getattr(Mix(generator=0, num_classes=4), mode)()(x, y)
    assert torch.equal(x2, x3) and torch.equal(y2, y3)  # nothing drawn


class NeedsModel(AddNoise):
    needs_model = True


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_none_for_a_method_that_needs_the_model_is_refused_by_the_calls_checks_in_either_mode(mode):
    """check_call's model_optional is for a Compose's eval-mode checks alone: a call without the model is refused
    before anything is drawn, also in eval() mode (where the identity would hide the missing model)."""
    x, y = _batch((4, 1, 3, 3), False, 0)
    t = getattr(NeedsModel(generator=0), mode)()
    with pytest.raises(TypeError, match=r"^NeedsModel needs the classifier being trained: call t\(x, y, model\)$"):
        t(x, y)
    assert torch.equal(t._rng.get(x.device).get_state(), NeedsModel(generator=0)._rng.get(x.device).get_state())


def test_a_model_that_is_no_module_is_refused_by_the_calls_checks_naming_the_transform():
    """Mutation round (audit 369): check_call's check_model removed, a function given as the model of a method that
    needs one passed unnoticed (NeedsModel's transform does not call it; a method's call would have met torch's
    error at the model's parameters)."""
    x, y = _batch((4, 1, 3, 3), False, 0)
    with pytest.raises(TypeError, match=r"^NeedsModel's model must be the classifier, an nn.Module .*, got function$"):
        NeedsModel(generator=0)(x, y, lambda v: v)


class TakesThreeChannels(AddNoise):
    """A subclass's own check of a call's inputs (a codec's image shape, say): ``check_inputs``."""

    def check_inputs(self, x, model, index):
        if x.shape[1] != 3:
            raise ValueError(f"TakesThreeChannels takes RGB images, got {x.shape[1]} channels")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_subclass_s_check_inputs_runs_in_every_call_s_checks_before_anything_is_drawn(mode):
    """check_inputs is the subclass's hook in ``check_call``: run on every call, in eval() mode too (a Compose's
    checks), before the draws (mutation round, audit 369: the call to it removed, no test noticed)."""
    x, y = _batch((4, 1, 3, 3), False, 0)
    t = getattr(TakesThreeChannels(generator=0), mode)()
    for call in (lambda: t(x, y), lambda: t.check_call(x, y)):
        with pytest.raises(ValueError, match=r"^TakesThreeChannels takes RGB images, got 1 channels$"):
            call()
    assert t.stats["seen"] == 0 and not t.last_params
    assert torch.equal(t._rng.get(x.device).get_state(), TakesThreeChannels(generator=0)._rng.get(x.device).get_state())
    t(torch.rand(4, 3, 3, 3), y)


class KeepsItsTarget(AddNoise):
    """Adds the labels it got to its params, as LatentAdversarial(target="true") keeps its target."""

    def transform(self, x, y, model, params, index=None):
        params["target"] = y
        return super().transform(x, y, model, params, index)


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_last_params_hold_no_autograd_history_and_not_the_callers_tensors(p):
    """Mutation round 18 (audit 181): last_params, kept until the next call, are detached; kept as given, a teacher's
    soft labels kept as a method's target held the teacher's whole graph (its activations) and the caller's tensor."""
    x, _ = _batch((4, 1, 3, 3), False, 0)
    y = torch.softmax(torch.nn.Linear(9, 5)(x.flatten(1)), 1)  # a teacher's soft labels: they require grad
    t = KeepsItsTarget(p=p, generator=0)
    t(x, y)
    kept = t.last_params
    assert all(not v.requires_grad and v.grad_fn is None for v in kept.values())
    assert kept["target"] is not y and torch.equal(kept["target"], y.detach()[kept["selected"]])


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_images_that_require_grad_come_back_without_autograd_history(p):
    """docs' Convention: the augmentation is data, not part of a graph (images a generator network made, say)."""
    x, y = _batch((4, 1, 3, 3), False, 0)
    x2, _ = AddNoise(p=p, generator=0)(x.clone().requires_grad_(), y)
    assert x2.grad_fn is None and not x2.requires_grad


def test_a_subclass_without_a_transform_is_told_to_implement_it():
    class Unfinished(LatentTransform):
        pass

    with pytest.raises(NotImplementedError, match=r"^Unfinished must implement transform\(x, y, model, params, "
                                                  r"index=None\) -> \(x2, y2\)"):
        Unfinished()(torch.rand(2, 1, 4, 4))

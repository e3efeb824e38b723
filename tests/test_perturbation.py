import pytest
import torch

from latent_transforms import LatentAdversarial, LatentNoise
from latent_transforms.perturbation import ascent_direction, project, random_perturbation, random_start

from conftest import TinyNet, tiny_glow


def test_project_l2_keeps_points_inside_the_ball_and_scales_the_others_onto_the_sphere():
    d = torch.tensor([[0.3, 0.4, 0.0], [3.0, 0.0, 4.0], [0.0, 0.0, 0.0]])
    p = project(d, 1.0, "l2")
    assert torch.equal(p[0], d[0])  # ||d|| = 0.5 < eps: unchanged, not pushed onto the sphere
    assert torch.equal(p[2], d[2])
    assert torch.allclose(p[1], d[1] / 5.0) and torch.isclose(p[1].norm(), torch.tensor(1.0))
    assert torch.equal(project(d, 0.0, "l2"), torch.zeros_like(d))
    # an eps of 0 is the origin alone, for an infinite row too (mutation round 44: d / inf there gave NaN)
    assert torch.equal(project(torch.tensor([[float("inf"), 1.0]]), 0.0, "l2"), torch.zeros(1, 2))


def test_project_linf_clamps_each_coordinate_and_none_is_the_identity():
    d = torch.tensor([[0.3, -2.0, 5.0, -0.1]])
    assert torch.equal(project(d, 1.0, "linf"), torch.tensor([[0.3, -1.0, 1.0, -0.1]]))
    assert torch.equal(project(d, 1.0, None), d)


def test_an_linf_ball_wider_than_the_dtype_can_hold_bounds_nothing():
    # found by fuzzing (audit 163): LatentNoise(codec, eps=1e300, norm="linf") and LatentAdversarial's random start
    # raised torch's "value cannot be converted to type float without overflow" from the clamp (a check_number-valid
    # eps; "l2" and None took it, their samples rejected as implausible)
    d = torch.tensor([[0.3, -2.0, float("inf")]])
    assert torch.equal(project(d, 1e300, "linf"), d)
    wide = torch.tensor([[0.3, -2.0, float("inf")]], dtype=torch.float64)  # in float64's range: clamped to it
    assert torch.equal(project(wide, 1e300, "linf"), torch.tensor([[0.3, -2.0, 1e300]], dtype=torch.float64))
    top = torch.finfo(torch.float32).max  # the largest eps float32 holds still bounds (mutation round 44)
    assert torch.equal(project(d, top, "linf"), torch.tensor([[0.3, -2.0, top]]))
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    for t, args in ((LatentNoise(tiny_glow(), eps=1e300, norm="linf", generator=0), ()),
                    (LatentAdversarial(tiny_glow(), eps=1e300, norm="linf", generator=0), (TinyNet(),))):
        x2, y2 = t(x, y, *args)
        assert torch.equal(x2, x) and y2 is y and t.stats["rejected"] == 4  # decoded from inf: each sample its input


def test_ascent_direction_is_the_steepest_ascent_step():
    g = torch.tensor([[3.0, -4.0, 0.0], [-0.5, 0.25, 2.0]])
    assert torch.equal(ascent_direction(g, "linf"), g.sign())
    assert torch.allclose(ascent_direction(g, "l2"), g / g.norm(dim=1, keepdim=True))
    # a step along it increases a loss whose gradient is g (here the linear loss <g, d>)
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    for norm in ("l2", "linf"):
        step = ascent_direction(w, norm)
        assert ((w * step).sum(1) > 0).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_random_start_is_symmetric_uniform_inside_the_ball(norm):
    g = torch.Generator().manual_seed(0)
    eps = 0.5
    d = random_start(torch.Size((2000, 8)), eps, norm, g, "cpu", torch.float32)
    assert d.shape == (2000, 8) and d.dtype == torch.float32
    assert (d < 0).float().mean() > 0.4 and (d > 0).float().mean() > 0.4  # both signs, about equally often
    assert d.mean().abs() < 0.02 and d.mean(0).abs().max() < 0.05
    if norm == "linf":
        # U(-eps, eps): fills the cube (16,000 draws come within 1e-3 of its faces; mutation round 44: 0.99 eps passed)
        assert d.abs().max() <= eps and d.abs().max() > 0.999 * eps
        assert abs(d.var() - eps ** 2 / 3) < 0.01
    else:
        assert d.norm(dim=1).max() <= eps + 1e-6


def test_an_l2_step_is_whole_however_small_the_gradient():
    # g / ||g|| with ||g|| clamped to 1e-12: float32 rows of entries about 1e-23 have a norm of 0 (underflow) or
    # below the clamp, and stepped much less than step_size, or not at all (a confident model's batch-mean loss)
    g = torch.stack([torch.full((3072,), 1e-24), torch.full((3072,), 1e-15), torch.zeros(3072), torch.randn(3072)])
    step = ascent_direction(g, "l2")
    assert step.norm(dim=1)[:2].sub(1).abs().max() < 1e-5 and step[2].eq(0).all()
    assert torch.equal(step[3], g[3] / g[3].norm())  # an ordinary gradient: the same bits as before


def test_random_perturbation_has_the_size_of_its_norm_and_is_drawn_from_the_generator():
    shape, eps = torch.Size((2000, 2)), 0.7  # 2 coordinates: a draw is often shorter than eps
    l2 = random_perturbation(shape, eps, "l2", torch.Generator().manual_seed(0), "cpu", torch.float32)
    assert torch.allclose(l2.norm(dim=1), torch.full((2000,), eps))  # exactly eps, not inside the ball
    linf = random_perturbation(shape, eps, "linf", torch.Generator().manual_seed(0), "cpu", torch.float32)
    assert linf.abs().max() <= eps and (linf.abs() == eps).any()  # N(0, eps^2) clipped to the cube
    plain = random_perturbation(shape, eps, None, torch.Generator().manual_seed(0), "cpu", torch.float32)
    assert plain.abs().max() > eps and abs(plain.std() - eps) < 0.03  # N(0, eps^2), not clipped
    # the same generator state gives the same noise, whatever torch's global generator does in between
    torch.manual_seed(1)
    again = random_perturbation(shape, eps, "l2", torch.Generator().manual_seed(0), "cpu", torch.float32)
    assert torch.equal(again, l2)


def test_a_tiny_l2_ball_still_has_its_radius():
    # the 1e-12 floor of the norm guards 0 / 0 only: a norm floor above the ball's radius (1e-6, say) shrank noise
    # and projections of a 1e-8 ball by a factor of 100
    eps = 1e-8
    noise = random_perturbation(torch.Size((500, 2)), eps, "l2", torch.Generator().manual_seed(0), "cpu", torch.float64)
    assert torch.allclose(noise.norm(dim=1), torch.full((500,), eps, dtype=torch.float64), rtol=1e-9, atol=0)
    d = torch.tensor([[3e-8, 4e-8], [3e-9, 4e-9]], dtype=torch.float64)
    assert torch.allclose(project(d, eps, "l2"), torch.tensor([[0.6e-8, 0.8e-8], [3e-9, 4e-9]], dtype=torch.float64),
                          rtol=1e-9, atol=0)


def test_an_l2_radius_below_the_norm_floor_is_kept():
    # a radius whose points have norms below the 1e-12 floor: the floor took them for 1e-12, and 1e-14 noise came out
    # 0.06 to 0.1 of its size, a point outside the 1e-14 ball was projected to half its radius
    eps = 1e-14
    noise = random_perturbation(torch.Size((200, 64)), eps, "l2", torch.Generator().manual_seed(0), "cpu",
                                torch.float64)
    assert torch.allclose(noise.norm(dim=1), torch.full((200,), eps, dtype=torch.float64), rtol=1e-9, atol=0)
    d = torch.tensor([[3e-13, 4e-13]], dtype=torch.float64)
    assert torch.allclose(project(d, eps, "l2"), torch.tensor([[0.6e-14, 0.8e-14]], dtype=torch.float64),
                          rtol=1e-9, atol=0)


def test_an_l2_projection_whose_norm_overflows_the_dtype_keeps_the_point_on_the_sphere():
    # audit 426: float32 rows with entries past 1.8e19 have a norm float32 cannot hold (its square overflows): divided
    # by that inf norm, a point outside the ball was projected to 0, so LatentAdversarial(eps=1e30)'s random start
    # (U(-eps, eps) entries) was the origin and its attack started unperturbed
    d = torch.tensor([[3e19, 4e19], [3e37, -4e37], [0.3, 0.4]])
    assert torch.allclose(project(d, 1.0, "l2"), torch.tensor([[0.6, 0.8], [0.6, -0.8], [0.3, 0.4]]))
    assert torch.allclose(project(d, 2.5e37, "l2"), torch.tensor([[3e19, 4e19], [1.5e37, -2e37], [0.3, 0.4]]))
    start = random_start(torch.Size((50, 64)), 1e30, "l2", torch.Generator().manual_seed(0), "cpu", torch.float32)
    assert torch.allclose(start.double().norm(dim=1), torch.full((50,), 1e30, dtype=torch.float64), rtol=1e-5)
    assert torch.equal(project(d, 1e300, "l2"), d)  # a ball wider than the dtype holds bounds nothing, as for linf
    top = torch.finfo(torch.float32).max  # a ball as wide as the dtype holds still bounds (mutation round, audit 430)
    on_sphere = project(torch.tensor([[top, -top]]), top, "l2").double().norm(dim=1)
    assert torch.allclose(on_sphere, torch.tensor([top], dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_an_l2_projection_of_a_zero_row_has_the_identitys_gradient(dtype):
    # audit 431: the overflow branch divided eps by the norm of the zero row scaled by its largest entry, 0: masked by
    # torch.where all the same, its inf met the mask's 0 in the backward and every entry's gradient was NaN
    d = torch.tensor([[0.0, 0.0], [0.3, 0.4], [3.0, 4.0]], dtype=dtype, requires_grad=True)
    out = project(d, 1.0, "l2")
    (grad,) = torch.autograd.grad(out.sum(), d)
    assert torch.equal(out[0], d[0].detach()) and torch.equal(grad[:2], torch.ones(2, 2, dtype=dtype))
    # (3, 4) / 5 outside: the gradient of the sum, (I - u u^T) 1 / 5 = (0.032, -0.024); bf16 rounds it to 2e-3
    assert torch.isfinite(grad).all() and torch.allclose(grad[2].float(), torch.tensor([0.032, -0.024]), atol=2e-3)

import torch

from dlmi.model.optim import BatchedAdam


def test_matches_torch_adam():
    torch.manual_seed(0)
    a = torch.randn(3, 5, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    ours, ref = BatchedAdam([a], lr=0.1), torch.optim.Adam([b], lr=0.1)
    for _ in range(5):
        g = torch.randn(3, 5)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_keep_preserves_moments_of_kept_rows():
    torch.manual_seed(0)
    full = torch.randn(3, 4, requires_grad=True)
    single = full.detach()[2:].clone().requires_grad_(True)
    opt_full, opt_single = BatchedAdam([full], lr=0.1), BatchedAdam([single], lr=0.1)
    grads = [torch.randn(3, 4) for _ in range(6)]
    for i, g in enumerate(grads):
        if i == 3:
            (full,) = opt_full.keep(torch.tensor([2]))
        full.grad = g[2:].clone() if i >= 3 else g.clone()
        single.grad = g[2:].clone()
        opt_full.step()
        opt_single.step()
    assert torch.allclose(full, single, atol=1e-6)


def test_no_bias_correction_takes_smaller_first_steps():
    p = torch.zeros(1, requires_grad=True)
    p.grad = torch.ones(1)
    BatchedAdam([p], lr=1.0, bias_correction=False).step()
    # m = 0.1, v = 0.001: step = 0.1 / sqrt(0.001) ~ 3.16 without correction, 1.0 with it
    assert abs(p.item() + 0.1 / (0.001**0.5 + 1e-8)) < 1e-4


def test_reset_clears_state():
    p = torch.ones(2, requires_grad=True)
    opt = BatchedAdam([p], lr=0.1)
    p.grad = torch.ones(2)
    opt.step()
    opt.reset()
    assert opt.t == 0 and opt.m[0].abs().sum() == 0 and opt.v[0].abs().sum() == 0


def test_row_second_moment_keeps_the_ranking_of_gradients_within_a_row():
    x = torch.zeros(1, 2, 4, requires_grad=True)
    opt = BatchedAdam([x], lr=0.1, row_second_moment=True)
    x.grad = torch.tensor([[[4.0, 2.0, 1.0, -1.0], [40.0, 20.0, 10.0, -10.0]]])
    opt.step()
    step = -x.detach()[0]
    # Within a row the step is proportional to the gradient; across rows scale is normalised.
    assert torch.allclose(step[0] / step[0, 0], torch.tensor([1.0, 0.5, 0.25, -0.25]))
    assert torch.allclose(step[0], step[1], atol=1e-6)
    # Per-element Adam would move the first three coordinates by the same lr.
    y = torch.zeros(1, 4, requires_grad=True)
    plain = BatchedAdam([y], lr=0.1)
    y.grad = torch.tensor([[4.0, 2.0, 1.0, -1.0]])
    plain.step()
    assert torch.allclose(-y.detach()[0, :3], torch.full((3,), 0.1), atol=1e-6)

import pytest
import torch

from dlmi.model.estimators import (
    effective_temperature,
    gumbel_noise,
    gumbel_softmax,
    sample_gumbel_softmax,
)


def test_temperature_stays_inside_its_bounds():
    phi = torch.tensor([-1e6, -30.0, 0.0, 30.0, 1e6])
    tau = effective_temperature(phi, tau0=100.0, eps=0.01)
    assert (tau >= 0.01).all() and (tau <= 0.01 + 200.0).all()
    assert abs(tau[2].item() - 100.01) < 1e-4


def test_gumbel_noise_is_finite_even_at_the_edges(monkeypatch):
    edges = torch.tensor([0.0, 1.0, 0.5])
    monkeypatch.setattr(torch, "rand", lambda *a, **k: edges.clone())
    g = gumbel_noise((3,))
    assert torch.isfinite(g).all()


def test_gumbel_noise_has_gumbel_mean():
    g = gumbel_noise((200_000,), torch.Generator().manual_seed(0))
    assert abs(g.mean().item() - 0.5772) < 0.01  # Euler-Mascheroni constant


def test_straight_through_is_one_hot_forward_and_soft_backward():
    Z = torch.randn(3, 10, requires_grad=True)
    noise = gumbel_noise((3, 10), torch.Generator().manual_seed(1))
    hard = gumbel_softmax(Z, 2.0, noise, hard=True)
    assert torch.equal(hard.sum(-1), torch.ones(3)) and set(hard.unique().tolist()) <= {0.0, 1.0}
    w = torch.randn(10)
    (hard * w).sum().backward()
    g_hard = Z.grad.clone()
    Z.grad = None
    (gumbel_softmax(Z, 2.0, noise) * w).sum().backward()
    assert torch.allclose(g_hard, Z.grad)


def test_low_temperature_sample_is_argmax_of_perturbed_logits():
    Z = torch.randn(4, 50)
    noise = gumbel_noise((4, 50), torch.Generator().manual_seed(2))
    soft = gumbel_softmax(Z, 1e-3, noise)
    assert torch.equal(soft.argmax(-1), (Z + noise).argmax(-1))
    assert (soft.max(-1).values > 0.99).all()


def _reference(Z, tau, seeds, S, dtype):
    """Autograd's Gumbel-Softmax with the same noise: row b's from a generator seeded seeds[b]."""
    noise = torch.stack([gumbel_noise((S, *Z.shape[1:]), torch.Generator().manual_seed(s),
                                      dtype=dtype) for s in seeds])
    soft = gumbel_softmax(Z[:, None], tau[:, None, :, None], noise)
    return soft, (Z.detach()[:, None] + noise).argmax(-1)


@pytest.mark.parametrize("hard", [False, True])
def test_sampled_gumbel_softmax_matches_autograd_values_and_gradients(hard):
    B, S, N, V = 2, 3, 4, 50
    seeds = [5, 9]
    Z = torch.randn(B, N, V, dtype=torch.float64, requires_grad=True)
    phi = torch.randn(B, N, dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, S, N, V, dtype=torch.float64)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    p, index = sample_gumbel_softmax(Z, effective_temperature(phi, 2.0, 0.01), gens, S, hard)
    (p * w).sum().backward()
    Z2 = Z.detach().clone().requires_grad_(True)
    phi2 = phi.detach().clone().requires_grad_(True)
    soft, ref_index = _reference(Z2, effective_temperature(phi2, 2.0, 0.01), seeds, S,
                                 torch.float64)
    (soft * w).sum().backward()  # straight-through's gradient is the relaxed one
    assert torch.equal(index, ref_index)
    if hard:
        assert torch.equal(p, torch.zeros_like(p).scatter_(-1, index[..., None], 1.0))
    else:
        torch.testing.assert_close(p, soft, rtol=0, atol=0)
    torch.testing.assert_close(Z.grad, Z2.grad)
    torch.testing.assert_close(phi.grad, phi2.grad)


def test_sampled_gumbel_softmax_passes_gradcheck():
    Z = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    tau = (torch.rand(2, 3, dtype=torch.float64) + 0.5).requires_grad_(True)

    def f(Z, tau):  # fresh generators each call: the same noise every evaluation
        gens = [torch.Generator().manual_seed(b) for b in range(2)]
        return sample_gumbel_softmax(Z, tau, gens, 2)[0]

    assert torch.autograd.gradcheck(f, (Z, tau))


def test_sampled_gumbel_softmax_anchor_sets_sample_zero_only():
    Z = torch.randn(2, 4, 30)
    anchor = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    gens = [torch.Generator().manual_seed(b) for b in range(2)]
    p, index = sample_gumbel_softmax(Z, torch.ones(2, 4), gens, 3, hard=True, anchor=anchor)
    _, free = _reference(Z, torch.ones(2, 4), [0, 1], 3, torch.float32)
    assert torch.equal(index[:, 0], anchor) and torch.equal(index[:, 1:], free[:, 1:])
    assert torch.equal(p[:, 0].argmax(-1), anchor) and torch.equal(p.sum(-1), torch.ones(2, 3, 4))


def test_sampled_gumbel_softmax_low_temperature_gradient_is_finite():
    # softmax underflows to exact zeros at tau = 1e-3; the temperature gradient must not be nan
    Z = torch.randn(1, 2, 40, requires_grad=True)
    tau = torch.full((1, 2), 1e-3, requires_grad=True)
    p, _ = sample_gumbel_softmax(Z, tau, [torch.Generator().manual_seed(0)], 2)
    (p * torch.randn_like(p)).sum().backward()
    assert torch.isfinite(Z.grad).all() and torch.isfinite(tau.grad).all()


@pytest.mark.parametrize("hard", [False, True])
def test_fused_embeddings_equal_the_product_with_the_same_gradients(hard):
    # embed=W returns p @ W without keeping a V-sized gradient; values and gradients as p @ W.
    B, S, N, V, d = 2, 3, 4, 40, 6
    W = torch.randn(V, d, dtype=torch.float64)
    Z = torch.randn(B, N, V, dtype=torch.float64, requires_grad=True)
    tau = (torch.rand(B, N, dtype=torch.float64) + 0.5).requires_grad_(True)
    w = torch.randn(B, S, N, d, dtype=torch.float64)
    anchor = torch.randint(V, (B, N))

    def run(embed):
        gens = [torch.Generator().manual_seed(b) for b in range(B)]
        out, index = sample_gumbel_softmax(Z, tau, gens, S, hard, anchor, embed)
        emb = out if embed is not None else out @ W
        grads = torch.autograd.grad((emb * w).sum(), (Z, tau))
        return emb.detach(), index, grads

    fused, plain = run(W), run(None)
    torch.testing.assert_close(fused[0], plain[0])
    assert torch.equal(fused[1], plain[1])
    for a, b in zip(fused[2], plain[2], strict=True):
        torch.testing.assert_close(a, b)

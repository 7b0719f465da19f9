import torch

from dlmi.model.estimators import effective_temperature, gumbel_noise, gumbel_softmax


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

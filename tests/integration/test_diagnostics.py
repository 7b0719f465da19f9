import pytest
import torch

from dlmi.cli import main
from dlmi.errors import UsageError
from dlmi.evaluation.diagnostics import parse_estimators, reference_gradient
from dlmi.methods.base import Batch, row_generators
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.objective import masked_cross_entropy


def test_parse_estimators():
    specs = parse_estimators("gs:1,learnable:1,decoupled:100,reinforce")
    assert [s.label for s in specs] == ["GS(τ=1)", "GS-L(τ0=1)", "GS-D(τ0=100)", "REINFORCE"]
    for bad in ("gs", "warm:1", "gs:x", ""):
        with pytest.raises(UsageError):
            parse_estimators(bad)


def test_reference_gradient_matches_exact_expectation(tiny_lm):
    # With a one-token prompt, E_x L(x) is a finite sum over the vocabulary: compare exactly.
    dlm = DifferentiableLM(tiny_lm)
    V = dlm.vocab_size
    target = torch.tensor([[10, 20, 30]])
    mask = torch.ones_like(target, dtype=torch.bool)
    batch = Batch(target, mask, row_generators([0], "cpu"))
    Z = torch.randn(1, V, generator=torch.Generator().manual_seed(0)) * 2
    all_x = torch.arange(V)[:, None]
    with torch.no_grad():
        logits = dlm.teacher_forced_logits(dlm.hard_embed(all_x), target.expand(V, -1))
        L = masked_cross_entropy(logits, target.expand(V, -1), mask.expand(V, -1))  # (V,)
    p = torch.softmax(Z[0], -1)
    exact = p * (L - (p * L).sum())  # d/dZ sum_x p(x) L(x)
    est, var_over_k = reference_gradient(dlm, Z, batch, 20_000, torch.Generator().manual_seed(1))
    err = (est[0] - exact).abs()
    assert (err <= 5 * var_over_k[0].sqrt() + 1e-4).all()
    assert err.max() < 0.1 * exact.abs().max()


def test_diagnose_cli_writes_rows_and_violins(tmp_path, capsys):
    code = main(["diagnose", "--model", "tiny-random", "--target", "abcd", "--estimators",
                 "gs:1,decoupled:100,reinforce", "--steps", "2", "--repeats", "3",
                 "--reference-samples", "32", "--prompt-length", "3", "--out", str(tmp_path),
                 "--quiet"])
    assert code == 0
    rows = (tmp_path / "gradient_diagnostics.jsonl").read_text().splitlines()
    assert len(rows) == 3 * 2
    for ext in ("png", "svg"):
        assert (tmp_path / f"gradient_diagnostics.{ext}").stat().st_size > 1000

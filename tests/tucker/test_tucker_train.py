"""The training loop: schedule, exact resume from checkpoints, checkpoint contents, DDP under torchrun."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from structlab.tucker.checkpoint import load_checkpoint, save_checkpoint
from structlab.tucker.gpt import GPT, GPTConfig
from structlab.tucker.text import CharVocab, LanguageModelTask, fixed_windows
from structlab.tucker.train import TrainConfig, evaluate, fit, learning_rate

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20
VOCAB = CharVocab("".join(sorted(set(TEXT))))


def tiny_task() -> LanguageModelTask:
    tokens = VOCAB.encode(TEXT).to(torch.uint8)
    half = len(tokens) // 2
    return LanguageModelTask(tokens[:half], tokens[half:], block_size=16, eval_windows=8)


def tiny_model(spec: str = "tucker:2,16,8", dropout: float = 0.1) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB.size, block_size=16, n_layer=2, d_model=32, attention=spec, dropout=dropout))


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_min_lr() -> None:
    config = TrainConfig(steps=110, lr=1.0, min_lr=0.1, warmup=10)
    assert [learning_rate(s, config) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert learning_rate(10, config) == pytest.approx(1.0)
    assert learning_rate(60, config) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(110, config) == pytest.approx(0.1)


@pytest.mark.parametrize("spec", ["mha", "tucker:2,16,8"])
def test_checkpoint_resume_gives_identical_next_step_loss_and_weights(tmp_path: Path, spec: str) -> None:
    # One run of 8 steps against a run killed after step 4 and resumed from its checkpoint into fresh
    # objects: identical per-step losses after the resume and bit-identical weights at the end (dropout
    # is on, so the random-number states must be restored too).
    config = TrainConfig(steps=8, batch_size=4, lr=3e-3, warmup=2, eval_every=1, seed=5)
    straight = tiny_model(spec)
    whole = fit(straight, tiny_task(), config)

    path = tmp_path / "run.safetensors"
    first = TrainConfig(**{**config.__dict__, "checkpoint": str(path)})
    _fit_until(tiny_model(spec), first, stop_after=4)
    assert load_checkpoint(path).step == 4
    resumed_model = tiny_model(spec)
    torch.manual_seed(123)  # whatever the global RNG holds now, the checkpoint's state wins
    resumed = fit(resumed_model, tiny_task(), first)
    assert [h["step"] for h in resumed.history] == list(range(1, 9))
    assert resumed.history[4]["train_loss"] == whole.history[4]["train_loss"]  # the next step after the resume
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in whole.history]
    for (name, a), b in zip(straight.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def _fit_until(model: GPT, config: TrainConfig, stop_after: int) -> None:
    """Train like ``fit`` but stop (as if killed) right after the checkpoint at ``stop_after``."""

    class Stop(Exception):
        pass

    task = tiny_task()
    original = task.sample
    calls = {"n": 0}

    def sample(generator: torch.Generator, batch_size: int):
        if calls["n"] == stop_after:
            raise Stop
        calls["n"] += 1
        return original(generator, batch_size)

    task.sample = sample  # type: ignore[method-assign]
    with pytest.raises(Stop):
        fit(model, task, config)


def test_checkpoint_restores_model_optimizer_and_rng(tmp_path: Path) -> None:
    model = tiny_model("mla:16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(2, 8, dtype=torch.long)).sum().backward()
    optimizer.step()
    rng = {"data": torch.Generator().manual_seed(7).get_state()}
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, step=3, optimizer=optimizer, rng=rng, history=[{"step": 3}], extra={"vocab": "ab"})
    saved = load_checkpoint(path)
    assert saved.kind == "gpt" and saved.step == 3 and saved.extra == {"vocab": "ab"}
    assert saved.model.config == model.config
    assert saved.model.lm_head.weight is saved.model.wte.weight  # tied weights stored once, re-tied
    for a, b in zip(model.state_dict().values(), saved.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    expected = optimizer.state_dict()
    assert saved.optimizer["param_groups"] == [{**g, "betas": list(g["betas"])} for g in expected["param_groups"]]
    for index, state in expected["state"].items():
        for key, value in state.items():
            assert torch.equal(saved.optimizer["state"][index][key], value)
    assert torch.equal(saved.rng["data"], rng["data"])


def test_loading_a_file_that_is_not_a_checkpoint_names_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"not safetensors at all")
    from structlab.errors import StructlabError

    with pytest.raises(StructlabError, match="bad.safetensors"):
        load_checkpoint(path)


def test_resuming_into_a_model_of_another_configuration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.safetensors"
    config = TrainConfig(steps=2, batch_size=2, eval_every=2, checkpoint=str(path))
    fit(tiny_model("mha"), tiny_task(), config)
    with pytest.raises(ValueError, match="another configuration"):
        fit(tiny_model("gqa:2"), tiny_task(), TrainConfig(steps=4, batch_size=2, eval_every=2, checkpoint=str(path)))


def test_evaluation_is_the_mean_cross_entropy_over_the_fixed_windows() -> None:
    task, model = tiny_task(), tiny_model(dropout=0.0).eval()
    x, y = task.eval_set
    expected = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    assert evaluate(model, task, batch_size=3)["loss"] == pytest.approx(expected, rel=1e-6)


def test_fixed_windows_are_targets_shifted_by_one() -> None:
    tokens = torch.arange(100, dtype=torch.uint8)
    x, y = fixed_windows(tokens, 10, 5)
    assert x.shape == y.shape == (5, 10)
    assert torch.equal(x[:, 1:], y[:, :-1]) and x[0, 0] == 0 and y[-1, -1] == 99


def test_training_learns_more_than_character_frequencies() -> None:
    counts = Counter(TEXT)
    unigram_entropy = -sum(c / len(TEXT) * math.log(c / len(TEXT)) for c in counts.values())
    config = TrainConfig(steps=30, batch_size=8, lr=1e-2, warmup=5, eval_every=30)
    result = fit(tiny_model(dropout=0.0), tiny_task(), config)
    assert result.history[-1]["val_loss"] < unigram_entropy - 0.3


def _cli(*args: str, nproc: int = 1, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = [sys.executable]
    if nproc > 1:
        base += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return subprocess.run([*base, "-m", "structlab.cli", "--quiet", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300, check=False)


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_follows_the_single_process_trajectory(tmp_path: Path) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from structlab import data

    if data.find("shakespeare") is None:
        pytest.skip("the shakespeare data set is absent (set STRUCTLAB_DATA)")
    common = ["tucker", "train", "--attention", "tucker:2,16,8", "--d-model", "32", "--layers", "2",
              "--block-size", "32", "--steps", "6", "--batch-size", "8", "--eval-every", "3",
              "--eval-examples", "8", "--device", "cpu"]
    single = _cli(*common, "--checkpoint", str(tmp_path / "one.safetensors"))
    assert single.returncode == 0, single.stderr
    ddp = _cli(*common, "--checkpoint", str(tmp_path / "two.safetensors"), nproc=2)
    assert ddp.returncode == 0, ddp.stderr
    one, two = load_checkpoint(tmp_path / "one.safetensors"), load_checkpoint(tmp_path / "two.safetensors")
    assert one.step == two.step == 6
    for (name, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert one.history[-1]["val_loss"] == pytest.approx(two.history[-1]["val_loss"], rel=1e-4)

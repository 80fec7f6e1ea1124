"""``structlab tucker``: train, resume, eval, sample, ranks, compress and fine-tune, through the real
command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from structlab import data
from structlab.cli import main
from structlab.tucker.checkpoint import load_checkpoint

needs_shakespeare = pytest.mark.skipif(data.find("shakespeare") is None,
                                       reason="the shakespeare data set is absent (set STRUCTLAB_DATA)")
needs_digits = pytest.mark.skipif(data.find("digits") is None, reason="scikit-learn (digits) is not installed")

TINY_GPT = ["--attention", "tucker:2,16,8", "--d-model", "32", "--layers", "1", "--block-size", "32",
            "--batch-size", "4", "--eval-every", "4", "--eval-examples", "4", "--device", "cpu"]


@needs_shakespeare
def test_train_resume_eval_sample_and_ranks_of_a_language_model(tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "lm.safetensors"
    assert main(["--quiet", "tucker", "train", *TINY_GPT, "--steps", "4", "--checkpoint", str(checkpoint)]) == 0
    assert load_checkpoint(checkpoint).step == 4
    # The same command with more steps resumes from the checkpoint.
    assert main(["--quiet", "tucker", "train", *TINY_GPT, "--steps", "8", "--checkpoint", str(checkpoint)]) == 0
    saved = load_checkpoint(checkpoint)
    assert saved.step == 8 and [h["step"] for h in saved.history] == [4, 8]
    capsys.readouterr()

    assert main(["tucker", "eval", str(checkpoint), "--json", "--eval-examples", "4", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["attention"] == "tucker:2,16,8" and report["val_loss"] > 0
    assert report["attention_parameters"] == 2 * (2 * 16 * 8 + 4 * 2 + 32 * (16 + 8))  # 4 heads
    assert report["kv_cache_bytes_per_token"] == (8 + 8) * 4  # key and value latents, float32

    assert main(["tucker", "sample", str(checkpoint), "--prompt", "ROMEO:", "--tokens", "20", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) >= 20

    assert main(["tucker", "ranks", str(checkpoint), "--json"]) == 0
    ranks = json.loads(capsys.readouterr().out)
    assert ranks["layers"][0]["theorem"] == [[2, 16, 8], [2, 16, 8]]


@needs_shakespeare
def test_resuming_with_another_model_is_an_error_on_one_line(tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "lm.safetensors"
    assert main(["--quiet", "tucker", "train", *TINY_GPT, "--steps", "4", "--checkpoint", str(checkpoint)]) == 0
    other = [a if a != "tucker:2,16,8" else "mha" for a in TINY_GPT]
    assert main(["--quiet", "tucker", "train", *other, "--steps", "8", "--checkpoint", str(checkpoint)]) == 2
    assert "another configuration" in capsys.readouterr().err


@needs_digits
def test_compress_a_vit_then_fine_tune_from_the_compressed_checkpoint(tmp_path: Path, capsys) -> None:
    vit = tmp_path / "vit.safetensors"
    common = ["--batch-size", "32", "--eval-every", "10", "--eval-examples", "0", "--device", "cpu"]
    assert main(["--quiet", "tucker", "train", "--model", "vit", "--data", "digits", "--d-model", "16", "--heads", "2",
                 "--layers", "1", "--steps", "10", *common, "--checkpoint", str(vit)]) == 0
    compressed = tmp_path / "vit-tucker.safetensors"
    capsys.readouterr()
    assert main(["tucker", "compress", str(vit), "--ranks", "2,16,16", "--method", "hooi", "--out", str(compressed),
                 "--eval-examples", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # Full ranks (2 heads, d = 16): the compression is exact, so accuracy cannot change.
    before, after = out.split("val_accuracy: ")[1].split()[0:3:2]
    assert before == after
    saved = load_checkpoint(compressed)
    assert saved.model.config.attention.label == "tucker:2,16,16"
    tuned = tmp_path / "vit-ft.safetensors"
    assert main(["--quiet", "tucker", "train", "--init", str(compressed), "--steps", "5", *common,
                 "--checkpoint", str(tuned)]) == 0
    assert load_checkpoint(tuned).model.config.attention.label == "tucker:2,16,16"


def test_bad_attention_spec_is_reported_on_one_line(tmp_path: Path, capsys) -> None:
    code = main(["tucker", "train", "--attention", "tucker:1,2", "--checkpoint", str(tmp_path / "x.safetensors")])
    assert code == 2
    assert "attention='tucker:1,2'" in capsys.readouterr().err


def _train_tiny(path: Path, *options: str) -> None:
    assert main(["--quiet", "tucker", "train", *TINY_GPT, "--steps", "4", *options, "--checkpoint", str(path)]) == 0


@needs_shakespeare
def test_eval_without_options_reproduces_the_training_runs_validation_loss(tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "lm.safetensors"
    _train_tiny(checkpoint)  # evaluates on 4 windows (TINY_GPT's --eval-examples)
    logged = load_checkpoint(checkpoint).history[-1]["val_loss"]
    capsys.readouterr()
    assert main(["tucker", "eval", str(checkpoint), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["val_loss"] == pytest.approx(logged, rel=1e-12)
    assert report["eval_examples"] == 4


@needs_shakespeare
def test_compress_accepts_a_tucker_checkpoint_of_other_ranks(tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "lm.safetensors"
    _train_tiny(checkpoint, "--no-rope")
    logged = load_checkpoint(checkpoint).history[-1]["val_loss"]
    same = tmp_path / "same.safetensors"
    capsys.readouterr()
    # At the checkpoint's own ranks the compression is exact: the loss before and after is training's.
    assert main(["tucker", "compress", str(checkpoint), "--ranks", "2,16,8", "--out", str(same),
                 "--device", "cpu"]) == 0
    before, after = capsys.readouterr().out.split("val_loss: ")[1].split()[0:3:2]
    assert float(before) == pytest.approx(logged, abs=5e-5) and float(after) == pytest.approx(logged, abs=5e-4)
    smaller = tmp_path / "small.safetensors"
    assert main(["tucker", "compress", str(checkpoint), "--ranks", "2,8,4", "--method", "hooi", "--out", str(smaller),
                 "--device", "cpu"]) == 0
    saved, source = load_checkpoint(smaller), load_checkpoint(checkpoint)
    assert saved.model.config.attention.label == "tucker:2,8,4"
    assert torch.equal(saved.model.wte.weight, source.model.wte.weight)  # the rest of the model carried over
    assert torch.equal(saved.model.blocks[0].mlp.fc.weight, source.model.blocks[0].mlp.fc.weight)


@needs_shakespeare
@pytest.mark.parametrize("attention", ["tucker:2,16,8", "mha"])
def test_compress_refuses_a_rope_model_with_the_documented_reason(tmp_path: Path, capsys, attention: str) -> None:
    checkpoint, out = tmp_path / "lm.safetensors", tmp_path / "c.safetensors"
    _train_tiny(checkpoint, "--attention", attention)
    capsys.readouterr()
    assert main(["tucker", "compress", str(checkpoint), "--ranks", "2,8,4", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "RoPE" in err and "--no-rope" in err and "Traceback" not in err
    assert not out.exists()


@needs_shakespeare
def test_a_checkpoint_with_a_nan_weight_is_refused_naming_the_weight(tmp_path: Path, capsys) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    checkpoint = tmp_path / "lm.safetensors"
    _train_tiny(checkpoint)
    tensors = load_file(checkpoint)
    with safe_open(checkpoint, "pt") as handle:
        metadata = handle.metadata()
    tensors["model.blocks.0.attn.U_k"][3, 1] = float("nan")
    save_file(tensors, checkpoint, metadata=metadata)
    capsys.readouterr()
    for command in (["eval", str(checkpoint)], ["ranks", str(checkpoint)]):
        assert main(["tucker", *command]) == 2
        err = capsys.readouterr().err
        assert "'blocks.0.attn.U_k'" in err and "NaN" in err

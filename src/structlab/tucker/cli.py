"""``structlab tucker``: train, evaluate and sample models with any attention layer; show the Tucker
ranks of a trained model's layers; compress them into Tucker Attention.

Models are saved as safetensors checkpoints (:mod:`structlab.tucker.checkpoint`) that hold their
configuration, so ``eval``, ``sample``, ``ranks`` and ``compress`` need only the file. Training resumes
from ``--checkpoint`` when it exists, and runs under ``torchrun`` with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from structlab import runtime
from structlab.cli import add_command

# Training's evaluation set size when --eval-examples is not given. Checkpoints record the size they were
# evaluated with (``extra["eval_examples"]``); this default stands in for checkpoints written before that.
TRAIN_EVAL_EXAMPLES = 128


def register(subparsers: Any) -> None:
    """Add the ``tucker`` command group to the ``structlab`` command line."""
    tucker = add_command(
        subparsers, "tucker", "Tucker Attention: train, evaluate, sample; rank analysis and compression",
        examples="""
            structlab tucker train --attention tucker:4,32,16 --steps 2000 --checkpoint runs/lm.safetensors
            structlab tucker sample runs/lm.safetensors --prompt "ROMEO:" --tokens 300
            structlab tucker ranks runs/lm.safetensors
            structlab reproduce --only tucker
        """,
    )
    sub = tucker.add_subparsers(dest="tucker_command", required=True, metavar="COMMAND")
    _train_command(sub)
    _eval_command(sub)
    _sample_command(sub)
    _ranks_command(sub)
    _compress_command(sub)


def _train_command(sub: Any) -> None:
    train = add_command(
        sub, "train", "train a character-level GPT on Shakespeare or a ViT on Fashion-MNIST (or digits)",
        examples="""
            structlab tucker train --attention mha --d-model 128 --steps 2000 --checkpoint runs/mha.safetensors
            structlab tucker train --attention gqa:1 --heads 8 --d-model 256 --checkpoint runs/gqa.safetensors
            structlab tucker train --attention mla:32 --checkpoint runs/mla.safetensors
            structlab tucker train --model vit --attention tucker:4,16,8 --steps 1500 --checkpoint runs/vit.safetensors
            structlab tucker train --init runs/vit-tucker.safetensors --steps 300 --checkpoint runs/vit-ft.safetensors
            torchrun --nproc_per_node 2 -m structlab.cli tucker train --checkpoint runs/ddp.safetensors
        """,
        description=(
            "Train a model; resumes from --checkpoint when the file exists (same model and settings). "
            "Attention: mha, gqa:N_KV, mla:D_C[,D_CQ], tucker:R1,R2,R3[/V1,V2,V3]."
        ),
    )
    train.add_argument("--model", choices=("gpt", "vit"), default="gpt", help="decoder language model or ViT")
    train.add_argument("--data", choices=("shakespeare", "fashion-mnist", "digits"),
                       help="data set (default: shakespeare for gpt, fashion-mnist for vit)")
    train.add_argument("--attention", default="mha", help="attention layer and sizes (default: mha)")
    train.add_argument("--heads", type=int, default=4, help="attention heads n_H (default: 4)")
    train.add_argument("--d-model", type=int, help="model width (default: 128 for gpt, 64 for vit)")
    train.add_argument("--layers", type=int, default=4, help="transformer blocks (default: 4)")
    train.add_argument("--block-size", type=int, default=256, help="gpt: context length (default: 256)")
    train.add_argument("--patch-size", type=int, help="vit: patch size in pixels (default: 7; 2 for digits)")
    train.add_argument("--no-rope", action="store_true", help="gpt: learned positions instead of RoPE")
    train.add_argument("--dropout", type=float, default=0.0, help="dropout probability (default: 0)")
    train.add_argument("--init", type=Path, help="start from this checkpoint's model (e.g. a compressed one)")
    _training_options(train)
    train.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file (safetensors) to write/resume")
    train.set_defaults(func=_train)


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: 2000)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size (default: 16)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up steps (default: 50)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default: 0.1)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0 for none (default: 1)")
    parser.add_argument("--eval-every", type=int, default=200, help="evaluate and checkpoint every N steps")
    parser.add_argument("--eval-examples", type=int, default=TRAIN_EVAL_EXAMPLES,
                        help=f"validation windows (gpt) or test images (vit; 0 = all) (default: {TRAIN_EVAL_EXAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order")
    _device_option(parser)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")


def _eval_examples_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval-examples", type=int, default=None,
        help="validation windows (gpt) or test images (vit; 0 = all) (default: the evaluation set of the "
        f"training run, so the numbers equal its val_* ones; {TRAIN_EVAL_EXAMPLES} for older checkpoints)",
    )


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")


def _device(name: str) -> str:
    return runtime.default_device() if name == "auto" else name


def _eval_command(sub: Any) -> None:
    ev = add_command(
        sub, "eval", "evaluate a checkpoint on its validation data; show parameters and KV-cache size",
        examples="structlab tucker eval runs/lm.safetensors\nstructlab tucker eval runs/vit.safetensors --json",
    )
    ev.add_argument("checkpoint", type=Path)
    _eval_examples_option(ev)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    _device_option(ev)
    ev.set_defaults(func=_eval)


def _sample_command(sub: Any) -> None:
    sample = add_command(
        sub, "sample", "generate text from a language-model checkpoint (KV-cached decoding)",
        examples="""
            structlab tucker sample runs/lm.safetensors --prompt "ROMEO:" --tokens 300
            structlab tucker sample runs/lm.safetensors --temperature 0 --tokens 100
        """,
    )
    sample.add_argument("checkpoint", type=Path)
    sample.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    sample.add_argument("--tokens", type=int, default=300, help="characters to generate (default: 300)")
    sample.add_argument("--temperature", type=float, default=0.8, help="0 for greedy (default: 0.8)")
    sample.add_argument("--top-k", type=int, help="sample among the k most likely characters")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--no-cache", action="store_true", help="recompute the whole context at every step")
    _device_option(sample)
    sample.set_defaults(func=_sample)


def _ranks_command(sub: Any) -> None:
    ranks = add_command(
        sub, "ranks", "Tucker ranks and mode spectra of every attention layer of a checkpoint",
        examples="structlab tucker ranks runs/lm.safetensors\nstructlab tucker ranks runs/lm.safetensors --energy 0.9",
        description=(
            "Per layer: the ranks the paper's theorem gives for its structure, the numerical multilinear "
            "ranks of W_qk (head, query, key) and W_vo (head, output, value) at --rtol, and the ranks that "
            "keep an --energy fraction of each mode's spectrum."
        ),
    )
    ranks.add_argument("checkpoint", type=Path)
    ranks.add_argument("--rtol", type=float, default=1e-6, help="relative singular-value threshold (default: 1e-6)")
    ranks.add_argument("--energy", type=float, default=0.99,
                       help="energy fraction for the energy ranks (default: 0.99)")
    ranks.add_argument("--json", action="store_true", help="print one JSON object")
    ranks.set_defaults(func=_ranks)


def _compress_command(sub: Any) -> None:
    comp = add_command(
        sub, "compress", "replace every attention layer of a checkpoint by its Tucker compression",
        examples="""
            structlab tucker compress runs/vit.safetensors --ranks 4,16,8 --out runs/vit-tucker.safetensors
            structlab tucker compress runs/vit.safetensors --ranks 4,16,8/4,16,16 --method hooi --out runs/c.safetensors
        """,
        description=(
            "HOSVD or HOOI of each layer's W_qk and W_vo at the given ranks (models without RoPE: a new "
            "key basis does not commute with RoPE's rotation). Reports the relative tensor errors and the "
            "validation metrics before and after; fine-tune with `train --init OUT`."
        ),
    )
    comp.add_argument("checkpoint", type=Path)
    comp.add_argument("--ranks", required=True, help="R1,R2,R3 for both sides or R1,R2,R3/V1,V2,V3")
    comp.add_argument("--method", choices=("hosvd", "hooi"), default="hosvd")
    comp.add_argument("--out", type=Path, required=True, help="where to write the compressed checkpoint")
    _eval_examples_option(comp)
    _device_option(comp)
    comp.set_defaults(func=_compress)


# --- data -------------------------------------------------------------------------------------------


def make_task(
    kind: str, data_name: str, block_size: int = 256, eval_examples: int = TRAIN_EVAL_EXAMPLES
) -> tuple[Any, dict[str, Any]]:
    """The training task for a model ``kind`` on data set ``data_name`` and what a checkpoint must
    remember about the data (``extra``), including the size of the evaluation set, so that ``eval`` and
    ``compress`` evaluate on the same windows or images as training did."""
    if not isinstance(eval_examples, int) or eval_examples < 0:
        raise ValueError(f"eval_examples={eval_examples!r}: expected a non-negative int (0 = all)")
    if kind == "gpt":
        if data_name != "shakespeare":
            raise ValueError(f"data={data_name!r}: the gpt trains on 'shakespeare'")
        from structlab.tucker.text import LanguageModelTask, load_shakespeare

        corpus = load_shakespeare()
        task = LanguageModelTask(corpus.train, corpus.val, block_size, eval_examples or 512)
        extra = {"data": "shakespeare", "vocab": corpus.vocab.chars, "val_plays": list(corpus.val_plays)}
        return task, {**extra, "eval_examples": eval_examples}
    if data_name not in ("fashion-mnist", "digits"):
        raise ValueError(f"data={data_name!r}: the vit trains on 'fashion-mnist' or 'digits'")
    from structlab.tucker.vit import ImageClassificationTask, load_images

    train_x, train_y, test_x, test_y = load_images(data_name)
    if eval_examples:
        test_x, test_y = test_x[:eval_examples], test_y[:eval_examples]
    scale = 255.0 if data_name == "fashion-mnist" else 16.0
    task = ImageClassificationTask(train_x, train_y, test_x, test_y, scale=scale)
    return task, {"data": data_name, "eval_examples": eval_examples}


# --- commands ---------------------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    from structlab.tucker.blocks import AttentionSpec
    from structlab.tucker.checkpoint import load_checkpoint
    from structlab.tucker.gpt import GPT, GPTConfig
    from structlab.tucker.train import TrainConfig, fit, process_from_environment
    from structlab.tucker.vit import ViT, ViTConfig

    device = _device(args.device)
    process = process_from_environment(device)
    runtime.seed_everything(args.seed)
    if args.init is not None:
        initial = load_checkpoint(args.init)
        model, kind = initial.model, initial.kind
        data_name = args.data or initial.extra.get("data", "shakespeare")
    else:
        kind = args.model
        data_name = args.data or ("shakespeare" if kind == "gpt" else "fashion-mnist")
        spec = AttentionSpec.parse(args.attention, args.heads)
        if kind == "gpt":
            model = None  # the vocabulary size comes from the data
        else:
            image_size, patch_size = (28, 7) if data_name == "fashion-mnist" else (8, 2)
            model = ViT(ViTConfig(image_size=image_size, patch_size=args.patch_size or patch_size,
                                  n_layer=args.layers, d_model=args.d_model or 64, attention=spec,
                                  dropout=args.dropout))
    block_size = model.config.block_size if isinstance(model, GPT) else args.block_size
    task, extra = make_task(kind, data_name, block_size, args.eval_examples)
    if model is None:
        model = GPT(GPTConfig(vocab_size=len(extra["vocab"]), block_size=args.block_size, n_layer=args.layers,
                              d_model=args.d_model or 128, attention=spec, rope=not args.no_rope, dropout=args.dropout))
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, eval_every=args.eval_every, seed=args.seed,
        device=device, autocast=args.bf16, checkpoint=str(args.checkpoint),
    )
    try:
        result = fit(model, task, config, process, desc=f"{kind} {model.config.attention.label}", extra=extra)
    finally:
        if process.distributed:
            torch.distributed.destroy_process_group()
    if process.is_main:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.final.items())
        print(f"{args.checkpoint}: step {result.steps}, {metrics}")
    return 0


def _load_for_eval(path: Path, device: str, eval_examples: int | None) -> tuple[Any, Any]:
    """The checkpoint at ``path`` and its evaluation task: the one its training run evaluated on unless
    ``eval_examples`` asks for another size."""
    from structlab.tucker.checkpoint import load_checkpoint

    saved = load_checkpoint(path, device=device)
    if eval_examples is None:
        eval_examples = saved.extra.get("eval_examples", TRAIN_EVAL_EXAMPLES)
    block = getattr(saved.model.config, "block_size", 256)
    task, _ = make_task(saved.kind, saved.extra.get("data", "shakespeare"), block, eval_examples)
    return saved, task


def evaluate_checkpoint(model: torch.nn.Module, saved: Any, task: Any, device: str) -> dict[str, float]:
    """Training's evaluation (:func:`~structlab.tucker.train.evaluate`, with the run's autocast setting)
    of ``model`` on ``task``: for the checkpoint's own model and evaluation set this reproduces the
    ``val_*`` values of its last history entry."""
    from structlab.tucker.train import evaluate

    return evaluate(model, task, device=device, autocast=bool(saved.train_config.get("autocast", False)))


def _eval(args: argparse.Namespace) -> int:
    from structlab.tucker import attention_parameters, kv_cache_bytes

    device = _device(args.device)
    saved, task = _load_for_eval(args.checkpoint, device, args.eval_examples)
    model = saved.model
    layers = [block.attn for block in model.blocks]
    report = {
        "checkpoint": str(args.checkpoint),
        "kind": saved.kind,
        "attention": model.config.attention.label,
        "step": saved.step,
        "eval_examples": len(task.eval_set[1]),
        **{f"val_{k}": v for k, v in evaluate_checkpoint(model, saved, task, device).items()},
        "parameters": sum(p.numel() for p in model.parameters()),
        "attention_parameters": sum(attention_parameters(a) for a in layers),
    }
    if saved.kind == "gpt":
        report["kv_cache_bytes_per_token"] = sum(kv_cache_bytes(a, 1, torch.float32) for a in layers)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from structlab.tucker.checkpoint import load_checkpoint
    from structlab.tucker.text import CharVocab

    device = _device(args.device)
    saved = load_checkpoint(args.checkpoint, device=device)
    if saved.kind != "gpt" or "vocab" not in saved.extra:
        raise ValueError(
            f"checkpoint={args.checkpoint}: a {saved.kind} without a vocabulary; expected a language model"
        )
    vocab = CharVocab(saved.extra["vocab"])
    prompt = vocab.encode(args.prompt)[None].to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    out = saved.model.generate(prompt, args.tokens, temperature=args.temperature, top_k=args.top_k,
                               generator=generator, use_cache=not args.no_cache)
    print(vocab.decode(out[0].cpu()))
    return 0


def layer_ranks(module: torch.nn.Module, rtol: float, energy_fraction: float) -> dict[str, Any]:
    """Theorem ranks, numerical ranks at ``rtol`` and ``energy_fraction``-energy ranks of one layer."""
    from structlab.tucker import energy, mode_spectra, theoretical_ranks, tucker_ranks

    if not 0 < energy_fraction <= 1:
        raise ValueError(f"energy={energy_fraction!r}: expected a fraction in (0, 1]")
    spectra = mode_spectra(module)
    energy_ranks = [[int((energy(s) < energy_fraction - 1e-12).sum()) + 1 for s in side] for side in spectra]
    return {
        "theorem": theoretical_ranks(module),
        "numerical": tucker_ranks(module, rtol=rtol),
        "energy": tuple(tuple(r) for r in energy_ranks),
    }


def _ranks(args: argparse.Namespace) -> int:
    from structlab.tucker import attention_parameters
    from structlab.tucker.checkpoint import load_checkpoint

    saved = load_checkpoint(args.checkpoint)
    rows = []
    for i, block in enumerate(saved.model.blocks):
        info = layer_ranks(block.attn, args.rtol, args.energy)
        rows.append({"layer": i, "attention_parameters": attention_parameters(block.attn), **info})
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "attention": saved.model.config.attention.label,
                          "rtol": args.rtol, "energy": args.energy, "layers": rows}))
        return 0
    print(f"{args.checkpoint}: {saved.model.config.attention.label}; W_qk modes (head, query, key), "
          f"W_vo modes (head, output, value)")
    headers = ("theorem qk / vo", f"rtol {args.rtol:g}", f"{args.energy:.0%} energy")
    print(f"{'layer':>5}  {'params':>8}  " + "  ".join(f"{h:<28}" for h in headers))
    for row in rows:
        cells = ["{} / {}".format(*(",".join(map(str, t)) for t in row[k])) for k in ("theorem", "numerical", "energy")]
        print(f"{row['layer']:>5}  {row['attention_parameters']:>8}  {cells[0]:<28}  {cells[1]:<28}  {cells[2]:<28}")
    return 0


def parse_ranks(text: str) -> tuple[int, int, int] | tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``"4,16,8"`` -> (4, 16, 8); ``"4,16,8/4,16,16"`` -> ((4, 16, 8), (4, 16, 16))."""
    try:
        sides = [tuple(int(r) for r in side.split(",")) for side in text.split("/")]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or any(len(s) != 3 for s in sides):
        raise ValueError(f"ranks={text!r}: expected R1,R2,R3 or R1,R2,R3/V1,V2,V3")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])  # type: ignore[return-value]


def _compress(args: argparse.Namespace) -> int:
    from structlab.tucker import attention_parameters, compress, relative_errors
    from structlab.tucker.blocks import AttentionSpec
    from structlab.tucker.checkpoint import build_model, save_checkpoint

    device = _device(args.device)
    ranks = parse_ranks(args.ranks)
    qk, vo = ranks if isinstance(ranks[0], tuple) else (ranks, ranks)
    saved, task = _load_for_eval(args.checkpoint, device, args.eval_examples)
    model = saved.model
    if getattr(model.config, "rope", False):
        raise ValueError(
            f"checkpoint={args.checkpoint}: the model uses RoPE (a gpt trained without --no-rope); compress "
            "changes the key latent's basis, which does not commute with RoPE's rotation. Compress a model "
            "trained with --no-rope (or a vit)"
        )
    # Every layer first: a refusal (ranks, non-finite weights) comes before any evaluation.
    layers = [compress(block.attn, (qk, vo), method=args.method) for block in model.blocks]
    before = evaluate_checkpoint(model, saved, task, device)
    spec = AttentionSpec("tucker", model.config.attention.n_heads, ranks=qk, value_ranks=vo if vo != qk else None)
    compressed = build_model(saved.kind, {**asdict(model.config), "attention": spec}).to(device)
    # Everything but the attention layers, whose tensors have other names or shapes in the source (a
    # Tucker source at other ranks): load_state_dict(strict=False) skips names, not shapes.
    outside = {k: v for k, v in model.state_dict().items() if ".attn." not in k}
    missing, unexpected = compressed.load_state_dict(outside, strict=False)
    if unexpected or any(".attn." not in k for k in missing):
        raise AssertionError(f"compress: weights outside attention did not carry over ({missing}, {unexpected})")
    rows = []
    for i, (src, dst, layer) in enumerate(zip(model.blocks, compressed.blocks, layers, strict=True)):
        dst.attn = layer
        params = (attention_parameters(src.attn), attention_parameters(dst.attn))
        rows.append((i, *params, *relative_errors(src.attn, dst.attn)))
    after = evaluate_checkpoint(compressed, saved, task, device)
    save_checkpoint(args.out, compressed, extra=saved.extra)
    print(f"{'layer':>5}  {'params':>8} -> {'params':<8}  {'err W_qk':>9}  {'err W_vo':>9}")
    for i, p0, p1, e_qk, e_vo in rows:
        print(f"{i:>5}  {p0:>8} -> {p1:<8}  {e_qk:>9.4f}  {e_vo:>9.4f}")
    for name in before:
        print(f"val_{name}: {before[name]:.4f} -> {after[name]:.4f}")
    print(f"wrote {args.out} (fine-tune: structlab tucker train --init {args.out} --checkpoint ...)")
    return 0

"""The paper's two backbones against their published layer lists and parameter counts.

* EEGNeX: Chen et al., Biomed. Signal Process. Control 87, 105475 (2024); layer list transcribed from the
  authors' released Keras model ``EEGNeX_8_32`` (github.com/chenxiachan/EEGNeX, ``BenchmarkModels.py``), and
  braindecode's ``EEGNeX`` (``braindecode/models/eegnex.py``) as the variant it implements.
* PBT: Klein et al. 2025, the Patched Brain Transformer (github.com/timonkl/PatchedBrainTransformer,
  ``model.py``), as braindecode's ``PBT`` (``braindecode/models/patchedtransformer.py``) configures it.

Parameter counts are computed here from the published layer lists (an independent formula), not read from
our modules.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from structlab.subject.backbones import AvgPoolSame, EEGNeX
from structlab.subject.transformer import PatchedBrainTransformer


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layers(model: nn.Module) -> list[tuple]:
    """(kind, key hyper-parameters) of every layer with parameters or a shape effect, in order."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size, m.groups, m.dilation, m.bias is not None))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(("bn", m.num_features))
        elif isinstance(m, nn.ELU):
            out.append(("elu",))
        elif isinstance(m, AvgPoolSame):
            out.append(("pool", m.k))
        elif isinstance(m, nn.AvgPool2d):
            out.append(("pool", m.kernel_size[1]))
        elif isinstance(m, nn.Dropout):
            out.append(("dropout", m.p))
        elif isinstance(m, nn.Linear):
            out.append(("dense", m.in_features, m.out_features))
    return out


def test_eegnex_matches_the_authors_layer_list_and_parameter_count():
    C, T, n_out = 22, 1000, 4  # BCI Competition IV 2a at 250 Hz, 4 s
    model = EEGNeX(C, n_out, T)
    t1 = -(-T // 4)  # Keras AveragePooling2D(padding="same"): ceil
    t2 = -(-t1 // 4)
    expected = [  # EEGNeX_8_32, BenchmarkModels.py (BatchNormalization per feature map, as the paper describes)
        ("conv", 1, 8, (1, 64), 1, (1, 1), False), ("bn", 8), ("elu",),
        ("conv", 8, 32, (1, 64), 1, (1, 1), False), ("bn", 32),
        ("conv", 32, 64, (C, 1), 32, (1, 1), False), ("bn", 64), ("elu",), ("pool", 4), ("dropout", 0.5),
        ("conv", 64, 32, (1, 16), 1, (1, 2), False), ("bn", 32),
        ("conv", 32, 8, (1, 16), 1, (1, 4), False), ("bn", 8), ("elu",), ("pool", 4), ("dropout", 0.5),
        ("dense", 8 * t2, n_out),
    ]
    assert _layers(model) == expected
    convs = 8 * 64 + 32 * 8 * 64 + 64 * C + 32 * 64 * 16 + 8 * 32 * 16
    batch_norms = 2 * (8 + 32 + 64 + 32 + 8)
    assert _count(model) == convs + batch_norms + 8 * t2 * n_out + n_out
    assert model(torch.randn(2, C, T)).shape == (2, n_out)


def test_eegnex_braindecode_variant_matches_braindecodes_layer_list_and_count():
    C, T, n_out = 22, 1000, 4
    model = EEGNeX(C, n_out, T, elu_block_1=False, avg_pool_block5=8, pool="braindecode")
    in_features = 8 * (T // 32)  # braindecode: self.in_features = filter_1 * (n_times // filter_2)
    assert model.final_layer.in_features == in_features
    assert [layer for layer in _layers(model) if layer[0] != "elu"] == [
        layer for layer in _layers(EEGNeX(C, n_out, T, avg_pool_block5=8)) if layer[0] != "elu"][:-1] + [
        ("dense", in_features, n_out)]
    assert sum(1 for layer in _layers(model) if layer[0] == "elu") == 2
    convs = 8 * 64 + 32 * 8 * 64 + 64 * C + 32 * 64 * 16 + 8 * 32 * 16
    assert _count(model) == convs + 2 * (8 + 32 + 64 + 32 + 8) + in_features * n_out + n_out


def test_same_pooling_averages_the_samples_inside_the_input_as_tensorflow_does():
    x = torch.arange(10.0).reshape(1, 1, 1, 10)
    pool = AvgPoolSame(4, 10)  # TensorFlow: 3 windows, 2 missing samples, one before and one after
    expected = torch.tensor([(0 + 1 + 2) / 3, (3 + 4 + 5 + 6) / 4, (7 + 8 + 9) / 3])
    torch.testing.assert_close(pool(x).flatten(), expected)
    torch.testing.assert_close(AvgPoolSame(4, 8)(x[..., :8]), F.avg_pool2d(x[..., :8], (1, 4)))


def test_pbt_matches_the_published_layer_list_and_parameter_count():
    C, T, n_out = 8, 512, 4
    d, blocks, k, patch = 128, 4, 8, 64  # braindecode's PBT defaults (d_model, n_blocks, tokens, d_input)
    model = PatchedBrainTransformer(C, n_out, T)
    linears = [(name, m.in_features, m.out_features, m.bias is not None) for name, m in model.named_modules()
               if isinstance(m, nn.Linear)]
    expected = [("linear_projection", patch, d, False)]
    for i in range(blocks):
        prefix = f"transformer_encoder.encoder_block.{i}"
        expected += [(f"{prefix}.mhsa.attn", d, 3 * d, False), (f"{prefix}.mhsa.proj", d, d, False),
                     (f"{prefix}.feed_forward.proj_in", d, 4 * d, False),
                     (f"{prefix}.feed_forward.proj", 4 * d, d, False)]
    expected.append(("final_layer", d, n_out, True))
    assert linears == expected
    per_block = 2 * d + 3 * d * d + d * d + 4 * d * d + 4 * d * d  # two bias-free layer norms, attention, MLP
    expected_count = patch * d + d + (C * k + 1) * d + blocks * per_block + d * n_out + n_out
    assert _count(model) == expected_count == 804_612
    assert _count(PatchedBrainTransformer(C, n_out, T, learnable_cls=False)) == expected_count - d


def test_pbt_tokens_are_per_channel_patches_at_numbered_positions():
    C, T, patch, k = 3, 40, 4, 5
    model = PatchedBrainTransformer(C, 2, T, patch_size=patch, n_tokens=k, d_model=8, n_blocks=1, n_heads=2)
    x = torch.randn(2, C, T)
    start = (T - patch * k) // 2  # the centre window, as the authors' test-time crop
    tokens = model.tokens(x)
    for c in range(C):
        for j in range(k):
            torch.testing.assert_close(tokens[:, c * k + j], x[:, c, start + j * patch : start + (j + 1) * patch])
    assert model.positions.tolist() == list(range(C * k + 1))  # 0: classification token; 1 + c k + j: patch j of c
    with pytest.raises(ValueError, match="n_times=19: expected at least"):
        PatchedBrainTransformer(C, 2, 19, patch_size=patch, n_tokens=k)


@pytest.mark.skipif(importlib.util.find_spec("braindecode") is None,
                    reason="braindecode is not importable (every release imports torchaudio, which does not load "
                           "with torch 2.13)")
def test_backbones_match_braindecodes_models():
    from braindecode.models import PBT
    from braindecode.models import EEGNeX as BraindecodeEEGNeX

    C, T, n_out = 22, 1000, 4
    theirs = BraindecodeEEGNeX(n_chans=C, n_outputs=n_out, n_times=T)
    ours = EEGNeX(C, n_out, T, elu_block_1=False, avg_pool_block5=8, pool="braindecode")
    assert _count(ours) == _count(theirs)
    state = {k.replace(".parametrizations.weight.original", ".weight"): v for k, v in ours.state_dict().items()}
    for m in ours.modules():  # braindecode keeps torch's batch-norm epsilon
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-5
    theirs.load_state_dict(state)
    ours.eval(), theirs.eval()
    x = torch.randn(3, C, T)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-4)
    pbt = PBT(n_chans=8, n_outputs=n_out, n_times=512)
    assert _count(PatchedBrainTransformer(8, n_out, 512)) == _count(pbt)

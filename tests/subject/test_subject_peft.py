"""One subject's adapter is a peft LoRA adapter: same A and B give the same outputs and the same merged weights.

peft (Hugging Face) is the reference implementation of LoRA: ``lora_A`` maps the input to r channels (for a
convolution, a convolution with the base layer's kernel, stride, padding and dilation), ``lora_B`` maps r to the
output (a 1x1 convolution), scaled by ``lora_alpha / r``. peft supports grouped convolutions with different
semantics and no merging, and its ``lora_A`` convolution leaves out the base layer's dilation (its output then
has another length: peft cannot adapt a dilated convolution), so the comparison covers Linear, Conv1d and Conv2d
with groups=1 and no dilation.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from structlab.subject import UNKNOWN_SUBJECT, SubjectConditioned

peft = pytest.importorskip("peft")

LAYERS = {
    "linear": (lambda: nn.Linear(12, 7), (5, 3, 12)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 5, stride=2, padding=3), (5, 4, 40)),
    "conv2d": (lambda: nn.Conv2d(3, 5, (3, 5), stride=(1, 2), padding=(1, 2)), (5, 3, 12, 16)),
}
RANK, ALPHA = 2, 3.0


def _pair(name: str, n_subjects: int = 3):
    """Our wrapped layer with random adapters, and a peft model with one LoRA adapter per subject, same A and B."""
    torch.manual_seed(0)
    make, shape = LAYERS[name]
    model = nn.Sequential(make())
    reference = copy.deepcopy(model)
    ours = SubjectConditioned(model, n_subjects, rank=RANK, alpha=ALPHA).eval()
    layer = dict(ours.subject_layers())["0"]
    with torch.no_grad():
        layer.A.normal_(0, 0.3)
        layer.B.normal_(0, 0.3)
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["0"], lora_dropout=0.0, init_lora_weights=False)
    theirs = peft.get_peft_model(reference, config, adapter_name="s0")
    for s in range(1, n_subjects):
        theirs.add_adapter(f"s{s}", config)
    lora = theirs.base_model.model[0]
    with torch.no_grad():
        for s in range(n_subjects):
            a, b = lora.lora_A[f"s{s}"].weight, lora.lora_B[f"s{s}"].weight
            a.copy_(layer.A[s].reshape(a.shape))
            b.copy_(layer.B[s].reshape(b.shape))
    return ours, theirs.eval(), torch.randn(*shape)


@pytest.mark.parametrize("name", list(LAYERS))
def test_one_subjects_adapter_equals_a_peft_lora_adapter(name):
    ours, theirs, x = _pair(name)
    with torch.no_grad():
        for s in range(3):
            theirs.set_adapter(f"s{s}")
            torch.testing.assert_close(ours(x, s), theirs(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", list(LAYERS))
def test_merged_weights_equal_peft_merge_and_unload(name):
    ours, theirs, _ = _pair(name)
    for s in (0, 2):
        theirs_copy = copy.deepcopy(theirs)
        theirs_copy.set_adapter(f"s{s}")
        merged_theirs = theirs_copy.merge_and_unload()[0]
        merged_ours = ours.merged(s)[0]
        assert type(merged_ours) is type(merged_theirs)
        torch.testing.assert_close(merged_ours.weight, merged_theirs.weight, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(merged_ours.bias, merged_theirs.bias, atol=0, rtol=0)


@pytest.mark.parametrize("name", list(LAYERS))
def test_mixed_batch_equals_peft_mixed_adapter_batch(name):
    ours, theirs, x = _pair(name)
    subjects = [2, 0, UNKNOWN_SUBJECT, 1, 2]
    names = [f"s{s}" if s != UNKNOWN_SUBJECT else "__base__" for s in subjects]
    with torch.no_grad():
        torch.testing.assert_close(ours(x, subjects), theirs(x, adapter_names=names), atol=1e-6, rtol=1e-5)

"""SubjectConditioned against independent computations: the original model, per-sample runs, plain convs."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from structlab.subject import UNKNOWN_SUBJECT, SubjectConditioned, calibrate, rank_limit
from structlab.subject.backbones import EEGNet, EEGNeX, ShallowConvNet

TOL = 1e-6


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models on a shared machine: one torch thread is faster than two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ResidualConv1d(nn.Module):
    """Conv1d with stride, dilation, reflect padding and a residual connection, then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(4, 8, 5, stride=2, padding=2)
        self.dilated = nn.Conv1d(8, 8, 3, dilation=3, padding=3, padding_mode="reflect")
        self.grouped = nn.Conv1d(8, 8, 3, padding=1, groups=4, bias=False)
        self.head = nn.Linear(8 * 16, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + torch.tanh(self.dilated(h))
        h = h + self.grouped(h)
        return self.head(h.flatten(1))


class TokenMixer(nn.Module):
    """Linear layers on (batch, tokens, features) with a residual, a reshape and a concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.gate = nn.Linear(6, 2)
        self.out = nn.Linear(5 * 8, 2)

    def forward(self, x):  # x: (batch, 5, 6)
        h = x + torch.relu(self.proj(x))
        h = torch.cat([h, self.gate(h)], dim=-1)
        return self.out(h.reshape(h.shape[0], -1))


def _models():
    torch.manual_seed(0)
    return {
        "residual-conv1d": (ResidualConv1d(), torch.randn(6, 4, 32)),
        "token-linear": (TokenMixer(), torch.randn(6, 5, 6)),
        "eegnet-maxnorm": (EEGNet(8, 4, 128), torch.randn(6, 8, 128)),
        "shallow": (ShallowConvNet(8, 4, 128), torch.randn(6, 8, 128)),
        "eegnex": (EEGNeX(8, 4, 128), torch.randn(6, 8, 128)),
    }


def _randomise_adapters(wrapped: SubjectConditioned, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in wrapped.subject_layers():
            layer.A.copy_(torch.randn(layer.A.shape, generator=gen) * 0.3)
            layer.B.copy_(torch.randn(layer.B.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("name", list(_models()))
def test_fresh_wrapper_equals_original_model(name):
    model, x = _models()[name]
    model.eval()
    reference = copy.deepcopy(model)
    wrapped = SubjectConditioned(model, n_subjects=3, rank=2).eval()
    subjects = torch.tensor([0, 1, 2, UNKNOWN_SUBJECT, 1, 0])
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x, subjects), reference(x), atol=TOL, rtol=0)
        torch.testing.assert_close(wrapped(x, 1), reference(x), atol=TOL, rtol=0)


@pytest.mark.parametrize("path", ["merged", "factored"])
@pytest.mark.parametrize("name", list(_models()))
def test_mixed_batch_equals_each_sample_alone(name, path):
    model, x = _models()[name]
    wrapped = SubjectConditioned(model, n_subjects=4, rank=2, path=path).eval()
    _randomise_adapters(wrapped)
    subjects = torch.tensor([3, 0, UNKNOWN_SUBJECT, 2, 0, 1])
    with torch.no_grad():
        mixed = wrapped(x, subjects)
        alone = torch.cat([wrapped(x[i : i + 1], subjects[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(_models()))
def test_merged_model_equals_wrapped_model_on_its_subject(name):
    model, x = _models()[name]
    wrapped = SubjectConditioned(model, n_subjects=3, rank=2, labels=["ann", "bo", "cy"]).eval()
    _randomise_adapters(wrapped)
    with torch.no_grad():
        for subject in (0, 2, UNKNOWN_SUBJECT, "bo"):
            merged = wrapped.merged(subject).eval()
            sid = wrapped.subject_id(subject) if isinstance(subject, str) else subject
            assert not any(isinstance(m, type(wrapped)) for m in merged.modules())
            torch.testing.assert_close(merged(x), wrapped(x, sid), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(_models()))
def test_unknown_subject_equals_shared_model(name):
    model, x = _models()[name]
    model.eval()
    shared = copy.deepcopy(model)
    wrapped = SubjectConditioned(model, n_subjects=3, rank=2).eval()
    _randomise_adapters(wrapped)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x, UNKNOWN_SUBJECT), shared(x), atol=TOL, rtol=0)
        with_known = wrapped(x, torch.tensor([0, UNKNOWN_SUBJECT, 1, UNKNOWN_SUBJECT, 2, 0]))
        torch.testing.assert_close(with_known[[1, 3]], shared(x)[[1, 3]], atol=TOL, rtol=0)
        assert (with_known[[0, 2, 4, 5]] - shared(x)[[0, 2, 4, 5]]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 6, (3, 5), stride=(1, 2), padding=(1, 2), dilation=(2, 1)),
        nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False),
        nn.Conv1d(3, 5, 7, stride=3, dilation=2, padding=4),
    ],
    ids=["conv2d-strided-dilated", "conv2d-grouped", "conv1d"],
)
@pytest.mark.parametrize("path", ["merged", "factored"])
def test_conv_correction_equals_convolution_with_W_plus_BA(conv, path):
    torch.manual_seed(0)
    x = torch.randn(5, conv.in_channels, *([12, 14] if isinstance(conv, nn.Conv2d) else [30]))
    reference = copy.deepcopy(conv)
    wrapped = SubjectConditioned(nn.Sequential(conv), n_subjects=3, rank=2, alpha=3.0, path=path)
    _randomise_adapters(wrapped)
    layer = dict(wrapped.subject_layers())["0"]
    subjects = torch.tensor([0, 2, 1, 2, 0])
    expected = []
    for i, s in enumerate(subjects.tolist()):
        # The paper's definition, computed here from scratch: a convolution with kernel W + (alpha/r) B_s A_s.
        delta = (3.0 / 2) * (layer.B[s] @ layer.A[s]).reshape(reference.weight.shape)
        conv_fn = F.conv2d if isinstance(conv, nn.Conv2d) else F.conv1d
        expected.append(
            conv_fn(x[i : i + 1], reference.weight + delta, reference.bias, conv.stride, conv.padding,
                    conv.dilation, conv.groups)
        )
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x, subjects), torch.cat(expected).detach(), atol=1e-5, rtol=1e-5)


def test_factored_conv_is_A_to_r_channels_then_1x1_B():
    # The form: A_s a convolution C_in -> r with the base geometry, B_s a 1x1 convolution r -> C_out.
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, (3, 5), stride=2, padding=(1, 2), dilation=(1, 2), bias=False)
    x = torch.randn(1, 3, 16, 20)
    wrapped = SubjectConditioned(nn.Sequential(copy.deepcopy(conv)), 2, rank=3, alpha=3.0)
    _randomise_adapters(wrapped)
    layer = dict(wrapped.subject_layers())["0"]
    A = layer.A[1].reshape(3, 3, 3, 5)
    B = layer.B[1].reshape(6, 3, 1, 1)
    z = F.conv2d(x, A, None, conv.stride, conv.padding, conv.dilation)
    expected = conv(x) + F.conv2d(z, B)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x, 1), expected.detach(), atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_adapters_of_subjects_in_batch():
    model, x = _models()["eegnet-maxnorm"]
    wrapped = SubjectConditioned(model, n_subjects=5, rank=2)
    _randomise_adapters(wrapped)
    wrapped(x, torch.tensor([0, 3, UNKNOWN_SUBJECT, 3, 0, UNKNOWN_SUBJECT])).sum().backward()
    for name, layer in wrapped.subject_layers():
        for param in (layer.A, layer.B):
            per_subject = param.grad.flatten(1).abs().sum(1)
            assert per_subject[[1, 2, 4]].eq(0).all(), name
            assert per_subject[[0, 3]].gt(0).all(), name


def test_save_load_round_trip_keeps_weights_and_registry(tmp_path):
    model, x = _models()["eegnet-maxnorm"]
    wrapped = SubjectConditioned(model, 2, rank=2, labels=["s01", "s02"], clip_rank=True).eval()
    wrapped.add_subjects(1, ["s07"])
    _randomise_adapters(wrapped)
    path = wrapped.save(tmp_path / "model.safetensors")
    fresh = EEGNet(8, 4, 128)
    loaded = SubjectConditioned.load(path, fresh).eval()
    assert loaded.labels == ["s01", "s02", "s07"]
    subjects = loaded.subject_ids(["s07", "s01", "nobody", "s02", "s07", "s01"], unknown="shared")
    assert subjects.tolist() == [2, 0, UNKNOWN_SUBJECT, 1, 2, 0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, subjects), wrapped(x, subjects), atol=0, rtol=0)
    with pytest.raises(ValueError, match="does not match|wraps layers"):
        SubjectConditioned.load(path, ShallowConvNet(8, 4, 128))


def test_merged_leaves_parametrised_wrapped_model_untouched():
    model, x = _models()["eegnex"]
    # Leave one max-norm layer unwrapped, so the merged copy holds a parametrised module.
    wrapped = SubjectConditioned(model, 2, rank=2, exclude=["block_3.0"]).eval()
    _randomise_adapters(wrapped)
    with torch.no_grad():
        before = wrapped(x, torch.tensor([0, 1, 0, 1, UNKNOWN_SUBJECT, 0]))
        merged = wrapped.merged(1)
        for module in merged.modules():
            if parametrize.is_parametrized(module):
                parametrize.remove_parametrizations(module, "weight")
            for p in module.parameters(recurse=False):
                p.mul_(0)
        after = wrapped(x, torch.tensor([0, 1, 0, 1, UNKNOWN_SUBJECT, 0]))
    assert parametrize.is_parametrized(wrapped.model.block_3[0])
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_weight_parametrisation_still_applies_after_wrapping():
    model = EEGNet(8, 4, 128)
    wrapped = SubjectConditioned(model, 2, rank=2)
    classifier = dict(wrapped.subject_layers())["classifier"].base
    assert parametrize.is_parametrized(classifier)
    with torch.no_grad():
        classifier.parametrizations.weight.original.mul_(100)
    assert classifier.weight.flatten(1).norm(dim=1).max() <= 0.25 + 1e-6


def test_shared_module_used_twice_is_wrapped_at_both_places():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    wrapped = SubjectConditioned(model, 2, rank=1)
    assert list(wrapped.wrapped_layers) == ["0"]
    assert wrapped.model[0] is wrapped.model[2]


def test_multihead_attention_is_skipped_with_a_warning():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.mlp = nn.Linear(8, 8)

        def forward(self, x):
            return self.mlp(x + self.attn(x, x, x, need_weights=False)[0])

    with pytest.warns(UserWarning, match="MultiheadAttention"):
        wrapped = SubjectConditioned(Block(), 2, rank=2)
    assert list(wrapped.wrapped_layers) == ["mlp"]
    assert "attn" in wrapped.skipped_layers
    wrapped(torch.randn(3, 4, 8), [0, 1, -1])


def test_forward_override_and_unsupported_layers_are_skipped_with_reason():
    class Renormed(nn.Conv1d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(Renormed(2, 2, 3), nn.Conv3d(1, 1, 1), nn.Linear(3, 3))
    wrapped = SubjectConditioned(model, 2, rank=1)
    assert set(wrapped.wrapped_layers) == {"2"}
    assert "overrides forward" in wrapped.skipped_layers["0"]
    assert "not supported" in wrapped.skipped_layers["1"]


def test_include_exclude_select_layers():
    model = EEGNet(8, 4, 128)
    wrapped = SubjectConditioned(model, 2, rank=2, include=["features.*"], exclude=["features.8"])
    assert set(wrapped.wrapped_layers) == {"features.0", "features.2", "features.7"}
    assert "include" in wrapped.skipped_layers["classifier"]
    assert "exclude" in wrapped.skipped_layers["features.8"]


def test_rank_limits_follow_the_weight_matrix_view():
    assert rank_limit(nn.Linear(10, 3)) == 3
    assert rank_limit(nn.Conv2d(2, 16, (1, 5))) == 10
    assert rank_limit(nn.Conv2d(8, 16, (8, 1), groups=8)) == 8  # 16 x (1 * 8)
    with pytest.raises(ValueError, match=r"rank=4: larger than these layers allow: 0 \(limit 3\)"):
        SubjectConditioned(nn.Sequential(nn.Linear(10, 3)), 2, rank=4)
    wrapped = SubjectConditioned(nn.Sequential(nn.Linear(10, 3), nn.Linear(3, 20)), 2, rank=4, clip_rank=True)
    assert {n: w.rank for n, w in wrapped.wrapped_layers.items()} == {"0": 3, "1": 3}


def test_bad_input_raises_clear_errors():
    wrapped = SubjectConditioned(nn.Sequential(nn.Linear(4, 2)), 3, rank=1)
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="subjects: id 3 out of range"):
        wrapped(x, [0, 3])
    with pytest.raises(ValueError, match="subjects: id -2 out of range"):
        wrapped(x, [-2, 0])
    with pytest.raises(ValueError, match=r"expected one id per sample, \(2,\)"):
        wrapped(x, [0, 1, 2])
    with pytest.raises(TypeError, match="expected integer subject ids"):
        wrapped(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="nothing to wrap"):
        SubjectConditioned(nn.Sequential(nn.ReLU()), 2)
    with pytest.raises(ValueError, match="nothing to wrap"):
        SubjectConditioned(nn.Sequential(nn.Linear(2, 2)), 2, exclude=["*"])
    with pytest.raises(ValueError, match="n_subjects=0"):
        SubjectConditioned(nn.Linear(2, 2), 0)
    with pytest.raises(ValueError, match="subject_dropout=1.5"):
        SubjectConditioned(nn.Linear(2, 2), 1, rank=1, subject_dropout=1.5)
    with pytest.raises(ValueError, match="labels"):
        SubjectConditioned(nn.Linear(2, 2), 2, rank=1, labels=["a", "a"])
    with pytest.raises(ValueError, match="subject=7"):
        wrapped.merged(7)
    with pytest.raises(RuntimeError, match="without subject ids"):
        wrapped.model(x)


def test_batch_must_be_first_dimension_of_every_wrapped_layer():
    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):  # (batch, seq, d) -> (seq, batch, d)
            return self.lin(x.transpose(0, 1))

    wrapped = SubjectConditioned(SeqFirst(), 2, rank=1)
    with pytest.raises(RuntimeError, match="batch in the first dimension"):
        wrapped(torch.randn(2, 5, 4), [0, 1])


def test_add_subjects_keeps_existing_adapters_and_starts_new_ones_at_shared():
    model, x = _models()["token-linear"]
    wrapped = SubjectConditioned(model, 2, rank=2).eval()
    _randomise_adapters(wrapped)
    with torch.no_grad():
        before = wrapped(x, 1)
        new = wrapped.add_subjects(2, ["p", "q"])
        assert new == [2, 3] and wrapped.labels[-2:] == ["p", "q"]
        torch.testing.assert_close(wrapped(x, 1), before, atol=0, rtol=0)
        torch.testing.assert_close(wrapped(x, 3), wrapped(x, UNKNOWN_SUBJECT), atol=0, rtol=0)


def test_param_groups_and_freeze_shared_partition_parameters():
    wrapped = SubjectConditioned(EEGNet(8, 4, 128), 3, rank=2)
    groups = wrapped.param_groups(lr=1e-3, weight_decay=1e-2, adapter_lr=1e-2, adapter_weight_decay=0.0)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(p) for p in wrapped.shared_parameters()}
    assert ids[1] == {id(p) for p in wrapped.adapter_parameters()}
    assert (groups[1]["lr"], groups[1]["weight_decay"]) == (1e-2, 0.0)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in wrapped.parameters())
    wrapped.freeze_shared()
    groups = wrapped.param_groups()
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == ids[1]


def test_subject_dropout_computes_a_fraction_of_training_trials_as_unknown():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    shared = copy.deepcopy(model)
    wrapped = SubjectConditioned(model, 1, rank=1, subject_dropout=0.3)
    _randomise_adapters(wrapped)
    x = torch.randn(4000, 4)
    with torch.no_grad():
        out = wrapped.train()(x, 0)
        as_shared = (out - shared(x)).abs().amax(1) < 1e-6
        assert 0.27 < as_shared.float().mean() < 0.33  # binomial(4000, 0.3): 0.30 +- 0.007
        assert not ((wrapped.eval()(x, 0) - shared(x)).abs().amax(1) < 1e-6).any()


def test_training_with_frozen_zero_adapters_follows_the_plain_model_step_for_step():
    # The wrapper must not change training itself: with B = 0 frozen and no subject dropout, a mixed-subject
    # model trains exactly as the plain model does (same batches, same dropout masks), up to float rounding.
    from structlab.subject.training import TrainConfig, fit

    torch.manual_seed(0)
    plain = EEGNet(8, 4, 128)
    wrapped = SubjectConditioned(copy.deepcopy(plain), 3, rank=2, exclude=["features.2", "classifier"])
    for p in wrapped.adapter_parameters():
        p.requires_grad_(False)
    x, y, subjects = torch.randn(48, 8, 128), torch.randint(0, 4, (48,)), torch.randint(0, 3, (48,))
    config = TrainConfig(steps=6, batch_size=16)
    torch.manual_seed(1)
    plain_losses = fit(plain, x, y, config=config, seed=0)
    torch.manual_seed(1)
    wrapped_losses = fit(wrapped, x, y, subjects, config=config, seed=0)
    assert wrapped_losses == pytest.approx(plain_losses, abs=1e-4)
    with torch.no_grad():
        assert torch.allclose(wrapped(x, subjects), plain(x), atol=1e-4)


def test_calibrate_trains_only_the_new_subjects_adapter():
    torch.manual_seed(0)
    model = EEGNet(8, 2, 64, kernel_length=16)
    wrapped = SubjectConditioned(model, 2, rank=2)
    _randomise_adapters(wrapped)
    wrapped.train()(torch.randn(16, 8, 64), torch.randint(0, 2, (16,)))  # some batch-norm statistics
    wrapped.eval()
    snapshot = {k: v.clone() for k, v in wrapped.state_dict().items()}
    # A new subject whose class is the sign of channel 0's mean: learnable from 16 trials.
    x = torch.randn(16, 8, 64)
    y = (x[:, 0].mean(1) > 0).long()
    shared_loss = F.cross_entropy(wrapped(x, UNKNOWN_SUBJECT), y)
    sid = calibrate(wrapped, x, y, label="new", epochs=60, lr=5e-2)
    assert sid == 2 and wrapped.labels[sid] == "new"
    after = wrapped.state_dict()
    for key, value in snapshot.items():
        if key.endswith((".A", ".B")):
            torch.testing.assert_close(after[key][:2], value, atol=0, rtol=0)
        else:
            torch.testing.assert_close(after[key], value, atol=0, rtol=0, msg=key)
    with torch.no_grad():
        assert F.cross_entropy(wrapped(x, sid), y) < 0.5 * shared_loss
    assert not wrapped.training


def test_calibrate_rejects_bad_input():
    wrapped = SubjectConditioned(nn.Sequential(nn.Linear(4, 2)), 1, rank=1)
    with pytest.raises(ValueError, match="y: shape"):
        calibrate(wrapped, torch.randn(4, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="SubjectConditioned"):
        calibrate(nn.Linear(4, 2), torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="label='zz'"):
        calibrate(wrapped, torch.randn(4, 4), torch.zeros(4, dtype=torch.long), subject="zz")


def test_no_warning_for_models_without_attention():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SubjectConditioned(EEGNet(8, 4, 128), 2, rank=2)

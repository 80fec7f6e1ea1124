"""The nn.Module contract of a wrapped model, one suite for every backbone (as peft runs every adapter through
one contract): moving, casting, copying, saving and loading, modes, gradients, compiling and tracing.

Every check compares the wrapped model with an independent computation: the plain backbone (a deep copy taken
before wrapping) with each sample's subject correction folded into its weights, evaluated by ``merged``'s
reference here, or the same wrapped model before the operation.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from structlab.subject import UNKNOWN_SUBJECT, SubjectConditioned
from structlab.subject.backbones import EEGNet, EEGNeX, ShallowConvNet
from structlab.subject.transformer import PatchedBrainTransformer

N_CHANS, N_TIMES, N_SUBJECTS = 8, 128, 3
BACKBONES = {
    "eegnet": lambda: EEGNet(N_CHANS, 4, N_TIMES),
    "shallow": lambda: ShallowConvNet(N_CHANS, 4, N_TIMES),
    "eegnex": lambda: EEGNeX(N_CHANS, 4, N_TIMES),
    "pbt": lambda: PatchedBrainTransformer(N_CHANS, 4, N_TIMES, patch_size=16, d_model=32, n_blocks=2),
}
SUBJECTS = torch.tensor([0, 2, UNKNOWN_SUBJECT, 1, 0, 2])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wrapped(name: str, seed: int = 0) -> tuple[SubjectConditioned, nn.Module]:
    """A wrapped backbone with non-zero adapters, and a plain copy of the backbone taken before wrapping."""
    torch.manual_seed(seed)
    model = BACKBONES[name]()
    plain = copy.deepcopy(model)
    wrapped = SubjectConditioned(model, N_SUBJECTS, rank=2, clip_rank=True)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, layer in wrapped.subject_layers():
            layer.B.copy_(torch.randn(layer.B.shape, generator=gen) * 0.05)
    return wrapped.eval(), plain.eval()


def _x(dtype=torch.float32, device="cpu") -> torch.Tensor:
    return torch.randn(len(SUBJECTS), N_CHANS, N_TIMES, generator=torch.Generator().manual_seed(7)).to(device, dtype)


def _plain_layer(layer: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A new, unparametrised layer with ``layer``'s hyper-parameters and bias and the given weight."""
    factory = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, **factory)
    else:
        cls = nn.Conv1d if isinstance(layer, nn.Conv1d) else nn.Conv2d
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode, **factory)
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def _reference(wrapped: SubjectConditioned, plain: nn.Module, x: torch.Tensor, subjects: torch.Tensor) -> torch.Tensor:
    """Each sample through a copy of the plain model whose layers compute with W + (alpha/r) B_s A_s of its subject.

    Every wrapped layer of the copy is replaced by a new plain layer holding that weight (the constrained weight
    of a parametrised layer plus the correction), so nothing of ``plain`` or ``wrapped`` is changed.
    """
    outs = []
    for i, s in enumerate(subjects.tolist()):
        model = copy.deepcopy(plain)
        with torch.no_grad():
            for name, layer in wrapped.subject_layers():
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name)
                target = getattr(parent, child)
                weight = target.weight.detach().clone()
                if s != UNKNOWN_SUBJECT:
                    B, A = layer.B[s].to(weight.dtype), layer.A[s].to(weight.dtype)
                    weight += (layer.scaling * (B @ A)).reshape(weight.shape)
                setattr(parent, child, _plain_layer(target, weight))
        outs.append(model.to(x.device, x.dtype).eval()(x[i : i + 1]))
    return torch.cat(outs)


def _tolerance(dtype: torch.dtype) -> dict:
    return {torch.float64: dict(atol=1e-9, rtol=1e-7), torch.float32: dict(atol=2e-5, rtol=1e-4),
            torch.bfloat16: dict(atol=0.1, rtol=0.1), torch.float16: dict(atol=0.02, rtol=0.02)}[dtype]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_wrapped_model_equals_per_sample_reference(name):
    wrapped, plain = _wrapped(name)
    x = _x()
    with torch.no_grad():
        expected = _reference(wrapped, plain, x, SUBJECTS)
        torch.testing.assert_close(wrapped(x, SUBJECTS), expected, **_tolerance(torch.float32))


CASTS = {
    "double": (lambda m: m.double(), torch.float64),
    "to(float64)": (lambda m: m.to(torch.float64), torch.float64),
    "to(cpu, float64)": (lambda m: m.to("cpu", torch.float64), torch.float64),
    "half": (lambda m: m.half(), torch.float16),
    "bfloat16": (lambda m: m.bfloat16(), torch.bfloat16),
    "cpu": (lambda m: m.cpu(), torch.float32),
    "to(cpu)": (lambda m: m.to("cpu"), torch.float32),
    "float": (lambda m: m.double().float(), torch.float32),
}


@pytest.mark.parametrize("cast", list(CASTS))
@pytest.mark.parametrize("name", list(BACKBONES))
def test_moves_and_casts_reach_every_parameter_and_keep_the_computation(name, cast):
    wrapped, plain = _wrapped(name)
    fn, dtype = CASTS[cast]
    reference = _reference(wrapped, plain.double(), _x(torch.float64), SUBJECTS)  # before the cast, in float64
    assert fn(wrapped) is wrapped
    assert all(p.dtype == dtype for p in wrapped.parameters())
    assert all(b.dtype == dtype for b in wrapped.buffers() if b.is_floating_point())
    with torch.no_grad():
        out = wrapped(_x(dtype), SUBJECTS)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), reference, **_tolerance(dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("name", list(BACKBONES))
def test_cuda_moves_every_tensor_and_keeps_the_computation(name):
    wrapped, plain = _wrapped(name)
    reference = _reference(wrapped, plain, _x(), SUBJECTS)
    wrapped.cuda()
    assert all(p.is_cuda for p in wrapped.parameters()) and all(b.is_cuda for b in wrapped.buffers())
    with torch.no_grad():
        out = wrapped(_x(device="cuda"), SUBJECTS.cuda())
    torch.testing.assert_close(out.cpu(), reference, atol=1e-4, rtol=1e-3)
    with torch.no_grad():  # subject ids given on the host reach the device too
        torch.testing.assert_close(wrapped(_x(device="cuda"), SUBJECTS.tolist()).cpu(), reference, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_share_memory_moves_every_tensor_to_shared_memory(name):
    wrapped, _ = _wrapped(name)
    with torch.no_grad():
        before = wrapped(_x(), SUBJECTS)
    assert wrapped.share_memory() is wrapped
    assert all(p.is_shared() for p in wrapped.parameters()) and all(b.is_shared() for b in wrapped.buffers())
    with torch.no_grad():
        torch.testing.assert_close(wrapped(_x(), SUBJECTS), before, atol=0, rtol=0)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_state_dict_round_trip_into_a_fresh_wrapper(name):
    wrapped, _ = _wrapped(name, seed=0)
    fresh, _ = _wrapped(name, seed=5)
    result = fresh.load_state_dict(wrapped.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(fresh(_x(), SUBJECTS), wrapped(_x(), SUBJECTS), atol=0, rtol=0)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_load_base_state_dict_loads_a_plain_pretrained_checkpoint(name):
    torch.manual_seed(3)
    pretrained = BACKBONES[name]().eval()
    wrapped, _ = _wrapped(name, seed=9)
    adapters = {k: v.clone() for k, v in wrapped.state_dict().items() if k.endswith((".A", ".B"))}
    keys = wrapped.load_base_state_dict(pretrained.state_dict())
    assert keys.missing_keys == [] and keys.unexpected_keys == []
    with torch.no_grad():
        torch.testing.assert_close(wrapped(_x(), UNKNOWN_SUBJECT), pretrained(_x()), atol=1e-6, rtol=0)
        expected = _reference(wrapped, pretrained, _x(), SUBJECTS)
        torch.testing.assert_close(wrapped(_x(), SUBJECTS), expected, atol=2e-5, rtol=1e-4)
    for key, value in adapters.items():  # the adapters are left as they were
        torch.testing.assert_close(wrapped.state_dict()[key], value, atol=0, rtol=0)
    broken = dict(pretrained.state_dict())
    first = next(iter(broken))
    del broken[first]
    broken["not.a.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=rf"missing \['{first}'\], unexpected \['not.a.weight'\]"):
        wrapped.load_base_state_dict(broken)
    assert wrapped.load_base_state_dict(broken, strict=False).missing_keys == [first]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_deepcopy_is_independent_and_keeps_its_own_subject_state(name):
    wrapped, _ = _wrapped(name)
    with torch.no_grad():
        before = wrapped(_x(), SUBJECTS)
    clone = copy.deepcopy(wrapped)
    layers = [layer for _, layer in clone.subject_layers()]
    assert all(layer._state is clone._state for layer in layers) and clone._state is not wrapped._state
    with torch.no_grad():
        torch.testing.assert_close(clone(_x(), SUBJECTS), before, atol=0, rtol=0)
        for p in clone.parameters():
            p.mul_(0.5)
        torch.testing.assert_close(wrapped(_x(), SUBJECTS), before, atol=0, rtol=0)
    # Pickling (multiprocessing, torch.save of a module) works exactly where it works for the plain model:
    # torch refuses to pickle parametrised modules (EEGNet's and EEGNeX's max-norm) either way.
    try:
        pickle.dumps(BACKBONES[name]())
    except RuntimeError as err:
        with pytest.raises(RuntimeError, match="parametrized modules"):
            pickle.dumps(wrapped)
        assert "parametrized modules" in str(err)
    else:
        restored = pickle.loads(pickle.dumps(wrapped))
        with torch.no_grad():
            torch.testing.assert_close(restored(_x(), SUBJECTS), before, atol=0, rtol=0)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_train_and_eval_reach_every_module_and_subject_dropout_follows(name):
    wrapped, _ = _wrapped(name)
    wrapped.subject_dropout = 0.5
    assert wrapped.train() is wrapped and all(m.training for m in wrapped.modules())
    assert wrapped.eval() is wrapped and not any(m.training for m in wrapped.modules())
    with torch.no_grad():  # no subject dropout in evaluation mode: calls agree exactly
        torch.testing.assert_close(wrapped(_x(), SUBJECTS), wrapped(_x(), SUBJECTS), atol=0, rtol=0)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_requires_grad_freezes_and_thaws_every_parameter(name):
    wrapped, _ = _wrapped(name)
    wrapped.requires_grad_(False)
    assert not any(p.requires_grad for p in wrapped.parameters())
    assert not wrapped(_x(), SUBJECTS).requires_grad
    wrapped.requires_grad_(True)
    wrapped(_x(), SUBJECTS).sum().backward()
    assert all(p.grad is not None for p in wrapped.adapter_parameters())


@pytest.mark.parametrize("name", list(BACKBONES))
def test_named_modules_list_each_wrapped_layer_once_with_its_base(name):
    wrapped, plain = _wrapped(name)
    names = [n for n, _ in wrapped.named_modules()]
    assert len(names) == len(set(names))
    plain_layers = {n for n, m in plain.named_modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)}
    assert set(wrapped.wrapped_layers) == plain_layers  # every Linear/Conv of these backbones is wrapped
    for layer_name in wrapped.wrapped_layers:
        assert f"model.{layer_name}" in names and f"model.{layer_name}.base" in names
    params = [n for n, _ in wrapped.named_parameters()]
    assert len(params) == len(set(params))
    assert sum(p.numel() for p in wrapped.parameters()) == sum(p.numel() for p in plain.parameters()) + sum(
        p.numel() for p in wrapped.adapter_parameters())


@pytest.mark.parametrize("name", list(BACKBONES))
def test_torch_compile_has_no_graph_break_in_the_mixed_batch_path(name):
    wrapped, plain = _wrapped(name)
    x = _x()
    torch._dynamo.reset()
    compiled = torch.compile(wrapped, fullgraph=True, backend="eager")  # fullgraph: any graph break raises
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, SUBJECTS), _reference(wrapped, plain, x, SUBJECTS), atol=2e-5, rtol=1e-4)
        other = torch.tensor([1, 1, 1, 1, 1, 1])  # a single-subject batch: same graph, no specialisation
        torch.testing.assert_close(compiled(x, other), _reference(wrapped, plain, x, other), atol=2e-5, rtol=1e-4)
    explanation = torch._dynamo.explain(wrapped)(x, SUBJECTS)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eegnet", "pbt"])
def test_torch_compile_with_inductor_equals_eager(name):
    wrapped, plain = _wrapped(name)
    torch._dynamo.reset()
    compiled = torch.compile(wrapped, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(_x(), SUBJECTS), wrapped(_x(), SUBJECTS), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_jit_trace_records_the_general_path_not_the_traced_subject(name):
    wrapped, plain = _wrapped(name)
    x = _x()
    one_subject = torch.full((len(x),), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no value read on the host while tracing
        traced = torch.jit.trace(wrapped, (x, one_subject), check_trace=False)
    with torch.no_grad():
        torch.testing.assert_close(traced(x, SUBJECTS), _reference(wrapped, plain, x, SUBJECTS), atol=2e-5, rtol=1e-4)


def test_spectral_norm_runs_one_power_iteration_per_training_forward_and_merged_leaves_it():
    torch.manual_seed(0)
    layer = nn.utils.parametrizations.spectral_norm(nn.Linear(6, 5))
    plain = copy.deepcopy(layer)
    wrapped = SubjectConditioned(nn.Sequential(layer), 2, rank=2).train()
    x = torch.randn(4, 6)
    u = lambda m: m.parametrizations.weight[0]._u.clone()  # noqa: E731
    for subjects in (torch.tensor([0, 1, 0, 1]), torch.tensor([1, 1, 1, 1]), UNKNOWN_SUBJECT):
        expected = plain(x)  # the plain layer's own training forward: one power iteration
        torch.testing.assert_close(wrapped(x, subjects), expected, atol=1e-6, rtol=0)  # B = 0: same output
        torch.testing.assert_close(u(wrapped.model[0].base), u(plain), atol=1e-7, rtol=0)
    before = u(wrapped.model[0].base)
    merged = wrapped.merged(0)
    torch.testing.assert_close(u(wrapped.model[0].base), before, atol=0, rtol=0)
    assert wrapped.training and wrapped.model[0].base.training  # modes restored
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(x), wrapped.eval()(x, 0), atol=1e-6, rtol=0)


def test_hook_based_weight_norm_is_skipped_with_a_reason_and_training_keeps_working():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm is deprecated; users still have it
        normed = nn.utils.weight_norm(nn.Linear(6, 6))
    model = nn.Sequential(normed, nn.ReLU(), nn.Linear(6, 3))
    wrapped = SubjectConditioned(model, 2, rank=2)
    assert list(wrapped.wrapped_layers) == ["2"]
    assert "forward pre-hooks" in wrapped.skipped_layers["0"]
    assert "parametrizations.weight_norm" in wrapped.skipped_layers["0"]
    optimiser = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    for _ in range(3):  # the second step broke when the hooked layer was wrapped
        loss = F.cross_entropy(wrapped(x, torch.tensor([0, 1] * 4)), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    modern = nn.utils.parametrizations.weight_norm(nn.Linear(6, 6))
    assert list(SubjectConditioned(nn.Sequential(modern), 2, rank=2).wrapped_layers) == ["0"]


def test_empty_batch_gives_what_the_plain_model_gives():
    wrapped, plain = _wrapped("eegnet")
    x = torch.zeros(0, N_CHANS, N_TIMES)
    with torch.no_grad():
        for subjects in (torch.zeros(0, dtype=torch.long), [], np.zeros(0, dtype=np.int64)):
            out = wrapped(x, subjects)
            assert out.shape == plain(x).shape == (0, 4)


def test_numpy_integer_ids_and_string_labels_are_accepted():
    wrapped, _ = _wrapped("eegnet")
    wrapped.labels = ["s01", "s02", "s03"]
    x = _x()
    with torch.no_grad():
        expected = wrapped(x, SUBJECTS)
        torch.testing.assert_close(wrapped(x, SUBJECTS.numpy()), expected, atol=0, rtol=0)
        torch.testing.assert_close(wrapped(x, SUBJECTS.numpy().astype(np.int32)), expected, atol=0, rtol=0)
        torch.testing.assert_close(wrapped(x, [np.int64(s) for s in SUBJECTS.tolist()]), expected, atol=0, rtol=0)
        torch.testing.assert_close(wrapped(x, np.int64(2)), wrapped(x, 2), atol=0, rtol=0)
        labels = ["s01", "s03", "s03", "s02", "s01", "s03"]
        torch.testing.assert_close(wrapped(x, labels), wrapped(x, torch.tensor([0, 2, 2, 1, 0, 2])), atol=0, rtol=0)
        torch.testing.assert_close(wrapped(x, np.array(labels)), wrapped(x, labels), atol=0, rtol=0)
        torch.testing.assert_close(wrapped(x, "s02"), wrapped(x, 1), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"subjects: labels \['nobody'\] are not registered"):
        wrapped(x, ["s01", "nobody", "s01", "s01", "s01", "s01"])
    with pytest.raises(TypeError, match="subjects: .*dtype float64.*expected integer subject ids or registered labels"):
        wrapped(x, np.zeros(6))
    with pytest.raises(TypeError, match="expected integer subject ids"):
        wrapped(x, True)


def test_lazy_layer_gets_a_clear_error_naming_it():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.LazyLinear(3))
    with pytest.raises(ValueError, match=r"\['2'\] are lazy layers whose shapes are not known yet.*run the model once"):
        SubjectConditioned(model, 2, rank=4)
    model(torch.randn(2, 4))  # initialised: wrapped like any Linear layer
    assert list(SubjectConditioned(model, 2, rank=3).wrapped_layers) == ["0", "2"]


def test_failed_wrapping_leaves_the_model_untouched(monkeypatch):
    import structlab.subject.conditioned as conditioned

    model = EEGNet(N_CHANS, 4, N_TIMES)
    children = {n: m for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    built = []
    real = conditioned.SubjectLayer

    def failing(base, *args, **kwargs):
        if len(built) == 3:  # the fourth layer fails, after three were built
            raise RuntimeError("out of memory (injected)")
        built.append(base)
        return real(base, *args, **kwargs)

    monkeypatch.setattr(conditioned, "SubjectLayer", failing)
    with pytest.raises(RuntimeError, match="injected"):
        SubjectConditioned(model, 2, rank=2)
    assert len(built) == 3
    assert {n: m for n, m in model.named_modules()} == children  # the same modules at the same places
    assert not any(isinstance(m, real) for m in model.modules())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], atol=0, rtol=0)

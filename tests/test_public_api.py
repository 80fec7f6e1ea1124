"""The names ../shared/DESIGN.md lists as the public API import from the part packages, with the
arguments it names (outside checks call them exactly so)."""

from __future__ import annotations

import importlib
import inspect

import pytest

CONTRACT = {
    "structlab.tucker": {
        "MultiHeadAttention": ("d_model", "n_heads"),
        "GroupedQueryAttention": ("d_model", "n_heads", "n_kv_heads"),
        "MultiHeadLatentAttention": ("d_model", "n_heads", "kv_latent", "q_latent"),
        "TuckerAttention": ("d_model", "n_heads", "ranks", "value_ranks"),
        "attention_tensors": ("module",),
        "tucker_ranks": ("module", "rtol"),
        "to_tucker": ("module",),
        "compress": ("module", "ranks", "method"),
        "attention_parameters": ("module",),
        "kv_cache_bytes": ("module", "seq_len", "dtype"),
        "convert_hf": ("model", "ranks", "method"),
    },
    "structlab.subject": {"SubjectConditioned": ("model", "n_subjects", "rank", "alpha"), "UNKNOWN_SUBJECT": None},
    "structlab.relumip": {
        "ReluNetwork": None,
        "interval_bounds": ("net", "lower", "upper"),
        "lp_bounds": ("net", "lower", "upper"),
        "optimize": ("net", "lower", "upper", "objective", "sense", "bounds", "solver", "time_limit"),
        "rescale": ("net",),
        "stable_fraction": ("net", "bounds"),
        "count_linear_regions": ("net", "lower", "upper"),
        "read_vnnlib": ("path",),
        "verify": ("net", "prop", "time_limit"),
    },
    "structlab.audiopairs": {
        "parse_pair": ("text",),
        "FreesoundClient": ("token", "base_url"),
        "Corpus": ("path",),
    },
}


@pytest.mark.parametrize("module,name", [(m, n) for m, names in CONTRACT.items() for n in names])
def test_design_names_import_with_their_arguments(module: str, name: str) -> None:
    obj = getattr(importlib.import_module(module), name)
    arguments = CONTRACT[module][name]
    if arguments is not None:
        parameters = list(inspect.signature(obj).parameters)
        assert parameters[: len(arguments)] == list(arguments), f"{module}.{name}{inspect.signature(obj)}"


def test_relu_network_reads_torch_and_onnx() -> None:
    from structlab.relumip import ReluNetwork

    assert callable(ReluNetwork.from_torch) and callable(ReluNetwork.from_onnx)

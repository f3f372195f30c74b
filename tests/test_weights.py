"""nas.weights: strict safetensors loading, and the description of what arch a file seems to be for."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from nas.errors import NasError
from nas.models import build_model
from nas.space import load_arch
from nas.weights import describe, load_weights, read_header

REF = Path(__file__).resolve().parents[1] / "spaces" / "reference"


def test_round_trip_loads_every_tensor(tmp_path):
    arch = load_arch(REF / "deit_tiny.yaml")
    torch.manual_seed(0)
    a = build_model(arch)
    save_model(a, str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)
    b = load_weights(tmp_path / "w.safetensors", build_model(arch))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_describe_reads_deit_tiny_from_its_shapes(tmp_path):
    """DeiT-Tiny (arXiv:2012.12877): 1000 classes, RGB, 16x16 patches, 196 + 1 tokens, 12 layers of width 192."""
    save_model(build_model(load_arch(REF / "deit_tiny.yaml")), str(tmp_path / "w.safetensors"))
    shapes, _ = read_header(tmp_path / "w.safetensors")
    assert describe(shapes).startswith("1000 classes, 3 channels, patch 16, 197 tokens, stages 12 cells of dim 192")


def test_mismatch_names_the_file_and_the_arch_it_fits(tmp_path):
    tiny = load_arch(REF / "deit_tiny.yaml")
    save_model(build_model(load_arch(REF / "deit_small.yaml")), str(tmp_path / "small.safetensors"))
    with pytest.raises(NasError) as e:
        load_weights(tmp_path / "small.safetensors", build_model(tiny))
    msg = e.value.message
    assert e.value.file == str(tmp_path / "small.safetensors")
    assert "stages 12 cells of dim 384" in msg and "stages 12 cells of dim 192" in msg and "with another shape" in msg

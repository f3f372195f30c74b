"""The `nas` command: outputs users and scripts rely on (JSON keys, exit codes, one-line errors)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nas import __version__
from nas.cli import main
from nas.space import load_arch, load_space

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "spaces" / "reference"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version():
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"nas {__version__}"


@pytest.mark.parametrize("name,params,macs,tol", [
    ("deit_small", 22_050_664, 4.61e9, 0.01), ("deit_tiny", 5_717_416, 1.26e9, 0.01),
    ("psvit_t1_deit_tiny", None, 1.3e9, 0.10), ("psvit_t1_dimension1", None, 1.3e9, 0.10),
    ("psvit_t1_dimension2", None, 1.3e9, 0.10),
    ("ps_vit_ti_14", 4.78e6, 1.58e9, 0.01), ("ps_vit_b_10", 21.34e6, 3.11e9, 0.01),
    ("ps_vit_b_14", 21.34e6, 5.40e9, 0.01), ("ps_vit_b_16", 21.34e6, 6.94e9, 0.01),
    ("ps_vit_b_18", 21.34e6, 8.77e9, 0.01), ("deit_small_ats", 22_050_664, 4.61e9, 0.01),
    ("cf_vit_deit_s_7x7", 23.25e6, 4.02e9, 0.01),
])
def test_flops_json_reproduces_published_figures(capsys, name, params, macs, tol):
    code, out, err = run(capsys, "flops", str(REF / f"{name}.yaml"), "--json")
    assert code == 0 and err == ""
    info = json.loads(out)
    assert abs(info["macs"] - macs) <= tol * macs
    if isinstance(params, int):
        assert info["params"] == params
    elif params is not None:  # published to the figure's precision (two decimals in millions)
        assert round(info["params"] / 1e6, 2) == round(params / 1e6, 2)


def test_flops_of_data_dependent_arch_has_bounds(capsys):
    code, out, _ = run(capsys, "flops", str(REF / "deit_small_ats.yaml"), "--json")
    info = json.loads(out)
    assert info["macs"] == info["macs_max"] > info["macs_min"]


def test_flops_of_cf_vit_coarse_only_is_macs_min(capsys):
    code, out, _ = run(capsys, "flops", str(REF / "cf_vit_deit_s_7x7.yaml"), "--json")
    info = json.loads(out)
    assert abs(info["macs_min"] - 1.10e9) <= 0.01 * 1.10e9 and info["macs"] == info["macs_max"]


def test_flops_of_a_space_prints_its_range(capsys):
    code, out, _ = run(capsys, "flops", str(ROOT / "spaces" / "psvit_tiny.yaml"), "--json")
    info = json.loads(out)
    assert code == 0 and set(info) == {"min_macs", "max_macs", "min_params", "max_params"}
    assert info == load_space(ROOT / "spaces" / "psvit_tiny.yaml").cost_bounds()


def test_flops_with_data_measures_mean(capsys, tmp_path):
    arch = tmp_path / "ats.yaml"
    arch.write_text((REF / "deit_small_ats.yaml").read_text()
                    .replace("size: 224", "size: 32").replace("patch_size: 16", "patch_size: 4")
                    .replace("dim: 384", "dim: 48"))
    code, out, err = run(capsys, "flops", str(arch), "--data", "synthetic:60", "--images", "8", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["macs_min"] <= info["macs_best_seen"] <= info["macs_mean"] <= info["macs_worst_seen"] <= info["macs"]


def test_space_show_json(capsys):
    code, out, _ = run(capsys, "space", "show", str(ROOT / "spaces" / "psvit_tiny.yaml"), "--json")
    info = json.loads(out)
    assert code == 0 and info["size"] == 3**17 * 8 and len(info["choices"]) == info["dimensions"] == 20
    assert info["min_macs"] < 1.3e9 < info["max_macs"]


def test_space_sample_writes_loadable_arch_files(capsys, tmp_path):
    code, out, _ = run(capsys, "space", "sample", str(ROOT / "spaces" / "psvit_tiny.yaml"), "-n", "3",
                       "--seed", "5", "--out", str(tmp_path))
    files = sorted(tmp_path.glob("*.yaml"))
    assert code == 0 and len(files) == 3 and len(out.splitlines()) == 3
    space = load_space(ROOT / "spaces" / "psvit_tiny.yaml")
    for f in files:
        arch = load_arch(f)
        assert arch in space and arch.provenance.space_hash == space.hash


@pytest.mark.parametrize("argv,needle", [
    (["flops", "missing.yaml"], "missing.yaml: no such file"),
    (["space", "frobnicate"], "invalid choice"),
    (["flops"], "required"),
    (["space", "show", "spaces/psvit_tiny.yaml", "--bogus"], "unrecognized arguments"),
])
def test_usage_errors_are_one_line_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2 and err.startswith("nas: error: ") and err.count("\n") == 1 and needle in err


def test_debug_shows_the_traceback():
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "--debug", "flops", "missing.yaml"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


FOUR = """\
name: four
input: {size: 16, channels: 3}
num_classes: 10
tokenizer: {type: patch, patch_size: 8}
stages:
- {dim: 16, heads: 2, mlp_ratio: {choice: [1, 2]}, cells: [{choice: [basic, identity]}]}
"""


def test_space_sample_writes_each_arch_once(capsys, tmp_path):
    """-n equal to the space's size writes every arch exactly once (2 x 2 = 4, counted by hand), inside --out."""
    space = tmp_path / "four.yaml"
    space.write_text(FOUR)
    out = tmp_path / "out"
    code, _, err = run(capsys, "space", "sample", str(space), "-n", "4", "--out", str(out))
    assert code == 0, err
    archs = [load_arch(f) for f in sorted(out.iterdir())]
    assert len(archs) == 4 and len({a.hash() for a in archs}) == 4
    assert {(a.stages[0].mlp_ratio, a.stages[0].cells) for a in archs} == \
        {(r, (c,)) for r in (1.0, 2.0) for c in ("basic", "identity")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["four.yaml", "out"]


def test_debug_anywhere_shows_the_traceback_of_input_errors_but_not_of_usage_errors():
    cmd = [sys.executable, "-m", "nas.cli", "flops", "missing.yaml", "--debug"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "no such file" in proc.stderr
    proc = subprocess.run(cmd + ["--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("argv", [[], ["space"]])
def test_no_command_or_action_is_a_usage_error(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and "choose one of" in err

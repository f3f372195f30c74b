"""Shipped spaces and recipes: found by name inside the package (nas.shipped), a path wins over a name, an unknown
name is one error line that lists the names, `nas space list` / `nas recipe list` print one line per file."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

from nas.arch import Arch
from nas.cli import main
from nas.errors import NasError
from nas.search.recipe import load_search_recipe
from nas.shipped import find, names, resolves
from nas.space import SearchSpace, load_any, load_arch, load_space
from nas.train.recipe import default_recipe, load_recipe
from tests.helpers import tiny_space

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted(p.relative_to(ROOT / "spaces").with_suffix("").as_posix() for p in (ROOT / "spaces").rglob("*.yaml"))
RECIPES = sorted(p.relative_to(ROOT / "recipes").with_suffix("").as_posix() for p in (ROOT / "recipes").rglob("*.yaml"))
NAS_RECIPES = [n for n in RECIPES if not n.startswith("cluster/")]  # cluster/: `ray up` configs


def test_the_package_ships_the_repository_folders():
    """One copy: nas/spaces and nas/recipes are the top-level folders (symlinks), and every file has a name."""
    assert (ROOT / "nas" / "spaces").is_symlink() and (ROOT / "nas" / "recipes").is_symlink()
    assert Path(str(files("nas") / "spaces")).resolve() == ROOT / "spaces"
    assert sorted(n for n, _ in names("space")) == SPACES and sorted(n for n, _ in names("recipe")) == RECIPES
    assert "psvit_tiny" in SPACES and "reference/deit_tiny" in SPACES and "search_optuna" in RECIPES


@pytest.mark.parametrize("name", SPACES)
def test_every_shipped_space_loads_by_name(name: str):
    obj = load_any(name)
    assert find("space", name).resolve() == (ROOT / "spaces" / f"{name}.yaml").resolve()
    if name.startswith("reference/"):
        assert isinstance(obj, Arch) and load_arch(name) == obj
    else:
        assert isinstance(obj, SearchSpace) and load_space(name).hash == load_space(ROOT / "spaces" / f"{name}.yaml").hash


@pytest.mark.parametrize("name", NAS_RECIPES)
def test_every_shipped_recipe_loads_by_name(name: str):
    path = ROOT / "recipes" / f"{name}.yaml"
    if name.startswith("search_"):
        assert load_search_recipe(name) == load_search_recipe(path)
    else:
        rc = load_recipe(name)
        assert rc == load_recipe(path) and rc.hash() == load_recipe(path).hash() and rc.name == name


def test_a_yaml_suffix_and_the_cluster_config_resolve():
    assert find("space", "psvit_tiny.yaml") == find("space", "psvit_tiny")
    assert find("recipe", "cluster/gpu-cluster").read_text().startswith("#")


def test_default_recipes_are_shipped_files():
    for job, data, name in [("supernet", "builtin", "cpu_supernet"), ("supernet", "fashion-mnist", "cpu_fashion_supernet"),
                            ("retrain", "builtin", "retrain_cpu"), ("retrain", "/data/imagenet", "retrain_deit")]:
        path = default_recipe(job, data)
        assert path is not None and path.exists() and path == find("recipe", name)
    assert default_recipe("supernet", "/data/imagenet") is None


def test_a_path_wins_over_a_name(tmp_path: Path, monkeypatch):
    (tmp_path / "psvit_tiny").write_text(tiny_space(10))
    monkeypatch.chdir(tmp_path)
    assert load_space("psvit_tiny").name == "tiny"
    assert resolves("space", "psvit_tiny") and resolves("space", "reference/deit_tiny")
    assert not resolves("space", "nope") and not resolves("space", "a\0b")


def test_an_unknown_name_is_one_line_listing_the_names(capsys):
    with pytest.raises(NasError) as e:
        load_space("psvit_tiyn")
    msg = e.value.format()
    assert msg.startswith("psvit_tiyn: no such file, nor a shipped space name; did you mean 'psvit_tiny'")
    assert "\n" not in msg and all(n in msg for n in SPACES) and "path" in msg
    with pytest.raises(NasError, match="shipped recipes .*cpu_supernet.*search_optuna"):
        load_recipe("cpu_superent")
    with pytest.raises(NasError, match="did you mean 'search_optuna'"):
        load_search_recipe("search_optuan")
    assert main(["search", "psvit_tiyn", "--flops", "1.3G"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas: error: psvit_tiyn: no such file") and err.count("\n") == 1


def test_a_missing_path_says_no_such_file():
    for path in ("runs/x/best.yaml", "/no/such.yaml", "./psvit_tiny.yaml"):
        with pytest.raises(NasError, match=r"no such file \(a shipped space is also found by its name"):
            load_any(path)


@pytest.mark.parametrize("kind,shipped", [("space", SPACES), ("recipe", RECIPES)])
def test_list_prints_one_line_per_file_with_its_description(kind: str, shipped: list[str], capsys):
    assert main([kind, "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines) == shipped
    described = dict(names(kind))
    for line in lines:
        name, _, rest = line.partition(" ")
        assert described[name] and rest.strip() == described[name]
    assert f"{kind}s" not in described  # names, not folders


def test_descriptions_come_from_the_key_or_the_first_comment():
    d = dict(names("space"))
    assert d["psvit_tiny"] == "PSViT-1D supernet at DeiT-Tiny scale (token pooling + attention sharing)"
    assert d["reference/deit_tiny"].startswith("DeiT-Tiny = timm deit_tiny_patch16_224")
    assert dict(names("recipe"))["cluster/gpu-cluster"].startswith("A small on-premise GPU cluster")


def test_path_command_prints_the_file(capsys):
    assert main(["space", "path", "reference/deit_tiny"]) == 0
    assert Path(capsys.readouterr().out.strip()) == (ROOT / "spaces" / "reference" / "deit_tiny.yaml").resolve()


@pytest.mark.slow
def test_the_wheel_holds_every_shipped_file(tmp_path: Path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    held = set(zipfile.ZipFile(next(tmp_path.glob("nas-*.whl"))).namelist())
    assert {f"nas/spaces/{n}.yaml" for n in SPACES} | {f"nas/recipes/{n}.yaml" for n in RECIPES} <= held

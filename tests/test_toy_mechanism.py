"""A fifth mechanism added from outside ``nas/``: the worked example of docs/adding-a-mechanism.md.

``topk_norm`` is a parameter-free token reduction: in the last layer of the cells ``blocks`` it keeps cls plus the
``k`` patch tokens of largest L2 norm (all of them when fewer enter). Both halves live in this module: the
torch-free half (config, DSL, rules, cost hooks) and the torch half (the ``reduce`` hook, named by ``model``).
The mechanism is registered by a fixture and unregistered after the module's tests: a registered reduction adds
its key to every space template, which would change the space hashes that other tests see.

The tests follow the mechanism through the toolkit: the DSL and its errors, exact cost against the built model,
exact space bounds against brute force, supernet paths against extracted models, SPOS training, a search.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file

import nas.mechanisms
from nas.cli import main
from nas.cost import cost
from nas.errors import NasError
from nas.mechanisms import Reduction, default
from nas.models import build_model
from nas.space import load_arch, load_space, save_arch
from nas.space.schema import Reader, integer
from tests.helpers import count_macs, tiny_space


# --- the torch-free half ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopKNorm:
    """Keep the ``k`` patch tokens of largest L2 norm in the last layer of each cell in ``blocks``."""
    blocks: tuple[int, ...]
    k: int = 4


class TopKNormReduction(Reduction):
    name, config = "topk_norm", TopKNorm
    model = __name__  # the torch half is ``reduce`` below: this module, under the name pytest imported it by

    def read(self, r: Reader, choosable: Callable) -> dict[str, Any]:
        r.allow("blocks", "k")  # ``blocks`` is read by the core
        return {"k": r.take("k", choosable(integer(1)), default(TopKNorm, "k"))}

    def check(self, arch: Any) -> None:
        k = arch.reduction.k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise NasError(f"k must be an integer >= 1 (patch tokens kept); got {k!r}", key="topk_norm.k")

    def to_dict(self, cfg: TopKNorm) -> dict[str, Any]:
        return {"blocks": list(cfg.blocks), "k": cfg.k}

    def from_dict(self, d: dict[str, Any]) -> TopKNorm:
        return TopKNorm(tuple(d["blocks"]), d.get("k", default(TopKNorm, "k")))

    def max_kept(self, cfg: TopKNorm, n_patches: int) -> int:
        return min(cfg.k, n_patches)

    def min_kept(self, cfg: TopKNorm, n_patches: int) -> int:
        return min(cfg.k, n_patches)  # deterministic: the worst case is the only case


# --- the torch half ---------------------------------------------------------------------------------------
def reduce(block: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None, cfg: TopKNorm,
           attn: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``Reduction`` hook: one pre-norm layer (``nas.models.layers.Block``) that outputs cls plus the ``k``
    patch rows of largest L2 norm (of the layer input), in their original order.

    Q, K, V and the attention map cover all N input rows (``attn``: a sharing layer's inherited map); A V, proj,
    the residual and the MLP run on the M kept rows only, so the MACs are ``layer_macs(n, dim, hidden, shared,
    n_out)``. x (B, N, C), mask (B, N) of real rows or None -> (x (B, M, C) with padded rows zero, mask (B, M),
    index (B, M) of the input row of each output row, -1 for padding). Per image, independent of the batch.
    """
    B, N, _ = x.shape
    a, v = block.attn.maps(block.norm1(x), attn=attn, mask=mask)        # (B, h, N, N), (B, h, N, d)
    real = torch.ones(B, N - 1, dtype=torch.bool, device=x.device) if mask is None else mask[:, 1:]
    score = x[:, 1:].detach().float().pow(2).sum(-1).masked_fill(~real, float("-inf"))  # (B, N-1)
    kmax = min(cfg.k, N - 1)
    top = score.sort(dim=-1, descending=True, stable=True).indices[:, :kmax]  # ties: the earlier token
    n_kept = real.sum(dim=1).clamp(max=cfg.k)                             # (B,) min(k, real patches)
    take = torch.arange(kmax, device=x.device)[None, :] < n_kept[:, None]  # (B, kmax) drop padding rows
    keep = torch.zeros(B, N, dtype=torch.bool, device=x.device)
    keep[:, 0] = True                                                     # cls always
    keep[:, 1:].scatter_(1, top, take)
    M = 1 + kmax
    index = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :M]  # kept rows first, in order
    mask_out = torch.arange(M, device=x.device)[None, :] < (1 + n_kept)[:, None]    # (B, M)
    rows = index.clamp(min=0)
    a_kept = a.gather(2, rows[:, None, :, None].expand(-1, a.shape[1], -1, N))      # (B, h, M, N)
    out = x.gather(1, rows[..., None].expand(-1, -1, x.shape[2]))                   # (B, M, C)
    out = out + block.drop_path(block.attn.merge(a_kept @ v))
    out = out + block.drop_path(block.mlp(block.norm2(out)))
    return out * mask_out[..., None], mask_out, index.masked_fill(~mask_out, -1)


@pytest.fixture(scope="module", autouse=True)
def topk_norm(tmp_path_factory):
    """The mechanism registered for this module's tests only; afterwards other spaces hash as before."""
    other = write(tmp_path_factory.mktemp("other"), "other.yaml", tiny_space(10))
    before = load_space(other).hash
    mech = nas.mechanisms.register(TopKNormReduction())
    try:
        assert load_space(other).hash != before  # why it must be unregistered: every template has its key
        yield mech
    finally:
        nas.mechanisms.unregister(mech.name)
    assert "topk_norm" not in nas.mechanisms.reductions() and load_space(other).hash == before


# --- a tiny space ------------------------------------------------------------------------------------------
def space_text(head: str = "cls", k: str = "{choice: [2, 5, 40]}") -> str:
    """16 px, 4 px patches (16 patch tokens + cls), 1d pooling to 8 + cls; topk_norm in a searchable subset of
    the last stage's cells with a searchable k (40: more than enter, all kept). 3 x 2 x 2 x 2 x 8 x 3 = 576."""
    return f"""\
name: toy
input: {{size: 16, channels: 3}}
num_classes: 10
tokenizer: {{type: patch, patch_size: 4}}
pooling: {{type: 1d, kernel: 3}}
head: {head}
stages:
  - {{dim: 16, heads: 2, mlp_ratio: 2, cells: [{{choice: [basic, shared_pair, identity]}}]}}
  - dim: {{choice: [16, 24]}}
    heads: 2
    mlp_ratio: {{choice: [1, 2]}}
    cells: [{{choice: [basic, shared_pair]}}, basic, basic]
topk_norm: {{blocks: {{subset: [1, 2, 3]}}, k: {k}}}
"""


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("toy")


def archs(space, n: int, seed: int = 0) -> list:
    """``n`` sampled archs, the first with every reducing block and the smallest k (the most tokens dropped)."""
    rng = random.Random(seed)
    first = space.decode([len(d.values) - 1 if "[" in d.path and "topk_norm" in d.path else 0 for d in space.dims])
    assert first.reduction.blocks == (1, 2, 3) and first.reduction.k == 2
    return [first] + [space.sample(rng) for _ in range(n - 1)]


# --- (a) the DSL ------------------------------------------------------------------------------------------
def validate(path: Path, capsys) -> tuple[int, str, str]:
    code = main(["space", "validate", str(path)])
    return (code, *capsys.readouterr())


def test_space_validates_and_a_bad_value_names_file_line_and_key(files: Path, capsys):
    code, out, _ = validate(write(files, "good.yaml", space_text()), capsys)
    assert code == 0 and "576 archs" in out
    space = load_space(files / "good.yaml")
    assert [d.path for d in space.dims][-4:] == ["topk_norm.blocks[1]", "topk_norm.blocks[2]", "topk_norm.blocks[3]",
                                                 "topk_norm.k"]
    arch = archs(space, 1)[0]
    save_arch(arch, files / "arch.yaml")
    assert "topk_norm" in (files / "arch.yaml").read_text()
    assert load_arch(files / "arch.yaml") == arch and arch in space  # the arch file round-trips

    line = 1 + [t.startswith("topk_norm:") for t in space_text().splitlines()].index(True)
    bad = {  # file text -> the start of its one error line, after "file:line: "
        space_text(k="0"): "topk_norm.k: must be an integer >= 1, got 0",
        space_text(k="{choice: [2, 0]}"): "topk_norm.k.choice[1]: must be an integer >= 1, got 0",
        space_text().replace("k: {choice", "kk: {choice"): "topk_norm.kk: unknown key 'kk'; did you mean 'k'?",
        space_text().replace("subset: [1, 2, 3]", "subset: [0, 2]"): "topk_norm.blocks: block 0 (stage 0, cell 0) "
                                                                     "can be an identity cell",
    }
    for i, (text, message) in enumerate(bad.items()):
        path = write(files, f"bad{i}.yaml", text)
        code, out, err = validate(path, capsys)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert err.startswith(f"nas: error: {path}:{line}: {message}"), err


# --- (b) exact cost -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["cls", "gap"])
def test_cost_equals_the_built_model(files: Path, head: str):
    space = load_space(write(files, f"{head}.yaml", space_text(head)))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reduced = 0
    for arch in archs(space, 8):
        torch.manual_seed(0)
        model, c = build_model(arch).eval(), cost(arch)
        assert c.params == sum(p.numel() for p in model.parameters())
        assert c.macs_min == c.macs == c.macs_max  # keep min(k, N) of N: no image-dependence
        with torch.no_grad():
            model(x)
        assert model.last_macs.tolist() == [c.macs] * 3
        if arch.reduction.blocks:
            assert model.last_mask is not None and len(model.last_kept) == len(arch.reduction.blocks)
            kept = model.last_mask.sum(dim=1)
            assert kept.tolist() == [1 + min(arch.reduction.k, 8)] * 3  # 8 patch tokens + cls enter stage 1
            reduced += int(arch.reduction.k < 8)
        for i in range(3):  # an independent count, one image at a time
            assert count_macs(model, x[i:i + 1]) == c.macs
    assert reduced >= 1  # some arch dropped tokens


def test_reduce_keeps_the_largest_norm_tokens_in_order_whatever_the_batch():
    from nas.models.layers import Block
    torch.manual_seed(0)
    block = Block(16, 2, 32).eval()
    x = torch.randn(2, 7, 16)
    x[0, 1:] *= torch.tensor([1.0, 5, 2, 6, 0.5, 4])[:, None] / x[0, 1:].norm(dim=-1, keepdim=True)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])  # image 1: 3 real patch tokens, padded
    x[1, 4:] = 0
    with torch.no_grad():
        out, m, index = reduce(block, x, mask, TopKNorm((0,), k=4))
        alone, _, index1 = reduce(block, x[1:, :4], None, TopKNorm((0,), k=4))
    assert index[0].tolist() == [0, 2, 3, 4, 6]               # cls + norms 5, 2, 6, 4 in their order
    assert index[1].tolist() == [0, 1, 2, 3, -1] and m[1].tolist() == [True] * 4 + [False]
    assert bool((out[1, 4] == 0).all())
    torch.testing.assert_close(out[1, :4], alone[0], atol=1e-6, rtol=0)  # padding changes nothing
    assert index1[0].tolist() == [0, 1, 2, 3]


# --- (c) exact space bounds ------------------------------------------------------------------------------
def test_space_bounds_equal_brute_force(files: Path):
    space = load_space(write(files, "bounds.yaml", space_text()))
    costs = [cost(space.decode(list(v))) for v in itertools.product(*(range(len(d.values)) for d in space.dims))]
    assert len(costs) == space.size() == 576
    macs, params = [c.macs for c in costs], [c.params for c in costs]
    bounds = space.cost_bounds()
    assert bounds == {"min_macs": min(macs), "max_macs": max(macs), "min_params": min(params),
                      "max_params": max(params)}
    assert bounds["min_macs"] < bounds["max_macs"]
    for key, arch in space.extreme_archs().items():
        assert arch in space and getattr(cost(arch), "macs" if key.endswith("macs") else "params") == bounds[key]
    assert space.extreme_archs()["min_macs"].reduction.k == 2  # dropping tokens is what makes the cheapest


# --- (d) supernet paths ------------------------------------------------------------------------------------
def test_supernet_path_equals_the_extracted_model(files: Path):
    from nas.supernet import Supernet
    space = load_space(write(files, "supernet.yaml", space_text("gap")))
    torch.manual_seed(0)
    supernet = Supernet(space).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for arch in archs(space, 6, seed=1):
        model = supernet.extract(arch).eval()
        with torch.no_grad():
            expected, got = model(x), supernet(x, arch)
        assert got.shape == (2, 10)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        if arch.reduction.blocks and arch.reduction.k < 8:
            assert model.last_mask.shape[1] == 1 + arch.reduction.k < 9  # the path dropped tokens


# --- (e) SPOS training and (f) a search ----------------------------------------------------------------------
RECIPE = """\
seed: 0
epochs: 1
batch_size: 8
optimizer: {name: adamw, lr: 2e-3, weight_decay: 0.0}
schedule: {name: none}
label_smoothing: 0.0
data: {holdout: 0.25}
device: cpu
"""


@pytest.fixture(scope="module")
def trained(files: Path):
    from nas.train import train_supernet
    space = write(files, "train.yaml", space_text())
    out = files / "supernet"
    paths = []
    r = train_supernet(space, data="synthetic:64", recipe=write(files, "recipe.yaml", RECIPE), out=out,
                       progress=False, on_step=lambda state: paths.append(state.arch))
    return space, out, r, paths


def test_spos_training(trained):
    space, out, r, paths = trained
    assert r.steps == len(paths) >= 4 and torch.isfinite(torch.tensor(r.loss))
    assert any(a.reduction.blocks and a.reduction.k < 8 for a in paths)  # some steps trained a reduced path
    assert "topk_norm" in (out / "space.yaml").read_text()
    assert load_space(out / "space.yaml").hash == load_space(space).hash
    weights = load_file(out / "supernet.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_search_on_the_trained_supernet(trained, files: Path):
    from nas.search.history import read_history
    from nas.search.runner import search
    space_file, sup, _, _ = trained
    space = load_space(space_file)
    b = space.cost_bounds()
    limit = (b["min_macs"] + b["max_macs"]) // 2
    out = files / "search"
    result = search(space_file, flops=str(limit), supernet=sup, searcher="random", max_evals=6, out=out,
                    progress=False)
    best = load_arch(out / "best.yaml")
    assert best.hash() == result.best_arch.hash() and best in space
    assert best.reduction is not None and cost(best).macs <= limit
    assert "topk_norm" in (out / "best.yaml").read_text()
    model = build_model(best)
    model.load_state_dict(load_file(out / "best.safetensors"))  # inherited weights fit the standalone model
    rows = read_history(out / "history.csv")
    assert len(rows) == 6 and any(c.feasible for c in rows)
    for c in rows:  # the MACs measured on the search split are the analytic ones: keep-k is not image-dependent
        assert c.macs_mean == c.macs == c.target_macs and c.feasible == (c.macs_mean <= limit)

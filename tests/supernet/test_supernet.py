"""SPOS supernet: subnet extraction equals the supernet path, weight entanglement by slicing, separate choice
blocks, covering of the space, BatchNorm recalibration, safetensors round trip, determinism."""
from __future__ import annotations

import glob
import itertools
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from nas.errors import NasError
from nas.models import build_model
from nas.space import load_space
from nas.supernet import Supernet, covering_vectors, recalibrate_bn
from nas.supernet.skeleton import build_skeleton

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted(glob.glob(str(ROOT / "spaces" / "*.yaml")))

TINY_1D = """
name: tiny_1d
input: {size: 16, channels: 3}
num_classes: 5
tokenizer: {type: patch, patch_size: 4}
pooling: {type: 1d, kernel: {choice: [1, 3]}}
head: cls
stages:
  - dim: 16
    heads: 2
    mlp_ratio: {choice: [1, 2]}
    cells: [{choice: [basic, shared_pair, identity]}, basic]
  - dim: {choice: [16, 24]}
    heads: {choice: [2, 4]}
    mlp_ratio: {choice: [2, 3]}
    cells: [{choice: [basic, shared_pair]}]
"""

TINY_PS = """
name: tiny_ps
input: {size: 32, channels: 3}
num_classes: 5
tokenizer: {type: progressive, points: {choice: [3, 4]}, iterations: {choice: [1, 2, 3]},
            share_weights: {choice: [false, true]}}
head: cls
qkv_bias: false
stages:
  - dim: {choice: [16, 32]}
    heads: {choice: [1, 2]}
    mlp_ratio: 2
    cells: [{choice: [basic, identity]}, basic]
"""


def _space(tmp_path: Path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_space(path)


def _img(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _arch(space, **picks):
    """The space's arch with dimension ``path -> value`` picks, every other dimension at its first value."""
    vec = [0] * len(space.dims)
    for i, d in enumerate(space.dims):
        if d.path in picks:
            vec[i] = d.values.index(picks[d.path])
    return space.decode(vec)


def tiny_overrides(path: str) -> dict:
    """Overrides that shrink a shipped space for CPU tests: input 32, patch 4, widths / 4, few sampling points."""
    t = load_space(path).template()
    tok, ov = t["tokenizer"], {"input.size": 32, "input.channels": 3}  # the test images are RGB
    if "choice" in tok:  # a choice of tokenizers: the space's own CPU proxy (its shipped recipe)
        from nas.train.recipe import default_recipe, load_recipe
        return {**load_recipe(default_recipe("supernet", "builtin", t["name"])).space_overrides, **ov}
    if tok["type"] in ("patch", "coarse_fine"):
        ov["tokenizer.patch_size"] = 4
    if tok["type"] == "coarse_fine":
        ov["tokenizer.coarse_grid"] = 4
    if tok["type"] == "progressive" and isinstance(tok["points"], dict):
        ov["tokenizer.points"] = {"choice": list(range(2, 2 + len(tok["points"]["choice"])))}
    elif tok["type"] == "progressive":
        ov["tokenizer.points"] = 4
    for s, st in enumerate(t["stages"]):
        heads = st["heads"]["choice"] if isinstance(st["heads"], dict) else [st["heads"]]
        step = math.lcm(*heads)
        dims = st["dim"]["choice"] if isinstance(st["dim"], dict) else [st["dim"]]
        small = sorted({max(step, -(-d // 4 // step) * step) for d in dims})
        ov[f"stages[{s}].dim"] = small[0] if len(small) == 1 else {"choice": small}
    return ov


# --- shipped spaces -----------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=SPACES, ids=[Path(p).stem for p in SPACES])
def shipped(request):
    space = load_space(request.param, overrides=tiny_overrides(request.param))
    torch.manual_seed(0)
    try:
        supernet = Supernet(space).eval()
    except NotImplementedError as e:
        pytest.skip(f"{space.name}: build_model does not support it yet ({e})")
    return space, supernet


def test_extract_equals_forward_on_shipped_spaces(shipped):
    space, supernet = shipped
    x, rng = _img(32), random.Random(0)
    for _ in range(30):
        arch = space.sample(rng)
        model, ref = supernet.extract(arch), build_skeleton(arch)
        assert type(model) is type(ref)
        with torch.no_grad():
            expected = model(x)
            got = supernet(x, arch)
        assert got.shape == (2, arch.num_classes)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        # the extracted model has exactly the standalone model's tensors
        assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_sampling_reaches_every_choice(shipped):
    space, _ = shipped
    rng = random.Random(1)
    seen = [set() for _ in space.dims]
    for _ in range(300):
        for j, v in enumerate(space.encode(space.sample(rng))):
            seen[j].add(v)
    for d, s in zip(space.dims, seen):
        assert s == set(range(len(d.values))), f"{d.path}: values {d.values} reached {sorted(s)}"


# --- covering and layout ------------------------------------------------------------------------------
def test_supernet_tensors_are_the_union_and_elementwise_max_over_the_whole_space(tmp_path):
    space = _space(tmp_path, TINY_1D)
    supernet = Supernet(space)
    union: dict[str, list[int]] = {}
    for vec in itertools.product(*(range(len(d.values)) for d in space.dims)):  # brute force: 192 archs
        for k, v in build_skeleton(space.decode(list(vec))).state_dict().items():
            union[k] = [max(a, b) for a, b in zip(union.get(k, v.shape), v.shape)]
    assert {k: list(v.shape) for k, v in supernet.state_dict().items()} == union
    assert len(covering_vectors(space)) < space.size()
    sd = supernet.state_dict()
    assert sd["stages.1.cells.0.attn.qkv.weight"].shape == (72, 24)       # 3 x widest dim 24
    assert sd["stages.1.cells.0.mlp.fc1.weight"].shape == (72, 24)        # int(24 * 3)
    assert sd["poolings.0.conv.weight"].shape == (24, 16, 3)              # widest kernel


def test_arch_outside_the_space_is_a_user_error(tmp_path):
    space = _space(tmp_path, TINY_1D)
    supernet = Supernet(space)
    arch = space.sample(0)
    wider = replace(arch, stages=(arch.stages[0], replace(arch.stages[1], dim=32)))
    with pytest.raises(NasError, match="not in the supernet's space"):
        supernet(_img(16), wider)
    with pytest.raises(NasError, match="needs the arch"):
        recalibrate_bn(supernet, [_img(16)])


# --- weight entanglement ------------------------------------------------------------------------------
def _carve(name: str, big: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The intended slice of ``big`` for a subnet tensor of ``shape``, written independently of the library."""
    if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
        B, b = big.shape[0] // 3, shape[0] // 3
        big = torch.cat([big[:b], big[B:B + b], big[2 * B:2 * B + b]])      # q, k, v each from its own block
    if name.startswith("poolings.") and name.endswith("conv.weight"):
        K, k = big.shape[-1], shape[-1]
        big = big[..., (K - k) // 2:(K - k) // 2 + k]                        # centre of the kernel
    return big[tuple(slice(0, n) for n in shape)]


def _sgd_step(params, loss: torch.Tensor, lr: float = 0.5) -> None:
    opt = torch.optim.SGD(params, lr=lr)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def test_a_step_through_a_small_subnet_changes_exactly_its_slice(tmp_path):
    space = _space(tmp_path, TINY_1D)
    torch.manual_seed(0)
    supernet = Supernet(space).train()
    x, y = _img(16, batch=4), torch.tensor([0, 1, 2, 3])
    small = _arch(space, **{"pooling.kernel": 1, "stages[1].dim": 16, "stages[1].mlp_ratio": 2,
                            "stages[1].heads": 4, "stages[0].mlp_ratio": 1})
    large = _arch(space, **{"pooling.kernel": 3, "stages[1].dim": 24, "stages[1].mlp_ratio": 3,
                            "stages[1].heads": 2, "stages[0].mlp_ratio": 2})
    assert small.stages[0].cells == large.stages[0].cells
    big_before = supernet.extract(large).state_dict()
    sub = supernet.extract(small)
    _sgd_step(sub.parameters(), F.cross_entropy(sub(x), y))                  # the standalone step
    _sgd_step(supernet.parameters(), F.cross_entropy(supernet(x, small), y))  # the same step, shared
    sub_after = sub.state_dict()
    big_after = supernet.extract(large).state_dict()
    assert big_before.keys() == big_after.keys() == sub_after.keys()
    moved = 0
    for k, before in big_before.items():
        shape = tuple(sub_after[k].shape)
        index = torch.arange(before.numel()).reshape(before.shape)
        inside = torch.zeros(before.numel(), dtype=torch.bool)
        inside[_carve(k, index, shape).flatten()] = True
        inside = inside.reshape(before.shape)
        changed = big_after[k] != before
        assert not (changed & ~inside).any(), f"{k}: the step changed weights outside the small subnet's slice"
        torch.testing.assert_close(_carve(k, big_after[k], shape), sub_after[k], atol=1e-6, rtol=0)
        moved += int(changed.any())
    assert moved > 0.8 * len(big_before)
    # k's rows of the fused qkv moved inside the k block of the large subnet (rows 24..39), not 16..31
    qkv_b, qkv_a = big_before["stages.1.cells.0.attn.qkv.weight"], big_after["stages.1.cells.0.attn.qkv.weight"]
    assert (qkv_a[24:40, :16] != qkv_b[24:40, :16]).any() and torch.equal(qkv_a[16:24], qkv_b[16:24])
    # the kernel-1 subnet used the centre tap of the kernel-3 pooling conv only
    conv_b, conv_a = big_before["poolings.0.conv.weight"], big_after["poolings.0.conv.weight"]
    assert torch.equal(conv_a[..., [0, 2]], conv_b[..., [0, 2]]) and (conv_a[:16, :, 1] != conv_b[:16, :, 1]).any()


def test_cell_kinds_at_one_position_keep_separate_weights(tmp_path):
    space = _space(tmp_path, TINY_1D)
    torch.manual_seed(0)
    supernet = Supernet(space)
    basic = _arch(space, **{"stages[0].cells[0]": "basic"})
    pair = _arch(space, **{"stages[0].cells[0]": "shared_pair"})
    keys_basic = {k for k in supernet.subnet_state_dict(basic) if k.startswith("stages.0.cells.0.")}
    keys_pair = {k for k in supernet.subnet_state_dict(pair) if k.startswith("stages.0.cells.0.")}
    assert keys_basic and keys_pair and not keys_basic & keys_pair
    pair_before = supernet.extract(pair).stages[0].cells[0].state_dict()
    basic_before = supernet.extract(basic).stages[0].cells[0].state_dict()
    assert not torch.equal(basic_before["attn.qkv.weight"], pair_before["first.attn.qkv.weight"])  # own init
    _sgd_step(supernet.parameters(), F.cross_entropy(supernet(_img(16), basic), torch.tensor([1, 2])))
    pair_after = supernet.extract(pair).stages[0].cells[0].state_dict()
    basic_after = supernet.extract(basic).stages[0].cells[0].state_dict()
    assert all(torch.equal(pair_before[k], pair_after[k]) for k in pair_before)
    assert not torch.equal(basic_before["attn.qkv.weight"], basic_after["attn.qkv.weight"])


# --- progressive sampling, BatchNorm ------------------------------------------------------------------
def test_progressive_iterations_and_shared_layer_are_path_choices(tmp_path):
    space = _space(tmp_path, TINY_PS)
    torch.manual_seed(0)
    supernet = Supernet(space)
    sd = {k: v.clone() for k, v in supernet.state_dict().items()}
    assert {f"tokenizer.layers.{i}.attn.qkv.weight" for i in range(3)} <= sd.keys()
    assert "tokenizer.shared_layer.attn.qkv.weight" in sd and "tokenizer.shared_offset.weight" in sd
    assert "tokenizer.offsets.1.weight" in sd and "tokenizer.offsets.2.weight" not in sd  # no head after the last
    assert "tokenizer.stem.1.running_mean" in dict(supernet.named_buffers())
    x = _img(32)
    for it, share, dim in itertools.product([1, 2, 3], [False, True], [16, 32]):
        arch = _arch(space, **{"tokenizer.iterations": it, "tokenizer.share_weights": share, "stages[0].dim": dim,
                               "tokenizer.points": 4})
        for mode in (True, False):  # train mode: BatchNorm on batch statistics
            supernet.train(mode)
            model = supernet.extract(arch)
            assert model.training == mode
            with torch.no_grad():
                torch.testing.assert_close(supernet(x, arch), model(x), atol=1e-5, rtol=0)
        layers = model.tokenizer.layers
        assert len(layers) == (1 if share else it)
        src = "tokenizer.shared_layer" if share else "tokenizer.layers.0"
        assert torch.equal(layers[0].attn.qkv.weight, torch.cat([sd[f"{src}.attn.qkv.weight"][j * 32:j * 32 + dim, :dim]
                                                                for j in range(3)]))
    supernet.eval()
    # a step through the separate-layer path leaves the shared layer alone
    shared_before = sd["tokenizer.shared_layer.attn.qkv.weight"].clone()
    arch = _arch(space, **{"tokenizer.iterations": 3, "tokenizer.share_weights": False})
    _sgd_step(supernet.parameters(), supernet(x, arch).logsumexp(-1).mean())
    assert torch.equal(supernet.state_dict()["tokenizer.shared_layer.attn.qkv.weight"], shared_before)
    key = "tokenizer.layers.2.attn.qkv.weight"
    assert not torch.equal(supernet.state_dict()[key], sd[key])


def _bn_inputs(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Inputs of every BatchNorm per batch, in train mode (batch statistics, as during recalibration)."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, []).append(a[0].detach().clone()))
             for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    model.train()
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    return seen


def test_recalibrate_bn_gives_the_mean_of_the_batch_statistics(tmp_path):
    space = _space(tmp_path, TINY_PS)
    torch.manual_seed(0)
    arch = _arch(space, **{"stages[0].dim": 32, "tokenizer.iterations": 2})
    model = build_model(arch)
    batches = [_img(32, batch=4, seed=s) * (1 + s) for s in range(3)]
    for m in model.modules():   # stale statistics that recalibration must discard
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(5.0)
            m.running_var.fill_(7.0)
            m.num_batches_tracked.fill_(100)
    inputs = _bn_inputs(model, batches)
    out = recalibrate_bn(model, ((b, torch.zeros(4)) for b in batches + batches), num_batches=3)
    assert out is model and not model.training
    bns = dict((n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    # stem BN + bottleneck 64->64->32 (3 BN + projection BN) + bottleneck 32->64->32 (3 BN)
    assert len(bns) == 8 and bns.keys() == inputs.keys()
    for name, m in bns.items():
        mean = torch.stack([t.mean(dim=(0, 2, 3)) for t in inputs[name]]).mean(0)
        var = torch.stack([t.var(dim=(0, 2, 3), unbiased=True) for t in inputs[name]]).mean(0)
        torch.testing.assert_close(m.running_mean, mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m.running_var, var, atol=1e-5, rtol=1e-5)
        assert m.num_batches_tracked.item() == 3 and m.momentum == 0.1
    # the first BatchNorm's input by hand: the 7x7 stride-2 stem conv
    conv = model.tokenizer.stem[0]
    first = [F.conv2d(b, conv.weight, stride=2, padding=3) for b in batches]
    torch.testing.assert_close(bns["tokenizer.stem.1"].running_mean,
                               torch.stack([t.mean(dim=(0, 2, 3)) for t in first]).mean(0), atol=1e-5, rtol=1e-5)


def test_recalibrate_bn_on_the_supernet_path_matches_the_extracted_model(tmp_path):
    space = _space(tmp_path, TINY_PS)
    torch.manual_seed(0)
    supernet = Supernet(space)
    arch = _arch(space, **{"stages[0].dim": 16, "tokenizer.iterations": 2})
    batches = [_img(32, batch=4, seed=s) for s in range(2)]
    model = recalibrate_bn(supernet.extract(arch), batches)
    assert recalibrate_bn(supernet, batches, arch=arch) is supernet and not supernet.training
    got = supernet.extract(arch).state_dict()
    for k, v in model.state_dict().items():
        if "running" in k or "num_batches" in k:
            torch.testing.assert_close(got[k], v, atol=1e-6, rtol=1e-6)
    # only the arch's slice was recalibrated: the wider channels of the stem keep their statistics
    assert torch.equal(supernet.state_dict()["tokenizer.stem.4.bn3.running_mean"][16:], torch.zeros(16))
    assert supernet.state_dict()["tokenizer.stem.4.bn3.running_mean"][:16].abs().sum() > 0


def test_recalibrate_bn_is_a_no_op_without_batchnorm(tmp_path):
    space = _space(tmp_path, TINY_1D)
    model = build_model(space.sample(0)).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def batches():
        raise AssertionError("no batch should be drawn")
        yield  # pragma: no cover

    assert recalibrate_bn(model, batches()) is model and model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# --- serialisation, determinism -----------------------------------------------------------------------
@pytest.mark.parametrize("text,size", [(TINY_1D, 16), (TINY_PS, 32)], ids=["psvit1d", "progressive"])
def test_extracted_model_round_trips_through_safetensors(tmp_path, text, size):
    space = _space(tmp_path, text)
    torch.manual_seed(0)
    supernet = Supernet(space)
    x = _img(size)
    for seed in range(3):
        arch = space.sample(seed)
        model = supernet.extract(arch).eval()
        save_model(model, str(tmp_path / "subnet.safetensors"))
        torch.manual_seed(seed + 100)
        fresh = build_model(arch)
        load_model(fresh, str(tmp_path / "subnet.safetensors"))
        fresh.eval()
        with torch.no_grad():
            assert torch.equal(fresh(x), model(x))


def test_same_seed_same_supernet_and_paths_draw_no_random_numbers(tmp_path):
    space = _space(tmp_path, TINY_PS)
    torch.manual_seed(0)
    a = Supernet(space, cache_size=1).eval()
    torch.manual_seed(0)
    b = Supernet(space).eval()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x, archs = _img(32), [space.sample(s) for s in range(3)]
    state = torch.get_rng_state()
    with torch.no_grad():
        first = [a(x, arch) for arch in archs]            # cache of one: every call rebuilds its skeleton
        again = [a(x, arch) for arch in archs] + [b(x, arch) for arch in archs]
        extracted = [a.extract(arch)(x) for arch in archs]
    assert torch.equal(torch.get_rng_state(), state)
    for i, y in enumerate(first):
        assert torch.equal(again[i], y) and torch.equal(again[3 + i], y) and torch.equal(extracted[i], y)
    assert len(a._paths) == 1


def test_bound_serves_methods_other_than_forward():
    path = ROOT / "spaces" / "cf_vit.yaml"
    if not path.exists():
        pytest.skip("no shipped coarse_fine space")
    space = load_space(path, overrides=tiny_overrides(str(path)))
    torch.manual_seed(0)
    supernet = Supernet(space).train()
    arch, x = space.sample(3), _img(32)
    model = supernet.extract(arch)
    assert model.fine_index.device == x.device  # an arch constant (non-persistent buffer), real
    with supernet.bound(arch) as bound:
        coarse, fine = bound.forward_train(x)
        (coarse.sum() + fine.sum()).backward()
    for got, want in zip((coarse, fine), model.forward_train(x)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert supernet.state_dict()["tokenizer.pos_embed_coarse"].grad is None  # state_dict holds detached tensors
    assert supernet.tokenizer.pos_embed_coarse.grad.abs().sum() > 0
    assert all(t.is_meta for n, t in bound.state_dict().items())             # swapped back after the block


# --- training through a path: the model's own objective ------------------------------------------------------------
TINY_CF = """
name: tiny_cf
input: {size: 32, channels: 3}
num_classes: 5
tokenizer: {type: coarse_fine, patch_size: 4, coarse_grid: 4, alpha: {choice: [0.25, 0.5]}, exit_threshold: 0.0}
head: cls
stages:
  - dim: {choice: [16, 24]}
    heads: 2
    mlp_ratio: {choice: [1, 2]}
    cells: [basic, {choice: [shared_pair, basic, identity]}, basic, basic]
"""
FINE_ONLY = ("tokenizer.pos_embed", "reuse.")  # tensors only the fine pass uses


def _smoothed_ce(logits: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    logp = logits.log_softmax(-1)
    return -(1 - eps) * logp.gather(1, y[:, None]).mean() - eps * logp.mean()


def _paper_loss(coarse: torch.Tensor, fine: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """CE(fine, y) (label-smoothed) + KL(softmax(fine) || softmax(coarse)) summed over classes, mean over images."""
    pf, pc = fine.detach().softmax(-1), coarse.softmax(-1)
    return _smoothed_ce(fine, y, eps) + (pf * (pf.log() - pc.log())).sum(-1).mean()


@pytest.mark.parametrize("progress", [0.0, 0.9], ids=["warmup", "selection"])
def test_cf_vit_path_trains_both_passes_with_the_paper_loss(tmp_path, progress):
    """eta = 0: inference exits every image after the coarse pass, so training through ``forward`` would leave
    the fine-only tensors without gradient. Through the model's objective every tensor on the path gets the
    gradient the standalone model gets, and the loss is CE(fine) + KL(fine || coarse)."""
    from timm.loss import LabelSmoothingCrossEntropy

    from nas.mechanisms.coarse_fine import WARMUP_FRACTION
    from nas.models.objective import training_loss
    from nas.supernet.slicing import slice_tensor

    space = _space(tmp_path, TINY_CF)
    torch.manual_seed(0)
    supernet = Supernet(space).train()
    arch = _arch(space, **{"stages[0].dim": 16, "stages[0].mlp_ratio": 2, "tokenizer.alpha": 0.5})
    assert arch.stages[0].cells[1] == "shared_pair" and supernet.tokenizer.cls_token.shape[-1] == 24  # a slice
    x, y, eps = _img(32, batch=4), torch.tensor([0, 3, 1, 4]), 0.1
    criterion = LabelSmoothingCrossEntropy(eps)
    with supernet.bound(arch) as model:  # the old path: inference, every image exits, fine tensors untouched
        criterion(model(x), y).backward()
    assert supernet.reuse.mlp.fc1.weight.grad is None and supernet.tokenizer.pos_embed.grad is None
    supernet.zero_grad(set_to_none=True)

    with supernet.bound(arch) as model:
        loss, logits = training_loss(model, x, y, criterion, progress)
    loss.backward()
    ref = supernet.extract(arch)
    coarse, fine = ref.forward_train(x, warmup=progress < WARMUP_FRACTION)
    expected = _paper_loss(coarse, fine, y, eps)
    other = _paper_loss(*ref.forward_train(x, warmup=progress >= WARMUP_FRACTION), y, eps)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits, fine, rtol=0, atol=1e-6)
    assert abs(float(expected.detach() - other.detach())) > 1e-4  # warm-up and selection differ: the right one was run
    expected.backward()

    on_path = set()
    for name, holder, leaf, is_param, shape, rule, _ in supernet._path(arch).entries:
        if not is_param:
            continue
        full = holder._parameters[leaf]
        on_path.add(id(full))
        assert full.grad is not None and bool(torch.isfinite(full.grad).all()), name
        got, want = slice_tensor(full.grad, shape, rule), ref.get_parameter(name).grad
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=name)
        if name.startswith(FINE_ONLY) or progress < WARMUP_FRACTION:
            assert bool(got.abs().sum() > 0), name
        torch.testing.assert_close(full.grad.abs().sum(), got.abs().sum(), msg=name)  # nothing outside the slice
    assert {n for n, p in supernet.named_parameters() if id(p) not in on_path and p.grad is not None} == set()
    # the fine table: all entries in warm-up; cls + the chosen regions' fine patches once regions are selected
    rows = int((supernet.tokenizer.pos_embed.grad[0, :, :16].abs().sum(-1) > 0).sum())
    if progress < WARMUP_FRACTION:
        assert rows == 1 + 64
    else:  # k = 8 of 16 regions per image, 4 fine patches each; 4 images choose different regions
        assert 1 + 4 * 8 <= rows < 1 + 64


@pytest.mark.parametrize("text,size", [(TINY_PS, 32), (TINY_CF, 32), (TINY_1D, 16)], ids=["progressive", "cf", "1d"])
def test_training_options_reach_every_path_and_change_no_eval_output(tmp_path, text, size):
    """``Supernet(space, drop_path=r)``: every path and extracted model has the linear stochastic-depth rule of
    its own depth (sampling rounds first); the weights and eval outputs are those of ``drop_path=0``."""
    from timm.layers import DropPath

    from nas.models.vit import drop_path_rates

    space = _space(tmp_path, text)
    torch.manual_seed(0)
    plain = Supernet(space).eval()
    torch.manual_seed(0)
    dropping = Supernet(space, drop_path=0.3).eval()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), dropping.state_dict().values()))
    x = _img(size)
    for seed in range(4):
        arch = space.sample(seed)
        model = dropping.extract(arch)
        rounds, cells = drop_path_rates(arch, 0.3)
        want = rounds if not getattr(arch.tokenizer, "share_weights", False) else [sum(rounds) / len(rounds)]
        want += [r for stage in cells for cell in stage for r in cell]
        layers = [m.drop_path for m in model.modules() if hasattr(m, "drop_path") and hasattr(m, "attn")]
        got = [m.drop_prob if isinstance(m, DropPath) else 0.0 for m in layers]
        assert got == pytest.approx(want) and got[-1] == pytest.approx(0.3 if len(got) > 1 else 0.0)
        with torch.no_grad():
            assert torch.equal(dropping(x, arch), plain(x, arch))
            assert torch.equal(model(x), plain(x, arch))


@pytest.mark.parametrize("text,names", [
    (TINY_PS, {"tokenizer.cls_token", "tokenizer.pos.weight", "tokenizer.pos.bias"}),
    (TINY_CF, {"tokenizer.cls_token", "tokenizer.pos_embed", "tokenizer.pos_embed_coarse"}),
    (TINY_1D, {"tokenizer.cls_token", "tokenizer.pos_embed"}),
], ids=["progressive", "cf", "1d"])
def test_no_weight_decay_on_cls_token_and_positions(tmp_path, text, names):
    """timm's optimizer factory puts cls tokens, position tables and PS-ViT's position layer in the group
    without weight decay, with the biases and norm weights; every other matrix decays."""
    from timm.optim import create_optimizer_v2

    space = _space(tmp_path, text)
    supernet = Supernet(space)
    assert supernet.no_weight_decay() == names
    arch = space.sample(0)
    assert {f"tokenizer.{n}" for n in supernet.extract(arch).tokenizer.no_weight_decay()} <= names
    opt = create_optimizer_v2(supernet, opt="adamw", lr=1e-3, weight_decay=0.05)
    name = {id(p): n for n, p in supernet.named_parameters()}
    decayed = {name[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed and not decayed & names
    assert decayed == {n for n, p in supernet.named_parameters() if p.ndim > 1 and n not in names}

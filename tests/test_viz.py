"""``nas viz``: valid PNGs for each mechanism (``nas.viz``) and for a search run (``nas.search.plots``), and
pictures that show the model's own decisions (sampling points, kept tokens, re-split regions) rather than a
recomputation of them."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nas.arch import Arch, Pooling, Stage

from nas.mechanisms.ats import ATS

from nas.mechanisms.coarse_fine import CoarseFineTokenizer

from nas.mechanisms.patch import PatchTokenizer

from nas.mechanisms.progressive import feature_size, ProgressiveTokenizer
from nas.cli import main
from nas.models import build_model
from nas.search.history import Candidate, History, read_history
from nas.search.plots import best_so_far, pareto_front, ranking_column, search_plot
from nas.space import save_arch
from nas.mechanisms.ats.picture import kept_tokens
from nas.mechanisms.coarse_fine.picture import coarse_fine_regions
from nas.mechanisms.progressive.picture import sampling_points
from nas.viz import token_footprints

PNG = b"\x89PNG\r\n\x1a\n"


def progressive_arch(points: int = 4, iterations: int = 3) -> Arch:
    return Arch(32, 3, 10, ProgressiveTokenizer(points, iterations), (Stage(32, 2, 2.0, ("basic",)),), name="ps")


def ats_arch(**kw) -> Arch:
    return Arch(32, 3, 10, PatchTokenizer(4), (Stage(32, 2, 2.0, ("basic", "basic", "shared_pair")),),
                reduction=ATS((1, 2), **(kw or {"keep": 0.5})), name="ats")


def cf_arch(eta: float = 1.0) -> Arch:
    """32x32 input, patch 4, coarse grid 4: 16 regions, k = 8 re-split."""
    return Arch(32, 3, 10, CoarseFineTokenizer(4, 4, 0.5, eta), (Stage(32, 2, 2.0, ("basic",) * 3),), name="cf")


def model_of(arch: Arch, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 50
    assert float(pixels[..., :3].std()) > 0.01  # a picture, not a blank canvas


# --- end to end: the command writes PNGs ---------------------------------------------------------------------
@pytest.mark.parametrize("arch, suffixes", [
    (progressive_arch(), ["sampling"]),
    (ats_arch(), ["ats"]),
    (cf_arch(), ["coarse_fine"]),
    (Arch(32, 3, 10, ProgressiveTokenizer(4, 2), (Stage(32, 2, 2.0, ("basic", "basic")),), reduction=ATS((1,), k=8)),
     ["sampling", "ats"]),
])
def test_viz_writes_pngs_for_each_mechanism(tmp_path, capsys, arch, suffixes):
    save_arch(arch, tmp_path / "arch.yaml")
    out = tmp_path / "out"
    code = main(["viz", str(tmp_path / "arch.yaml"), "--data", "synthetic:40", "--images", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    want = sorted(out / f"img{b:03d}-{s}.png" for b in range(2) for s in suffixes)
    assert sorted(Path(p) for p in capsys.readouterr().out.split()) == want
    assert sorted(out.iterdir()) == want
    for p in want:
        check_png(p)


def test_viz_refuses_an_arch_without_mechanism_and_both_weight_sources(tmp_path, capsys):
    assert main(["viz", "vit_test_patch4_32", "--data", "synthetic:40", "--out", str(tmp_path)]) == 2
    assert "no mechanism to picture" in capsys.readouterr().err
    save_arch(cf_arch(), tmp_path / "a.yaml")
    assert main(["viz", str(tmp_path / "a.yaml"), "--weights", "w", "--supernet", "r"]) == 2
    assert "not both" in capsys.readouterr().err


def test_viz_loads_safetensors_weights(tmp_path, capsys):
    """--weights: the pictures come from those weights (moved offsets move the drawn points)."""
    from safetensors.torch import save_model

    arch = progressive_arch(iterations=2)
    model = model_of(arch, seed=3)
    torch.nn.init.constant_(model.tokenizer.offsets[0].bias, 1.0)
    save_model(model, str(tmp_path / "w.safetensors"))
    save_arch(arch, tmp_path / "a.yaml")
    code = main(["viz", str(tmp_path / "a.yaml"), "--weights", str(tmp_path / "w.safetensors"), "--data",
                 "synthetic:40", "--images", "1", "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    check_png(tmp_path / "o" / "img000-sampling.png")
    bad = Arch(32, 3, 10, ProgressiveTokenizer(4, 2), (Stage(48, 2, 2.0, ("basic",)),))
    save_arch(bad, tmp_path / "b.yaml")
    assert main(["viz", str(tmp_path / "b.yaml"), "--weights", str(tmp_path / "w.safetensors"), "--data",
                 "synthetic:40", "--out", str(tmp_path / "o2")]) == 2
    assert "do not fit the arch" in capsys.readouterr().err


# --- the data behind the pictures -----------------------------------------------------------------------------
def test_sampling_points_untrained_stay_on_the_initial_grid():
    """Zero-initialised offset heads: every round's points are the regular grid of paper eq. 2, in image pixels
    the receptive-field centres 4 * (i + 1/2) * H/n of the stride-4 stem's H x H map."""
    n, arch = 4, progressive_arch(points=4, iterations=3)
    model = model_of(arch)
    with torch.no_grad():
        model(images(2))
    pts = sampling_points(model)                                        # (B, N, P, 2)
    H = feature_size(32)
    assert H == 8 and pts.shape == (2, 3, n * n, 2)
    centres = [4 * (i + 0.5) * H / n for i in range(n)]                 # 4, 12, 20, 28
    grid = torch.tensor([[y, x] for y in centres for x in centres])     # raster order, (y, x)
    for r in range(3):
        assert torch.equal(pts[:, r], grid.expand(2, -1, -1))


def test_sampling_points_follow_the_models_moved_points():
    model = model_of(progressive_arch(points=4, iterations=3))
    for head in model.tokenizer.offsets:
        torch.nn.init.normal_(head.weight, std=0.5)
        torch.nn.init.normal_(head.bias, std=1.0)
    with torch.no_grad():
        model(images(3))
    pts = sampling_points(model)
    assert torch.equal(pts[:, -1], 4 * model.tokenizer.last_points)     # the final points, scaled
    assert torch.equal(pts, 4 * model.tokenizer.last_trajectory)
    assert not torch.allclose(pts[:, 0], pts[:, -1])                    # they did move


@pytest.mark.parametrize("budget", [{"keep": 0.5}, {"k": 9}])
def test_kept_masks_equal_the_models_kept_indices(budget):
    model = model_of(ats_arch(**budget))
    with torch.no_grad():
        model(images(4))
    masks = kept_tokens(model)
    assert len(masks) == len(model.last_kept) == 2
    for mask, pos in zip(masks, model.last_kept):
        assert mask.shape == (4, 64)
        for b in range(4):
            kept = sorted(int(p) - 1 for p in pos[b] if p >= 1)          # patch rows (cls at 0, -1 padding)
            assert mask[b].nonzero().squeeze(1).tolist() == kept
    assert masks[1].sum() <= masks[0].sum() < 4 * 64                    # tokens dropped
    assert (masks[1] <= masks[0]).all()                                 # a dropped token stays dropped


def test_token_footprints_after_pooling():
    two_d = Arch(32, 3, 10, PatchTokenizer(8), (Stage(16, 1, 1.0, ("basic",)), Stage(16, 1, 1.0, ("basic",))),
                 Pooling("2d", 3), head="cls")                         # 4x4 -> 2x2
    f = token_footprints(two_d)
    assert f.shape == (4, 16)
    assert f[0].nonzero().squeeze(1).tolist() == [0, 1, 4, 5]
    assert f[3].nonzero().squeeze(1).tolist() == [10, 11, 14, 15]
    one_d = Arch(32, 3, 10, PatchTokenizer(8), (Stage(16, 1, 1.0, ("basic",)),) * 3, Pooling("1d", 3))
    f = token_footprints(one_d)                                          # 16 -> 8 -> 4
    assert f.shape == (4, 16)
    assert [r.nonzero().squeeze(1).tolist() for r in f] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11],
                                                             [12, 13, 14, 15]]
    assert torch.equal(token_footprints(ats_arch()), torch.eye(64, dtype=torch.bool))


def test_cf_regions_equal_the_models_selection():
    """No image exits (eta 1 > any softmax of 10 classes at init): each image's regions are the top k of its
    global class attention, computed here from the coarse pass by plain sorting."""
    model, x = model_of(cf_arch()), images(5)
    with torch.no_grad():
        model(x)
        gca = model.forward_coarse(x).gca                                # (B, 16)
    regions, exits = coarse_fine_regions(model)
    assert not exits.any() and regions.shape == (5, 8)
    for b in range(5):
        top = sorted(sorted(range(16), key=lambda r: (-float(gca[b, r]), r))[:8])
        assert regions[b].tolist() == top


def test_cf_regions_of_exited_images_are_empty():
    model, x = model_of(cf_arch()), images(6)
    with torch.no_grad():
        conf = model.forward_coarse(x).logits.softmax(-1).amax(-1)
        s = conf.sort().values
        model.exit_threshold = float(s[2] + s[3]) / 2                   # three exit, three go fine
        model(x)
    regions, exits = coarse_fine_regions(model)
    assert torch.equal(exits, conf >= model.exit_threshold) and int(exits.sum()) == 3
    assert (regions[exits] == -1).all()
    assert (regions[~exits] >= 0).all() and torch.equal(regions[~exits], model.last_regions)


# --- search runs ------------------------------------------------------------------------------------------------
ROWS = [  # target MACs, top-1, loss, in budget: top-1 and loss disagree, so a picture on top-1 differs
    (1000, 0.50, 1.20, 1),
    (2000, 0.70, 1.00, 1),
    (4000, 0.90, 0.60, 0),   # best on both, but outside the budget
    (3000, 0.60, 0.85, 1),   # the lowest loss in budget: the winner, though its top-1 is low
    (2500, 0.80, 0.95, 1),   # the best top-1 in budget: not what the search ranks by
    (1500, 0.75, 0.90, 1),
]
H = [f"{i:016x}" for i in range(len(ROWS))]
LOSS_FRONT = [H[0], H[5], H[3]]   # (1000, 1.2), (1500, 0.9), (3000, 0.85)
TOP1_FRONT = [H[0], H[5], H[4]]   # (1000, 0.5), (1500, 0.75), (2500, 0.8)


def candidate(i: int, target_macs: int, top1: float, loss: float, feasible: int, step: int = 0,
              macs_mean: int | None = None) -> Candidate:
    """The history row of the i-th evaluation; a nan ``loss`` is an evaluator without one (its objective: top-1)."""
    return Candidate(f"{i:016x}", step, top1, loss, top1 if math.isnan(loss) else -loss, target_macs // 10,
                     target_macs // 100, macs_mean, target_macs, target_macs // 10, bool(feasible), 0.0, (i,))


def write_history(run: Path, rows: list[Candidate], tail: str = "") -> None:
    """``run/history.csv`` written as a search writes it (``History``), then ``tail`` appended raw."""
    run.mkdir()
    history = History(run / "history.csv")
    for c in rows:
        history.append(c)
    history.close()
    with open(run / "history.csv", "a", encoding="utf-8") as f:
        f.write(tail)


def write_run(run: Path, torn: bool = False, loss: bool = True, winner: str | None = H[3]) -> None:
    """A search run directory: history.csv (with losses, or all nan without ``loss``), run.json with a budget of
    3000 MACs, summary.json naming ``winner`` (none if None)."""
    write_history(run, [candidate(i, m, s, l if loss else math.nan, f) for i, (m, s, l, f) in enumerate(ROWS)],
                  "ffffffffffffffff,2,0.99,0.1,-0.1,9" if torn else "")
    (run / "run.json").write_text('{"budget": {"macs": [0, 3000], "params": null, "on": "worst"}}')
    if winner is not None:
        (run / "summary.json").write_text(f'{{"best": {{"arch_hash": "{winner}"}}, "budget_text": "MACs <= 3000"}}')


def brute_front(pts: list[tuple[float, float]]) -> set[int]:
    """Lower is better on both: the points no other point dominates."""
    return {i for i, (m, v) in enumerate(pts)
            if not any(m2 <= m and v2 <= v and (m2, v2) != (m, v) for m2, v2 in pts)}


def test_pareto_front_is_lower_is_better_on_both():
    pts = [(1000, 1.2), (2000, 1.0), (3000, 0.85), (2500, 0.95), (1500, 0.9), (1500, 0.95), (900, 2.0)]
    assert [pts[i] for i in pareto_front(pts)] == [(900, 2.0), (1000, 1.2), (1500, 0.9), (3000, 0.85)]
    assert pareto_front([(1, 5.0), (2, 5.0), (2, 4.0), (2, 4.0), (3, math.nan), (math.inf, 0.0)]) == [0, 2, 3]
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):   # against brute force, with ties on either coordinate and repeated points
        n = int(torch.randint(1, 30, (1,), generator=gen))
        pts = [(float(m), float(v)) for m, v in torch.randint(0, 8, (n, 2), generator=gen).tolist()]
        front = pareto_front(pts)
        assert set(front) == brute_front(pts)
        assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)       # ascending MACs
        assert all(pts[a][1] >= pts[b][1] for a, b in zip(front, front[1:]))        # loss falls along it


def test_search_plot_ranks_by_loss(tmp_path):
    """The front is on (MACs, loss), the winner sits on it, and the best-so-far curves follow the lowest loss,
    with the top-1 of that candidate (which can fall) rather than the best top-1."""
    write_run(tmp_path / "run", torn=True)
    rows = read_history(tmp_path / "run" / "history.csv")
    assert len(rows) == 6 and ranking_column(rows) == "loss"                # the torn last line is dropped
    plot = search_plot(tmp_path / "run")
    assert plot.column == "loss" and plot.lower_is_better
    assert [p.arch_hash for p in plot.front] == LOSS_FRONT
    assert [(p.cost, p.value) for p in plot.front] == [(1000, 1.2), (1500, 0.9), (3000, 0.85)]
    assert plot.from_summary and plot.winner.arch_hash == H[3] and plot.winner in plot.front
    assert plot.winner == plot.front[-1] and plot.winner.value == min(p.value for p in plot.points if p.feasible)
    assert best_so_far(rows) == [0, 1, 1, 3, 3, 3]                          # row 2 is outside the budget
    assert plot.best_value == [1.2, 1.0, 1.0, 0.85, 0.85, 0.85]
    assert plot.best_score == [0.5, 0.7, 0.7, 0.6, 0.6, 0.6]                # not the best top-1: 0.7, 0.8
    assert plot.values == [r[2] for r in ROWS] and plot.scores == [r[1] for r in ROWS]


def test_search_plot_winner_without_summary_is_the_searchs_choice(tmp_path):
    write_run(tmp_path / "run", winner=None)
    plot = search_plot(tmp_path / "run")
    assert not plot.from_summary and plot.winner.arch_hash == H[3]
    write_run(tmp_path / "other", winner=H[4])                              # the summary's choice is drawn
    assert search_plot(tmp_path / "other").winner.arch_hash == H[4]


def test_search_plot_without_a_loss_column_falls_back_to_top1(tmp_path):
    write_run(tmp_path / "run", loss=False, winner=None)
    rows = read_history(tmp_path / "run" / "history.csv")
    assert math.isnan(rows[0].loss) and ranking_column(rows) == "score"
    plot = search_plot(tmp_path / "run")
    assert plot.column == "score" and not plot.lower_is_better
    assert [p.arch_hash for p in plot.front] == TOP1_FRONT and plot.winner.arch_hash == H[4]
    assert best_so_far(rows, "score") == [0, 1, 1, 1, 4, 4]
    assert plot.best_value == plot.best_score == [0.5, 0.7, 0.7, 0.7, 0.8, 0.8]
    assert main(["viz", str(tmp_path / "run"), "--out", str(tmp_path / "o")]) == 0
    check_png(tmp_path / "o" / "pareto.png")
    check_png(tmp_path / "o" / "best_so_far.png")


@pytest.mark.parametrize("on", ["worst", "mean"])
def test_winner_is_on_the_loss_front_of_a_long_run(tmp_path, on):
    """200 candidates of plausible numbers: the winner (the lowest in-budget loss) ends the front under the
    budget, and is the last best so far; a mean budget places points by macs_mean."""
    gen = torch.Generator().manual_seed(1)
    run = tmp_path / "run"
    rows, budget = [], 1.3e9
    for i in range(200):
        m, mean = (int(lo + 0.6e9 * float(torch.rand(1, generator=gen))) for lo in (0.9e9, 0.8e9))
        loss = 0.35 - 0.06 * (m - 0.9e9) / 0.6e9 + 0.02 * float(torch.randn(1, generator=gen))
        top1 = 0.94 - 0.2 * (loss - 0.26) + 0.003 * float(torch.randn(1, generator=gen))
        ok = int((mean if on == "mean" else m) <= budget)
        rows.append(candidate(i, m, top1, loss, ok, i // 25, mean if on == "mean" else None))
    write_history(run, rows)
    (run / "run.json").write_text(f'{{"budget": {{"macs": [null, {int(budget)}], "on": "{on}"}}}}')
    plot = search_plot(run)
    feas = [p for p in plot.points if p.feasible]
    assert len(plot.points) == 200 and 0 < len(feas) < 200
    winner = min(feas, key=lambda p: p.value)
    assert plot.winner == winner == plot.front[-1] and winner.cost <= budget
    assert set(plot.front) == {feas[i] for i in brute_front([(p.cost, p.value) for p in feas])}
    assert best_so_far(read_history(run / "history.csv"))[-1] == winner.row
    assert plot.best_value[-1] == winner.value and plot.best_score[-1] == winner.score
    assert [p.cost for p in plot.points] == [c.macs_mean if on == "mean" else c.target_macs for c in rows]


def test_viz_of_a_search_run(tmp_path, capsys):
    write_run(tmp_path / "run")
    assert main(["viz", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    out = tmp_path / "run" / "viz"
    assert capsys.readouterr().out.split() == [str(out / "pareto.png"), str(out / "best_so_far.png")]
    for p in out.iterdir():
        check_png(p)
    (tmp_path / "empty").mkdir()
    assert main(["viz", str(tmp_path / "empty")]) == 2
    assert "no history.csv" in capsys.readouterr().err
    assert main(["viz", str(tmp_path / "run"), "--data", "synthetic:40"]) == 2
    assert "a search run directory takes --out only" in capsys.readouterr().err


def test_search_points_skip_a_non_finite_ranking_value(tmp_path, capsys):
    """A history ranked by loss: a candidate without one (nan) is no point, and it still plots. A nan top-1 is a
    damaged history (``nas.search.history``): refused with its file:line, not drawn."""
    run = tmp_path / "run"
    write_history(run, [candidate(0, 5, 0.3, 1.0, 1), candidate(1, 7, 0.6, 0.8, 1), candidate(2, 9, 0.7, math.nan, 1)])
    rows = read_history(run / "history.csv")
    assert ranking_column(rows) == "loss" and best_so_far(rows) == [0, 1, 1] and math.isnan(rows[2].loss)
    assert [p.arch_hash for p in search_plot(run).points] == [f"{i:016x}" for i in (0, 1)]   # nan is no candidate
    assert main(["viz", str(run), "--out", str(tmp_path / "o")]) == 0
    check_png(tmp_path / "o" / "pareto.png")
    nan_score = ",".join(candidate(1, 9, 0.5, math.nan, 1).row()).replace(",0.5,", ",nan,", 1)  # no writer makes it
    write_history(tmp_path / "bad", [candidate(0, 5, 0.3, math.nan, 1)], tail=nan_score + "\n")
    capsys.readouterr()
    assert main(["viz", str(tmp_path / "bad"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"nas: error: {tmp_path / 'bad' / 'history.csv'}:3: score 'nan' "
                                                    "is not a finite number in [0, 1]; the history is damaged"), err


def test_viz_with_supernet_weights(tmp_path, capsys):
    """--supernet: the arch runs with the trained supernet's weights (a one-epoch run of a tiny PS-ViT space)."""
    from nas.train import train_supernet

    (tmp_path / "space.yaml").write_text(
        "name: tiny_ps\ninput: {size: 16, channels: 3}\nnum_classes: 5\n"
        "tokenizer: {type: progressive, points: 2, iterations: 2}\nhead: cls\n"
        "stages:\n  - {dim: {choice: [16, 32]}, heads: 2, mlp_ratio: 2, cells: [basic]}\n")
    (tmp_path / "recipe.yaml").write_text(
        "seed: 0\nepochs: 1\nbatch_size: 24\noptimizer: {name: adamw, lr: 2e-3, weight_decay: 0.0}\n"
        "label_smoothing: 0.0\ndata: {holdout: 0.25}\ndevice: cpu\n")
    train_supernet(str(tmp_path / "space.yaml"), data="synthetic:200:5", recipe=str(tmp_path / "recipe.yaml"),
                   out=tmp_path / "run", progress=False)
    arch = Arch(16, 3, 5, ProgressiveTokenizer(2, 2), (Stage(16, 2, 2.0, ("basic",)),))
    save_arch(arch, tmp_path / "a.yaml")
    code = main(["viz", str(tmp_path / "a.yaml"), "--supernet", str(tmp_path / "run"), "--images", "2",
                 "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    for b in range(2):
        check_png(tmp_path / "o" / f"img{b:03d}-sampling.png")

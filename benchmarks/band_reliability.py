"""Can training rank the subnets of one budget band at all, and does the supernet? One setting at a time.

For a setting (a space, its data, a supernet recipe, a standalone recipe and a band of target MACs), this trains
the supernet (resumable), then runs ``nas rank-check`` in the band: ``-n`` subnets drawn inside it, each trained
alone ``--seeds`` times with the standalone recipe, scored on the validation split. It records, per setting:

- the reliability of standalone training in the band, ICC(1) of the validation loss (and top-1) over the seeds,
  with its CI and F-test p (``nas.stats.icc1``): the band can be ranked when ICC >= 0.5 and p < 0.01;
- the supernet's tau (inherited loss against the mean of the seeds) with its bootstrap CI, next to the taus of
  MACs alone and params alone on the same subnets;
- every subnet's scores, seed by seed.

into ``--json`` (default ``docs/evidence/band_reliability.json``), keyed by setting name: settings already in
the file are kept, the one measured is replaced. Every training is a ``nas retrain`` run directory under
``--out``: a killed run resumes where it stopped, and a finished one is read back.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/band_reliability.py psvit_fmnist-fashion --workers 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/band_reliability.py psvit_tiny-builtin --workers 2

Settings (``SETTINGS``; add one to try another):

- ``psvit_tiny-builtin``: the main job (psvit_tiny's CPU proxy on the built-in 5,000 MNIST digits, band
  1.15G-1.3G of the 224 px target);
- ``psvit_fmnist-fashion``: spaces/psvit_fmnist.yaml on Fashion-MNIST (``--data fashion-mnist``: Debian's
  package dataset-fashion-mnist, or the four IDX files in $NAS_DATA/fashion-mnist), band 2.6M-3.0M MACs,
  where archs of one budget range from one wide layer to twelve narrow ones.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.atomic import atomic_write  # noqa: E402
from nas.errors import exit_with  # noqa: E402

FORMAT = "nas-band-reliability/1"


@dataclass(frozen=True)
class Setting:
    space: str
    data: str
    band: str
    supernet_recipe: str | None      # None: the default for the data
    standalone_recipe: str | None    # None: the supernet's own (without its proxy overrides)
    what: str


SETTINGS = {
    "psvit_tiny-builtin": Setting("spaces/psvit_tiny.yaml", "builtin", "1.15G:1.3G", None, None,
                                  "the main job: psvit_tiny's 32 px CPU proxy, built-in MNIST-5000, cpu_supernet "
                                  "recipe for the supernet and for training alone"),
    "psvit_fmnist-fashion": Setting("spaces/psvit_fmnist.yaml", "fashion-mnist", "2.6M:3M",
                                    "recipes/fmnist_supernet.yaml", "recipes/fmnist_standalone.yaml",
                                    "one-stage PSViT at 32 px on Fashion-MNIST: width 48-128, MLP ratio 1-4, "
                                    "1-12 layers; trained alone on 10,000 images for 6 epochs"),
}


def measure(name: str, n: int, seeds: int, workers: int, out: Path) -> dict:
    from nas.search.rank_check import rank_check
    from nas.train import train_supernet

    s = SETTINGS[name]
    sup = out / name / "supernet"
    t0 = time.perf_counter()
    if not (sup / "supernet.safetensors").exists():
        print(f"{name}: training the supernet into {sup}", flush=True)
        train_supernet(str(ROOT / s.space), data=s.data, recipe=None if s.supernet_recipe is None else
                       str(ROOT / s.supernet_recipe), out=sup, progress=True)
    r = rank_check(sup, n, out=out / name / "rank-check", recipe=None if s.standalone_recipe is None else
                   str(ROOT / s.standalone_recipe), seeds=seeds, band=s.band, workers=workers, progress=True)
    rows = json.loads((out / name / "rank-check" / "rank_check.json").read_text())
    import csv
    with open(out / name / "rank-check" / "rank_check.csv", newline="") as f:
        table = list(csv.DictReader(f))
    subnets = [{"arch_hash": row["arch_hash"], "target_macs": int(row["target_macs"]),
                "target_params": int(row["target_params"]),
                "inherited_loss": float(row["inherited_loss"]), "inherited_top1": float(row["inherited_top1"]),
                "standalone_loss": [float(row[f"standalone_loss{'' if k == 0 else f'_s{k}'}"]) for k in range(seeds)],
                "standalone_top1": [float(row[f"standalone_top1{'' if k == 0 else f'_s{k}'}"]) for k in range(seeds)]}
               for row in table]
    rel = r["reliability"]["loss"]
    return {"setting": name, **asdict(s), "n": n, "seeds": seeds, "subnets": subnets,
            "icc": rel["icc"], "icc_ci": rel["icc_ci"], "p": rel["p"], "reliability_loss": rel,
            "reliability_top1": r["reliability"]["top1"], "rankable": rel["icc"] is not None and rel["icc"] >= 0.5
            and rel["p"] is not None and rel["p"] < 0.01,
            "supernet_tau": r["inherited"]["loss"]["tau"], "macs_tau": r["macs"]["loss"]["tau"],
            "params_tau": r["params"]["loss"]["tau"], "top1": {k: r[k]["top1"] for k in ("inherited", "macs", "params")},
            "verdict": r["verdict"], "seconds": round(time.perf_counter() - t0), "format_rank_check": rows["format"],
            "command": f"python benchmarks/band_reliability.py {name} -n {n} --seeds {seeds}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("setting", choices=sorted(SETTINGS))
    p.add_argument("-n", type=int, default=8, help="subnets drawn in the band [8]")
    p.add_argument("--seeds", type=int, default=3, help="standalone trainings per subnet [3]")
    p.add_argument("--workers", type=int, default=1, help="trainings at once, one process each [1]")
    p.add_argument("--out", default="runs/band-reliability", help="run directories [runs/band-reliability]")
    p.add_argument("--json", default=str(ROOT / "docs" / "evidence" / "band_reliability.json"))
    args = p.parse_args(argv)
    if args.n < 3 or args.seeds < 2:
        p.error("-n >= 3 and --seeds >= 2 (the reliability needs two trainings per subnet)")
    result = measure(args.setting, args.n, args.seeds, args.workers, Path(args.out))
    path = Path(args.json)
    doc = json.loads(path.read_text()) if path.exists() else {"format": FORMAT, "settings": {}}
    doc["settings"][args.setting] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(doc, indent=1) + "\n")
    t = result["supernet_tau"]
    print(f"{args.setting}: ICC(1) of the standalone loss {result['icc']:.2f} [{result['icc_ci'][0]:.2f}, "
          f"{result['icc_ci'][1]:.2f}], p {result['p']:.2g} ({'rankable' if result['rankable'] else 'NOT rankable'}:"
          f" ICC >= 0.5 and p < 0.01 needed); supernet tau {t['value']:.2f} [{t['ci'][0]:.2f}, {t['ci'][1]:.2f}], "
          f"MACs alone {result['macs_tau']['value']:.2f}, params alone {result['params_tau']['value']:.2f}\n"
          f"{result['verdict']}\nwrote {path}")
    return 0


if __name__ == "__main__":
    exit_with(main)

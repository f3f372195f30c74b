"""The ``nas`` command: a thin layer over the library (no logic of its own).

Errors in user input print one line, ``nas: error: <file>:<line>: <key.path>: <what is wrong>``, and exit
with code 2; ``--debug`` (anywhere on the line) shows the traceback instead. Usage errors (unknown flags,
bad flag values, a missing command) are one line even with ``--debug``: their traceback says nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from nas import __version__
from nas.errors import NasError, Terminated
from nas.limits import MAX_EVALS, MAX_RANK_ARCHS, MAX_RANK_SEEDS, MAX_SAMPLES, MAX_SEED, check_folder
from nas.space.schema import human


class UsageError(NasError):
    """A malformed command line (argparse's errors, flags that do not go together)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def int_in(lo: int, hi: int | None = None) -> Any:
    """An argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi:,}]"
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {value}")
        return value
    return parse


SEED = int_in(0, MAX_SEED)
"""The argparse type of every command's ``--seed``: the range ``torch.manual_seed`` accepts."""
SEED_HELP = f"0..{MAX_SEED} (default 0)"


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def path_arg(text: str) -> str:
    """An argparse type for file and folder paths: a NUL byte cannot be in a path."""
    if "\0" in text:
        shown = text.replace("\0", "\\0")
        raise argparse.ArgumentTypeError(f"'{shown}': a path cannot contain a NUL byte")
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return text


# --- commands -----------------------------------------------------------------------------------------
def cmd_space_validate(args: argparse.Namespace) -> None:
    from nas.space import load_space
    space = load_space(args.space)
    print(f"{args.space}: ok: space {space.name!r}, {len(space.dims)} dimensions, {space.size():,} archs")


def cmd_space_show(args: argparse.Namespace) -> None:
    from nas.space import load_space
    space = load_space(args.space)
    bounds = space.cost_bounds()
    info: dict[str, Any] = {"name": space.name, "file": space.file, "hash": space.hash, "size": space.size(),
                            "dimensions": len(space.dims), **bounds, "budget": space.budget}
    if args.json:
        info["choices"] = [{"path": d.path, "line": d.line, "values": list(d.values)} for d in space.dims]
        print(json.dumps(info, indent=2))
        return
    print(f"space {space.name} ({space.file}), hash {space.hash}")
    print(f"  {space.size():,} archs over {len(space.dims)} dimensions")
    print(f"  MACs   {human(bounds['min_macs'])} .. {human(bounds['max_macs'])}")
    print(f"  params {human(bounds['min_params'])} .. {human(bounds['max_params'])}")
    if space.budget:
        print("  budget " + ", ".join(f"{k} {human(v)}" for k, v in space.budget.items()))
    print("  choices:")
    for d in space.dims:
        print(f"    line {d.line:<4} {d.path:<28} {' | '.join(str(v) for v in d.values)}")


def _list(kind: str) -> None:
    """One line per shipped file of ``kind``: its name (what a command takes) and its description."""
    from nas.shipped import names
    shipped = names(kind)
    width = max((len(name) for name, _ in shipped), default=0)
    for name, description in shipped:
        print(f"{name:<{width}}  {description}".rstrip())


def cmd_space_list(args: argparse.Namespace) -> None:
    _list("space")


def cmd_recipe_list(args: argparse.Namespace) -> None:
    _list("recipe")


def _print_path(kind: str, name: str) -> None:
    from nas.shipped import find
    print(find(kind, name).resolve())


def cmd_space_path(args: argparse.Namespace) -> None:
    _print_path("space", args.name)


def cmd_recipe_path(args: argparse.Namespace) -> None:
    _print_path("recipe", args.name)


def cmd_space_sample(args: argparse.Namespace) -> None:
    from nas.cost import cost
    from nas.space import arch_yaml, load_space, sample_distinct, save_arch
    out = check_folder(args.out) if args.out else None
    space = load_space(args.space)
    if args.n > space.size():
        raise UsageError(f"argument -n: {args.n:,} distinct archs asked for, the space {space.name!r} has "
                         f"{space.size():,}; allowed: 1..{space.size():,}", file=args.space)
    for i, arch in enumerate(sample_distinct(space, args.n, args.seed)):
        c = cost(arch)
        if out is not None:
            path = out / f"{space.name}-{i:03d}-{arch.hash()}.yaml"  # the name is a safe file name (schema)
            save_arch(arch, path)  # a refused write is one line (nas.atomic.WriteError)
            print(f"{path}  MACs {human(c.macs)}  params {human(c.params)}")
        else:
            print(f"--- # {space.name} sample {i}: MACs {human(c.macs)}, params {human(c.params)}, hash {arch.hash()}")
            print(arch_yaml(arch), end="")


def cmd_flops(args: argparse.Namespace) -> None:
    from nas.arch import Arch
    from nas.cost import cost
    from nas.space import load_any
    if args.weights and args.supernet:
        raise UsageError("give --weights (an arch's own weights) or --supernet (a supernet's, sliced for the arch), "
                         "not both")
    if args.weights and not args.data:
        raise UsageError("--weights goes with --data: they are the weights of the model whose MACs are measured "
                         "over the data; add --data D or drop --weights")
    obj = load_any(args.file)
    if isinstance(obj, Arch):
        c = cost(obj)
        info: dict[str, Any] = {"macs": c.macs, "params": c.params}
        if obj.data_dependent:
            info.update(macs_min=c.macs_min, macs_max=c.macs_max)
        if args.supernet:
            from nas.supernet.run import measure_inherited
            info.update(measure_inherited(args.supernet, obj, args.data, images=args.images))
        elif args.data:
            from nas.measure import measure_arch
            info.update(measure_arch(obj, args.data, images=args.images, seed=args.seed, weights=args.weights,
                                     file=args.file))
        if args.json:
            print(json.dumps(info))
        else:
            print("  ".join(f"{k} {human(v) if isinstance(v, int) else v}" for k, v in info.items()))
        return
    if args.data or args.supernet:
        raise NasError("--data and --supernet measure one arch; give an arch file, not a space", file=args.file)
    info = obj.cost_bounds()
    if args.json:
        print(json.dumps(info))
    else:
        print("  ".join(f"{k} {human(v)}" for k, v in info.items()))


def cmd_latency(args: argparse.Namespace) -> None:
    from nas.latency import load_table, measure_latency
    from nas.space import load_arch
    table = load_table(args.table) if args.table else None
    arch = load_arch(args.arch)
    predicted = None if table is None else table.predict(arch)  # a table without the arch's blocks fails now
    if args.data and not arch.data_dependent:
        print(f"nas: note: --data is not used: {args.arch} does the same work on every image (timed on a random "
              "batch)", file=sys.stderr)
    r = measure_latency(arch, args.device, args.batch, args.threads, args.data, args.images, args.weights,
                        args.seed, reps=args.reps, file=args.arch)
    info = r.to_dict()
    if table is not None:
        info.update(predicted_ms=predicted, table=table.file)
    if args.json:
        print(json.dumps(info))
        return
    e = r.environment
    per_batch = r.runs // max(1, r.images // e["batch"])
    how = (f"mean over {r.images} images of {r.data} of each batch's median of {per_batch} runs (quartiles of the "
           f"batches {r.q1:.2f} .. {r.q3:.2f} ms, slowest {r.worst_ms:.2f} ms)" if r.data is not None
           else f"median of {r.runs} runs, quartiles {r.q1:.2f} .. {r.q3:.2f} ms")
    print(f"{args.arch}: {r.ms:.2f} ms per forward of batch {e['batch']} on {e['device']} ({e['machine']}), "
          f"{e['threads']} threads, torch {e['torch']}: {how}")
    if r.data is None and (r.q3 - r.q1) > 0.1 * r.ms:
        print(f"  note: the runs spread by {(r.q3 - r.q1) / r.ms:.0%} of the median (quartiles): something else was "
              "using the machine; measure again when it is quiet")
    if table is not None:
        print(f"  predicted {info['predicted_ms']:.2f} ms by {table.file} ({table.describe()}), "
              f"{(info['predicted_ms'] - r.ms) / r.ms:+.1%}" + (" (the worst case: every token kept, both passes)"
                                                                if arch.data_dependent else ""))


def cmd_latency_table(args: argparse.Namespace) -> None:
    import torch

    from nas.latency import make_table
    from nas.space import load_space
    space = load_space(args.space)  # a bad space fails before anything is timed
    threads = args.threads or torch.get_num_threads()
    out = Path(args.out) if args.out else (Path("runs") / "latency"
                                           / f"{space.name}-{args.device}-b{args.batch}-t{threads}.json")
    check_folder(out.parent)
    t = make_table(args.space, out, args.device, args.batch, threads, args.calibrate, args.rounds, args.reps,
                   args.seed, check=args.check)
    bounds = space.latency_bounds(t)
    lo, hi = bounds["min_latency"][0], bounds["max_latency"][0]
    print(f"{out}: {len(t.entries)} blocks of {space.name}, {t.describe()}; fixed {t.fixed_ms:+.2f} ms per forward "
          f"(from {len(t.calibration)} whole archs); predicted range {lo:.2f} .. {hi:.2f} ms")
    if t.check:
        from nas.latency.table import check_summary
        c = check_summary(t.check)
        print(f"  checked on {c['archs']} other archs timed whole in the same rounds: |error| median "
              f"{c['median_abs_error']:.1%}, 90th percentile {c['p90_abs_error']:.1%}, mean error "
              f"{c['mean_error']:+.1%}"
              + (f", Spearman rho {c['spearman']:.2f}" if "spearman" in c else ""))


def cmd_eval(args: argparse.Namespace) -> None:
    from nas.cost import cost
    from nas.supernet.run import evaluate_arch
    from nas.space import load_arch
    arch = load_arch(args.arch)
    scored, e, images = evaluate_arch(args.supernet, arch, args.split, args.data, args.batch_size)
    info: dict[str, Any] = {"split": args.split, "images": images, **vars(e)}
    if scored != arch:
        info.update(target_arch_hash=arch.hash(), target_macs=cost(arch).macs, target_params=cost(arch).params)
    if args.json:
        print(json.dumps(info))
        return
    print(f"top1 {e.score:.4f}  loss {e.loss:.4f}  on {images} {args.split} images  MACs {human(e.macs)}"
          + (f" (mean {human(e.macs_mean)})" if e.macs_mean is not None else "") + f"  params {human(e.params)}"
          + (f"  (as its proxy; target MACs {human(info['target_macs'])})" if scored != arch else "")
          + f"  {e.seconds:.2f} s")


def _recipe(args: argparse.Namespace, job: str) -> str | None:
    """``--recipe``, else the default for the job and ``--data`` (``nas.train.recipe.default_recipe``), said on stderr."""
    from nas.train.recipe import default_recipe
    if args.recipe is not None:
        return args.recipe
    from nas.data import check_spec
    check_spec(args.data)  # missing data: one error line, before the note below
    space = None
    if job == "supernet":  # a space may ship its own CPU recipe (``default_recipe``)
        from nas.space import load_space
        space = load_space(args.space).name
    path = default_recipe(job, args.data, space)
    if path is not None:
        print(f"nas: recipe {path} (the default for {job} on --data {args.data}; --recipe to change)", file=sys.stderr)
    return None if path is None else str(path)


def _needs_ray_address(flags: dict[str, Any], without: str) -> None:
    """Refuse Ray's companion flags (``flags``: name -> value, None when not given) on a command without
    ``--ray-address``; ``without`` says what happens then."""
    given = [flag for flag, value in flags.items() if value is not None]
    if given:
        raise UsageError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} --ray-address (local, auto "
                         f"or HOST:PORT): without it {without}")


def _ray_train(args: argparse.Namespace) -> Any:
    """``--ray-address`` and its companions as a ``nas.distributed.train.RayTrain``; None without an address (then
    nothing imports ray)."""
    if args.ray_address is None:
        _needs_ray_address({"--num-workers": args.num_workers, "--use-gpu": args.use_gpu or None,
                            "--max-failures": args.max_failures, "--ray-timeout": args.ray_timeout},
                           "training runs in this process")
        return None
    from nas.distributed.train import RayTrain
    defaults = {k: v for k, v in (("max_failures", args.max_failures), ("timeout_s", args.ray_timeout))
                if v is not None}  # else RayTrain's defaults
    return RayTrain(args.ray_address, args.num_workers or 1, args.use_gpu, **defaults)


RAY_TIMEOUT_HELP = ("with --ray-address: seconds to wait for the head to answer before giving up with one error "
                    "line, checked before anything is written (default 15)")


def _add_ray_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray-address", metavar="ADDR", help="train on Ray: 'local' (a Ray instance for this job), 'auto' "
                   "(this machine's cluster, or the one `ray job submit` runs on) or HOST:PORT of a head; a head that "
                   "does not answer within --ray-timeout is one error line (docs/distributed.md)")
    p.add_argument("--num-workers", type=int_in(1), metavar="N", help="data-parallel workers with --ray-address (default 1); the "
                   "recipe's batch_size is the global batch and must be divisible by it")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL), with --ray-address")
    p.add_argument("--max-failures", type=int_in(-1), metavar="K", help="worker-group failures to recover from, each resuming "
                   "from the last checkpoint, with --ray-address (default 3; -1: no limit)")
    p.add_argument("--ray-timeout", type=seconds, metavar="SECONDS", help=RAY_TIMEOUT_HELP)


def cmd_train_supernet(args: argparse.Namespace) -> None:
    from nas.train import train_supernet
    if args.out:
        check_folder(args.out)
    ray = _ray_train(args)
    kwargs = dict(space=args.space, data=args.data, recipe=_recipe(args, "supernet"), out=args.out)
    if ray is not None:
        from nas.distributed.train import train_on_ray
        r = train_on_ray("supernet", kwargs, args.resume, ray)
    else:
        r = train_supernet(**kwargs, resume=args.resume)
    print(f"{r.weights}  {r.steps} steps over {r.epochs} epochs, {r.seconds:.1f} s, {r.images_per_s:.0f} img/s"
          + (f", resumed from step {r.resumed_from}" if r.resumed_from is not None else ""))


def cmd_viz(args: argparse.Namespace) -> None:
    if args.out:
        check_folder(args.out)
    if Path(args.target).is_dir():  # a search run directory: the search's pictures
        if args.data or args.weights or args.supernet:
            raise NasError("--data, --weights and --supernet picture an arch; a search run directory takes --out "
                           "only", file=args.target)
        from nas.search.plots import visualize_search
        paths = visualize_search(args.target, args.out)
    else:
        from nas.viz import viz
        paths = viz(args.target, args.out, args.data, args.images, args.weights, args.supernet, args.seed)
    for path in paths:
        print(path)


def cmd_retrain(args: argparse.Namespace) -> None:
    from nas.train import retrain
    if args.out:
        check_folder(args.out)
    ray = _ray_train(args)
    kwargs = dict(arch_file=args.arch, data=args.data, recipe=_recipe(args, "retrain"), out=args.out, init=args.init)
    if ray is not None:
        from nas.distributed.train import train_on_ray
        r = train_on_ray("retrain", kwargs, args.resume, ray)
    else:
        r = retrain(**kwargs, resume=args.resume)
    print(f"{r.weights}  val top-1 {r.val_top1:.4f} on {r.val_images} images"
          + (f"  mean MACs {human(r.macs_mean)}" if r.macs_mean is not None else "")
          + f"  ({r.steps} steps over {r.epochs} epochs, {r.seconds:.1f} s"
          + (f", resumed from step {r.resumed_from})" if r.resumed_from is not None else ")"))


def cmd_rank_check(args: argparse.Namespace) -> None:
    from nas.search.rank_check import rank_check, report
    if args.out:
        check_folder(args.out)
    r = rank_check(args.supernet_run, args.n, out=args.out, recipe=args.recipe, seed=args.seed, seeds=args.seeds,
                   band=args.band, workers=args.workers)
    print(report(r))
    print(f"{r['csv']}\n{r['png']}")


def cmd_search(args: argparse.Namespace) -> None:
    from nas.search.report import table
    from nas.search.runner import search
    if args.out:
        check_folder(args.out)
    backend = None
    if args.ray_address is None:
        _needs_ray_address({"--num-workers": args.num_workers, "--max-retries": args.max_retries,
                            "--ray-timeout": args.ray_timeout}, "candidates are evaluated in this process")
    else:
        from nas.distributed.evaluation import RaySearch
        defaults = {k: v for k, v in (("max_retries", args.max_retries), ("timeout_s", args.ray_timeout))
                    if v is not None}  # else RaySearch's defaults
        backend = RaySearch(args.ray_address, args.num_workers, **defaults).backend()  # checks the head answers
    r = search(args.space, flops=args.flops, params=args.params, budget_on=args.budget_on, searcher=args.searcher,
               max_evals=args.max_evals, top=args.top, data=args.data, recipe=args.recipe,
               search_recipe=args.search_recipe, supernet=args.supernet, storage=args.storage, out=args.out,
               seed=args.seed, backend=backend, latency=args.latency, latency_table=args.latency_table)
    print(table(r))


# --- parser -------------------------------------------------------------------------------------------
SPACE_HELP = "a space file, or the name of a shipped space (`nas space list`: psvit_tiny, ...)"


def build_parser() -> argparse.ArgumentParser:
    from nas.latency.table import DEVICES
    from nas.search.budget import BUDGET_ON
    from nas.search.searchers import SEARCHERS
    p = _Parser(prog="nas", description="Neural architecture search for efficient Vision Transformers.")
    p.add_argument("--version", action="version", version=f"nas {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)  # missing: see main

    space = sub.add_parser("space", help="list, validate, show or sample a search space", description="A SPACE is "
                           "a YAML file or the name of a shipped one (`nas space list`); an existing path wins.")
    ssub = space.add_subparsers(dest="space_command", metavar="ACTION", parser_class=_Parser)
    v = ssub.add_parser("validate", help="check a space file; exit 2 with file:line on the first problem")
    v.add_argument("space", type=path_arg, help=SPACE_HELP)
    v.set_defaults(func=cmd_space_validate)
    s = ssub.add_parser("show", help="size, MACs and params range, and the choices of a space")
    s.add_argument("space", type=path_arg, help=SPACE_HELP)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_space_show)
    sm = ssub.add_parser("sample", help="sample archs uniformly; print them or write arch files")
    sm.add_argument("space", type=path_arg, help=SPACE_HELP)
    sm.add_argument("-n", type=int_in(1, MAX_SAMPLES), default=1,
                    help=f"how many distinct archs, 1..{MAX_SAMPLES:,} and at most the size of the space (default 1)")
    sm.add_argument("--seed", type=SEED, default=0, help=f"seed of the sampling, {SEED_HELP}")
    sm.add_argument("--out", type=path_arg, help="folder to write arch files into (default: print YAML)")
    sm.set_defaults(func=cmd_space_sample)
    ls = ssub.add_parser("list", help="the shipped spaces, then the shipped reference archs (reference/NAME: "
                         "published models, arch files for `nas flops`, `nas retrain`): name and description")
    ls.set_defaults(func=cmd_space_list)
    sp = ssub.add_parser("path", help="the file of a shipped space or reference arch (to copy and edit)")
    sp.add_argument("name", type=path_arg, help="a name from `nas space list`")
    sp.set_defaults(func=cmd_space_path)

    f = sub.add_parser("flops", help="MACs and params of an arch file, or their range over a space")
    f.add_argument("file", type=path_arg, help="an arch or space file, or a shipped name (`nas space list`: "
                   "psvit_tiny, reference/deit_tiny, ...)")
    f.add_argument("--json", action="store_true")
    f.add_argument("--data", help="measure mean MACs over this data (data-dependent archs: ATS, CF-ViT)")
    f.add_argument("--images", type=int_in(1), default=256, help="images to measure over with --data (default 256)")
    f.add_argument("--weights", type=path_arg,
                   help="safetensors weights for the arch, with --data (default: seeded random init)")
    f.add_argument("--seed", type=SEED, default=0, help=f"seed of the random init with --data, {SEED_HELP}")
    f.add_argument("--supernet", metavar="RUN_DIR", type=path_arg, help="with --data: measure with this trained supernet's "
                   "weights sliced for the arch (default data: the run's)")
    f.set_defaults(func=cmd_flops)

    la = sub.add_parser("latency", help="measured latency of an arch's model on this machine (docs/latency.md)")
    la.add_argument("arch", type=path_arg, help="an arch file (e.g. a search's best.yaml) or a shipped reference/NAME")
    la.add_argument("--device", choices=DEVICES, default="cpu", help="default cpu")
    la.add_argument("--batch", type=int_in(1, 4096), default=1, help="images per forward (default 1)")
    la.add_argument("--threads", type=int_in(1, 1024), help="torch's CPU threads (default: torch's, all cores)")
    la.add_argument("--data", help="data-dependent archs (ATS, CF-ViT): time them on images of this data, and "
                    "report the mean (default builtin)")
    la.add_argument("--images", type=int_in(1, 100000), default=64, help="images to time a data-dependent arch "
                    "on (default 64)")
    la.add_argument("--weights", type=path_arg, help="safetensors weights for the arch (default: seeded random "
                    "init; the work of ATS and CF-ViT depends on the weights)")
    la.add_argument("--reps", type=int_in(2, 100000), default=50, help="timed runs (default 50, after 10 untimed)")
    la.add_argument("--table", type=path_arg, help="also print the latency this table predicts")
    la.add_argument("--seed", type=SEED, default=0, help=f"seed of the random init and input, {SEED_HELP}")
    la.add_argument("--json", action="store_true")
    la.set_defaults(func=cmd_latency)

    lt = sub.add_parser("latency-table", help="time every block a space can produce on this machine: the table "
                        "`nas search --latency` predicts with (resumable; docs/latency.md)")
    lt.add_argument("space", type=path_arg, help=SPACE_HELP)
    lt.add_argument("--device", choices=DEVICES, default="cpu", help="default cpu")
    lt.add_argument("--batch", type=int_in(1, 4096), default=1, help="images per forward (default 1)")
    lt.add_argument("--threads", type=int_in(1, 1024), help="torch's CPU threads (default: torch's, all cores)")
    lt.add_argument("--out", type=path_arg, help="the table file (default runs/latency/<space>-<device>-b<batch>-"
                    "t<threads>.json); re-running on it resumes")
    lt.add_argument("--calibrate", type=int_in(0, 1000), default=20, help="whole archs timed to measure the time "
                    "outside the blocks (default 20)")
    lt.add_argument("--check", type=int_in(0, 1000), default=0, help="this many more archs timed whole in the same "
                    "rounds, to report the table's error on archs it was not calibrated on (default 0)")
    lt.add_argument("--rounds", type=int_in(1, 100), default=4, help="passes over the blocks the timed runs are "
                    "spread over (default 4)")
    lt.add_argument("--reps", type=int_in(1, 100000), default=40, help="timed runs of each block in all (default 40)")
    lt.add_argument("--seed", type=SEED, default=0, help=f"seed of the calibration archs, {SEED_HELP}")
    lt.set_defaults(func=cmd_latency_table)

    e = sub.add_parser("eval", help="score an arch with inherited supernet weights (top-1 and loss)")
    e.add_argument("arch", type=path_arg, help="arch file (or shipped reference/NAME), of the supernet's space or "
                   "of the space as written (mapped to it)")
    e.add_argument("--supernet", metavar="RUN_DIR", type=path_arg, required=True, help="a finished `nas train-supernet` run")
    e.add_argument("--split", default="search", help="held-out split: search (default) or val; checked by the "
                   "evaluator, which never scores training images")
    e.add_argument("--data", help="data spec (default: the data the supernet was trained on)")
    e.add_argument("--batch-size", type=int_in(1), default=256)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("train-supernet", help="train a weight-sharing SPOS supernet over a space (resumable)")
    t.add_argument("space", type=path_arg, help=SPACE_HELP)
    t.add_argument("--data", default="builtin", help="builtin (MNIST-5000, default), synthetic[:N[:C]], "
                   "fashion-mnist, idx:DIR (MNIST-style IDX files) or an ImageFolder root with train/ and val/")
    t.add_argument("--recipe", type=path_arg, help="training recipe: a YAML file or a shipped name (`nas recipe "
                   "list`; default: cpu_supernet on --data builtin, cpu_fashion_supernet on fashion-mnist and idx:DIR, "
                   "else the PSViT supernet recipe, spos_supernet)")
    t.add_argument("--out", type=path_arg, help="run directory (default runs/<space name>-supernet); re-running on it resumes")
    t.add_argument("--resume", action="store_true", help="require an existing run in --out to resume")
    _add_ray_train_args(t)
    t.set_defaults(func=cmd_train_supernet)

    vz = sub.add_parser("viz", help="PNG pictures: sampling points, ATS kept tokens, CF-ViT regions; a search run")
    vz.add_argument("target", help="arch file, shipped reference arch (reference/NAME) or registered arch name, "
                    "or a `nas search` run directory (Pareto plot and best-so-far curve)")
    vz.add_argument("--data", help="images from the val split of this data (default: the supernet's, else builtin)")
    vz.add_argument("--images", type=int, default=4, help="how many images (default 4)")
    vz.add_argument("--out", type=path_arg, help="folder for the PNGs (default viz/<arch>, or RUN_DIR/viz)")
    vz.add_argument("--weights", help="safetensors weights for the arch (default: seeded random init)")
    vz.add_argument("--supernet", metavar="RUN_DIR", help="use this trained supernet's weights sliced for the arch")
    vz.add_argument("--seed", type=SEED, default=0, help=f"seed of the random init and of the data, {SEED_HELP}")
    vz.set_defaults(func=cmd_viz)

    r = sub.add_parser("retrain", help="train an exported arch from scratch or its inherited weights (resumable)")
    r.add_argument("arch", type=path_arg, help="arch file (e.g. a search's best.yaml) or a shipped reference/NAME")
    r.add_argument("--data", default="builtin", help="builtin (default), synthetic[:N[:C]], fashion-mnist, idx:DIR "
                   "or an ImageFolder root")
    r.add_argument("--recipe", type=path_arg, help="training recipe: a YAML file or a shipped name (`nas recipe "
                   "list`; default: retrain_cpu on --data builtin, retrain_cpu_fashion on fashion-mnist and idx:DIR, "
                   "else retrain_deit)")
    r.add_argument("--out", type=path_arg, help="run directory (default runs/<arch name or hash>-retrain); re-running resumes")
    r.add_argument("--init", choices=("scratch", "inherited"), default="scratch", help="inherited: start from the "
                   "weights exported next to the arch file (<stem>.safetensors, or <stem>.proxy.yaml + .safetensors)")
    r.add_argument("--resume", action="store_true", help="require an existing run in --out to resume")
    _add_ray_train_args(r)
    r.set_defaults(func=cmd_retrain)

    rk = sub.add_parser("rank-check", help="does the supernet rank subnets as training them alone does? "
                        "(reliability ICC, Kendall tau and Spearman rho with CIs, MACs and params baselines; resumable)")
    rk.add_argument("supernet_run", type=path_arg, help="a trained supernet run directory")
    rk.add_argument("-n", type=int_in(3, MAX_RANK_ARCHS), default=12, help=f"archs spread over the MACs range, "
                    f"3..{MAX_RANK_ARCHS:,} (default 12)")
    rk.add_argument("--recipe", type=path_arg, help="standalone training recipe, a YAML file or a shipped name "
                    "(default: the supernet's own)")
    rk.add_argument("--seed", type=SEED, default=0, help=f"seed of the arch sampling, {SEED_HELP}")
    rk.add_argument("--seeds", type=int_in(1, MAX_RANK_SEEDS), default=3, help=f"train each arch alone this many "
                    f"times, 1..{MAX_RANK_SEEDS} (recipe seed, "
                    "seed+1, ...); 2 or more also reports the reliability of standalone training, ICC(1) with its "
                    "CI and F-test, and compares with the seed mean (default 3)")
    rk.add_argument("--band", help="draw the archs inside one MACs band LO:HI of the space as written (e.g. "
                    "1.0G:1.3G), so that size alone cannot explain the ranking (default: the whole MACs range)")
    rk.add_argument("--workers", type=int_in(1, os.cpu_count() or 1), default=1, help="standalone trainings at "
                    "once, one process each, at most the CPUs of this machine (default 1)")
    rk.add_argument("--out", type=path_arg, help="folder of the runs and results (default <run>/../rank-check); "
                    "re-running resumes")
    rk.set_defaults(func=cmd_rank_check)

    se = sub.add_parser("search", help="the best subnet within a MACs/params/latency budget (resumable; "
                        "docs/search.md)")
    se.add_argument("space", help=SPACE_HELP)
    se.add_argument("--flops", help="MACs budget: an upper bound (1.3G) or a band (1.15G:1.3G); default: the "
                    "space's budget")
    se.add_argument("--params", help="params budget: an upper bound (6M) or a band (5M:6M)")
    se.add_argument("--latency", help="latency budget on the target device: an upper bound (8ms) or a band (6ms:8ms), "
                    "as --latency-table predicts it")
    se.add_argument("--latency-table", type=path_arg, metavar="FILE", help="the table of block times made on the "
                    "target device by `nas latency-table`; alone, it records every candidate's predicted latency")
    se.add_argument("--budget-on", choices=BUDGET_ON, help="bound the worst-case MACs or the mean measured "
                    "on the search split (data-dependent archs; default mean when the supernet is at target scale)")
    se.add_argument("--searcher", choices=tuple(SEARCHERS),
                    help="default: the search recipe's (evolution)")
    se.add_argument("--max-evals", type=int_in(1, MAX_EVALS), help=f"evaluations at most, 1..{MAX_EVALS:,} "
                    "(default: the search recipe's, 1000)")
    se.add_argument("--top", type=int_in(0, MAX_EVALS), default=0, help="export the K next-best archs too, into "
                    "<out>/top/")
    se.add_argument("--data", help="builtin (the default, unless --supernet: then the data it was trained with), "
                    "synthetic[:N[:C]], fashion-mnist, idx:DIR or an ImageFolder root")
    se.add_argument("--recipe", help="supernet training recipe, a YAML file or a shipped name (`nas recipe list`; "
                    "default: the CPU recipe for the data, as train-supernet)")
    se.add_argument("--search-recipe", help="search recipe, a YAML file or a shipped name (`nas recipe list`: "
                    "search_evolution, search_optuna, ...; default: the values of search_<searcher>)")
    se.add_argument("--supernet", help="a trained supernet run directory to search instead of training one")
    se.add_argument("--storage", help="Optuna storage URL (default: sqlite in the run directory)")
    se.add_argument("--out", type=path_arg, help="run directory (default runs/<space>-search-<budget>-<searcher>-s<seed>); "
                    "re-running on it resumes")
    se.add_argument("--seed", type=SEED, default=0, help=f"seed of the search, {SEED_HELP}")
    se.add_argument("--ray-address", metavar="ADDR", help="evaluate candidates on Ray actors: local (a Ray instance "
                    "for this job), auto (this machine's cluster) or HOST:PORT of a head (checked within --ray-timeout "
                    "before anything is written); same results (docs/search.md, 'Search on Ray')")
    se.add_argument("--num-workers", type=int_in(1), metavar="N", help="evaluation actors, with --ray-address "
                    "(default: one per CPU of the cluster, or one per GPU when it has GPUs)")
    se.add_argument("--max-retries", type=int_in(0), metavar="K", help="with --ray-address: restarts of a dead "
                    "worker, and retries of its evaluation (default 3)")
    se.add_argument("--ray-timeout", type=seconds, metavar="SECONDS", help=RAY_TIMEOUT_HELP)
    se.set_defaults(func=cmd_search)

    recipe = sub.add_parser("recipe", help="list the shipped training and search recipes",
                            description="A recipe is a YAML file or the name of a shipped one (`nas recipe list`) "
                                        "wherever a command takes --recipe or --search-recipe; an existing path wins.")
    rsub = recipe.add_subparsers(dest="recipe_command", metavar="ACTION", parser_class=_Parser)
    rl = rsub.add_parser("list", help="the shipped recipes (training and search; cluster/NAME: a `ray up` cluster "
                         "config): name and description")
    rl.set_defaults(func=cmd_recipe_list)
    rp = rsub.add_parser("path", help="the file of a shipped recipe (to copy and edit, or for `ray up`)")
    rp.add_argument("name", type=path_arg, help="a name from `nas recipe list`")
    rp.set_defaults(func=cmd_recipe_path)
    return p


def _missing_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> UsageError:
    """``nas`` or ``nas space`` with nothing after: name the level that is missing and its choices."""
    while True:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        chosen = getattr(args, action.dest, None)
        if chosen is None:
            return UsageError(f"missing {str(action.metavar).lower()}; choose one of: {', '.join(action.choices)} "
                              f"(see '{parser.prog} --help')")
        parser = action.choices[chosen]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # allowed anywhere, not only before the command
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            raise _missing_command(parser, args)
        args.func(args)
        return 0
    except NasError as e:
        if debug and not isinstance(e, UsageError):
            raise
        print(f"nas: error: {e.format()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nas: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"nas: terminated: {e}", file=sys.stderr)
        return 143
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

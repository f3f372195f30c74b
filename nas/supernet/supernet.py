"""SPOS weight-sharing supernet: one set of largest tensors, any arch of the space runs as a slice of it.

Design (one model code path): the supernet holds max-size tensors keyed by the standalone model's
parameter and buffer names (``stages.1.cells.3.attn.qkv.weight``). ``forward(x, arch)`` takes a
parameter-free skeleton of ``nas.build_model(arch)`` built on the meta device (cached per arch, LRU), swaps
its meta tensors for slices of the supernet tensors and runs it (``torch.func.functional_call`` done by hand,
``bound``: cheaper, and any method of the model can be called, not only ``forward``). Gradients flow through
the slices into the supernet tensors; BatchNorm running statistics are updated in place through the slice
views. ``extract(arch)`` is the same skeleton loaded with cloned slices: a standalone model whose outputs
equal ``forward(x, arch)``. Every mechanism ``build_model`` supports (ATS, coarse-to-fine, ...) is thereby
a supernet path with no supernet code of its own; one that ``build_model`` rejects raises the same error.

Which tensors a subnet uses (the SPOS path choices) follows from the names:

- widths share weights by slicing (AutoFormer's weight entanglement, ``nas.supernet.slicing``): leading
  channels, q/k/v sliced separately inside the fused qkv, MLP hidden = the first int(dim * mlp_ratio) rows,
  the centre of the largest conv kernel; heads change no tensor, only how the channels are split.
- identity cells use nothing; stage lengths, pooling and the head follow from the arch.
- different cell kinds at one position keep SEPARATE weights: a basic cell is ``stages.s.cells.c.attn...``,
  a shared pair ``stages.s.cells.c.first...`` / ``.second...``. SPOS gives every choice block its own
  weights; a pair's first layer is trained to hand its map on, unlike a basic layer.
- progressive sampling with N iterations uses encoder layers ``tokenizer.layers.0..N-1`` (and offset heads
  ``tokenizer.offsets.0..N-2``), shared between archs with different N; with ``share_weights`` it uses one
  separate layer and offset head, stored as ``tokenizer.shared_layer`` / ``tokenizer.shared_offset``
  (``supernet_name``), again one choice block with its own weights. The stem is sliced by width.
- ATS and coarse-to-fine settings are parameter-free path choices (they add no supernet tensors).
- a space whose archs use different tokenizer weights (``Tokenizer.weights``: a choice of tokenizers, of
  patch sizes) keeps one set of tokenizer tensors per name, ``tokenizer.<name>.*`` (``Supernet.key``), one
  choice block each, and shares the body (stages, norm, head) between them.

The set of tensors and their largest shapes come from meta skeletons of a covering set of archs
(``covering_vectors``); initial values come from real ``build_model`` builds of the few covering archs that
hold each tensor at its largest shape, so a supernet starts with the standalone models' init. Creating a
supernet draws from torch's global RNG (same seed, same supernet); ``forward`` and ``extract`` draw nothing.

Training options of the models (``build_model``'s ``drop_path``, ``options``) are given once,
``Supernet(space, drop_path=0.1)``: every path and every extracted model is built with them. They change no
tensor and no eval-mode output. A path's training objective is its model's (``nas.models.objective``):
``with supernet.bound(arch) as model: loss, logits = training_loss(model, x, y, criterion, progress)``.
``no_weight_decay()`` names the tensors any path's model keeps out of weight decay (cls tokens, position
tables and layers), for timm's optimizer factory.

Notes for training: only the tensors (and slices) on the path get gradients; with ``zero_grad(set_to_none
=True)`` the rest keep ``grad = None``, so plain SGD leaves them exactly unchanged, while weight decay or
momentum would also move the unused parts of a sliced tensor (they receive zero gradient, not None). DDP
needs ``find_unused_parameters=True``, since each step uses a different subset.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nas.arch import Arch
from nas.errors import NasError
from nas.mechanisms import tokenizer
from nas.space import SearchSpace
from nas.supernet.skeleton import build_skeleton, constants
from nas.supernet.slicing import fits, rule_for, slice_tensor

def supernet_name(arch: Arch, name: str) -> str:
    """Supernet key of the standalone model's tensor ``name`` in ``arch``: the identity, unless the tokenizer
    keeps a choice block of its own (``Tokenizer.supernet_name``: PS-ViT's shared sampling layer)."""
    return tokenizer(arch.tokenizer).supernet_name(arch.tokenizer, name)


def covering_vectors(space: SearchSpace) -> list[list[int]]:
    """Encoded archs whose models together hold every tensor the space can use, at its largest shape.

    Numeric dimensions (dims, mlp ratios, iterations, kernels, ...) sit at their largest value; categorical
    ones (cell kinds, booleans) at their k-th value for k = 0, 1, ... ("all basic", "all shared pairs",
    ...), and then each dimension takes each of its values once with the others as in the first of those.
    Tensor shapes grow with every numeric value in today's models, which ``Supernet`` checks for every arch
    it runs.
    """
    dims = space.dims
    numeric = [all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in d.values) for d in dims]
    k_max = max((len(d.values) for d in dims), default=1)
    bases = [[max(range(len(d.values)), key=d.values.__getitem__) if num else min(k, len(d.values) - 1)
              for d, num in zip(dims, numeric)] for k in range(k_max)]
    variants = []
    for i, d in enumerate(dims):
        base = list(bases[0])
        cond = space.conditions[i]  # a dimension inside a tokenizer option: vary it with that option chosen
        if cond is not None:
            base[cond[0]] = min(cond[1])
        variants += [base[:i] + [j] + base[i + 1:] for j in range(len(d.values))]
    out: list[list[int]] = []
    for v in bases + variants:
        if v not in out:
            out.append(v)
    return out


def _tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, bool, str, torch.Tensor]]:
    """(name, owner module, leaf, is_parameter, slicing rule, tensor) for every parameter and persistent
    buffer (non-persistent buffers are arch constants that the skeleton keeps)."""
    for mname, module in model.named_modules():
        attr = mname.rsplit(".", 1)[-1]
        for is_param, table in ((True, module._parameters), (False, module._buffers)):
            for leaf, t in table.items():
                if t is not None and (is_param or leaf not in module._non_persistent_buffers_set):
                    name = f"{mname}.{leaf}" if mname else leaf
                    yield name, module, leaf, is_param, rule_for(module, attr, leaf), t


@dataclass
class _Spec:
    """A supernet tensor being collected: largest shape so far, slicing rule, kind."""
    shape: tuple[int, ...]
    rule: str
    is_param: bool
    dtype: torch.dtype


@dataclass
class _Path:
    """A cached arch: its skeleton; per tensor (standalone name, supernet holder module, leaf, is_param,
    shape, rule, skeleton owner module); the skeleton's constant buffers (module, name)."""
    skeleton: nn.Module
    entries: list[tuple[str, nn.Module, str, bool, tuple[int, ...], str, nn.Module]]
    constants: list[tuple[nn.Module, str]]


class _Tensors(nn.Module):
    """Container for supernet tensors along the standalone models' module paths (no forward)."""


class Supernet(nn.Module):
    """Weight-sharing supernet of a ``SearchSpace``: ``forward(x, arch)``, ``extract(arch)``.

    ``state_dict()`` keys are the standalone models' names (see ``supernet_name`` for the one exception), so
    a subnet's state dict is a set of slices of the supernet's. ``cache_size`` skeletons are kept (LRU).
    """

    def __init__(self, space: SearchSpace, cache_size: int = 64, **model_kwargs: Any) -> None:
        super().__init__()
        self.space = space
        self.cache_size = cache_size
        self.model_kwargs = dict(model_kwargs)  # build_model's training options, for every path
        self._paths: OrderedDict[Arch, _Path] = OrderedDict()
        archs = [space.decode(v) for v in covering_vectors(space)]
        self._split_tokenizers = len({tokenizer(a.tokenizer).weights(a.tokenizer) for a in archs}) > 1
        specs: dict[str, _Spec] = {}
        held: list[dict[str, tuple[str, tuple[int, ...]]]] = []  # per arch: key -> (name, shape)
        no_decay: set[str] = set()
        for arch in archs:
            names = {}
            skeleton = build_skeleton(arch, **self.model_kwargs)
            no_decay |= {self.key(arch, n) for n in getattr(skeleton, "no_weight_decay", set)()}
            for name, _, _, is_param, rule, t in _tensors(skeleton):
                key, shape = self.key(arch, name), tuple(t.shape)
                names[key] = (name, shape)
                spec = specs.setdefault(key, _Spec(shape, rule, is_param, t.dtype))
                if (spec.rule, spec.is_param, spec.dtype, len(spec.shape)) != (rule, is_param, t.dtype, len(shape)):
                    raise RuntimeError(f"tensor {key!r} changes kind across archs of space {space.name!r}")
                spec.shape = tuple(max(a, b) for a, b in zip(spec.shape, shape))
            held.append(names)
        values = self._initial_values(archs, held, specs)
        for key, spec in specs.items():
            *path, leaf = key.split(".")
            holder = self._holder(path)
            if spec.is_param:
                value = values[key]
                holder.register_parameter(leaf, nn.Parameter(value, requires_grad=value.is_floating_point()))
            else:
                holder.register_buffer(leaf, values[key])
        self._no_weight_decay = frozenset(k for k in no_decay if k in specs and specs[k].is_param)

    def key(self, arch: Arch, name: str) -> str:
        """The supernet key of the standalone model's tensor ``name`` in ``arch``: ``supernet_name``, and the
        tokenizer's tensors under ``tokenizer.<weights name>.`` when the space mixes tokenizer weights."""
        key = supernet_name(arch, name)
        if self._split_tokenizers and key.startswith("tokenizer."):
            key = f"tokenizer.{tokenizer(arch.tokenizer).weights(arch.tokenizer)}.{key[len('tokenizer.'):]}"
        return key

    def no_weight_decay(self) -> set[str]:
        """Names of the supernet parameters that no path decays (timm's ``create_optimizer_v2`` reads it)."""
        return set(self._no_weight_decay)

    def __getstate__(self) -> dict:
        """Pickling and deepcopy leave the skeleton cache behind (it is rebuilt on demand)."""
        state = self.__dict__.copy()
        state["_paths"] = OrderedDict()
        return state

    @staticmethod
    def _initial_values(archs: list[Arch], held: list[dict[str, tuple[str, tuple[int, ...]]]],
                        specs: dict[str, _Spec]) -> dict[str, torch.Tensor]:
        """Each tensor from a real build of the first covering arch that has it at its largest shape."""
        from nas.models import build_model

        values: dict[str, torch.Tensor] = {}
        for arch, names in zip(archs, held):
            hits = [k for k, (_, shape) in names.items() if k not in values and shape == specs[k].shape]
            if hits:
                state = build_model(arch).state_dict()
                values.update({k: state[names[k][0]].detach().clone() for k in hits})
        missing = sorted(set(specs) - set(values))
        if missing:
            raise RuntimeError(f"no covering arch holds {missing[:3]} at its largest shape; the space's tensor "
                               "shapes do not grow with every numeric choice")
        return values

    def _holder(self, path: list[str]) -> nn.Module:
        """The container module at ``path`` (created on demand)."""
        m: nn.Module = self
        for part in path:
            child = m._modules.get(part)
            if child is None:
                if m is self and hasattr(self, part):
                    raise RuntimeError(f"model attribute {part!r} clashes with a Supernet attribute")
                child = _Tensors()
                m.add_module(part, child)
            m = child
        return m

    def _full(self, key: str) -> tuple[nn.Module, str, bool] | None:
        """(holder, leaf, is_param) of supernet tensor ``key``, or None."""
        *path, leaf = key.split(".")
        m: nn.Module | None = self
        for part in path:
            m = m._modules.get(part) if m is not None else None
        if m is None:
            return None
        if leaf in m._parameters:
            return m, leaf, True
        if leaf in m._buffers:
            return m, leaf, False
        return None

    # --- paths ---------------------------------------------------------------------------------------
    def _path(self, arch: Arch) -> _Path:
        """The cached skeleton and slicing plan of ``arch``; checks the arch is in the space and fits."""
        path = self._paths.get(arch)
        if path is not None:
            self._paths.move_to_end(arch)
            return path
        try:
            self.space.encode(arch)
        except ValueError as e:
            raise NasError(f"the arch is not in the supernet's space {self.space.name!r}: {e}") from None
        skeleton = build_skeleton(arch, **self.model_kwargs)
        entries = []
        for name, owner, _, is_param, rule, t in _tensors(skeleton):
            key = self.key(arch, name)
            found = self._full(key)
            full = None if found is None else (found[0]._parameters if found[2] else found[0]._buffers)[found[1]]
            if found is None or found[2] != is_param or not fits(tuple(full.shape), tuple(t.shape), rule):
                have = "missing" if full is None else f"of shape {tuple(full.shape)}"
                raise NasError(f"{name} of shape {tuple(t.shape)} does not fit the supernet ({key} is {have}); "
                               f"the space {self.space.name!r} does not cover this arch")
            entries.append((name, found[0], found[1], is_param, tuple(t.shape), rule, owner))
        path = _Path(skeleton, entries, constants(skeleton))
        self._paths[arch] = path
        while len(self._paths) > max(self.cache_size, 1):
            self._paths.popitem(last=False)
        return path

    def _slices(self, path: _Path) -> list[torch.Tensor]:
        """Per entry, the slice of the supernet tensor (views where possible, differentiable)."""
        return [slice_tensor((holder._parameters if is_param else holder._buffers)[leaf], shape, rule)
                for _, holder, leaf, is_param, shape, rule, _ in path.entries]

    @contextmanager
    def bound(self, arch: Arch) -> Iterator[nn.Module]:
        """``arch``'s model carrying the supernet's slices, for the duration of the block.

        Any method of the standalone model can be called on it (``forward_train`` of CF-ViT, ...); gradients
        flow into the supernet tensors. The model is the cached skeleton: keep no reference past the block.
        This is ``torch.func.functional_call`` done by hand: the skeleton's meta tensors are swapped for the
        slices on entry and back on exit, which also serves methods other than ``forward``.
        """
        path = self._path(arch)
        if path.skeleton.training != self.training:
            path.skeleton.train(self.training)
        slices = self._slices(path)
        if path.constants and slices and path.constants[0][0]._buffers[path.constants[0][1]].device != slices[0].device:
            for m, k in path.constants:
                m._buffers[k] = m._buffers[k].to(slices[0].device)
        tables = [(owner._parameters if is_param else owner._buffers, leaf)
                  for _, _, leaf, is_param, _, _, owner in path.entries]
        metas = [table[leaf] for table, leaf in tables]
        for (table, leaf), t in zip(tables, slices):
            table[leaf] = t
        try:
            yield path.skeleton
        finally:
            for (table, leaf), t in zip(tables, metas):
                table[leaf] = t

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        """Run ``arch``'s path on x (B, C, H, W): exactly what ``extract(arch)(x)`` computes."""
        with self.bound(arch) as model:
            return model(x)

    def subnet_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The standalone model's state dict for ``arch``: contiguous copies of the supernet slices."""
        path = self._path(arch)
        with torch.no_grad():
            slices = self._slices(path)
            return {e[0]: t.clone(memory_format=torch.contiguous_format) for e, t in zip(path.entries, slices)}

    def extract(self, arch: Arch) -> nn.Module:
        """``nas.build_model(arch, **model_kwargs)`` carrying the inherited weights (copies), in the supernet's
        train/eval mode.

        Built on the meta device and loaded by assignment: no init work, no random numbers drawn.
        """
        state = self.subnet_state_dict(arch)
        model = build_skeleton(arch, **self.model_kwargs)
        model.load_state_dict(state, strict=True, assign=True)
        device = next(iter(state.values())).device if state else torch.device("cpu")
        for m, k in constants(model):  # arch constants were built on the CPU
            m._buffers[k] = m._buffers[k].to(device)
        return model.train(self.training)

    def batchnorm_stats(self, arch: Arch) -> list[tuple[_BatchNorm, dict[str, torch.Tensor]]]:
        """The BatchNorm modules of ``arch``'s skeleton with views of their running statistics in the
        supernet (``running_mean``, ``running_var``, ``num_batches_tracked``); see ``recalibrate_bn``."""
        path = self._path(arch)
        slices = {e[0]: t for e, t in zip(path.entries, self._slices(path))}
        out = []
        for mname, m in path.skeleton.named_modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats:
                stats = ("running_mean", "running_var", "num_batches_tracked")
                out.append((m, {k: slices[f"{mname}.{k}"] for k in stats}))
        return out

"""Target and proxy spaces: the same archs at two scales, mapped one-to-one through their encodings.

The *target* is a space as written (the archs a user retrains and deploys; budgets are measured there). A
training recipe's ``space_overrides`` may turn it into a *proxy* (smaller input, patch or widths) that a
supernet is trained and scored on. An arch of one maps to the arch of the other with the same index in every
dimension: ``proxy.decode(target.encode(arch))``. That is only meaningful when both spaces have the same
dimensions (key paths) with the same number of values each; ``check_proxy`` refuses anything else, naming
the first dimension that differs.
"""
from __future__ import annotations

from nas.arch import Arch
from nas.errors import NasError
from nas.space.space import SearchSpace


def check_proxy(target: SearchSpace, proxy: SearchSpace) -> None:
    """Raise ``NasError`` unless ``proxy`` has ``target``'s dimensions, in order, with as many values each."""
    t_dims, p_dims = {d.path: d for d in target.dims}, {d.path: d for d in proxy.dims}
    for path, d in t_dims.items():
        if path not in p_dims:
            raise NasError(f"the proxy space has no dimension {path} (values {list(d.values)} in the target "
                           f"{target.name!r}); space_overrides must keep every dimension of the target",
                           file=proxy.file, key=path)
    for path, d in p_dims.items():
        if path not in t_dims:
            raise NasError(f"the proxy space adds dimension {path} (values {list(d.values)}), which the target "
                           f"{target.name!r} does not have; space_overrides must keep the target's dimensions",
                           file=proxy.file, key=path)
        t = t_dims[path]
        if len(t.values) != len(d.values):
            raise NasError(f"dimension {path} has {len(t.values)} values {list(t.values)} in the target "
                           f"{target.name!r} but {len(d.values)} values {list(d.values)} in the proxy; "
                           f"space_overrides must keep the number of values of every dimension",
                           file=proxy.file, key=path)
    if [d.path for d in target.dims] != [d.path for d in proxy.dims]:
        raise NasError(f"the proxy space orders its dimensions differently from the target {target.name!r}",
                       file=proxy.file)


def to_proxy(arch: Arch, target: SearchSpace, proxy: SearchSpace) -> Arch:
    """The proxy arch with ``arch``'s index in every dimension (``arch`` must be in ``target``)."""
    check_proxy(target, proxy)
    try:
        return proxy.decode(target.encode(arch))
    except ValueError as e:
        raise NasError(f"the arch is not in the target space {target.name!r}: {e}") from None


def to_target(arch: Arch, proxy: SearchSpace, target: SearchSpace) -> Arch:
    """The target arch with ``arch``'s index in every dimension (``arch`` must be in ``proxy``)."""
    check_proxy(target, proxy)
    try:
        return target.decode(proxy.encode(arch))
    except ValueError as e:
        raise NasError(f"the arch is not in the proxy space {proxy.name!r}: {e}") from None

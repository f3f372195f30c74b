"""Target and proxy: the space the budget is about, and the space the supernet was trained and scores on.

The *target* is the space as written (e.g. 224x224, 1000 classes): the arch a user retrains and deploys, and
the one every budget is checked on. A training recipe's ``space_overrides`` (and the data's class count) may
define a *proxy*: the same decisions at another resolution, patch size or width. A candidate is one vector of
choice indices; ``target.decode(v)`` is what the budget sees, ``proxy.decode(v)`` what the supernet scores.
That mapping is one-to-one only when both spaces have the same dimensions, in the same order, each with the
same number of values; ``ProxyMap`` refuses anything else, naming the dimension.
"""
from __future__ import annotations

from dataclasses import dataclass

from nas.arch import Arch
from nas.errors import NasError
from nas.space import SearchSpace


@dataclass(frozen=True)
class ProxyMap:
    target: SearchSpace
    proxy: SearchSpace

    def __post_init__(self) -> None:
        check_same_dimensions(self.target, self.proxy)

    @property
    def is_identity(self) -> bool:
        """The supernet was trained on the target itself (same resolved space)."""
        return self.target.hash == self.proxy.hash

    def to_proxy(self, arch: Arch) -> Arch:
        return arch if self.is_identity else self.proxy.decode(self.target.encode(arch))

    def to_target(self, arch: Arch) -> Arch:
        return arch if self.is_identity else self.target.decode(self.proxy.encode(arch))


def check_same_dimensions(target: SearchSpace, proxy: SearchSpace, where: str | None = None) -> None:
    """NasError unless ``proxy`` has the dimensions of ``target`` (same paths, order, number of values)."""
    t = {d.path: d for d in target.dims}
    p = {d.path: d for d in proxy.dims}
    rule = ("a proxy (the training recipe's space_overrides) must keep every searchable dimension of the target "
            "space with the same number of values, so that candidates map one-to-one")
    for path, d in t.items():
        if path not in p:
            raise NasError(f"the proxy fixes dimension {path} (line {d.line} of {target.file}: {len(d.values)} "
                           f"values in the target); {rule}", file=where, key=path)
        if len(p[path].values) != len(d.values):
            raise NasError(f"dimension {path} has {len(p[path].values)} values in the proxy and {len(d.values)} "
                           f"in the target (line {d.line} of {target.file}); {rule}", file=where, key=path)
    for path in p:
        if path not in t:
            raise NasError(f"the proxy adds dimension {path}, which the target fixes; {rule}", file=where, key=path)
    if [d.path for d in target.dims] != [d.path for d in proxy.dims]:
        raise NasError(f"the proxy orders the dimensions differently from the target; {rule}", file=where)

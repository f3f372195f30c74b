"""Target and proxy: the space the budget is about, and the space the supernet was trained and scores on.

The *target* is the space as written (e.g. 224x224, 1000 classes): the arch a user retrains and deploys, and
the one every budget is checked on. A training recipe's ``space_overrides`` (and the data's class count) may
define a *proxy*: the same decisions at another resolution, patch size or width. A candidate is one vector of
choice indices; ``target.decode(v)`` is what the budget sees, ``proxy.decode(v)`` what the supernet scores.
That mapping is one-to-one only when both spaces have the same dimensions, in the same order, each with the
same number of values; ``ProxyMap`` refuses anything else, naming the dimension (``nas.space.proxy`` owns
that rule and the mapping; this module adds the search's view: which side the budget and the weights are on).
"""
from __future__ import annotations

from dataclasses import dataclass

from nas.arch import Arch
from nas.errors import NasError
from nas.space import SearchSpace
from nas.space.proxy import check_proxy, to_proxy, to_target


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
        return arch if self.is_identity else to_proxy(arch, self.target, self.proxy)

    def to_target(self, arch: Arch) -> Arch:
        return arch if self.is_identity else to_target(arch, self.proxy, self.target)


def check_same_dimensions(target: SearchSpace, proxy: SearchSpace, where: str | None = None) -> None:
    """``nas.space.proxy.check_proxy``, with the error located at ``where`` (the training recipe whose
    overrides made the proxy, or the supernet run) when given."""
    try:
        check_proxy(target, proxy)
    except NasError as e:
        if where is None:
            raise
        raise NasError(e.message, file=where, key=e.key) from None

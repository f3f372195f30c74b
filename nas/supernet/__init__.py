"""Weight-sharing SPOS supernet over a search space, subnet extraction, BatchNorm recalibration."""
from nas.supernet.bn import recalibrate_bn
from nas.supernet.supernet import Supernet, covering_vectors, supernet_name

__all__ = ["Supernet", "recalibrate_bn", "covering_vectors", "supernet_name"]

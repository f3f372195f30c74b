"""The same jobs on a Ray cluster (``--ray-address``): ``cluster`` connects, with loopback settings for one
machine. See ``docs/distributed.md``."""
from nas.distributed.cluster import check_address, loopback_env, ray_cluster

__all__ = ["check_address", "loopback_env", "ray_cluster"]

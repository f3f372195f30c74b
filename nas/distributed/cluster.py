"""Connecting to Ray: ``--ray-address`` of ``nas search``, ``nas train-supernet`` and ``nas retrain``.

    from nas.distributed import ray_cluster
    with ray_cluster("local", num_cpus=2):      # or "auto", or "127.0.0.1:6379"
        ...                                     # Ray actors, Ray Train, Ray Tune

Addresses:

- ``local``: a Ray instance started by this process for the job and stopped at its end. It binds to the
  loopback interface only and makes no outside connection (the settings below).
- ``auto``: the cluster of this machine (``ray start`` was run here, or the job was sent with ``ray job
  submit``, which sets ``RAY_ADDRESS``).
- ``host:port``: the head node's GCS address of a running cluster.

Loopback settings for a single machine (applied to ``local``; a user who starts a head with ``ray start`` on
a workstation should set the same, see ``docs/distributed.md``): ``RAY_USAGE_STATS_ENABLED=0`` (no usage
report), ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (node address 127.0.0.1, also for ``127.0.0.1:port``
addresses, which Ray would otherwise rewrite to the machine's outward address), ``RAY_AUTH_MODE=disabled``, and
a ``HOME`` for the Ray processes holding ``ray_bootstrap_config.yaml`` with ``provider: {type: local}``: without
it Ray's dashboard agent asks a cloud metadata address which provider it runs on. The variables must be set
before ``ray`` is first imported; ``ray_cluster`` sets them in ``os.environ`` when they are unset, so a user's
own values win.

Decisions where Ray leaves a choice:

- ``local`` gets ``num_cpus`` (default: all cores) and the GPUs torch sees; the dashboard is off.
- Worker logs are not echoed to the driver (``log_to_driver=False``): the driver's progress bars stay readable;
  the logs are in Ray's session folder.
- Leaving the ``with`` block disconnects (``ray.shutdown``), which for ``local`` stops the instance.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from nas.errors import NasError

LOOPBACK_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
BOOTSTRAP_CONFIG = "provider:\n  type: local\n"
_ADDRESS = re.compile(r"^(?:ray://)?[A-Za-z0-9.\-]+:\d{1,5}$")


def check_address(address: str) -> str:
    """``local``, ``auto`` or ``host:port``; anything else is a ``NasError`` stating the rule."""
    if address in ("local", "auto") or _ADDRESS.match(address):
        return address
    raise NasError(f"--ray-address {address!r}: expected 'local' (a Ray instance for this job), 'auto' (the "
                   "cluster of this machine) or HOST:PORT of a running head (e.g. 127.0.0.1:6379)")


def loopback_home() -> Path:
    """A folder holding ``ray_bootstrap_config.yaml`` (provider local), used as the Ray processes' ``HOME``."""
    home = Path(tempfile.gettempdir()) / f"nas-ray-home-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    home.mkdir(mode=0o700, exist_ok=True)
    cfg = home / "ray_bootstrap_config.yaml"
    if not cfg.exists() or cfg.read_text() != BOOTSTRAP_CONFIG:
        cfg.write_text(BOOTSTRAP_CONFIG)
    return home


def loopback_env() -> dict[str, str]:
    """The environment variables that keep a single-machine Ray on loopback (see the module docstring)."""
    return {**LOOPBACK_ENV, "HOME": str(loopback_home())}


@contextlib.contextmanager
def _home(path: str | None) -> Iterator[None]:
    """``HOME`` set to ``path`` while Ray spawns its processes (they inherit it), then restored."""
    if path is None:
        yield
        return
    old = os.environ.get("HOME")
    os.environ["HOME"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old


@contextlib.contextmanager
def ray_cluster(address: str, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray initialised for ``address`` for the duration of the block; yields the ``ray`` module.

    An already initialised Ray (a caller's own ``ray.init``) is used as it is and left running.
    """
    check_address(address)
    for k, v in LOOPBACK_ENV.items():
        os.environ.setdefault(k, v)  # before ``import ray``: ray reads them at import
    import ray

    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if address == "local":
        import torch
        kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count() or 1, _node_ip_address="127.0.0.1",
                      num_gpus=torch.cuda.device_count())  # "local": a new instance even when this machine runs one
        home = str(loopback_home())
    else:
        kwargs["address"] = address
        del kwargs["include_dashboard"]  # a setting of the cluster, not of a driver joining it
        home = None
    try:
        with _home(home):
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise NasError(f"--ray-address {address!r}: cannot connect to Ray ({str(e).splitlines()[0]}); start a "
                       "head with `ray start --head --port PORT` and give HOST:PORT, or use 'local'") from None
    try:
        yield ray
    finally:
        ray.shutdown()

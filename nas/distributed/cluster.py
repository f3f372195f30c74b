"""Connecting to Ray: ``--ray-address`` of ``nas search``, ``nas train-supernet`` and ``nas retrain``.

    from nas.distributed import ray_cluster
    with ray_cluster("local", num_cpus=2):      # or "auto", or "127.0.0.1:6379"
        ...                                     # Ray actors, Ray Train, Ray Tune

Addresses:

- ``local``: a Ray instance started by this process for the job and stopped at its end. It binds to the
  loopback interface only and makes no outside connection (the settings below).
- ``auto``: the cluster of this machine (``ray start`` was run here, or the job was sent with ``ray job
  submit``, which sets ``RAY_ADDRESS``).
- ``host:port``: the head node's GCS address of a running cluster (``ray://host:port``: its Ray Client server).

Never waiting forever: before anything is written, ``check_reachable`` opens a plain TCP connection to the
address (``auto``: the one Ray would pick, from ``RAY_ADDRESS`` or this machine's last ``ray start``), retrying
until ``timeout_s`` (``--ray-timeout``, default ``DEFAULT_TIMEOUT_S``), and ends in one ``NasError`` line when
nothing answers. Something that answers TCP but is no Ray head would still keep ``ray.init`` in Ray's own retry
loop (5 s + 5 s + 30 s per try, 20 tries): ``ray_cluster`` therefore sets Ray's connection settings
``RAY_gcs_rpc_server_connect_timeout_s`` and ``RAY_py_gcs_connect_timeout_s`` (about a third of the deadline
each, at least 1 s; Ray reads them when ``ray`` is first imported) and ``RAY_gcs_server_port_wait_time_s=1`` (one
try; read by ``ray.init``), when the user has not set them, so that ``ray.init`` gives up after about the deadline
(measured with Ray 2.60: 4 s for a 4 s deadline, where it took 80 s before). They are set only around the import
and ``ray.init``, so processes started later do not inherit them; a ``ray`` imported before keeps what it read.
SIGTERM during the check or ``ray.init`` raises ``nas.errors.Terminated`` (SIGINT: ``KeyboardInterrupt``); inside
``ray.init`` Python runs the handler when Ray's C++ call returns, which the settings above bound.

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
import math
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from nas.errors import NasError, Terminated

LOOPBACK_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
BOOTSTRAP_CONFIG = "provider:\n  type: local\n"
_ADDRESS = re.compile(r"^(?:ray://)?([A-Za-z0-9.\-]+):(\d{1,5})$")
DEFAULT_TIMEOUT_S = 15.0
"""How long ``--ray-address`` waits for the head to answer, unless ``--ray-timeout`` says."""
CONNECT_ENV = ("RAY_gcs_rpc_server_connect_timeout_s", "RAY_py_gcs_connect_timeout_s")
"""Ray's connection timeouts (seconds), read when ``ray`` is imported."""
PORT_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"
"""How many connection tries ``ray.init`` makes (about one a second plus the timeouts), read by ``ray.init``."""


def check_address(address: str) -> str:
    """``local``, ``auto`` or ``host:port`` (port 1..65535); anything else is a ``NasError`` stating the rule."""
    m = _ADDRESS.match(address)
    if address in ("local", "auto"):
        return address
    if m is None:
        raise NasError(f"--ray-address {address!r}: expected 'local' (a Ray instance for this job), 'auto' (the "
                       "cluster of this machine) or HOST:PORT of a running head (e.g. 127.0.0.1:6379)")
    if not 1 <= int(m.group(2)) <= 65535:
        raise NasError(f"--ray-address {address!r}: port {int(m.group(2))} is not a TCP port; the port must be in "
                       "1..65535 (the head's GCS port, e.g. 127.0.0.1:6379)")
    return address


def check_timeout(timeout_s: float) -> float:
    """``timeout_s`` if it is a finite number of seconds > 0, else a ``NasError``."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
            math.isfinite(timeout_s) and timeout_s > 0):
        raise NasError(f"--ray-timeout must be a number of seconds > 0, got {timeout_s!r}")
    return float(timeout_s)


def _import_ray(timeout_s: float | None) -> Any:
    """``ray``, imported with the loopback settings and, with ``timeout_s``, Ray's connection timeouts (module
    docstring) in the environment; the timeouts are taken out again, so that no process started later inherits
    them. A user's own values win; an already imported ``ray`` keeps the values it read."""
    for k, v in LOOPBACK_ENV.items():
        os.environ.setdefault(k, v)  # before ``import ray``: ray reads them at import
    if "ray" in sys.modules or timeout_s is None:
        import ray
        return ray
    each = str(max(1, int((timeout_s - 1) // 3)))  # ray.init gives up after about 3 * each + 1 s
    added = {k: each for k in CONNECT_ENV if k not in os.environ}
    os.environ.update(added)
    try:
        import ray
    finally:
        for k in added:
            os.environ.pop(k, None)
    return ray


def _auto_target(timeout_s: float) -> str | None:
    """The address ``auto`` connects to, found as Ray finds it (``RAY_ADDRESS``, else this machine's last ``ray
    start``, else a running head found among the processes); None when it is ``local`` or Ray's own lookup is
    not there (then connecting is left to Ray)."""
    _import_ray(timeout_s)
    try:
        from ray._private.services import get_ray_address_from_environment
    except ImportError:
        return None
    try:
        target = get_ray_address_from_environment("auto", None)
    except ConnectionError:
        raise NasError("--ray-address auto: no Ray cluster on this machine (RAY_ADDRESS is not set and no `ray "
                       "start` ran here); start one with `ray start --head`, or give HOST:PORT, or 'local'") from None
    return None if target in (None, "local") else target


@contextlib.contextmanager
def stop_on_signals(what: str) -> Iterator[None]:
    """SIGTERM raises ``Terminated`` while the block runs (SIGINT raises ``KeyboardInterrupt`` as always), then
    the handler is restored unless something in the block installed its own. Main thread only: elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"SIGTERM while {what}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, old)


def check_reachable(address: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """A ``NasError`` line unless something answers a TCP connection at ``address`` within ``timeout_s`` seconds
    (tried again every quarter second). ``local`` needs no check; ``auto`` is resolved as Ray does."""
    check_address(address)
    check_timeout(timeout_s)
    if address == "local":
        return
    deadline = time.monotonic() + timeout_s
    with stop_on_signals(f"waiting for the Ray head at --ray-address {address}"):
        target = _auto_target(timeout_s) if address == "auto" else address
        if target is None:
            return
        m = _ADDRESS.match(target)
        if m is None:
            return  # not host:port: Ray's business
        host, port = m.group(1), int(m.group(2))
        while True:
            left = deadline - time.monotonic()
            try:
                socket.create_connection((host, port), timeout=max(0.05, min(1.0, left))).close()
                return
            except OSError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(max(0.0, min(0.25, deadline - time.monotonic())))
    via = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "the last `ray start` on this machine"
    shown = address if target == address else f"{address} ({target}, from {via})"
    start = (f"the head's Ray Client server on port {port}" if target.startswith("ray://")
             else f"`ray start --head --port {port}`")
    raise NasError(f"--ray-address {shown}: nothing answers there within {timeout_s:g} s; is {start} running on "
                   f"{host}? (--ray-timeout to wait longer)")


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
def _one_try(joining: bool) -> Iterator[None]:
    """``RAY_gcs_server_port_wait_time_s=1`` while ``ray.init`` joins a cluster (read there, not at import): one
    connection try instead of 20, unless the user set it."""
    if not joining or PORT_WAIT_ENV in os.environ:
        yield
        return
    os.environ[PORT_WAIT_ENV] = "1"
    try:
        yield
    finally:
        os.environ.pop(PORT_WAIT_ENV, None)


@contextlib.contextmanager
def ray_cluster(address: str, num_cpus: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Any]:
    """Ray initialised for ``address`` for the duration of the block; yields the ``ray`` module. A head that does
    not answer within about ``timeout_s`` seconds is a ``NasError`` (``check_reachable``, module docstring).

    An already initialised Ray (a caller's own ``ray.init``) is used as it is and left running.
    """
    check_address(address)
    check_timeout(timeout_s)
    ray = _import_ray(None if address == "local" else timeout_s)
    if ray.is_initialized():
        yield ray
        return
    check_reachable(address, timeout_s)
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
        waiting = f"connecting to Ray at --ray-address {address}"
        with _home(home), _one_try(address != "local"), stop_on_signals(waiting):
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise NasError(f"--ray-address {address!r}: cannot connect to Ray within about {timeout_s:g} s "
                       f"({str(e).splitlines()[0]}); is a Ray head (`ray start --head --port PORT`) what answers "
                       "there? Give its HOST:PORT, or use 'local' (--ray-timeout to wait longer)") from None
    try:
        yield ray
    finally:
        ray.shutdown()

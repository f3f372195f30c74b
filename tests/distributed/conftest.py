"""A real Ray head for the tests of this folder: ``ray start --head`` on 127.0.0.1 with a free port and the
loopback settings, stopped (its whole process tree killed) at the end. Only this head's processes are stopped:
``ray stop`` would stop every Ray on the machine."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from nas.distributed.cluster import loopback_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_env() -> dict[str, str]:
    """The environment of the head and of commands joining it: loopback settings, and this checkout's ``nas``
    importable by the workers."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, **loopback_env(), "PYTHONPATH": root + (os.pathsep + path if path else ""),
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def kill_tree(pid: int) -> None:
    import psutil
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture(scope="session")
def ray_head() -> Iterator[str]:
    """The address ``127.0.0.1:PORT`` of a running 2-CPU Ray head."""
    port = free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                            env=head_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if head.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray head did not start on port {port}") from None
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        kill_tree(head.pid)
        head.wait(10)

from __future__ import annotations

import subprocess
import sys

import pytest

from nas.distributed.cluster import check_address, loopback_env
from nas.errors import NasError
from tests.distributed.conftest import head_env


@pytest.mark.parametrize("good", ["local", "auto", "127.0.0.1:6379", "head-node.example:10001"])
def test_check_address_accepts(good: str) -> None:
    assert check_address(good) == good


@pytest.mark.parametrize("bad", ["", "127.0.0.1", "localhost:", "http://x:1", "a b:1", "local "])
def test_check_address_refuses(bad: str) -> None:
    with pytest.raises(NasError, match="expected 'local'"):
        check_address(bad)


def test_loopback_env_has_bootstrap_config() -> None:
    env = loopback_env()
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    from pathlib import Path
    assert "type: local" in (Path(env["HOME"]) / "ray_bootstrap_config.yaml").read_text()


def test_joins_head_on_loopback(ray_head: str) -> None:
    """A driver joining the head through ``ray_cluster`` runs tasks on it, and the node is 127.0.0.1."""
    code = ("from nas.distributed import ray_cluster\n"
            f"with ray_cluster({ray_head!r}) as ray:\n"
            "    f = ray.remote(lambda: ray.util.get_node_ip_address())\n"
            "    print(sorted({n['NodeManagerAddress'] for n in ray.nodes()}), ray.get(f.remote()))\n")
    out = subprocess.run([sys.executable, "-c", code], env=head_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['127.0.0.1'] 127.0.0.1"

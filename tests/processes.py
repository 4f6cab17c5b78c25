"""Dream Forge's own commands as real child processes, for tests that stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from dreamforge.config import Settings
from tests.services import free_port, settings_env


class DreamForgeProcess:
    """`python -m dreamforge.cli <command>` with the given settings, logging to a file."""

    def __init__(self, args: list[str], settings: Settings, log: Path) -> None:
        self.args = args
        self.settings = settings
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dreamforge.cli", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=settings_env(self.settings),
            )

    def signal(self, sig: signal.Signals, timeout: float = 60) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)
        self.process.wait(timeout)
        self.assert_no_secret_logged()

    def assert_no_secret_logged(self) -> None:
        """No secret of its settings may reach its log, whatever happened in the run."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        leaked = [s for s in self.settings.secrets() if s in text]
        assert leaked == [], f"{self.log} shows secrets: {[s[:3] + '…' for s in leaked]}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


class Serve(DreamForgeProcess):
    """`dreamforge serve` (or `dreamforge api`) on its own port, waited on until ready."""

    def __init__(
        self, data_dir: Path, log: Path, command: str = "serve", settings: Settings | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = settings or Settings(data_dir=data_dir)
        super().__init__(
            [command, "--data-dir", str(data_dir), "--port", str(self.port)], settings, log
        )

    def start(self) -> None:
        super().start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.alive(), self.tail()
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server did not become ready:\n" + self.tail())

    def stop(self, sig: signal.Signals) -> None:
        self.signal(sig)


class Worker(DreamForgeProcess):
    def __init__(self, settings: Settings, log: Path, queues: str = "gpu") -> None:
        super().__init__(["worker", "--queues", queues], settings, log)

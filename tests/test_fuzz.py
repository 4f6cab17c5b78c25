"""Schemathesis over /openapi.json against a running server: whatever it sends, no 5xx,
no status or content type the document does not list, no body outside its schema (SSE
events and their JSON included). On the fake runner, so the jobs it creates finish at
once; bounded in time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dreamforge.config import Settings
from dreamforge.runners.fake import FakeRunner
from tests.conftest import ApiThread, free_port, register_tiny

pytestmark = pytest.mark.slow


def test_the_api_answers_anything_within_its_schema(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Small images only: the OpenAI and A1111 routes answer when their job is done, and a
    # generated `n: 99` at 1024x1024 could outlast the request timeout on a busy machine.
    config = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "data", port=free_port(), sse_ping_s=1.0, max_width=256, max_height=256
    )
    register_tiny(config.resolved_database_url, tiny_model_dir)
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    with ApiThread(config, run_worker=True, runner=FakeRunner()) as api:
        run = subprocess.run(
            [
                st,
                "run",
                f"{api.url}/openapi.json",
                "--max-examples=15",
                "--max-time=45",
                "--request-timeout=10",
                "--generation-deterministic",
                # The artifact key's pattern is narrow on purpose; the generator may
                # give up on it, which is not a finding.
                "--suppress-health-check=filter_too_much",
                "--checks=not_a_server_error,status_code_conformance,"
                "content_type_conformance,response_schema_conformance",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout

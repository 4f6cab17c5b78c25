"""The distributed profile, measured in one run.

(a) 20 tiny jobs (64x64, 4 steps) through `dreamforge api` + one `dreamforge worker`, on
    PostgreSQL, Redis and SeaweedFS, one at a time (submit, wait on SSE, fetch the image),
    against the same 20 through a bare diffusers loop. Target: ratio >= 0.85.
(b) 1,000 job creations from 20 concurrent clients against `dreamforge api --workers 2` on
    PostgreSQL (no worker runs, so only creation is measured; the clients share the same two
    cores). Target: p99 < 100 ms on 2 cores.

Needs PostgreSQL and Redis on 127.0.0.1 (as CI has them); starts SeaweedFS itself.
"""

from __future__ import annotations

import signal
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from bench.common import BarePipeline, compare
from dreamforge.config import Settings
from dreamforge.models.registry import TINY_DEFAULTS, ModelRegistry
from dreamforge.models.tiny import write_tiny_sdxl
from dreamforge.store.db import Database
from dreamforge.store.models import ModelRepository
from tests.processes import Serve, Worker
from tests.services import SeaweedFS

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/0"
JOBS = 20
ROUNDS = 4
CREATIONS = 1000
CLIENTS = 20
# One API process per core, as a deployment on this 2-core machine would run it.
API_PROCESSES = 2


@contextmanager
def stack(
    root: Path, with_worker: bool, api_workers: int = 1
) -> Iterator[tuple[str, Path, list[int]]]:
    """API (+ worker) processes on a fresh database, Redis namespace and bucket; yields
    the API's URL, the model's folder and the processes' ids."""
    run = uuid.uuid4().hex[:8]
    name = f"dreamforge_bench_{run}"
    admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    (root / "s3").mkdir(parents=True)
    s3 = SeaweedFS(root / "s3")
    s3.start()
    settings = Settings(
        data_dir=root / "data",
        database_url=f"{POSTGRES}/{name}",
        broker_url=REDIS,
        redis_namespace=f"dreamforge-bench-{run}",
        storage_url=f"s3://bench-{run}/artifacts",
        s3_endpoint_url=s3.endpoint,
        s3_access_key_id=SeaweedFS.ACCESS_KEY,
        s3_secret_access_key=SeaweedFS.SECRET_KEY,
    )
    model_dir = write_tiny_sdxl(root / "models" / "tiny-sdxl")
    db = Database(settings.resolved_database_url)
    db.upgrade()
    ModelRegistry(ModelRepository(db)).register_local(
        "tiny-sdxl", model_dir, source="builtin:tiny-sdxl", defaults=TINY_DEFAULTS
    )
    db.dispose()
    api = Serve(settings.data_dir, root / "api.log", command="api", settings=settings)
    api.args += ["--workers", str(api_workers)]
    worker = Worker(settings, root / "worker.log") if with_worker else None
    try:
        if worker:
            worker.start()
        api.start()
        processes = [api.process, worker.process if worker else None]
        yield api.url, model_dir, [p.pid for p in processes if p is not None]
    finally:
        api.signal(signal.SIGTERM)
        if worker:
            worker.signal(signal.SIGTERM)
        s3.stop()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def throughput(root: Path) -> float:
    with (
        stack(root, with_worker=True) as (url, model_dir, _),
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        service_s, bare_s = compare(client, BarePipeline(model_dir), JOBS, ROUNDS)
    print(f"(a) {JOBS} jobs each way: service {JOBS / service_s:.3f}/s, bare {JOBS / bare_s:.3f}/s")
    return (JOBS / service_s) / (JOBS / bare_s)


def creations(root: Path) -> tuple[float, float, float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client_loop(url: str, count: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            mine = []
            for i in range(count):
                started = time.perf_counter()
                client.post("/v1/jobs", json={"prompt": f"bench {i}"}).raise_for_status()
                mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    with stack(root, with_worker=False, api_workers=API_PROCESSES) as (url, _, _):
        with httpx.Client(base_url=url) as warm:
            for _ in range(20):
                warm.post("/v1/jobs", json={"prompt": "warm up"}).raise_for_status()
        threads = [
            threading.Thread(target=client_loop, args=(url, CREATIONS // CLIENTS))
            for _ in range(CLIENTS)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, quantiles[49] * 1000, quantiles[98] * 1000


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dreamforge-bench-") as tmp:
        ratio = throughput(Path(tmp) / "a")
        rate, p50, p99 = creations(Path(tmp) / "b")
    print(f"(b) {CREATIONS} creations from {CLIENTS} clients, {API_PROCESSES} API processes")
    print(f"ratio: {ratio:.3f}")
    print(f"creations_per_s: {rate:.1f}")
    print(f"create_p50_ms: {p50:.1f}")
    print(f"create_p99_ms: {p99:.1f}")


if __name__ == "__main__":
    main()

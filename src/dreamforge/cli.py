"""The ``dreamforge`` command line."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import tempfile
import threading
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import structlog
import typer
import uvicorn
from rich.console import Console
from rich.table import Table
from uvicorn.config import STARTUP_FAILURE

from dreamforge import logs
from dreamforge.cli_remote import generate, id_column, jobs_app
from dreamforge.config import Settings, SettingsNotValid, read_settings
from dreamforge.queue.broker import GPU_QUEUE, IO_QUEUE, REMOTE_QUEUE

if TYPE_CHECKING:
    from fastapi import FastAPI

    from dreamforge.models.registry import ModelRegistry
    from dreamforge.runtime import Runtime
    from dreamforge.services.access import AccessService
    from dreamforge.services.dead_letters import DeadLetterQueue

app = typer.Typer(help="Dream Forge: an API-first render fabric for SDXL.", no_args_is_help=True)
model_app = typer.Typer(help="Manage the model registry.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the database schema.", no_args_is_help=True)
dlq_app = typer.Typer(
    help="The dead-letter queue: jobs that failed after using up their retries.",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")
app.add_typer(db_app, name="db")
key_app = typer.Typer(
    help="API keys: who may call the API, for which tenant.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")
app.add_typer(key_app, name="key")
receipt_app = typer.Typer(
    help="What made an image, and whether it is untouched.", no_args_is_help=True
)
app.add_typer(receipt_app, name="receipt")
webhook_app = typer.Typer(help="Webhooks: what receivers need.", no_args_is_help=True)
app.add_typer(webhook_app, name="webhook")
app.command()(generate)
app.add_typer(jobs_app, name="jobs")

InsecureNoAuth = Annotated[
    bool,
    typer.Option(
        "--insecure-no-auth",
        help="Serve beyond loopback without API keys: anyone who reaches the port may "
        "use every route.",
    ),
]
console = Console()

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Default: $DREAMFORGE_DATA_DIR or ./data")
]


def _settings(data_dir: Path | None = None, **overrides: object) -> Settings:
    """The settings, from the environment and ``overrides``; settings that are not valid
    are said, a line each, and the command exits (2) before anything starts."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        return read_settings(**values)
    except SettingsNotValid as exc:
        console.print("[red]error:[/] the settings are not valid:")
        for line in exc.lines:
            console.print(f"  {line}", markup=False)
        raise typer.Exit(2) from None


def _configure_logging() -> None:
    logs.configure(_settings().log_format)


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Default: 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="Default: 8000")] = None,
    insecure_no_auth: InsecureNoAuth = False,
) -> None:
    """Run everything in one process: API, worker, SQLite and local files."""
    _configure_logging()
    settings = _settings(data_dir, host=host, port=port)
    sock = _listen(settings)
    _start_fork_server()
    from dreamforge.api.app import create_app
    from dreamforge.runtime import Runtime

    runtime = Runtime.build(settings)
    runtime.prepare()
    _check_access(runtime, settings, insecure_no_auth)
    url = f"http://{settings.host}:{settings.port}"
    console.print(
        f"[bold green]Dream Forge[/] is starting at [link={url}/]{url}/[/link] (the console; "
        f"API docs: {url}/docs, data: {settings.data_dir.resolve()})"
    )
    _warn_if_links_point_nowhere(settings)
    _serve(create_app(runtime, run_worker=True), sock, settings)


def _start_fork_server() -> None:
    """The pipeline process's imports (torch and the rest, seconds), begun before this
    process's own rather than after them: the first image comes sooner (see
    docs/benchmarks.md), and a server with no model to preload has them done before its
    first job."""
    from dreamforge.runners.process import start_fork_server

    start_fork_server()


def _listen(settings: Settings) -> socket.socket:
    """The server's socket, bound before anything else starts: a port in use is said at
    once, not in one of uvicorn's log lines once the worker and its model are up."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        return socket.create_server((settings.host, settings.port), family=family)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        console.print(
            f"[red]error:[/] cannot listen on {settings.host}:{settings.port} ({why}): stop "
            "what uses it, or choose another port (--port, DREAMFORGE_PORT)"
        )
        raise typer.Exit(1) from exc


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "log_level": "info",
        "log_config": None,  # logging is ours (dreamforge.logs): one format for every line
        "timeout_graceful_shutdown": 10,
        "proxy_headers": settings.trust_forwarded_headers,
    }


def _serve(app: FastAPI, sock: socket.socket, settings: Settings) -> None:
    """uvicorn on ``sock``, in this process; exits as ``uvicorn.run`` does when it could
    not start."""
    server = uvicorn.Server(uvicorn.Config(app, **_uvicorn_options(settings)))
    host, port = sock.getsockname()[:2]
    # uvicorn says where it listens only of sockets it bound itself.
    structlog.get_logger(__name__).info("server.listening", host=host, port=port)
    server.run(sockets=[sock])
    if not server.started:
        raise typer.Exit(STARTUP_FAILURE)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


def _check_access(runtime: Runtime, settings: Settings, insecure_no_auth: bool) -> None:
    """Secure by default: no API keys is fine on loopback only."""
    if not runtime.access.is_open():
        console.print("API keys are required (Authorization: Bearer …)")
        return
    if _is_loopback(settings.host):
        console.print(
            "[yellow]open:[/] no API keys, so anyone on this machine may use the API; "
            "`dreamforge key create` makes the first and turns keys on"
        )
        return
    if insecure_no_auth:
        console.print(
            f"[red]insecure:[/] serving {settings.host} with no API keys "
            "(--insecure-no-auth): anyone who reaches the port may use every route"
        )
        return
    runtime.stop()
    console.print(
        f"[red]error:[/] refusing to serve {settings.host} without API keys: create one with "
        "`dreamforge key create --tenant NAME`, serve on 127.0.0.1, or pass --insecure-no-auth"
    )
    raise typer.Exit(1)


def _warn_if_links_point_nowhere(settings: Settings) -> None:
    if settings.host in ("0.0.0.0", "::") and not (
        settings.public_url or settings.trust_forwarded_headers
    ):
        console.print(
            f"[yellow]warning:[/] serving on all interfaces, but links will say "
            f"http://{settings.host}:{settings.port}; set DREAMFORGE_PUBLIC_URL to the address "
            "clients use"
        )


@app.command()
def api(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Default: 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="Default: 8000")] = None,
    workers: Annotated[int, typer.Option(min=1, help="API processes on this port")] = 1,
    insecure_no_auth: InsecureNoAuth = False,
) -> None:
    """Serve the API only; `dreamforge worker` processes run the jobs (distributed)."""
    from dreamforge.api.app import create_app
    from dreamforge.runtime import Runtime

    _configure_logging()
    settings = _settings(data_dir, host=host, port=port)
    sock = _listen(settings)
    runtime = Runtime.build(settings)
    runtime.prepare()
    _check_access(runtime, settings, insecure_no_auth)
    console.print(f"[bold green]Dream Forge API[/] at http://{settings.host}:{settings.port}")
    _warn_if_links_point_nowhere(settings)
    if workers == 1:
        _serve(create_app(runtime), sock, settings)
        return
    sock.close()  # uvicorn's supervisor binds the port for its processes
    runtime.stop()
    # Each API process counts in files of its own here, and a scrape of any adds them up.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dreamforge-metrics-")
    # Each API process builds its own runtime from the environment: hand it these options.
    if data_dir is not None:
        os.environ["DREAMFORGE_DATA_DIR"] = str(data_dir)
    uvicorn.run(
        "dreamforge.api.asgi:create",
        factory=True,
        workers=workers,
        host=settings.host,
        port=settings.port,
        **_uvicorn_options(settings),
    )


class Queue(StrEnum):
    gpu = GPU_QUEUE
    io = IO_QUEUE
    remote = REMOTE_QUEUE


@app.command()
def worker(
    queues: Annotated[
        list[Queue], typer.Option("--queues", "-q", help="Queues to consume (repeatable)")
    ] = [Queue.gpu],  # noqa: B006 - Typer reads the default, nothing mutates it
    data_dir: DataDir = None,
) -> None:
    """Run jobs from the broker until SIGTERM (distributed profile)."""
    chosen = {q.value for q in queues}
    settings = _settings(data_dir)  # settings that are not valid stop it before anything starts
    if GPU_QUEUE in chosen:
        _start_fork_server()
    from dreamforge.runtime import Runtime

    logs.configure(settings.log_format)
    runtime = Runtime.build(settings, serves_streams=False)
    runtime.db.upgrade()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runtime.start_worker(chosen)
    console.print(f"[bold green]Dream Forge worker[/] {runtime.worker_id} on {sorted(chosen)}")
    _serve_worker_metrics(runtime, settings.worker_metrics_port)
    stop.wait()
    runtime.stop()


def _serve_worker_metrics(runtime: Runtime, port: int) -> None:
    """A worker's own /metrics, on a port of its own (it serves no API)."""
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, registry=runtime.metrics)
    except OSError as exc:  # another worker on this machine has it: run on without
        console.print(f"[yellow]warning:[/] no /metrics on port {port}: {exc}")
        return
    console.print(f"metrics at http://0.0.0.0:{port}/metrics")


@app.command()
def check(data_dir: DataDir = None) -> None:
    """Check that the database, the broker and the storage answer (exit 1 if not)."""
    from dreamforge.runtime import Runtime

    runtime = Runtime.build(_settings(data_dir), serves_streams=False)
    failed = False
    for name, probe in runtime.readiness_probes().items():
        try:
            probe()
        except Exception as exc:  # noqa: BLE001 - each failure is reported, not raised
            console.print(f"{name}: [red]{exc}[/]")
            failed = True
        else:
            console.print(f"{name}: [green]ok[/]")
    runtime.stop()
    raise typer.Exit(1 if failed else 0)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply every pending migration."""
    from dreamforge.store.db import Database

    settings = _settings(data_dir)
    Database(settings.resolved_database_url).upgrade()
    console.print("database is up to date")


@model_app.command("create-tiny")
def model_create_tiny(
    model_id: Annotated[str, typer.Option("--id", help="Registry id")] = "tiny-sdxl",
    data_dir: DataDir = None,
) -> None:
    """Build a tiny random-weight SDXL pipeline (for tests and demos) and register it."""
    from dreamforge.models.registry import ModelRegistry, create_tiny_model
    from dreamforge.store.db import Database
    from dreamforge.store.models import ModelRepository

    settings = _settings(data_dir)
    db = Database(settings.resolved_database_url)
    db.upgrade()
    model = create_tiny_model(ModelRegistry(ModelRepository(db)), settings.models_dir, model_id)
    console.print(
        f"registered [bold]{model.id}[/] ({model.size_bytes / 1e6:.1f} MB, "
        f"sha256 {model.sha256[:12]}…) at {model.path}"
    )


def _registry(data_dir: Path | None) -> tuple[Settings, ModelRegistry]:
    from dreamforge.models.registry import ModelRegistry
    from dreamforge.store.db import Database
    from dreamforge.store.models import ModelRepository

    settings = _settings(data_dir)
    db = Database(settings.resolved_database_url)
    db.upgrade()
    return settings, ModelRegistry(ModelRepository(db))


def _refused(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/] {exc}")
    return typer.Exit(1)


@model_app.command("add")
def model_add(
    path: Annotated[Path, typer.Argument(help="A diffusers folder or a .safetensors file")],
    model_id: Annotated[str | None, typer.Option("--id", help="Default: from the name")] = None,
    link: Annotated[bool, typer.Option(help="Link to the files instead of copying")] = False,
    data_dir: DataDir = None,
) -> None:
    """Register a local SDXL model: checked, copied into the models dir, hashed."""
    from dreamforge.models.formats import UnsupportedModel

    settings, registry = _registry(data_dir)
    try:
        model = registry.add(
            path, settings.models_dir, model_id, link, settings.allow_pickled_weights
        )
    except UnsupportedModel as exc:
        raise _refused(exc) from exc
    console.print(
        f"registered [bold]{model.id}[/] ({model.base}, {model.format}, "
        f"{model.size_bytes / 1e6:.1f} MB, sha256 {model.sha256[:12]}…) at {model.path}"
    )


@model_app.command("add-remote")
def model_add_remote(
    model_id: Annotated[str, typer.Argument(help="The id jobs will name")],
    source: Annotated[
        str,
        typer.Argument(
            help="replicate:OWNER/NAME[:VERSION], e.g. replicate:stability-ai/sdxl:7762fd07…"
        ),
    ],
    data_dir: DataDir = None,
) -> None:
    """Register a model that a hosted API renders; its jobs go to `worker --queues remote`
    (REPLICATE_API_TOKEN set there)."""
    from dreamforge.models.formats import UnsupportedModel

    _, registry = _registry(data_dir)
    try:
        model = registry.register_remote(model_id, source)
    except UnsupportedModel as exc:
        raise _refused(exc) from exc
    console.print(f"registered [bold]{model.id}[/], rendered by {model.source}")


@model_app.command("pull")
def model_pull(
    source: Annotated[
        str,
        typer.Argument(
            help="hf:ORG/REPO[@REV], hf:ORG/REPO/path/file.safetensors, civitai:VERSION_ID, "
            "a civitai.com model URL, an AIR URN or an https:// URL"
        ),
    ],
    model_id: Annotated[str | None, typer.Option("--id", help="Default: from the name")] = None,
    data_dir: DataDir = None,
) -> None:
    """Download a model, verify every file's hash, and register it (resumes if interrupted)."""
    import httpx
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from dreamforge.models.fetch import DownloadError
    from dreamforge.models.formats import UnsupportedModel
    from dreamforge.models.pull import ModelPuller, PullSettings
    from dreamforge.models.sources import BadSource

    settings, registry = _registry(data_dir)
    pull_settings = PullSettings.of(settings)
    with (
        httpx.Client(timeout=60, follow_redirects=False) as client,
        Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn()) as bar,
    ):
        task = bar.add_task(source, total=None)
        try:
            model = ModelPuller(registry, pull_settings, client).pull(
                source, model_id, lambda done, total: bar.update(task, completed=done, total=total)
            )
        except (BadSource, DownloadError, UnsupportedModel) as exc:
            raise _refused(exc) from exc
    console.print(
        f"registered [bold]{model.id}[/] from {model.source} ({model.base}, {model.format}, "
        f"{model.size_bytes / 1e6:.1f} MB, sha256 {model.sha256[:12]}…)"
    )


@model_app.command("list")
def model_list(data_dir: DataDir = None) -> None:
    """Show the registered models."""
    _, registry = _registry(data_dir)
    table = Table(id_column("id"), "status", "architecture", "format", "size", "sha256", "source")
    for model in registry.list():
        table.add_row(
            model.id,
            model.status,
            model.base,
            model.format,
            f"{model.size_bytes / 1e6:.1f} MB",
            model.sha256[:12],
            model.source,
        )
    console.print(table)


@model_app.command("show")
def model_show(model_id: str, data_dir: DataDir = None) -> None:
    """Everything the registry knows of one model, files and hashes included."""
    _, registry = _registry(data_dir)
    model = registry.get(model_id)
    if model is None:
        raise _refused(ValueError(f"no model {model_id!r} is registered"))
    for name in ("id", "status", "base", "format", "source", "revision", "path", "sha256"):
        console.print(f"{name}: {getattr(model, name)}", soft_wrap=True)
    console.print(f"defaults: {model.defaults.model_dump(mode='json')}")
    console.print(f"provenance: {model.provenance}")
    console.print("files:")
    for file in model.files:  # whole hashes, unwrapped: people copy them
        console.print(
            f"  {file.path}  {file.size_bytes:,} bytes  sha256 {file.sha256}", soft_wrap=True
        )


@model_app.command("verify")
def model_verify(model_id: str, data_dir: DataDir = None) -> None:
    """Hash the model's files again against the registry (exit 1 if any differs)."""
    from dreamforge.models.formats import UnsupportedModel

    _, registry = _registry(data_dir)
    try:
        result = registry.verify(model_id)
    except UnsupportedModel as exc:
        raise _refused(exc) from exc
    for problem in result.problems:
        console.print(f"[red]{problem}[/]")
    console.print(f"{model_id}: {result.model.status}")
    raise typer.Exit(0 if result.model.status == "ready" else 1)


@model_app.command("remove")
def model_remove(model_id: str, data_dir: DataDir = None) -> None:
    """Forget a model and delete its copied files (a linked model's files stay)."""
    from dreamforge.models.formats import UnsupportedModel

    settings, registry = _registry(data_dir)
    try:
        registry.remove(model_id, settings.models_dir)
    except UnsupportedModel as exc:
        raise _refused(exc) from exc
    console.print(f"removed {model_id}")


def _dead_letters(data_dir: Path | None) -> tuple[Settings, DeadLetterQueue]:
    from dreamforge.runtime import Runtime

    settings = _settings(data_dir)
    runtime = Runtime.build(settings, serves_streams=False)
    runtime.db.upgrade()
    return settings, runtime.dead_letters


@dlq_app.command("list")
def dlq_list(data_dir: DataDir = None) -> None:
    """Show the jobs in the dead-letter queue, newest first."""
    _, dead_letters = _dead_letters(data_dir)
    table = Table(id_column("job"), "failed", "attempts", "code", "error")
    for job in dead_letters.list():
        assert job.error is not None and job.dead_lettered_at is not None
        table.add_row(
            job.id,
            job.dead_lettered_at.isoformat(timespec="seconds"),
            str(job.attempts),
            job.error.code,
            job.error.message,
        )
    console.print(table)


@dlq_app.command("retry")
def dlq_retry(job_id: str, data_dir: DataDir = None) -> None:
    """Send a dead-lettered job back to the queue for one more attempt."""
    from dreamforge.domain.errors import DreamForgeError

    settings, dead_letters = _dead_letters(data_dir)
    try:
        dead_letters.retry(job_id)
    except DreamForgeError as exc:
        raise _refused(exc) from exc
    console.print(f"{job_id} is queued again")
    if settings.broker_url.startswith("memory://"):
        console.print(
            "[yellow]note:[/] the embedded profile's queue lives in `dreamforge serve`: it "
            "takes the job when it next starts (or use POST /v1/admin/dlq/{id}/retry on it)"
        )


@dlq_app.command("purge")
def dlq_purge(data_dir: DataDir = None) -> None:
    """Empty the dead-letter queue; its jobs stay failed."""
    _, dead_letters = _dead_letters(data_dir)
    console.print(f"{dead_letters.purge()} job(s) taken out of the dead-letter queue")


def _access(data_dir: Path | None) -> AccessService:
    from dreamforge.services.access import AccessService
    from dreamforge.store.db import Database
    from dreamforge.store.keys import KeyRepository

    db = Database(_settings(data_dir).resolved_database_url)
    db.upgrade()
    return AccessService(KeyRepository(db))


@key_app.command("create")
def key_create(
    tenant: Annotated[str, typer.Option(help="Whose jobs the key sees and makes")],
    scopes: Annotated[
        str,
        typer.Option(help="Comma-separated: jobs:write, jobs:read, models:admin, admin"),
    ] = "jobs:write,jobs:read",
    data_dir: DataDir = None,
) -> None:
    """Make an API key; it is printed once and only its hash is kept."""
    from dreamforge.domain.access import TENANT_PATTERN, Scope

    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise _refused(ValueError(f"tenant {tenant!r}: use a-z, 0-9, '.', '_', '-' (63 at most)"))
    try:
        chosen = frozenset(Scope(s.strip()) for s in scopes.split(",") if s.strip())
    except ValueError as exc:
        known = ", ".join(s.value for s in Scope)
        raise _refused(ValueError(f"{exc}; the scopes are {known}")) from exc
    issued = _access(data_dir).create(tenant, chosen)
    console.print(
        f"key {issued.record.id} for tenant {tenant} "
        f"({', '.join(sorted(s.value for s in chosen))}); it is shown this once:"
    )
    print(issued.key)  # plain: scripts read it


@key_app.command("list")
def key_list(data_dir: DataDir = None) -> None:
    """Show the keys (never the keys themselves: only their ids)."""
    table = Table(id_column("id"), "tenant", "scopes", "created", "revoked")
    for key in _access(data_dir).list():
        table.add_row(
            key.id,
            key.tenant,
            ",".join(sorted(s.value for s in key.scopes)),
            key.created_at.isoformat(timespec="seconds"),
            key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "",
        )
    console.print(table)


@key_app.command("revoke")
def key_revoke(key_id: str, data_dir: DataDir = None) -> None:
    """Stop a key from working (within seconds on a running server)."""
    from dreamforge.domain.errors import DreamForgeError

    try:
        _access(data_dir).revoke(key_id)
    except DreamForgeError as exc:
        raise _refused(exc) from exc
    console.print(f"revoked {key_id}")


@receipt_app.command("verify")
def receipt_verify(
    image: Annotated[Path, typer.Argument(help="A PNG this service made", exists=True)],
    data_dir: DataDir = None,
) -> None:
    """Check an image's seal (made here, unchanged since) and its model against the
    registry, and print what made it. Exit 0 only if both hold."""
    from dreamforge.artifacts.receipts import read_receipt
    from dreamforge.artifacts.seal import SealCheck, Sealer

    settings, registry = _registry(data_dir)
    png = image.read_bytes()
    seal = Sealer(settings.resolved_signing_key).check(png)
    said = {
        SealCheck.VALID: "[green]valid[/]: made by this service, unchanged since",
        SealCheck.ABSENT: "[red]absent[/]: not sealed by Dream Forge",
        SealCheck.BROKEN: "[red]broken[/]: changed since it was made, or made by another "
        "service (another DREAMFORGE_SIGNING_KEY)",
        SealCheck.NOT_PNG: "[red]not a PNG[/]",
    }
    console.print(f"seal: {said[seal]}")
    try:
        receipt = read_receipt(png)
    except Exception:  # noqa: BLE001 - any unreadable receipt is reported the same way
        console.print("receipt: [red]none[/] (no Dream Forge receipt in this image)")
        raise typer.Exit(1) from None
    model = registry.get(receipt.model.id)
    if model is None:
        known = "[red]not registered here[/]"
    elif model.sha256 == receipt.model.sha256:
        known = "[green]matches the registry[/]"
    else:
        known = f"[red]differs from the registry[/] (registered: {model.sha256[:12]})"
    spec = receipt.spec
    console.print(f"model: {receipt.model.id} sha256 {receipt.model.sha256[:12]}: {known}")
    console.print(f"prompt: {spec.prompt}", soft_wrap=True)
    if spec.negative_prompt:
        console.print(f"negative prompt: {spec.negative_prompt}", soft_wrap=True)
    console.print(
        f"seed {receipt.seed}, {spec.steps} steps, {spec.width}x{spec.height}, "
        f"{spec.scheduler.value}, guidance {spec.guidance_scale:g}, item {receipt.item_index} "
        f"of step {receipt.step_index} ({receipt.step_type}), on {receipt.device}/{receipt.dtype}"
    )
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(receipt.versions.items())))
    ok = seal is SealCheck.VALID and model is not None and model.sha256 == receipt.model.sha256
    raise typer.Exit(0 if ok else 1)


@app.command()
def gc(data_dir: DataDir = None) -> None:
    """Delete finished jobs past their retention (DREAMFORGE_RETENTION_DAYS, per tenant
    DREAMFORGE_TENANT_RETENTION_DAYS): images first, then the rows. An io worker does this
    every DREAMFORGE_GC_INTERVAL_S."""
    from dreamforge.runtime import Runtime

    runtime = Runtime.build(_settings(data_dir), serves_streams=False)
    runtime.db.upgrade()
    if runtime.retention.keeps_everything:
        console.print("retention keeps everything (DREAMFORGE_RETENTION_DAYS is 0): nothing to do")
        runtime.stop()
        return
    swept = runtime.retention.sweep()
    runtime.stop()
    console.print(f"deleted {swept.jobs} job(s) and {swept.images} image(s)")
    if swept.failed:
        console.print(f"[red]{swept.failed} job(s) kept[/]: their images could not be deleted")
        raise typer.Exit(1)


@webhook_app.command("secret")
def webhook_secret(data_dir: DataDir = None) -> None:
    """Print the Standard Webhooks secret (whsec_…) receivers verify signatures with."""
    print(_settings(data_dir).resolved_webhook_secret)


if __name__ == "__main__":
    app()

"""The commands that talk to a running server over HTTP, through ``dreamforge.client``:
``generate`` and ``jobs``. They need no database, storage or model of their own."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Column, Table

from dreamforge.client import ApiError, Client, Event, EventType, JobRequest, JobStatus
from dreamforge.domain.events import ArtifactData, DoneData, LogData, ProgressData

jobs_app = typer.Typer(
    help="Jobs on a running server: list, show, logs, cancel.", no_args_is_help=True
)
console = Console()
errors = Console(stderr=True)


def id_column(header: str) -> Column:
    """A column of ids, which users copy into their next command: never cut short, however
    narrow the terminal; the other columns give way."""
    return Column(header, no_wrap=True)


def _local_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('DREAMFORGE_PORT', '8000')}"


Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="DREAMFORGE_URL",
        help="The server. Default: the local one (http://127.0.0.1:$DREAMFORGE_PORT, 8000).",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="DREAMFORGE_API_KEY", help="Needed when the server has keys."),
]


@contextmanager
def _server(url: str | None, api_key: str | None) -> Iterator[Client]:
    """A client of the server; a refusal or no answer ends the command with what to do."""
    where = url or _local_url()
    try:
        with Client(where, api_key, timeout=60) as forge:
            yield forge
    except ApiError as exc:
        errors.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        errors.print(
            f"[red]no Dream Forge answering at {where}[/red] ({exc}); start one with "
            "`scripts/serve`, or say where with --url or DREAMFORGE_URL"
        )
        raise typer.Exit(1) from None


def _size(value: str | None) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    found = re.fullmatch(r"(\d+)x(\d+)", value)
    if not found:
        raise typer.BadParameter("WIDTHxHEIGHT, e.g. 1024x1024", param_hint="--size")
    return int(found[1]), int(found[2])


class ItemBars:
    """One bar per item, moved by the job's events: denoising steps, then stored."""

    def __init__(self, progress: Progress, count: int, steps: int) -> None:
        self._progress = progress
        self._bars: list[TaskID] = [
            progress.add_task(f"image {i}", total=steps, state="waiting") for i in range(count)
        ]

    def show(self, event: Event) -> None:
        data = event.data
        if isinstance(data, ProgressData) and data.step is not None:
            items = data.items or (() if data.item_index is None else (data.item_index,))
            for item in items:
                self._progress.update(self._bars[item], completed=data.step, state="denoising")
        elif isinstance(data, ArtifactData):
            bar = self._bars[data.item_index]
            total = self._progress.tasks[bar].total
            self._progress.update(bar, completed=total, state=f"stored, seed {data.seed}")
        elif isinstance(data, LogData) and data.level in ("warning", "error"):
            self._progress.console.print(f"[yellow]{data.level}:[/yellow] {data.message}")


def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many images.")] = 1,
    size: Annotated[
        str | None, typer.Option("--size", help="WIDTHxHEIGHT; default: the model's.")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Denoising steps.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="The first image's.")] = None,
    negative: Annotated[str, typer.Option("--negative", help="What to avoid.")] = "",
    model: Annotated[
        str | None, typer.Option("--model", help="A model id; default: the server's.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Where the images go.")] = Path("out"),
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Make images on a running server, following each one's progress, and save them
    (receipts inside). Ctrl-C cancels the job."""
    width, height = _size(size)
    chosen = {"width": width, "height": height, "steps": steps, "seed": seed, "model_id": model}
    request = JobRequest(
        prompt=prompt,
        negative_prompt=negative,
        count=count,
        **{name: value for name, value in chosen.items() if value is not None},
    )
    job_id = None
    try:
        with _server(url, api_key) as forge:
            job = forge.submit(request)
            job_id = job.id
            console.print(
                f"job [bold]{job.id}[/bold]: {count} x {job.spec.width}x"
                f"{job.spec.height}, {job.spec.steps} steps, model {job.spec.model_id}"
            )
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[state]}"),
            )
            with Progress(*columns, console=console) as progress:
                bars = ItemBars(progress, count, job.spec.steps)
                for event in forge.events(job.id):
                    bars.show(event)
            done = event.data
            assert isinstance(done, DoneData)
            if done.status is not JobStatus.SUCCEEDED:
                why = f": {done.error.code} {done.error.message}" if done.error else ""
                errors.print(f"[red]job {done.status.value}[/red]{why}")
                raise typer.Exit(1)
            for path in forge.save(job.id, out):
                console.print(f"saved {path}")
    except KeyboardInterrupt:
        if job_id is not None:
            with _server(url, api_key) as again:
                again.cancel(job_id)
            errors.print(f"canceled job {job_id}")
        raise typer.Exit(130) from None


@jobs_app.command("list")
def jobs_list(
    status: Annotated[JobStatus | None, typer.Option("--status", help="Only these.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100)] = 20,
    cursor: Annotated[str | None, typer.Option("--cursor", help="From the last page.")] = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Jobs, newest first."""
    with _server(url, api_key) as forge:
        page = forge.jobs(status, limit, cursor)
    status_column = Column("status", no_wrap=True)  # a word, which a cut would lose
    table = Table(id_column("id"), status_column, "progress", "images", "created", "prompt")
    for job in page.data:
        table.add_row(
            job.id,
            job.status.value,
            f"{job.progress:.0%}",
            str(job.spec.count),
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            job.spec.prompt[:40],
        )
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}")


@jobs_app.command("show")
def jobs_show(job_id: str, url: Url = None, api_key: ApiKey = None) -> None:
    """The job, as JSON."""
    with _server(url, api_key) as forge:
        console.print_json(forge.job(job_id).model_dump_json())


def _log_line(event: Event) -> str:
    data = event.data
    assert isinstance(data, LogData)
    stage = f" [{data.stage}]" if data.stage else ""
    return f"{event.ts:%H:%M:%S} {data.level.value:<7}{stage} {data.message}"


@jobs_app.command("logs")
def jobs_logs(
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Until the job ends.")] = False,
    tail: Annotated[int | None, typer.Option("--tail", min=1, help="Only the last N.")] = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """The job's log; with --follow, new lines as they come, until it ends."""
    with _server(url, api_key) as forge:
        lines = forge.logs(job_id, tail)
        for event in lines:
            console.print(_log_line(event), markup=False, highlight=False)
        if follow:
            last = lines[-1].seq if lines else None
            for event in forge.events(job_id, last_event_id=last):
                if event.type is EventType.LOG:
                    console.print(_log_line(event), markup=False, highlight=False)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, url: Url = None, api_key: ApiKey = None) -> None:
    """Cancel a job: at once if it waits, at the next step if it runs."""
    with _server(url, api_key) as forge:
        job = forge.cancel(job_id)
    console.print(f"job {job.id}: {job.status.value}")

"""Dream Forge from Python: submit jobs, follow them, fetch their images.

Typed with the API's own models, in two flavours with the same methods::

    from dreamforge.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as forge:
        job = forge.submit(prompt="a lighthouse at dawn", count=2)
        for event in forge.events(job.id):  # resumes by itself if the connection drops
            print(event.type, event.data)
        paths = forge.save(job.id, "out/")

``AsyncClient`` is the same with ``async``/``await`` (``async for`` over ``events``).
A refused request raises ``ApiError`` with the server's problem (code, detail, fields).
"""

from dreamforge.api.schemas import ArtifactOut, JobListOut, JobOut, ModelOut
from dreamforge.client.aio import AsyncClient
from dreamforge.client.calls import ApiError, Event
from dreamforge.client.sync import Client
from dreamforge.domain.events import EventType
from dreamforge.domain.jobs import JobRequest, JobStatus

__all__ = [
    "ApiError",
    "ArtifactOut",
    "AsyncClient",
    "Client",
    "Event",
    "EventType",
    "JobListOut",
    "JobOut",
    "JobRequest",
    "JobStatus",
    "ModelOut",
]

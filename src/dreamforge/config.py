"""The one settings object. Nothing else in Dream Forge reads ``os.environ``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from dreamforge.domain.quotas import Quota
from dreamforge.domain.retries import RetryPolicy
from dreamforge.runners.compile_options import CompileScope, CompileWhen


class Settings(BaseSettings):
    """Every knob, read from ``DREAMFORGE_*`` environment variables (12-factor).

    The three URLs choose the profile: SQLite + in-memory broker + local files is the
    embedded profile; PostgreSQL + Redis + S3 is the distributed one.
    """

    model_config = SettingsConfigDict(env_prefix="DREAMFORGE_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where the embedded profile keeps its files.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite in data_dir."
    )
    broker_url: str = Field("memory://", description="memory:// (in-process) or redis://…")
    storage_url: str | None = Field(None, description="file://… or s3://bucket; default: data_dir.")

    s3_endpoint_url: str | None = Field(None, description="S3 API endpoint; AWS when unset.")
    s3_public_endpoint_url: str | None = Field(
        None,
        description="Endpoint in the presigned URLs given to clients, if they reach S3 "
        "by another address than the workers do.",
    )
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"

    redis_namespace: str = Field("dreamforge", description="Prefix of every Redis key and channel.")
    reaper_interval_s: float = Field(10.0, gt=0, description="How often lost jobs are looked for.")
    requeue_after_s: float = Field(
        60.0, gt=0, description="A queued job nobody claimed for this long is sent again."
    )

    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        None,
        description="Base URL of the links the API returns; default http://HOST:PORT. Set it "
        "when clients reach the API by another address (a proxy, another host name).",
    )
    trust_forwarded_headers: bool = Field(
        False,
        description="Build links from the request's Host and X-Forwarded-* headers, as a "
        "proxy in front sets them; only behind a proxy that overwrites them.",
    )

    default_model_id: str = "tiny-sdxl"
    create_default_model: bool = Field(
        True,
        description="Build the tiny demo model at start when the default model is missing "
        "(it needs torch: off for the API's own image, and where models are managed).",
    )
    hf_endpoint: str = Field(
        "https://huggingface.co",
        validation_alias=AliasChoices("HF_ENDPOINT", "hf_endpoint"),
        description="The Hugging Face Hub, or a mirror (HF_ENDPOINT, as huggingface_hub).",
    )
    hf_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("HF_TOKEN", "hf_token"), description="Hub token."
    )
    civitai_endpoint: str = Field("https://civitai.com", description="CivitAI, or a mirror.")
    civitai_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("CIVITAI_TOKEN", "civitai_token"),
        description="CivitAI API token.",
    )
    download_hosts: list[str] = Field(
        [
            "huggingface.co",
            "*.huggingface.co",
            "*.hf.co",
            "civitai.com",
            "*.civitai.com",
            "*.r2.cloudflarestorage.com",
        ],
        description="Hosts models may be downloaded from, redirects included (shell-style "
        "patterns); the hosts of hf_endpoint and civitai_endpoint are always allowed.",
    )
    max_download_bytes: int = Field(64 * 2**30, gt=0, description="Largest file to download.")
    allow_pickled_weights: bool = Field(
        False,
        description="Accept .ckpt/.pt/.bin weights, which can run code when loaded; only "
        "for sources you trust.",
    )
    max_width: int = Field(2048, ge=64)
    max_height: int = Field(2048, ge=64)
    max_steps: int = Field(150, ge=1)
    max_output_side: int = Field(
        4096, ge=64, description="The largest side a chain (upscale) may make, in pixels."
    )
    upscale_tile_px: int = Field(
        512,
        ge=32,
        description="Upscalers run over tiles of this size, so that a large image fits the "
        "device; smaller tiles use less memory.",
    )

    signing_key: SecretStr | None = Field(None, description="HMAC key for artifact URLs.")
    artifact_url_ttl_s: int = Field(3600, ge=1)

    idempotency_key_ttl_s: float = Field(
        24 * 3600, gt=0, description="How long an Idempotency-Key keeps pointing at its job."
    )
    lease_s: float = Field(30.0, gt=0, description="How long a worker's claim on a job lasts.")
    heartbeat_s: float = Field(5.0, gt=0, description="How often a worker renews its claim.")
    resident_models_bytes: int = Field(
        0,
        ge=0,
        description="Memory for pipelines kept loaded between jobs, least recently used "
        "unloaded first; 0: 70% of the GPU, or a quarter of the memory on a CPU.",
    )
    batch_across_jobs: bool = Field(
        True,
        description="Denoise queued jobs of the same model, size, steps, sampler and "
        "guidance together, up to DREAMFORGE_MAX_BATCH_SIZE items (a job may opt out).",
    )
    batch_window_s: float = Field(
        0.0,
        ge=0,
        le=10,
        description="How long after a job was queued a worker may wait for jobs to batch "
        "with it; a full batch starts at once. 0: it takes what is queued now. No job waits "
        "longer than this for a batch; a lone job waits all of it.",
    )
    compile_unet: CompileWhen = Field(
        "auto",
        description="Compile the UNet (see compile_scope) in the background; the first "
        "images of a shape render eagerly meanwhile. auto: on CUDA only; CPU and MPS stay "
        "eager.",
    )
    compile_scope: CompileScope = Field(
        "regions",
        description="What is compiled. regions: each transformer block, compiled once and "
        "reused (seconds to compile); unet: the whole UNet as one graph (minutes to "
        "compile, in the background; fewer kernel launches).",
    )
    compile_vae: bool = Field(
        False,
        description="Compile the VAE's decoder too, with the UNet (when compile_unet is on).",
    )
    compile_cache_dir: Path | None = Field(
        None,
        description="Where compiled artifacts are kept across restarts; default: "
        "<data dir>/compile-cache.",
    )
    device_memory_tolerance_bytes: int = Field(
        128 * 2**20,
        ge=0,
        description="How far above its loaded models' baseline a runner's device memory may "
        "stay after a job; above it, the runner process is recycled.",
    )
    max_batch_size: int = Field(
        4,
        ge=1,
        le=100,
        description="Items of a job rendered together on the device, at most; a micro-batch "
        "that runs out of memory is split in two.",
    )
    progress_persist_s: float = Field(
        0.5,
        ge=0,
        description="How often a running job's progress is written to the database; "
        "followers get it live.",
    )
    progress_interval_s: float = Field(
        0.1,
        ge=0,
        description="The shortest time between two live progress events of a job: steps "
        "that finish sooner are reported by the next one (the first and last step of a "
        "micro-batch always are). A stage change waits as long (0.1 s if this is longer) "
        "to be written with the worker's next event, and always before it; 0.3 s at most "
        "while the local renderer is silent (a remote job's: up to its poll interval). 0 "
        "reports every step and writes every stage change at once.",
    )
    retry_max_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="Attempts a job gets against transient failures (storage, database, a "
        "crashed pipeline process, a lost worker) before it fails into the dead-letter queue.",
    )
    retry_backoff_s: float = Field(
        2.0, ge=0, description="Wait before the first retry; it doubles with each one."
    )
    retry_max_backoff_s: float = Field(60.0, ge=0, description="The longest wait between retries.")
    worker_metrics_port: int = Field(
        9464,
        ge=0,
        le=65535,
        description="Where `dreamforge worker` serves its Prometheus /metrics; 0: nowhere. "
        "The API serves its own at /metrics.",
    )
    quota_queued_jobs: int = Field(
        0, ge=0, description="Jobs a tenant may have waiting in the queue at once; 0: no limit."
    )
    quota_running_jobs: int = Field(
        0,
        ge=0,
        description="Jobs of a tenant that render at once; more wait in the queue. 0: no limit.",
    )
    quota_images_per_day: int = Field(
        0, ge=0, description="Images a tenant may ask for per UTC day; 0: no limit."
    )
    tenant_quotas: dict[
        str, dict[Literal["queued_jobs", "running_jobs", "images_per_day"], int]
    ] = Field(
        {},
        description="Per-tenant quotas instead of the defaults, e.g. "
        '{"acme": {"images_per_day": 10000}}.',
    )
    retention_days: float = Field(
        0,
        ge=0,
        description="Days a finished job, its images and its log are kept; 0 keeps them "
        "for good. Dead-lettered jobs are kept until they leave the queue.",
    )
    tenant_retention_days: dict[str, float] = Field(
        {}, description='Per-tenant retention instead of the default, e.g. {"acme": 30}.'
    )
    gc_interval_s: float = Field(
        3600, gt=0, description="How often an io worker deletes what retention expired."
    )
    webhook_hosts: list[str] = Field(
        [],
        description="Hosts a job's webhook_url may name (patterns like *.example.com); "
        "none by default, which turns webhooks off.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="The Standard Webhooks secret (whsec_…) receivers check signatures "
        "with; default: derived from the signing key (`dreamforge webhook secret`).",
    )
    webhook_max_attempts: int = Field(
        5, ge=1, le=20, description="Deliveries tried per webhook, with growing waits."
    )
    replicate_api_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("REPLICATE_API_TOKEN", "replicate_api_token"),
        description="Turns on rendering through Replicate for models registered with "
        "`dreamforge model add-remote` (REPLICATE_API_TOKEN, as Replicate's own tools).",
    )
    replicate_endpoint: str = Field(
        "https://api.replicate.com", description="Replicate's API, or a stand-in for tests."
    )
    remote_poll_s: float = Field(
        1.0, gt=0, description="How often a remote prediction's state is asked for."
    )
    cors_origins: list[str] = Field(
        [],
        description="Origins whose web pages may call the API (CORS), e.g. "
        '["https://app.example.com"]; none by default.',
    )
    log_format: Literal["console", "json"] = Field(
        "console", description="console: a line for people; json: an object a line."
    )
    sse_ping_s: float = Field(15.0, gt=0, description="Heartbeat comment interval on SSE.")
    job_time_limit_s: float = Field(
        3600, gt=0, description="How long a job may run unless it asks for another limit."
    )
    max_job_time_limit_s: float = Field(
        6 * 3600, gt=0, description="The longest limit a job may ask for (time_limit_s)."
    )

    @model_validator(mode="after")
    def _agree(self) -> Self:
        """Settings that are valid one by one and not together."""
        renewal = self.heartbeat_s + self.batch_window_s
        if self.lease_s < 2 * renewal:
            raise ValueError(
                f"DREAMFORGE_LEASE_S ({self.lease_s:g}) must be at least twice "
                f"DREAMFORGE_HEARTBEAT_S ({self.heartbeat_s:g}) plus DREAMFORGE_BATCH_WINDOW_S "
                f"({self.batch_window_s:g}): a worker renews its claim on a running job every "
                "heartbeat, the first time once the batch window has passed, and a claim that "
                "lapses before a late renewal goes to another worker. Lengthen the lease or "
                "shorten the others"
            )
        if self.job_time_limit_s > self.max_job_time_limit_s:
            raise ValueError(
                f"DREAMFORGE_JOB_TIME_LIMIT_S ({self.job_time_limit_s:g}), the limit of a job "
                "that asks for none, is longer than DREAMFORGE_MAX_JOB_TIME_LIMIT_S "
                f"({self.max_job_time_limit_s:g}), the longest a job may ask for: shorten the "
                "first or lengthen the second"
            )
        return self

    def __repr_args__(self) -> Any:
        # Settings end up in reprs (a traceback, a debugger): URLs show no password there.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name and name.endswith("_url") else value

    def secrets(self) -> list[str]:
        """Every secret value set here, for checks that none of them leaks."""
        values = [
            self.signing_key,
            self.s3_secret_access_key,
            self.hf_token,
            self.civitai_token,
            self.webhook_secret,
            self.replicate_api_token,
        ]
        found = [v.get_secret_value() for v in values if v is not None]
        for url in (self.database_url, self.broker_url, self.storage_url):
            password = urlsplit(url).password if url else None
            if password:
                found.append(password)
        return found

    def quota_for(self, tenant: str) -> Quota:
        own = self.tenant_quotas.get(tenant, {})
        return Quota(
            queued_jobs=own.get("queued_jobs", self.quota_queued_jobs),
            running_jobs=own.get("running_jobs", self.quota_running_jobs),
            images_per_day=own.get("images_per_day", self.quota_images_per_day),
        )

    @property
    def resolved_compile_cache_dir(self) -> Path:
        return self.compile_cache_dir or Path(self.data_dir) / "compile-cache"

    @property
    def running_limits(self) -> bool:
        """Whether any tenant's running jobs are limited (workers check at claim)."""
        return bool(self.quota_running_jobs) or any(
            q.get("running_jobs") for q in self.tenant_quotas.values()
        )

    @property
    def resolved_webhook_secret(self) -> str:
        if self.webhook_secret is not None:
            return self.webhook_secret.get_secret_value()
        derived = hmac.new(self.resolved_signing_key, b"webhooks", hashlib.sha256).digest()
        return "whsec_" + base64.b64encode(derived[:24]).decode()

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retry_max_attempts, self.retry_backoff_s, self.retry_max_backoff_s)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'dreamforge.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{self.data_dir.resolve() / 'artifacts'}"

    @property
    def allowed_download_hosts(self) -> list[str]:
        endpoints = [urlsplit(u).hostname for u in (self.hf_endpoint, self.civitai_endpoint)]
        return [*self.download_hosts, *(h for h in endpoints if h)]

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @cached_property
    def resolved_signing_key(self) -> bytes:
        """The configured key, else one generated once and kept in the data dir."""
        if self.signing_key:
            return self.signing_key.get_secret_value().encode()
        path = self.data_dir / "signing.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()


class SettingsNotValid(Exception):
    """Settings that are not valid: ``lines``, one a problem, each named by the environment
    variable that sets it (``DREAMFORGE_MAX_BATCH_SIZE='0': …``), for people rather than a
    traceback."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n  ".join(["the settings are not valid:", *lines]))
        self.lines = lines


def read_settings(**values: Any) -> Settings:
    """``Settings`` from the environment and ``values``; raises ``SettingsNotValid``."""
    try:
        return Settings(**values)
    except SettingsError as exc:  # a list or mapping that is not JSON
        raise SettingsNotValid([_not_json(exc)]) from None
    except ValidationError as exc:
        raise SettingsNotValid(_problems(exc)) from None


def _problems(error: ValidationError) -> list[str]:
    variables = _variables()
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        if not problem["loc"]:  # settings that do not agree: the message names them
            lines.append(message)
            continue
        name = str(problem["loc"][0])
        variable, field = variables.get(name, (name, None))
        # A secret, or a URL that may hold a password, is not repeated.
        hidden = field is None or "SecretStr" in str(field.annotation) or name.endswith("_url")
        shown = "" if hidden else f"={problem.get('input')!r}"
        lines.append(f"{variable}{shown}: {message}")
    return lines


def _not_json(error: SettingsError) -> str:
    """A list or mapping setting whose value does not parse; pydantic-settings names the
    field in its message only."""
    named = re.search(r'field "(\w+)"', str(error))
    known = _variables().get(named[1]) if named else None
    variable = known[0] if known else "a setting"
    return (
        f"{variable}: not valid JSON ({error.__cause__ or error}); it takes a JSON list or "
        'object, such as ["a.example.com", "b.example.com"]'
    )


def _variables() -> dict[str, tuple[str, FieldInfo]]:
    """The environment variable of each name a setting goes by, and the setting's field:
    ``DREAMFORGE_`` and the name, or the first of its aliases (HF_TOKEN, as other tools)."""
    found: dict[str, tuple[str, FieldInfo]] = {}
    for name, field in Settings.model_fields.items():
        aliases = field.validation_alias
        names = [str(a) for a in aliases.choices] if isinstance(aliases, AliasChoices) else []
        variable = names[0] if names else f"DREAMFORGE_{name.upper()}"
        found |= {known: (variable, field) for known in [name, *names]}
    return found


def redact_url(value: Any) -> Any:
    """``value`` with the password of a URL replaced by ``***``; anything else as it is."""
    if not isinstance(value, str):
        return value
    parts = urlsplit(value)
    if not parts.password:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()

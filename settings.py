"""The one settings object: every knob inboxsync has, read from the environment.

Nothing else in the code base reads ``os.environ``. With no variable set, inboxsync runs on the
embedded default: a SQLite store and a SQLite-backed broker under ``INBOXSYNC_DATA_DIR``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

TIERS = ("free", "starter", "professional", "enterprise")
# The task queues, by the names the code and the store use (PendingChange.queue, R1/R2 routing,
# ``inboxsync worker -Q``); on the broker each is ``<queue_prefix><name>`` (Settings.queue_name).
QUEUES = ("ingest", "inbox", "helpdesk", "outbound", "bulk")
# The admin token a fresh install has: fine on loopback, refused by `serve` anywhere else.
DEFAULT_ADMIN_TOKEN = "dev-admin-token"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INBOXSYNC_", extra="ignore")

    data_dir: Path = Field(
        default=Path("var"), description="Where the embedded default keeps its files."
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "INBOXSYNC_DATABASE_URL"),
        description="SQLAlchemy URL of the store; default: SQLite <data_dir>/inboxsync.sqlite.",
    )
    blob_dir: Path | None = Field(
        default=None, description="Where attachment bytes are kept; default: <data_dir>/blobs."
    )
    celery_broker_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CELERY_BROKER_URL", "INBOXSYNC_CELERY_BROKER_URL"),
        description="Celery broker; default: the embedded SQLite queue <data_dir>/broker.sqlite.",
    )

    # R1/R2: which accounts have their tickets moved to the help desk.
    helpdesk_cutoff: datetime = datetime(2024, 4, 1, tzinfo=UTC)
    helpdesk_tiers: frozenset[str] = frozenset({"professional", "enterprise"})

    admin_token: str = Field(
        default=DEFAULT_ADMIN_TOKEN,
        min_length=12,  # an empty or short admin token is a door left open
        description="Bearer token of the admin API.",
    )
    webhook_tolerance_seconds: int = 300
    # Amazon SNS: where signing certificates may come from (host names, regular expressions),
    # and how old a signed message may be (SNS retries for up to an hour by default policy).
    sns_cert_hosts: list[str] = [r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"]
    sns_max_age_s: int = 3600
    max_body_bytes: int = 25 * 1024 * 1024

    # Hostile input at the HTTP edge (README: Ingestion, "Hostile input"). Bodies of every route
    # but the webhook (which has max_body_bytes), refused with 413 before they are read or the
    # caller is authenticated.
    max_api_body_bytes: int = 1024 * 1024
    # Form posts (Mailgun, SendGrid): parts per request, and header lines (of the form's parts
    # together, and of the mail's header block a form field carries), refused with 413 before
    # the form is parsed. Mailgun's signature fields must be among the first max_form_parts.
    max_form_parts: int = 500
    max_header_lines: int = 5000
    # Attachments of one mail whose bytes are kept (store/blobs.py); the rest are listed only.
    max_attachments_kept: int = 100

    # Ingress: deliveries are grouped into one broker message per batch (see api/batcher.py).
    ingest_batch_max: int = 200
    ingest_batch_window_ms: float = 5.0
    # A worker stores the ingest messages queued up behind its own, up to this many deliveries,
    # in one transaction (workers/coalesce.py).
    ingest_transaction_max: int = 500
    # Journaled deliveries not stored this long after their enqueue are enqueued again (their
    # broker message was lost); the ingress checks every sweep_interval_s.
    sweep_after_s: float = 120.0
    sweep_interval_s: float = 15.0
    # Whether this process takes part in the periodic work (workers/periodic.py: one process of
    # the deployment does each round, whichever holds the store's lease).
    scheduler: bool = True
    # Reconciliation (handlers/reconcile.py): at most once per this many seconds per deployment,
    # in the periodic rounds, under the store's lease ``reconcile``; 0: never (run it by hand).
    reconcile_interval_s: float = Field(default=300.0, ge=0)

    # FastAPI's OpenTelemetry instrumentation (configured by the standard OTEL_* variables).
    telemetry: bool = False
    # What an operator sees (observability/): log lines as readable text or JSON, their level,
    # one access line per HTTP request, Prometheus counts, and a worker's /metrics port (0: none).
    log_format: Literal["text", "json"] = Field(
        default="text", validation_alias=AliasChoices("LOG_FORMAT", "INBOXSYNC_LOG_FORMAT")
    )
    log_level: str = Field(
        default="INFO", validation_alias=AliasChoices("LOG_LEVEL", "INBOXSYNC_LOG_LEVEL")
    )
    access_log: bool = True
    metrics: bool = True
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    # API writes wait this long for a worker to apply the change before answering 202.
    api_wait_timeout_s: float = 10.0

    # Replies (handlers/outbound/replies.py). Attempts per reply, and the backoff between them.
    outbound_max_attempts: int = 8
    outbound_retry_base_s: float = 5.0
    outbound_retry_max_s: float = 900.0
    # After an attempt with no answer, wait this long before asking the provider whether it has
    # the mail (its search lags behind its send API by seconds to minutes).
    outbound_lookup_after_s: float = 120.0
    # A worker that has not finished an attempt this long after claiming it is taken for dead;
    # longer than any attempt can take (two provider timeouts, default 30 s each).
    outbound_lease_s: float = 300.0
    # A due reply still queued this long (its task was lost) is enqueued again by the sweeper.
    outbound_sweep_grace_s: float = 30.0
    # Account tokens choose where an inbox's replies go (api_url, SMTP host) and workers take the
    # inbox's credentials there: loopback, private, link-local (cloud metadata), CGNAT, reserved
    # and multicast addresses are refused unless this is on (handlers/netguard.py). On for tests
    # and the demo, whose providers are stand-ins on loopback.
    outbound_allow_private: bool = False

    # Outbound events (handlers/outbound/event_delivery.py): how long a subscriber has to answer,
    # the backoff between attempts at the event at the head of its line (exponential from base
    # to max, with jitter), how long it may fail without one success before it is disabled, how
    # long a rotated-out secret still signs, and the lease of the worker sending for it.
    events_timeout_s: float = Field(default=15.0, gt=0)
    events_retry_base_s: float = Field(default=5.0, gt=0)
    events_retry_max_s: float = Field(default=3600.0, gt=0)
    events_disable_after_s: float = Field(default=3 * 24 * 3600.0, ge=0)
    events_secret_overlap_s: float = Field(default=24 * 3600.0, ge=0)
    events_lease_s: float = Field(default=60.0, gt=0)
    # How often the deployment fans new events out and publishes the subscribers that have one
    # due (one process at a time, under the store's lease ``events``): an event's latency.
    events_interval_s: float = Field(default=2.0, gt=0)
    # Events, delivered deliveries and the delivery log are kept this long (replay reaches back
    # as far), then forgotten, once an hour (workers/periodic.py).
    events_retention_days: float = Field(default=30.0, gt=0)

    # Chat: a conversation closed longer than this is not reopened by a new message; a new one
    # starts (handlers/ingest.py). Mail replies name what they answer and have no such window.
    chat_reopen_days: float = 7.0
    # Chat media (handlers/media.py): the hosts files may be fetched from, per provider, in
    # place of the adapter's own list (regular expressions; JSON such as
    # {"twilio": ["api\\.twilio\\.com"]}); and the largest file fetched.
    media_hosts: dict[str, list[str]] = {}
    max_media_bytes: int = 25 * 1024 * 1024

    # Bulk jobs (handlers/bulk.py), on the ``bulk`` queue: items per chunk (one task, one
    # transaction); chunks of one job in flight at once (how many bulk workers one job can keep
    # busy); items/s one job may go at, over the deployment (0: no limit); and how long a
    # published chunk is its task's before the periodic round takes it for lost and publishes it
    # again (longer than a chunk takes).
    bulk_chunk_size: int = Field(default=500, ge=1, le=10000)
    bulk_parallel_chunks: int = Field(default=2, ge=1, le=64)
    bulk_rate_per_s: float = Field(default=1000.0, ge=0)
    bulk_chunk_lease_s: float = Field(default=120.0, gt=0)

    # Workers.
    task_max_retries: int = 8
    embedded_visibility_timeout_s: float = 60.0
    redis_visibility_timeout_s: float = 3600.0
    redis_restore_interval_s: int = 10
    # Every Redis key the broker uses starts with this (kombu's global_keyprefix): several
    # deployments, or a test run, can share one Redis database without seeing each other.
    redis_key_prefix: str = ""
    # Every queue and exchange inboxsync declares on the broker is named with this in front
    # (``<prefix>ingest``, ``<prefix>celery.pidbox``…): deployments, or test runs, can share one
    # RabbitMQ vhost without seeing each other's work (workers, status, publishers alike).
    queue_prefix: str = Field(default="", max_length=100, pattern=r"^[A-Za-z0-9_.:-]*$")
    # RabbitMQ quorum queues: a message handed out this many times without an acknowledgement
    # (its worker died or gave it back each time) is dropped by the broker; the journals and the
    # periodic sweeps publish its work again later. 0: no limit (RabbitMQ 4 would then use 20).
    amqp_delivery_limit: int = Field(default=20, ge=0)
    retention_days: int = 30

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Plain postgresql:// means psycopg 3 here, not psycopg2.
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{(self.data_dir / 'inboxsync.sqlite').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        if self.celery_broker_url:
            return self.celery_broker_url
        return f"sqlq+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.data_dir / "blobs").resolve()

    @property
    def is_embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("sqlq+")

    @property
    def is_amqp_broker(self) -> bool:
        """RabbitMQ (``amqp://``, ``amqps://``, ``pyamqp://``)."""
        return self.resolved_broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")

    def queue_name(self, queue: str) -> str:
        """The broker's name of one of ``QUEUES``: with ``queue_prefix`` in front."""
        return self.queue_prefix + queue


@lru_cache
def get_settings() -> Settings:
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings

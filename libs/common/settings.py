"""Deploy-time settings shared by every process (env prefix ``TUIKE_``).

Each process has exactly one settings object. A service subclasses :class:`ServiceSettings`
only to add its own fields; the launcher (deploy/local) and the container environment set
``TUIKE_DATABASE_URL`` and ``TUIKE_PORT`` per process.
"""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUIKE_", extra="ignore")

    service_name: str = "tuike"
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    timezone: str = "Asia/Shanghai"

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every key we write starts with this, so test stacks and `make run` share a Redis safely.
    redis_key_prefix: str = "tuike:"

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # The embedded tansu broker refuses InitProducerId; real Kafka should turn this on.
    kafka_enable_idempotence: bool = False
    kafka_topic_partitions: int = 4
    kafka_topic_replication: int = 1
    # Relays and consumers check whether the broker lost its memory (the embedded in-memory
    # broker restarted) by a marker offset of their own (libs/common/messaging/kafka.py).
    broker_restart_detection: bool = True

    # Snowflake node id; None = lease one from Redis at start so replicas never share one.
    node_id: int | None = Field(default=None, ge=0, le=1023)

    bootstrap_admin_key: str | None = None
    # Bearer token Tuike services use to call each other directly (not through the gateway).
    internal_api_key: str | None = None

    # JWT bearer tokens (libs/common/auth.py): HS256 with a shared secret, or RS256 with a
    # PEM public key (inline text or a file path) or a JWKS file. exp/nbf/iss/aud are checked.
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_jwks_file: str | None = None
    jwt_issuer: str = "tuike"
    jwt_audience: str = "tuike-api"
    jwt_leeway_seconds: int = 30

    user_service_url: str = "http://127.0.0.1:8001"
    order_service_url: str = "http://127.0.0.1:8002"
    commission_service_url: str = "http://127.0.0.1:8003"
    stats_service_url: str = "http://127.0.0.1:8004"

    # Off in production: lets the chaos tests ask a process to crash at a named point.
    fault_injection: bool = False

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class ServiceSettings(CommonSettings):
    """Settings of one backend service process."""

    database_url: str = "sqlite+aiosqlite:///var/service.db"
    replica_url: str | None = None
    # JSON map of logical shard (0..15) to a database URL; missing shards use database_url.
    shard_map: dict[int, str] = Field(default_factory=dict)
    # Run the outbox relay and the event consumers inside the API process (the embedded stack
    # does); a deployment may instead run them as separate `worker` processes.
    run_workers: bool = True
    outbox_batch_size: int = 500
    outbox_poll_seconds: float = 0.05
    # How far back the relay republishes when the broker lost its memory (seconds).
    outbox_republish_horizon_seconds: int = 7 * 24 * 3600
    # Published outbox rows are deleted this long after publishing (never less than the
    # republish horizon), and big values no event has used for as long (decision 0806).
    outbox_keep_published_seconds: int = 8 * 24 * 3600
    # How often a relay that has caught up prunes (seconds).
    outbox_prune_interval_seconds: float = 3600.0
    consumer_max_retries: int = 5
    consumer_batch_size: int = 500
    sql_echo: bool = False


@lru_cache
def get_settings() -> ServiceSettings:
    return ServiceSettings()

"""Settings from the environment. The variable names are a public contract (see README)."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.agents_config import (
    DEFAULT_AGENT,
    PROVIDER_COMPACTION_MIN,
    AgentConfig,
    AgentsConfig,
    Compaction,
    parse_agents,
)
from app.core.mcp_config import McpServerConfig, parse_mcp_servers
from app.core.prices import PriceTable, parse_prices

DEFAULT_MODEL = "claude-sonnet-5-5"

Provider = Literal["anthropic", "openai", "offline"]
ModelHttpClientName = Literal["aiohttp", "httpx"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True, env_ignore_empty=True)

    database_url: str = "sqlite+aiosqlite:///./agentchat.db"
    redis_url: str | None = None
    redis_key_prefix: str = "agentchat:"
    redis_max_connections: int = Field(default=50, ge=2)
    # Followers of runs on other replicas (GET /runs/{id}/events) block on a pool of their own, one
    # connection each: this many at once per replica; past it, 503 service_busy.
    redis_follower_connections: int = Field(default=100, ge=1)

    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "http://127.0.0.1:11434/v1"
    llm_provider: Provider | None = None
    llm_model: str = DEFAULT_MODEL
    llm_max_tokens: int = Field(default=1024, ge=1, le=64000)
    llm_connect_timeout: float = Field(default=5.0, gt=0)
    llm_read_timeout: float = Field(default=60.0, gt=0)
    llm_max_retries: int = Field(default=2, ge=0, le=10)
    llm_max_connections: int = Field(default=2000, ge=1)
    # The SDK's client for the model's requests: its aiohttp one, or its httpx2 default (bench.transport).
    llm_http_client: ModelHttpClientName = "aiohttp"
    turn_timeout: float = Field(default=300.0, gt=0)
    history_token_budget: int = Field(default=100_000, ge=100)
    # Conversations untouched for longer are deleted (app/conversations/retention.py); None: kept.
    conversation_retention_days: int | None = Field(default=None, ge=1)
    retention_sweep_seconds: float = Field(default=3600.0, gt=0)

    agent_max_steps: int = Field(default=8, ge=1, le=50)
    agent_tools: str = "remember,recall,calculator,current_time"  # comma-separated; fetch_url is opt-in
    agent_approval_tools: str = ""  # comma-separated names or * patterns: calls that wait for approval
    # The default agent's compaction (AgentConfig's context_window, compact_at, summary_model, compaction).
    agent_context_window: int | None = Field(default=None, ge=1000)
    agent_compact_at: float = Field(default=0.75, gt=0, le=1)
    agent_summary_model: str | None = None
    agent_compaction: Compaction = "auto"  # `provider`: Anthropic's server-side compaction (LLM_PROVIDER=anthropic)
    approval_timeout_seconds: float = Field(default=86400.0, gt=0)  # then pending calls are denied, recorded
    agent_tool_timeout: float = Field(default=15.0, gt=0)
    agent_tool_result_max_chars: int = Field(default=8000, ge=100)
    agent_max_tool_calls_per_step: int = Field(default=8, ge=1, le=64)  # the rest answered is_error, not run
    fetch_url_allowed_hosts: str = ""  # comma-separated; empty means any public host
    fetch_url_max_bytes: int = Field(default=512 * 1024, ge=1024)
    fetch_url_timeout: float = Field(default=10.0, gt=0)
    # JSON or a path to a JSON/YAML file (app/core/mcp_config.py); NoDecode: parsed by the validator.
    mcp_servers: Annotated[tuple[McpServerConfig, ...], NoDecode] = ()
    mcp_connect_timeout: float = Field(default=10.0, gt=0)  # connect + first tool listing, per attempt
    mcp_reconnect_min_seconds: float = Field(default=1.0, gt=0)  # backoff after a failed or dropped connection
    mcp_reconnect_max_seconds: float = Field(default=60.0, gt=0)
    mcp_ping_seconds: float = Field(default=30.0, gt=0)  # re-list tools this often: liveness + missed changes
    # The named agents (app/core/agents_config.py): JSON or a JSON/YAML file. Unset: one agent,
    # `agentchat`, from LLM_* and AGENT_*.
    agents: Annotated[AgentsConfig | None, NoDecode] = None
    # USD per million tokens by model (app/core/prices.py): GET /usage's cost_usd. JSON or a JSON/YAML file.
    model_prices: Annotated[PriceTable, NoDecode] = PriceTable({})

    # Per-key limits, on by default (0 turns one off). Requests: any 60 s; tokens: in + out per UTC day.
    rate_limit_per_minute: int = Field(default=600, ge=0)
    max_turns_in_flight_per_key: int = Field(default=32, ge=0)
    tokens_per_day: int = Field(default=2_000_000, ge=0)
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    lock_ttl_seconds: float = Field(default=30.0, ge=1)
    run_retention_seconds: int = Field(default=900, ge=10)
    run_max_events: int = Field(default=10_000, ge=100)
    run_max_followers_per_key: int = Field(default=20, ge=1)  # concurrent GET /runs/{id}/events per key; then 429
    run_lease_seconds: float = Field(default=10.0, ge=1)  # a replica silent this long has its runs settled
    # How often each replica adopts queued messages whose replica stopped (app/turns/queue.py).
    queue_adoption_seconds: float = Field(default=5.0, gt=0)

    auth_cache_seconds: float = Field(default=5.0, ge=0)  # a revoked key is refused within this; 0 = off
    auth_cache_size: int = Field(default=10_000, ge=1)
    admission_max_loop_lag: float = Field(default=0.5, ge=0)  # refuse new turns (503) above this lag; 0 = off

    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    db_pool_timeout: float = Field(default=10.0, gt=0)
    db_statement_timeout_ms: int = Field(default=15_000, ge=0)
    db_idle_in_transaction_timeout_ms: int = Field(default=30_000, ge=0)
    app_name: str = "agentchat"

    log_format: Literal["json", "console"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    max_message_chars: int = Field(default=32_000, ge=1)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # Files (app/files): an upload's cap (its request body may be this much more than MAX_BODY_BYTES,
    # as may a /v1 request's with inline data), each key's storage, and what models take.
    file_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    file_storage_quota_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)  # per key; 0 = no quota
    file_storage_url: str | None = None  # None: the database; s3://bucket/prefix: S3-compatible (AWS_* variables)
    file_image_max_side: int = Field(default=8000, ge=1)  # pixels, either side (Anthropic's limit)
    file_pdf_max_pages: int = Field(default=100, ge=1)
    # Models that take no images or PDFs (comma-separated fnmatch patterns): their attachments are a 422.
    file_text_only_models: str = "claude-instant*,claude-2*,gpt-3.5*"
    chat_max_attachments: int = Field(default=10, ge=0)
    agent_provider_files: bool = False  # the default agent's provider_files (AgentConfig)
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    docs_enabled: bool = True  # /docs, /redoc, /openapi.json; off in deploy/k8s
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("file_storage_url")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("s3://") and value[5:].split("/", 1)[0]):
            raise ValueError("FILE_STORAGE_URL must be s3://bucket[/prefix] (unset: the database)")
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("must start with postgresql+asyncpg:// or sqlite+aiosqlite://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("mcp_servers", mode="before")
    @classmethod
    def _mcp_servers(cls, value: object) -> tuple[McpServerConfig, ...]:
        return parse_mcp_servers(value)

    @field_validator("model_prices", mode="before")
    @classmethod
    def _model_prices(cls, value: object) -> PriceTable:
        return parse_prices(value)

    @field_validator("agents", mode="before")
    @classmethod
    def _agents(cls, value: object) -> AgentsConfig | None:
        return parse_agents(value)

    @model_validator(mode="after")
    def _provider_has_credentials(self) -> Settings:
        if self.llm_provider == "anthropic" and self.anthropic_api_key is None:
            raise ValueError("LLM_PROVIDER=anthropic needs ANTHROPIC_API_KEY")
        if self.agents is None and self.agent_compaction == "provider" and self.provider != "anthropic":
            raise ValueError(f"AGENT_COMPACTION=provider needs the anthropic provider (not {self.provider})")
        provider = [a.name for a in self.agent_set.agents if a.compaction == "provider"]
        if provider and self.history_token_budget < PROVIDER_COMPACTION_MIN:
            # Our trimming would keep every history under the provider's least trigger: it would never compact.
            raise ValueError(
                f"compaction: provider (agent {provider[0]!r}) needs HISTORY_TOKEN_BUDGET of at least "
                f"{PROVIDER_COMPACTION_MIN:,} (the provider compacts past that many tokens at the least)"
            )
        return self

    @property
    def agent_set(self) -> AgentsConfig:
        """AGENTS, or the one agent today's variables describe (so a deployment without AGENTS works as before)."""
        if self.agents is not None:
            return self.agents
        agent = AgentConfig(
            name=DEFAULT_AGENT,
            description="General assistant.",
            provider=self.provider,
            model=self.llm_model,
            tools=None,
            approval=tuple(name.strip() for name in self.agent_approval_tools.split(",") if name.strip()),
            context_window=self.agent_context_window,
            compact_at=self.agent_compact_at,
            summary_model=self.agent_summary_model,
            compaction=self.agent_compaction,
            provider_files=self.agent_provider_files,
        )
        return AgentsConfig(default=DEFAULT_AGENT, agents=(agent,))

    @property
    def provider(self) -> Provider:
        """The provider in force: an explicit choice, else Anthropic when a key is set."""
        if self.llm_provider is not None:
            return self.llm_provider
        return "anthropic" if self.anthropic_api_key is not None else "offline"

    @property
    def model_name(self) -> str:
        """The model that answers, as responses and the playground show it: never a real model's
        name when the offline stand-in is answering."""
        return "offline" if self.provider == "offline" else self.llm_model

    @property
    def enabled_tools(self) -> list[str]:
        return [name.strip() for name in self.agent_tools.split(",") if name.strip()]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def resolved_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if sys.stderr.isatty() else "json"


class ConfigError(SystemExit):
    """Raised with a one-line message; SystemExit so no traceback is printed."""


def load_settings() -> Settings:
    """Read settings from the environment, turning a validation error into one clear line."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "settings"
        message = first["msg"].removeprefix("Value error, ")
        name = field.upper() if first["loc"] else "configuration"
        print(f"agentchat: configuration error: {name}: {message}", file=sys.stderr)  # noqa: T201
        raise ConfigError(2) from None

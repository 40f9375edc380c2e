"""One Settings object for all of tickvault.

This is the only module that reads the environment (prefix ``TICKVAULT_``). Everything else
receives a :class:`Settings` instance. Secrets are ``SecretStr`` so they never print by accident;
:func:`masked` is what ``tickvault config show`` displays.
"""

from __future__ import annotations

import re
from functools import lru_cache
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "tickvault"


class ConfigError(ValueError):
    """A setting has a value tickvault cannot use; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TICKVAULT_", extra="ignore", validate_default=True)

    # --- database -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL URL of a server with the timescaledb extension. Unset: tickvault "
        "starts and manages its own local TimescaleDB.",
    )
    db_cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Where the local TimescaleDB's root filesystem and data live (outside the repo).",
    )
    db_port: int = Field(55432, ge=1024, le=65535, description="Port of the local TimescaleDB on 127.0.0.1.")
    db_name: str = Field("tickvault", description="Database name on the local server.")
    debian_mirror: str = Field(
        "http://deb.debian.org/debian", description="Debian mirror debootstrap builds the local server from."
    )
    db_pool_max: int = Field(8, ge=1, le=100, description="Max connections in each process's pool.")

    # --- Alpaca ---------------------------------------------------------------------------
    alpaca_key_id: SecretStr | None = Field(None, description="Alpaca API key id. Unset: `make run` uses the simulator.")
    alpaca_secret_key: SecretStr | None = Field(None, description="Alpaca API secret key.")
    alpaca_feed: Literal["iex", "sip"] = Field("iex", description="Market-data feed: iex (free) or sip.")
    alpaca_data_url: str = Field("https://data.alpaca.markets", description="Market-data REST base URL.")
    alpaca_trading_url: str = Field(
        "https://paper-api.alpaca.markets", description="Trading REST base URL (paper by default)."
    )
    alpaca_stream_url: str = Field(
        "wss://stream.data.alpaca.markets", description="Market-data WebSocket base URL; `/v2/{feed}` is appended."
    )
    alpaca_trade_stream_url: str = Field(
        "wss://paper-api.alpaca.markets/stream", description="Trade-updates WebSocket URL."
    )

    # --- worker ---------------------------------------------------------------------------
    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated symbols to subscribe to. Empty with the simulator: all simulated symbols.",
    )
    channels: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["trades", "quotes", "bars", "updatedBars"],
        description="Comma-separated stream channels.",
    )
    feeds: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated market-data feeds one worker records, each on its own connection: "
        "`stocks:iex` or `stocks:sip`, `crypto:us` (or `us-1`, `eu-1`), `options:indicative` or `options:opra`, "
        "`news`. Unset: `stocks:<TICKVAULT_ALPACA_FEED>`.",
    )
    option_symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated OCC option symbols (e.g. AAPL250117C00200000) the options "
        "feed records; required with an options feed.",
    )
    option_feed_silence_s: float = Field(
        60.0, ge=0, description="The options feed's silence watchdog (0: off); like the stocks one it doubles on "
        "each silent reconnect, up to 30 min: a chosen chain can be quiet for minutes.",
    )
    news_symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated symbols whose news the news feed records. Empty: all (`*`).",
    )
    crypto_symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated crypto pairs (e.g. BTC/USD,ETH/USD) for the crypto feed. "
        "Empty: all (`*`).",
    )
    crypto_channels: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["trades", "quotes", "bars", "updatedBars"],
        description="Comma-separated crypto stream channels (trades, quotes, bars, updatedBars, dailyBars, "
        "orderbooks).",
    )
    crypto_feed_silence_s: float = Field(
        30.0, ge=0, description="The crypto feed's silence watchdog (0: off). Crypto trades around the clock, so "
        "silence there is a fault: unlike the stocks feed's, this limit never doubles.",
    )
    queue_max_frames: int = Field(
        256, ge=1, description="Bound of the reader→processor queue, in frames (≤ ~1000 messages each)."
    )
    writer_batch_rows: int = Field(
        20_000, ge=1, description="Flush a table's buffer at this many rows (COPY cost is per batch, not per row)."
    )
    writer_flush_ms: int = Field(
        50, ge=1, description="Flush a non-empty buffer at least this often (bounds received→committed latency)."
    )
    backfill_from: datetime | None = Field(
        None, description="On a first start (no stored trades for the symbols), backfill trades and bars from "
        "this time (ISO 8601 with a UTC offset, e.g. today's open 09:30-04:00). Unset: start from the live stream.",
    )
    feed_silence_s: float = Field(
        30.0, ge=0, description="Reconnect (and backfill) after this long without market data on an open "
        "socket (0: never). Pings catch dead sockets; this catches a live server that went quiet.",
    )
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="On SIGTERM, how long to wait for the database to take what is buffered; "
        "past it (or on a second signal) the rest is spilled to run_dir/spill and committed on the next start.",
    )
    cache_ttl_s: float = Field(5.0, gt=0, description="A cached latest price older than this is stale.")
    stats_interval_s: float = Field(10.0, gt=0, description="Seconds between `ingest_stats` rows.")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus endpoint port on 127.0.0.1 (0: off).")
    strategy: str | None = Field(None, description="Strategy to load, as `module:attribute`. Unset: none runs.")
    run_dir: Path = Field(
        default_factory=lambda: _default_cache_dir() / "run",
        description="Where the worker writes its pidfile and registration.",
    )
    worker_name: str = Field("worker-1", description="Name of this worker in registrations, stats and profiles.")

    # --- simulator -------------------------------------------------------------------------
    sim_host: str = Field("127.0.0.1", description="Simulator bind address (loopback only).")
    sim_port: int = Field(8765, ge=0, le=65535, description="Simulator WebSocket port (market data at /v2/{feed}, trade updates at /stream).")
    sim_rest_port: int = Field(8766, ge=0, le=65535, description="Simulator REST port (trading and market data).")
    sim_symbols: int = Field(50, ge=1, description="Number of simulated symbols.")
    sim_rate: float = Field(20_000, gt=0, description="Simulated trades per second across all symbols.")
    sim_frame_size: int = Field(100, ge=1, le=10_000, description="Messages per simulated frame.")
    sim_seed: int = Field(42, description="Seed of the simulator's random walk.")
    sim_hours: Literal["always", "calendar"] = Field(
        "always",
        description="Simulated exchange hours: always open, or NYSE's calendar (no trades while closed, orders wait "
        "for the open, `day` orders expire at the close).",
    )
    sim_calendar_file: Path | None = Field(
        None,
        description="One-off changes to NYSE's calendar for `sim_hours=calendar`, one a line: `YYYY-MM-DD` (closed) "
        "or `YYYY-MM-DD HH:MM` (closes early, New York time); `#` comments.",
    )
    sim_options_level: int = Field(
        3, ge=0, le=3, description="The simulated account's approved options level, as Alpaca's: 0 no options, 1 "
        "covered calls and cash-secured puts, 2 also buying calls and puts, 3 (Alpaca paper's) also spreads.",
    )
    sim_clock_start: datetime | None = Field(
        None, description="Simulated time to start at (ISO 8601 with offset). Unset: now (a replay: its first frame)."
    )
    sim_clock_scale: float = Field(1.0, gt=0, description="Simulated seconds per wall-clock second.")
    sim_replay: Path | None = Field(None, description="Recording (`tickvault sim record`) to serve instead of the random walk.")
    sim_replay_speed: float = Field(1.0, ge=0, description="Replay pace: 1 as recorded, 10 ten times faster, 0 as fast as clients read.")

    # --- people's clock ---------------------------------------------------------------------
    market_timezone: str = Field(
        "America/New_York",
        description="IANA timezone of the market: times in flow artifacts are shown in it (UTC beside it where "
        "it matters). prefect.yaml's schedules are New York time, where US equity hours are defined.",
    )

    # --- HTTP -----------------------------------------------------------------------------
    http_timeout_s: float = Field(10.0, gt=0, description="Per-request timeout for Alpaca REST calls.")
    http_max_connections: int = Field(10, ge=1, description="Connection pool size of the process's HTTP client.")
    http_max_retries: int = Field(4, ge=0, description="Retries on 429/5xx/transport errors (backoff with jitter).")

    # --- profiling and S3 -----------------------------------------------------------------
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, moto, ...). Unset: AWS.")
    s3_bucket: str | None = Field(None, description="Bucket for profiling reports. Unset: reports stay in profile_dir.")
    s3_prefix: str = Field("tickvault/profiles", description="Key prefix for profiling reports.")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_access_key_id: SecretStr | None = Field(None, description="S3 key id. Unset: the standard AWS chain.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key. Unset: the standard AWS chain.")
    profile_dir: Path = Field(
        default_factory=lambda: _default_cache_dir() / "profiles",
        description="Local directory for profiling reports when no S3 bucket is set.",
    )
    profile_seconds: float = Field(30.0, gt=0, description="How long `profile_worker` samples the worker.")
    profile_rate_hz: int = Field(100, ge=1, le=1000, description="py-spy sampling rate.")
    profile_growth_threshold: float = Field(
        0.05, gt=0, description="Flag a function whose share of samples grew by more than this (0.05 = 5 points)."
    )

    # --- retention (days; 0 keeps forever) -------------------------------------------------
    retention_trades_days: int = Field(30, ge=0, description="Keep raw trades this many days.")
    retention_quotes_days: int = Field(7, ge=0, description="Keep raw quotes this many days.")
    retention_bars_days: int = Field(
        730, ge=0, description="Keep feed bars (stocks and crypto_bars) and OHLCV rollups this many days."
    )
    retention_crypto_trades_days: int = Field(30, ge=0, description="Keep raw crypto_trades this many days.")
    retention_crypto_quotes_days: int = Field(7, ge=0, description="Keep raw crypto_quotes this many days.")
    retention_crypto_orderbooks_days: int = Field(
        3, ge=0, description="Keep crypto_orderbooks rows (every book change: the widest rows) this many days."
    )
    retention_option_trades_days: int = Field(30, ge=0, description="Keep raw option_trades this many days.")
    retention_option_quotes_days: int = Field(7, ge=0, description="Keep raw option_quotes this many days.")
    retention_news_days: int = Field(730, ge=0, description="Keep news articles this many days (by created_at).")
    retention_indicators_days: int = Field(730, ge=0, description="Keep indicator rows this many days.")
    retention_ingest_stats_days: int = Field(30, ge=0, description="Keep ingest_stats rows this many days.")
    retention_bad_messages_days: int = Field(30, ge=0, description="Keep bad_messages rows this many days.")
    compress_after_hours: float = Field(
        24.0,
        ge=0,
        description=(
            "Timescale edition: compress trades and quotes chunks older than this (0: no compression policy). "
            "The Apache edition has no compression."
        ),
    )

    # --- dashboard and alerts -------------------------------------------------------------
    ui_port: int = Field(
        8780, ge=0, le=65535, description="Dashboard (`tickvault ui`) port on 127.0.0.1; `tickvault run` starts it "
        "beside the worker (0: not started)."
    )
    ui_live_interval_s: float = Field(
        1.0, ge=0.2, le=60, description="How often the dashboard asks the database for new bars and figures to "
        "push to open pages (one query per watched symbol and timeframe, shared by every open page)."
    )
    ui_kill_switch: bool = Field(
        False, description="Show the dashboard's kill switch (halt strategy orders, cancel open orders). Needs "
        "TICKVAULT_UI_KILL_SWITCH_TOKEN; every use is recorded in `ui_audit`."
    )
    ui_kill_switch_token: SecretStr | None = Field(
        None, description="Token a kill-switch request must carry (at least 16 characters)."
    )
    prefect_ui_url: str = Field(
        "http://127.0.0.1:4200", description="The Prefect UI the dashboard links to for flow runs."
    )
    alert_webhook_url: SecretStr | None = Field(
        None, description="Webhook the Prefect automations of `tickvault deploy` notify (Slack, Discord, Telegram "
        "bot API or any JSON receiver). Unset: no automations are created."
    )
    alert_webhook_format: Literal["slack", "discord", "telegram", "json"] = Field(
        "slack", description="Payload shape for the alert webhook: slack `{text}`, discord `{content}`, telegram "
        "`{chat_id, text}`, json `{title, body, severity, ...}`."
    )
    alert_telegram_chat_id: str | None = Field(None, description="Telegram chat id, for the telegram payload format.")
    alert_ingest_silence_min: float = Field(
        5.0, gt=0, description="Alert when a worker has written no `ingest_stats` row for this many minutes."
    )

    @field_validator("symbols", "channels", "feeds", "crypto_symbols", "crypto_channels", "news_symbols",
                     "option_symbols", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("symbols", "crypto_symbols", "news_symbols")
    @classmethod
    def _upper_symbols(cls, value: list[str]) -> list[str]:
        return [s.upper() for s in value]

    @field_validator("option_symbols")
    @classmethod
    def _occ_symbols(cls, value: list[str]) -> list[str]:
        from tickvault.alpaca.options import OccSymbolError, parse_occ

        symbols = [s.upper() for s in value]
        for s in symbols:
            try:
                parse_occ(s)
            except OccSymbolError as exc:
                raise ValueError(str(exc)) from None
        return symbols

    @field_validator("crypto_channels")
    @classmethod
    def _crypto_channels(cls, value: list[str]) -> list[str]:
        known = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "orderbooks")
        unknown = [c for c in value if c not in known]
        if unknown:
            raise ValueError(f"unknown crypto channel(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return value

    @field_validator("feeds")
    @classmethod
    def _feeds(cls, value: list[str]) -> list[str]:
        kinds: set[str] = set()
        for spec in value:
            kind, _, where = spec.partition(":")
            if kind == "stocks" and where in ("iex", "sip"):
                pass
            elif kind == "crypto" and where in ("us", "us-1", "eu-1"):
                pass
            elif kind == "news" and not where:
                pass
            elif kind == "options" and where in ("indicative", "opra"):
                pass
            else:
                raise ValueError(f"{spec!r} is not a feed; write stocks:iex, stocks:sip, crypto:us, crypto:us-1, "
                                 "crypto:eu-1, options:indicative, options:opra or news")
            if kind in kinds:
                raise ValueError(f"two {kind} feeds: Alpaca allows one connection per endpoint and account; run a "
                                 "second worker (another TICKVAULT_WORKER_NAME) for the other")
            kinds.add(kind)
        return value

    @model_validator(mode="after")
    def _default_feeds(self) -> "Settings":
        if not self.feeds:
            self.feeds = [f"stocks:{self.alpaca_feed}"]  # what a worker recorded before TICKVAULT_FEEDS existed
        stocks = next((f.partition(":")[2] for f in self.feeds if f.startswith("stocks:")), None)
        if stocks is not None and stocks != self.alpaca_feed:
            if "alpaca_feed" in self.model_fields_set:
                raise ValueError(f"TICKVAULT_FEEDS says stocks:{stocks} but TICKVAULT_ALPACA_FEED says "
                                 f"{self.alpaca_feed}: set one of them")
            self.alpaca_feed = stocks  # one stocks feed for the stream, its REST history and latest prices
        if any(f.startswith("options:") for f in self.feeds) and not self.option_symbols:
            raise ValueError("TICKVAULT_FEEDS has an options feed but TICKVAULT_OPTION_SYMBOLS is empty: name the "
                             "contracts (OCC symbols, e.g. AAPL250117C00200000); Alpaca's options stream takes no '*'")
        return self

    @field_validator("backfill_from", "sim_clock_start")
    @classmethod
    def _backfill_from_has_offset(cls, value: datetime | None) -> datetime | None:
        # A naive time is ambiguous (New York? UTC? the host's zone?) and the backfill window would be
        # off by hours without any error: refuse it at start, where the user can still fix it.
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError(
                f"{value.isoformat()} has no UTC offset; write it with one, e.g. 2026-03-10T09:30:00-04:00 "
                "(New York's open in summer time) or 2026-03-10T13:30:00Z"
            )
        return value

    @field_validator("strategy")
    @classmethod
    def _strategy_spec(cls, value: str | None) -> str | None:
        # Only the shape is checked here (no import: `config show` must not run a trader's code);
        # the worker commands load it before they start anything.
        if value is None or not value.strip():
            return None  # TICKVAULT_STRATEGY= (empty, as in an env file) means none
        if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value.strip()):
            raise ValueError(f"{value!r} is not `package.module:Name` (e.g. mybot.rsi:RsiReversion)")
        return value.strip()

    @field_validator("sim_host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        if not (value.startswith("127.") or value in ("localhost", "::1")):
            raise ValueError("the simulator binds to loopback only (127.0.0.0/8, localhost, ::1)")
        return value

    @field_validator("ui_kill_switch_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("the kill-switch token must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _kill_switch_needs_token(self) -> "Settings":
        if self.ui_kill_switch and self.ui_kill_switch_token is None:
            raise ValueError("TICKVAULT_UI_KILL_SWITCH=true needs TICKVAULT_UI_KILL_SWITCH_TOKEN")
        if self.alert_webhook_format == "telegram" and self.alert_webhook_url and not self.alert_telegram_chat_id:
            raise ValueError("TICKVAULT_ALERT_WEBHOOK_FORMAT=telegram needs TICKVAULT_ALERT_TELEGRAM_CHAT_ID")
        return self

    @field_validator("market_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r} (e.g. America/New_York)") from None
        return value

    @property
    def has_alpaca_keys(self) -> bool:
        return self.alpaca_key_id is not None and self.alpaca_secret_key is not None


SECRET_NAMES = ("database_url", "alpaca_key_id", "alpaca_secret_key", "s3_access_key_id", "s3_secret_access_key",
                "ui_kill_switch_token", "alert_webhook_url")


def _mask_url(url: str) -> str:
    """Hide the password of a URL, keep the rest (users need to see host, port and db)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:****@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def masked(settings: Settings) -> dict[str, str]:
    """The effective settings as strings, with every secret masked."""
    out: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            text = _mask_url(raw) if name == "database_url" else ("****" + raw[-2:] if len(raw) > 8 else "****")
        elif isinstance(value, list):
            text = ",".join(value)
        elif value is None:
            text = ""
        else:
            text = str(value)
        out[name] = text
    return out


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default as the configuration table shows it, meaning) per setting, in order.

    ``tickvault config doc`` prints these as the configuration table; the tests hold the docs to them.
    """
    home = str(Path.home())
    rows = []
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            default = ",".join(value) if isinstance(value, list) else str(value).replace(home, "~")
        else:
            default = "" if field.default is None else str(field.default)
        rows.append((f"TICKVAULT_{name.upper()}", default, field.description or ""))
    return rows
def secret_values(settings: Settings, *urls: str) -> list[str]:
    """Every secret a log line or an error text must never show: the Alpaca and S3 keys, and the
    passwords of the database URL and of ``urls`` (e.g. the local server's URL). Longest first,
    so a secret that contains another is replaced whole; values under 4 characters are left out
    (replacing them would mangle ordinary text)."""
    from urllib.parse import urlsplit

    values = [
        s.get_secret_value()
        for s in (settings.alpaca_key_id, settings.alpaca_secret_key, settings.s3_access_key_id,
                  settings.s3_secret_access_key)
        if s is not None
    ]
    for url in (*urls, settings.database_url.get_secret_value() if settings.database_url else ""):
        try:
            password = urlsplit(url).password if url else None
        except ValueError:
            password = None
        if password:
            values.append(password)
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: list[str] | tuple[str, ...]) -> str:
    """``text`` with every value of ``secrets`` (see :func:`secret_values`) replaced by ``****``."""
    for secret in secrets:
        text = text.replace(secret, "****")
    return text


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment; a bad value becomes a :class:`ConfigError` naming the variable."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"TICKVAULT_{field.upper()}: {err['msg']}" if field else str(err["msg"]))
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()

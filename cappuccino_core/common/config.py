"""Load and validate `cappuccino.yaml` and `active_study.yaml`.

Every daemon and CLI command reads configuration through `load_config`. The schema is the
dataclasses below: each field has a type, a default and (where it matters) a check. Unknown keys
are errors, so a typo is never silently ignored, and every error names the file, the key path,
the bad value and what was expected.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, get_args, get_origin, get_type_hints

import yaml

from .errors import URL_PASSWORD_RE, USAGE, CappuccinoError, mask_text
from .files import atomic_write_text

DEFAULT_CONFIG_DIR = "/etc/cappuccino"
CONFIG_FILE = "cappuccino.yaml"
ACTIVE_STUDY_FILE = "active_study.yaml"
STUDY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,10}/(USD|USDT|USDC|BTC)$")
TIMEFRAMES = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14400, "1d": 86400}


class ConfigError(CappuccinoError):
    """A configuration file is missing, unreadable or invalid."""
    exit_code = USAGE
    label = "configuration error"
    whole_message = True

    def __init__(self, file: str, key: str, value: Any, expected: str, got: str | None = None):
        self.file, self.key, self.value, self.expected = file, key, value, expected
        where = f"{file}: {key}: " if key else f"{file}: "
        if got is None:
            got = "" if value is _NO_VALUE else f", got {value!r}"
        super().__init__(mask_text(f"{where}expected {expected}{got}"))  # never a password


_NO_VALUE = object()

# Keys of earlier releases, and what to write instead.
REPLACED = {
    "alerts.webhook_url": "now a URL in alerts.urls: jsons://HOST/PATH (json:// for http)",
    "alerts.discord_webhook_url": "now a URL in alerts.urls: discord://WEBHOOK_ID/TOKEN",
    "alerts.slack_webhook_url": "now a URL in alerts.urls: slack://TOKEN_A/TOKEN_B/TOKEN_C",
    "alerts.email_to": "now a URL in alerts.urls: mailto://USER:PASSWORD@HOST?to=ADDRESS",
    "alerts.sendmail_path": "alerts go through alerts.urls (Apprise) now",
    "broker.paper": "removed: Cappuccino trades Alpaca's paper account only, always; delete it",
}


class ConfigErrors(ConfigError):
    """Several errors at once: every one of them is listed, not only the first."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        Exception.__init__(self, f"{len(errors)} errors:\n" + "\n".join(f"  {e}" for e in errors))


# --- checks: each returns a description of what is expected, and a predicate -------------------

def _in_open_unit(v: float) -> bool:
    return 0 < v < 1


def check(expected: str, ok: Callable[[Any], bool], **schema) -> dict:
    """A setting's check: what is expected (said in errors), the predicate, and the same
    bounds in JSON Schema's words (docs/config.schema.json) where they can be said there."""
    return {"check": (expected, ok), "schema": schema}


def _is_date(v: str) -> bool:
    try:
        dt.datetime.fromisoformat(v)
        return True
    except ValueError:
        return False


def _utc(v: str) -> dt.datetime:
    """A checked date as an aware UTC time (a date without a zone is UTC)."""
    d = dt.datetime.fromisoformat(v)
    return d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)


DATE = check("a date like 2023-01-01 (or 2023-01-01T12:00)", _is_date)
FRACTION = check("a number in (0, 1)", _in_open_unit, exclusiveMinimum=0, exclusiveMaximum=1)


def between(lo: float, hi: float, what: str = "a number") -> dict:
    return check(f"{what} in [{lo:g}, {hi:g}]", lambda v: lo <= v <= hi, minimum=lo, maximum=hi)


def choice(*options: str) -> dict:
    return check("one of " + ", ".join(options), lambda v: v in options, enum=list(options))


# --- the schema -------------------------------------------------------------------------------

def _keeps_data(url: str) -> bool:
    """A PostgreSQL URL, or a SQLite URL naming a file: not `:memory:` nor an empty path,
    which would keep nothing after the process ends (a study trained into thin air)."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgresql+psycopg2", "postgres"):
        return bool(rest.strip()) and _port_ok(rest)
    path = rest.removeprefix("/")
    return scheme == "sqlite" and rest.startswith("/") and bool(path.strip()) \
        and ":memory:" not in path and not path.startswith("?") and "mode=memory" not in path


def _port_ok(rest: str) -> bool:
    """The port of `user:pw@host:port/db`, if given, is one a server can listen on."""
    host = rest.rpartition("@")[2].partition("/")[0].partition("?")[0]
    port = host.rpartition(":")[2] if ":" in host and not host.endswith("]") else ""
    return not port or (port.isdigit() and 1 <= int(port) <= 65535)


NOT_BLANK = check("a path (not empty)", lambda v: bool(v.strip()))

# Every setting is documented by the string under it (an attribute docstring, as CleanRL and
# tyro read them); each section by its class docstring. config/cappuccino.yaml and
# docs/config.schema.json are generated from them (common/config_docs.py).


@dataclass(frozen=True)
class StorageConfig:
    """Optuna's studies and the product's own tables share one database."""
    url: str | None = field(default=None, metadata=check(
        "a postgresql+psycopg2://HOST[:PORT 1-65535]/DB or sqlite:///PATH URL of a database "
        "that keeps what is written (not :memory:, not an empty path)", _keeps_data))
    """null: a SQLite file in paths.state_dir (the embedded default, one machine). Training on
    several hosts needs PostgreSQL, e.g. postgresql+psycopg2://cappuccino@db.internal:5432/cappuccino
    (the explicit driver: optuna-dashboard and `optuna studies` need it)."""
    pool_size: int = field(default=5, metadata=between(1, 1000, "an integer"))
    """PostgreSQL connections pooled per process."""
    max_overflow: int = field(default=10, metadata=between(0, 1000, "an integer"))
    """Connections a process may open beyond its pool when busy."""
    sqlite_busy_timeout_s: float = field(default=30.0, metadata=between(0.1, 3600))
    """How long a SQLite writer waits for another process's write (several share the file)."""


@dataclass(frozen=True)
class PathsConfig:
    """Where the product keeps its files."""
    state_dir: str = field(default="/var/lib/cappuccino", metadata=NOT_BLANK)
    """The SQLite database, trial artifacts, ensembles, metrics, reports."""
    cache_dir: str | None = field(default=None, metadata=NOT_BLANK)
    """The bar cache; null: $CACHE_DIRECTORY (systemd's CacheDirectory=, /var/cache/cappuccino),
    else <state_dir>/cache."""


@dataclass(frozen=True)
class ArtifactsConfig:
    """Where trained models live."""
    store: str = field(default="filesystem", metadata=choice("filesystem", "s3", "database"))
    """filesystem: one directory (the embedded default; a shared mount for several hosts);
    s3: an S3-compatible bucket (needs the `s3` extra: boto3); database: chunks in a table of
    the storage database, so that a cluster needs nothing but PostgreSQL."""
    path: str | None = field(default=None, metadata=NOT_BLANK)
    """filesystem: the directory; null: <state_dir>/artifacts."""
    s3_bucket: str | None = None
    """s3: the bucket, e.g. cappuccino-models."""
    s3_endpoint_url: str | None = None
    """s3: null for AWS; else e.g. http://minio.internal:9000."""
    s3_region: str | None = None
    """s3: the region; null: the SDK's default."""
    cache_dir: str | None = field(default=None, metadata=NOT_BLANK)
    """Downloaded models, unpacked, keyed by checksum; null: <state_dir>/artifact-cache."""


@dataclass(frozen=True)
class DataConfig:
    """The market: which bars, from where."""
    source: str = field(default="csv", metadata=choice("alpaca", "csv"))
    """csv: files (csv_path); alpaca: Alpaca's historical crypto bars (no keys needed)."""
    csv_path: str | None = field(default=None, metadata=NOT_BLANK)
    """The CSV directory for source csv; null: the bundled one-year sample."""
    symbols: list[str] = field(
        default_factory=lambda: ["BTC/USD", "ETH/USD", "LTC/USD", "BCH/USD", "LINK/USD",
                                 "UNI/USD", "AAVE/USD"],
        metadata=check("a non-empty list of distinct symbols like BTC/USD",
                       lambda v: len(v) > 0 and len(set(v)) == len(v)
                       and all(SYMBOL_RE.match(s) for s in v)))
    """The assets traded, in the order models see them (order matters: retrain to change)."""
    timeframe: str = field(default="1h", metadata=choice(*TIMEFRAMES))
    """The bar length."""
    closed_bar_delay_s: float = field(default=10.0, metadata=between(0, 3600))
    """A bar is used once it has ended plus this delay."""
    start: str | None = field(default=None, metadata=DATE)
    """First bar of history, e.g. 2022-01-01; null: all there is."""
    end: str | None = field(default=None, metadata=DATE)
    """End of history, exclusive, e.g. 2024-01-01; null: up to the latest bar."""
    feature_set: str = field(default="v1", metadata=choice("v1", "v2"))
    """v1: 16 features per asset; v2: v1 plus a two-week trend and the market's (retrain)."""
    decision_bars: int = field(default=1, metadata=between(1, 168, "an integer"))
    """The policy decides every this many bars, at bars whose open time is a whole number of
    such periods since 1970-01-01 UTC (4 with 1h bars: 00:00, 04:00, ...); stops are still
    checked every bar and intrabar. Training, backtests, the trader, replay and reconcile
    all use it; a model trained at another cadence is refused (retrain)."""
    max_gap_bars: int = field(default=24, metadata=between(0, 10_000, "an integer"))
    """A longer run of missing bars is refused (a dead feed, not a quiet hour); shorter ones
    are filled flat at the previous close, flagged, and counted in the log."""
    refetch_bars: int = field(default=3, metadata=between(0, 1000, "an integer"))
    """A live feed's newest bars asked for again on every fetch (a quiet bar's late print)."""
    max_bar_jump: float = field(default=5.0, metadata=between(1.5, 1000))
    """A bar whose close jumps by more than this factor and returns at the next bar (or whose
    wick is that far from its open and close) is a bad print: the data is refused."""


@dataclass(frozen=True)
class TrainingConfig:
    """The Optuna search and each trial's PPO training."""
    n_trials: int = field(default=100, metadata=between(1, 10_000_000, "an integer"))
    """Target trial count of a study (all workers stop there)."""
    cv: str = field(default="cpcv", metadata=choice("cpcv", "walk_forward"))
    """Cross-validation: combinatorial purged (cpcv) or walk-forward."""
    cv_groups: int = field(default=6, metadata=between(2, 100, "an integer"))
    """Groups the training range is cut into."""
    cv_test_groups: int = field(default=2, metadata=between(1, 99, "an integer"))
    """Groups each split tests on."""
    embargo_hours: int = field(default=48, metadata=between(0, 24 * 365, "an integer"))
    """Bars dropped between training and test groups (no leakage through features)."""
    heldout_days: int = field(default=60, metadata=between(0, 3650, "an integer"))
    """The most recent data, never seen by training: for validation and the deployer."""
    pruner: str = field(default="median", metadata=choice("median", "none"))
    """Stop a trial early when its running CV value is below the median of others."""
    device: str = field(default="auto", metadata=choice("auto", "cpu", "cuda"))
    """Where training runs; auto: CUDA when there is a GPU."""
    total_timesteps: int = field(default=200_000, metadata=between(1, 10**11, "an integer"))
    """Environment steps per training run."""
    n_envs: int = field(default=64, metadata=between(1, 1_048_576, "an integer"))
    """Parallel episodes per rollout."""
    heartbeat_interval_s: int = field(default=30, metadata=between(1, 3600, "an integer"))
    """A worker's trial heartbeat."""
    heartbeat_grace_s: int = field(default=120, metadata=between(2, 86400, "an integer"))
    """A trial silent this long (a killed worker) becomes FAIL and is retried."""
    max_retry: int = field(default=2, metadata=between(0, 100, "an integer"))
    """Retries of such a trial."""
    compile_env: bool = False
    """torch.compile the environment step: a few seconds once per trial; ~3x faster at
    n_envs 1024."""
    split_batch: int | None = field(default=None, metadata=between(1, 10_000, "an integer"))
    """How many of a trial's trainings (CV splits, final fit) train as one batched
    computation; null: all of them on a GPU, 8 on a CPU."""
    workers_per_host: int = field(default=1, metadata=between(1, 1024, "an integer"))
    """Trainer workers on one host: each takes the cores it is given / this many torch
    threads (CAPPUCCINO_TORCH_THREADS overrides)."""
    target_kl: float | None = field(default=None, metadata=between(1e-6, 10))
    """End an update's epochs once PPO's approximate KL passes this (CleanRL), e.g. 0.02;
    null: never."""
    precision: str = field(default="auto", metadata=choice("auto", "float32", "bfloat16"))
    """The hidden layers' arithmetic in training; auto: bfloat16 on a CPU with native
    bfloat16 (AVX512-BF16 or AMX), float32 elsewhere. Evaluation and trading are float32."""


@dataclass(frozen=True)
class EnsembleConfig:
    """The ensemble the trader serves: the active study's best trials."""
    top_n: int = field(default=10, metadata=between(1, 1000, "an integer"))
    """Members: the active study's best COMPLETE trials."""
    min_members: int = field(default=5, metadata=between(1, 1000, "an integer"))
    """Fewer qualifying trials: the fallback below."""
    keep_versions: int = field(default=5, metadata=between(1, 10_000, "an integer"))
    """Published versions kept on disk."""
    weighting: str = field(default="equal", metadata=choice("equal", "value"))
    """How members' target weights are blended: equally, or by CV value."""
    min_value: float | None = field(default=0.0, metadata=between(-100, 100))
    """Only trials whose CV value (excess Sharpe over equal-weight buy-and-hold under the same
    rules, less a spread penalty) reaches this join; null: any COMPLETE trial."""
    fallback: str = field(default="cash", metadata=choice(
        "cash", "hold_equal_weight", "hold_vol_managed", "keep_current"))
    """What the trader trades while fewer than min_members qualify: cash (sell and wait),
    hold_equal_weight (the benchmark, under the same risk rules), hold_vol_managed (equal
    weights scaled to the median of their last month's weekly volatility, at most fully
    invested: benchmarks/holding_rules.py measures it), keep_current (the last published
    version, however old)."""
    near_constant: str = field(default="refuse", metadata=choice("refuse", "admit"))
    """A trial flagged near-constant in training (its target weights barely move whatever the
    market does: it holds about one portfolio) never joins (refuse): holding is cheaper served
    as the fallback; admit: it may (short demo trials)."""
    max_similar: int | None = field(default=None, metadata=between(1, 1000, "an integer"))
    """At most this many members with near-identical hyperparameters, e.g. 2; null: no limit."""
    risk_mismatch: str = field(default="refuse", metadata=choice("refuse", "warn"))
    """A member trained under other risk rules or costs than the live ones (trailing stop,
    stop loss, caps, fee, slippage, min notional): refused, or served with a warning."""


@dataclass(frozen=True)
class RiskConfig:
    """The trader's risk rules (models are trained under the same ones)."""
    trailing_stop_pct: float | None = field(default=None, metadata=FRACTION)
    """Exit when the price is at or below the highest price since entry x (1 - this), e.g.
    0.10; null (the default): no trailing stop. Measured on hourly bars, a 10% stop made
    holding itself worse (lower Sharpe and deeper drawdown) in 2 of 3 windows on both asset
    sets (docs/holding-rules.md). Models are trained and served under the same choice."""
    stop_check: str = field(default="intrabar", metadata=choice("intrabar", "close"))
    """intrabar: stops fire when the price touches the level (a bar's open or low, and the
    latest trade every intrabar_check_s between bars); close: only a bar closing at or below
    the level exits, at that close, and the peak is the highest close."""
    stop_loss_pct: float | None = field(default=None, metadata=FRACTION)
    """Exit when the price is at or below entry x (1 - this), e.g. 0.05; null: none."""
    max_position_pct: float = field(default=0.30, metadata=check(
        "a number in (0, 1]", lambda v: 0 < v <= 1, exclusiveMinimum=0, maximum=1))
    """Of equity, per asset."""
    min_cash_reserve_pct: float = field(default=0.05, metadata=check(
        "a number in [0, 1)", lambda v: 0 <= v < 1, minimum=0, exclusiveMaximum=1))
    """Of equity, always kept in cash."""
    max_drawdown_halt_pct: float | None = field(default=None, metadata=FRACTION)
    """Stop opening positions past this drawdown from the peak, e.g. 0.25; null: never."""
    intrabar_check_s: float = field(default=60.0, metadata=between(1, 3600))
    """Stops are also checked this often between bars."""
    stale_bar_limit_bars: int = field(default=2, metadata=between(1, 1000, "an integer"))
    """Never trade on a bar older than this many bars."""
    reentry_cooldown_bars: int = field(default=24, metadata=between(0, 10_000, "an integer"))
    """After a stop exit, the asset is not bought again for this many bars (0: at once)."""


# Alpaca refuses a crypto order worth less than this (403 "cost basis must be >= minimal
# amount of order 1"): what is left of a position below it is dust, which cannot be sold.
ALPACA_MIN_ORDER_VALUE = 1.0


@dataclass(frozen=True)
class BrokerConfig:
    """Where orders go, and what they cost."""
    kind: str = field(default="sim", metadata=choice("sim", "alpaca"))
    """sim: the built-in simulated broker; alpaca: Alpaca's paper account (only ever paper)."""
    maker_fee: float = field(default=0.0015, metadata=check(
        "a number in [0, 0.1)", lambda v: 0 <= v < 0.1, minimum=0, exclusiveMaximum=0.1))
    """Alpaca crypto fee tier 1."""
    taker_fee: float = field(default=0.0025, metadata=check(
        "a number in [0, 0.1)", lambda v: 0 <= v < 0.1, minimum=0, exclusiveMaximum=0.1))
    """What a market order pays, of its value (training and backtests charge the same)."""
    slippage_bps: float = field(default=5.0, metadata=between(0, 10_000))
    """Fills this much worse than the price (the sim broker, training and backtests)."""
    min_order_notional: float = field(default=10.0, metadata=between(0, 1e9))
    """USD; smaller orders are not sent."""
    initial_cash: float = field(default=100_000.0, metadata=between(1, 1e12))
    """The sim broker's starting cash."""
    url_override: str | None = None
    """Tests: a local Alpaca emulator, for trading and market data alike."""
    api_key_id: str | None = None
    """Never here in production: systemd credentials (LoadCredential=) or the environment
    (APCA_API_KEY_ID, APCA_API_SECRET_KEY). `config check` masks it."""
    api_secret_key: str | None = None
    """As api_key_id."""


@dataclass(frozen=True)
class DeployConfig:
    """The hourly auto-deployer's gates for promoting a new best trial."""
    min_improvement: float = field(default=0.1, metadata=between(0, 100))
    """Held-out Sharpe the candidate must add over the current ensemble."""
    max_pbo: float = field(default=0.5, metadata=FRACTION)
    """The probability of backtest overfitting must stay at or below this."""
    min_deflated_sharpe: float = field(default=0.5, metadata=check(
        "a number in [0, 1]", lambda v: 0 <= v <= 1, minimum=0, maximum=1))
    """The deflated Sharpe ratio (a probability) must reach this."""
    promotion: str = field(default="pin", metadata=choice("pin", "alone"))
    """pin: the candidate joins the next ensemble; alone: it is the ensemble."""


@dataclass(frozen=True)
class MonitorConfig:
    """cappuccino-monitor.timer, every 5 minutes: one alert per incident."""
    training_stall_minutes: float = field(default=120.0, metadata=between(0.001, 525_600))
    """Trainers run but no trial finished for this long."""
    ensemble_max_age_hours: float = field(default=24.0, metadata=between(0.001, 87_600))
    """The current ensemble is older than this."""
    drawdown_alert_pct: float = field(default=0.15, metadata=FRACTION)
    """A portfolio below its peak by this much."""
    min_free_disk_pct: float = field(default=0.10, metadata=FRACTION)
    """Free space on the state dir's disk."""
    metrics_textfile: str | None = None
    """Prometheus metrics for node_exporter's textfile collector (its
    --collector.textfile.directory); null: <state_dir>/metrics/cappuccino.prom."""


@dataclass(frozen=True)
class AlertsConfig:
    """Every channel listed is used; a failing one is logged, never fatal."""
    urls: list[str] = field(default_factory=list)
    """Apprise URLs (https://github.com/caronc/apprise/wiki), one per channel:
    tgram://BOT_TOKEN/CHAT_ID (Telegram), ntfy://TOPIC (phone push), pover://USER_KEY@APP_TOKEN
    (Pushover), discord://WEBHOOK_ID/TOKEN, slack://TOKEN_A/TOKEN_B/TOKEN_C,
    mailto://user:pw@host, json://hooks.example.com/cappuccino (jsons:// for https).
    They hold tokens: keep this file 0640 root:cappuccino (`config check` masks them).
    "TAG[,TAG]=URL" routes by tags: the channel gets only the alerts whose severity
    (info|warning|error|critical) or type (incident, resolved, stop-exit, trader-degraded,
    trader-recovered, unit-failed, ensemble-version, promotion, summary) is one of them; a URL
    without tags gets everything."""
    timeout_s: float = field(default=10.0, metadata=between(0.5, 300))
    """How long one channel may take."""
    daily_summary_at: str | None = field(default=None, metadata=check(
        "a time of day like 08:00 (UTC)",
        lambda v: bool(re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v)),
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$"))
    """A summary (equity, P&L, trades, stops, ensemble, training) once a day at HH:MM UTC,
    e.g. "08:00", sent by the first monitor run at or after it; null: none."""


@dataclass(frozen=True)
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    # Not from cappuccino.yaml: where the files were read, which were, and the active study.
    config_dir: str = field(default=DEFAULT_CONFIG_DIR, metadata={"internal": True})
    active_study: str | None = field(default=None, metadata={"internal": True})
    files_read: tuple[str, ...] = field(default=(), metadata={"internal": True})

    @property
    def storage_url(self) -> str:
        """The configured storage URL, or the embedded SQLite file in the state dir."""
        if self.storage.url:
            return self.storage.url
        return f"sqlite:///{Path(self.paths.state_dir).resolve() / 'cappuccino.db'}"

    @property
    def state_dir(self) -> Path:
        return Path(self.paths.state_dir)

    @property
    def cache_dir(self) -> Path:
        systemd = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
        return Path(self.paths.cache_dir or systemd or self.state_dir / "cache")

    @property
    def artifact_cache_dir(self) -> Path:
        return Path(self.artifacts.cache_dir or self.state_dir / "artifact-cache")

    @property
    def bar_seconds(self) -> int:
        return TIMEFRAMES[self.data.timeframe]


# --- the generic validator --------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if get_origin(tp) is list:
        return "a list of " + _type_name(get_args(tp)[0]).removeprefix("a ").removeprefix("an ") + "s"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return names.get(tp, str(tp))


def _coerce(tp: Any, value: Any, file: str, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError. Only lossless conversions are made."""
    args = [a for a in get_args(tp) if a is not type(None)]
    if type(None) in get_args(tp):  # optional
        if value is None:
            return None
        tp = args[0]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, file, key)
    if get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(file, key, value, _type_name(tp))
        return [_coerce(get_args(tp)[0], v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(file, key, value, "a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (dt.date, dt.datetime)):  # an unquoted date in the YAML
            return value.isoformat()
    raise ConfigError(file, key, value, _type_name(tp))


def _build(cls: type, raw: Any, file: str, prefix: str = "",
           errors: list[ConfigError] | None = None) -> Any:
    """`cls` from the mapping `raw`. Every bad key is appended to `errors` (and left at its
    default) so that all of them can be reported at once; raises when `errors` is None."""
    collect = errors if errors is not None else []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(file, prefix, raw, "a mapping")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        try:
            if key not in fields:
                close = difflib.get_close_matches(str(key), fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                hint = f" ({REPLACED[path]})" if path in REPLACED else hint
                raise ConfigError(file, path, _NO_VALUE, f"one of the keys {', '.join(fields)}",
                                  got=f", got the unknown key {key!r}{hint}")
            f = fields[key]
            sub = get_args(hints[key]) or (hints[key],)
            if dataclasses.is_dataclass(hints[key]) or any(dataclasses.is_dataclass(a) for a in sub):
                coerced = _build(hints[key], value, file, path, collect)
            else:
                coerced = _coerce(hints[key], value, file, path)
            checked = f.metadata.get("check")
            if checked and coerced is not None and not checked[1](coerced):
                raise ConfigError(file, path, value, checked[0])
            values[key] = coerced
        except ConfigError as e:
            collect.append(e)
    if errors is None and collect:
        raise collect[0] if len(collect) == 1 else ConfigErrors(collect)
    return cls(**values)


YAML_MAX_NODES, YAML_MAX_DEPTH, YAML_MAX_BYTES = 10_000, 40, 1 << 20


class _Loader(yaml.SafeLoader):
    """YAML as an operator means it: an unquoted date stays text (the schema checks it, so
    2023-13-45 is a clear error, not a crash), and a key given twice is an error (YAML would
    silently keep the last one: a second `ensemble:` block replacing the first)."""

    def compose_node(self, parent, index):
        """Resource limits while composing: shallow nesting, and a document that stays small
        once its aliases are expanded, are all a configuration needs; an alias bomb or 20,000
        nested brackets is refused at once, before anything walks it."""
        self._depth = getattr(self, "_depth", 0) + 1
        sizes = self.__dict__.setdefault("_sizes", {})  # node -> its size with aliases expanded
        try:
            if self._depth > YAML_MAX_DEPTH:
                self._refuse(f"more than {YAML_MAX_DEPTH} levels of nesting",
                             self.peek_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) not in sizes:
            children = (node.value if isinstance(node, yaml.SequenceNode) else
                        [n for pair in node.value for n in pair]
                        if isinstance(node, yaml.MappingNode) else [])
            sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in children)
            if sizes[id(node)] > YAML_MAX_NODES:
                self._refuse(f"more than {YAML_MAX_NODES:,} values once its aliases are "
                             "expanded", node.start_mark)
        return node

    @staticmethod
    def _refuse(what: str, mark):
        raise yaml.composer.ComposerError(None, None, f"{what} (a configuration needs far "
                                          "fewer: an alias bomb?)", mark)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges keys (standard YAML): what follows overrides
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _read_yaml(path: Path) -> Any:
    try:
        if path.stat().st_size > YAML_MAX_BYTES:
            raise ConfigError(path.name, "", _NO_VALUE, f"a file under {YAML_MAX_BYTES >> 20} "
                              f"MiB, got {path.stat().st_size:,} bytes")
        return yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(path.name, "", _NO_VALUE,
                          f"valid YAML (error at {where}: {problem})") from e
    except UnicodeDecodeError as e:
        raise ConfigError(path.name, "", _NO_VALUE, "a UTF-8 text file",
                          got=f" (byte {e.start} is not UTF-8: binary or UTF-16?)") from e
    except OSError as e:
        raise ConfigError(str(path), "", _NO_VALUE, f"a readable file ({e.strerror})") from e


def resolve_config_dir(config_dir: str | os.PathLike | None = None) -> Path:
    """`--config-dir`, else `$CAPPUCCINO_CONFIG_DIR`, else /etc/cappuccino. A directory named
    explicitly must exist (a typo would otherwise run on silent defaults); the default one may
    be absent (the embedded defaults)."""
    named = config_dir or os.environ.get("CAPPUCCINO_CONFIG_DIR")
    path = Path(named or DEFAULT_CONFIG_DIR)
    if named and not path.is_dir():
        raise ConfigError(str(path), "", _NO_VALUE, "an existing configuration directory",
                          got=" (it does not exist)")
    return path


STUDY_NAME_RULE = "a study name of letters, digits, '_', '.', '-' (at most 64, not starting with '.')"


def check_study_name(name, where: str = "command line", key: str = "--study") -> str:
    """A study name is also a directory name (artifacts): only a safe pattern passes."""
    if not isinstance(name, str) or not STUDY_NAME_RE.match(name):
        raise ConfigError(where, key, name, STUDY_NAME_RULE)
    return name


def _present(path: Path) -> bool:
    """Whether a configuration file is there. A link to nowhere (dangling, or a loop) is not
    an absent file to be replaced by defaults: it is an error naming it."""
    if path.exists():
        return True
    if path.is_symlink():
        raise ConfigError(str(path), "", _NO_VALUE, "a configuration file",
                          got=f" (a link to nowhere: -> {os.readlink(path)})")
    return False


def load_active_study(config_dir: str | os.PathLike | None = None) -> str | None:
    """The study named in active_study.yaml, or None when the file does not exist."""
    path = resolve_config_dir(config_dir) / ACTIVE_STUDY_FILE
    if not _present(path):
        return None
    raw = _read_yaml(path)
    if not isinstance(raw, dict) or set(raw) - {"study"}:
        extra = sorted(set(raw) - {"study"}) if isinstance(raw, dict) else None
        raise ConfigError(ACTIVE_STUDY_FILE, extra[0] if extra else "", _NO_VALUE if extra else raw,
                          "a mapping with the single key 'study'")
    return check_study_name(raw.get("study"), ACTIVE_STUDY_FILE, "study")


def load_config(config_dir: str | os.PathLike | None = None) -> Config:
    """Read and validate both files. A missing cappuccino.yaml means all defaults."""
    directory = resolve_config_dir(config_dir)
    path = directory / CONFIG_FILE
    raw = _read_yaml(path) if _present(path) else {}
    cfg = _build(Config, raw, CONFIG_FILE)
    _check_cross_fields(cfg)
    read = tuple(str(p) for p in (path, directory / ACTIVE_STUDY_FILE) if p.exists())
    if path.exists():
        _warn_if_readable_secrets(path, cfg)
    return dataclasses.replace(cfg, config_dir=str(directory), files_read=read,
                               active_study=load_active_study(directory))


def _warn_if_readable_secrets(path: Path, cfg: Config) -> None:
    """A file holding a password or a key should not be readable by every user."""
    secrets = [k for k, v in _flatten(effective_config(cfg, masked=False)).items()
               if v and (SECRET_KEY_RE.search(k.split(".")[-1]) or
                         (isinstance(v, str) and URL_PASSWORD_RE.search(v)))]
    if secrets and path.stat().st_mode & 0o004:
        logging.getLogger("cappuccino.config").warning(
            "%s holds secrets (%s) and is readable by every user: chmod 640 (root:cappuccino)",
            path, ", ".join(secrets))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def _check_cross_fields(cfg: Config) -> None:
    if cfg.ensemble.min_members > cfg.ensemble.top_n:
        raise ConfigError(CONFIG_FILE, "ensemble.min_members", cfg.ensemble.min_members,
                          f"a number <= ensemble.top_n ({cfg.ensemble.top_n})")
    if cfg.training.heartbeat_grace_s <= cfg.training.heartbeat_interval_s:
        raise ConfigError(CONFIG_FILE, "training.heartbeat_grace_s", cfg.training.heartbeat_grace_s,
                          "a number > training.heartbeat_interval_s "
                          f"({cfg.training.heartbeat_interval_s})")
    if cfg.training.cv_test_groups >= cfg.training.cv_groups:
        raise ConfigError(CONFIG_FILE, "training.cv_test_groups", cfg.training.cv_test_groups,
                          f"a number < training.cv_groups ({cfg.training.cv_groups})")
    if cfg.risk.max_position_pct + cfg.risk.min_cash_reserve_pct <= 0:
        raise ConfigError(CONFIG_FILE, "risk.max_position_pct", cfg.risk.max_position_pct,
                          "room to hold something after the cash reserve")
    if cfg.data.start and cfg.data.end and _utc(cfg.data.start) >= _utc(cfg.data.end):
        raise ConfigError(CONFIG_FILE, "data.end", cfg.data.end,
                          f"a date after data.start ({cfg.data.start})")
    if cfg.artifacts.store == "s3" and not cfg.artifacts.s3_bucket:
        raise ConfigError(CONFIG_FILE, "artifacts.s3_bucket", None,
                          "a bucket name when artifacts.store is s3")
    if cfg.broker.kind == "alpaca" and cfg.broker.min_order_notional < ALPACA_MIN_ORDER_VALUE:
        raise ConfigError(CONFIG_FILE, "broker.min_order_notional", cfg.broker.min_order_notional,
                          f"at least Alpaca's own minimum order value, "
                          f"{ALPACA_MIN_ORDER_VALUE:g} USD")
    if cfg.broker.kind == "alpaca" and cfg.data.source != "alpaca":
        raise ConfigError(CONFIG_FILE, "data.source", cfg.data.source,
                          "alpaca when broker.kind is alpaca (a trader on a live account needs "
                          "live bars: files never get a new bar, so it would never trade)")


# --- showing the effective configuration -----------------------------------------------------

SECRET_KEY_RE = re.compile(r"(secret|password|token|api_key|webhook_url|^urls$)", re.I)


def mask_secrets(value: Any, key: str = "") -> Any:
    """A copy of `value` with secrets replaced by '***' (keys named like secrets, URL passwords)."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if value is not None and SECRET_KEY_RE.search(key):
        return "***"
    if isinstance(value, str):
        return mask_text(value)
    return value


def effective_config(cfg: Config, masked: bool = True) -> dict:
    """The configuration as a plain dict, secrets masked, with derived values filled in."""
    d = dataclasses.asdict(cfg)
    d["storage"]["url"] = cfg.storage_url if masked else cfg.storage.url
    return mask_secrets(d) if masked else d


def path_problems(cfg: Config) -> list[ConfigError]:
    """What `config check` refuses about the paths beyond their syntax: a CSV directory that
    is not there (a link to nowhere included: the bundled sample is never silently used
    instead), a directory setting that names a file."""
    problems = []
    source = CONFIG_FILE
    if cfg.data.source == "csv" and cfg.data.csv_path is not None:
        p = Path(cfg.data.csv_path)
        if not p.is_dir():
            why = ("a link to nowhere" if p.is_symlink() and not p.exists() else
                   "a file" if p.exists() else "nothing there")
            problems.append(ConfigError(source, "data.csv_path", cfg.data.csv_path,
                                        "an existing directory of CSV files", got=f", got "
                                        f"{cfg.data.csv_path!r}: {why}"))
    for key, value in (("paths.state_dir", cfg.paths.state_dir),
                       ("paths.cache_dir", cfg.paths.cache_dir),
                       ("artifacts.path", cfg.artifacts.path),
                       ("artifacts.cache_dir", cfg.artifacts.cache_dir)):
        if value is not None and Path(value).exists() and not Path(value).is_dir():
            problems.append(ConfigError(source, key, value, "a directory (or nothing yet)",
                                        got=f", got {value!r}: a file"))
    return problems


# --- writing a setting ---------------------------------------------------------------------------

def set_config_values(config_dir: str | os.PathLike, section: str, values: dict[str, Any]) -> Path:
    """Set `section.key: value` in cappuccino.yaml, keeping the rest of the file (comments
    included) as it is; the file is replaced atomically and checked by the validator after.
    A cappuccino.yaml that is a link is written through (the link stays); a section in flow
    style is refused (`check_rewritable`, which a command calls before its work)."""
    path = check_rewritable(config_dir, section)
    lines = path.read_text().splitlines() if path.exists() else []
    head = next((i for i, line in enumerate(lines) if re.match(rf"^{section}:\s*(#.*)?$", line)),
                None)
    if head is None:
        lines += [f"{section}:"]
        head = len(lines) - 1
    end = next((i for i in range(head + 1, len(lines))
                if lines[i].strip() and not lines[i].startswith((" ", "\t", "#"))), len(lines))
    for key, value in values.items():
        rendered = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        for i in range(head + 1, end):
            m = re.match(rf"^(\s+){key}:(\s*)([^#]*?)(\s*#.*)?$", lines[i])
            if m:
                lines[i] = f"{m[1]}{key}: {rendered}{m[4] or ''}"
                break
        else:
            lines.insert(head + 1, f"  {key}: {rendered}")
            end += 1
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text("\n".join(lines) + "\n")
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        written = _build(Config, _read_yaml(tmp), CONFIG_FILE)
        got = {k: getattr(getattr(written, section), k) for k in values}
        if got != values:
            raise ConfigError(CONFIG_FILE, section, _NO_VALUE, f"a file where {values} can be "
                              f"set", got=f" (the edit read back as {got}: edit it by hand)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_rewritable(config_dir: str | os.PathLike, section: str) -> Path:
    """The file `set_config_values` would write (a link's target), or ConfigError when it
    cannot set keys of `section` there: a section in flow style (`data: {...}`) is the
    operator's layout, not rewritten behind their back."""
    path = Path(config_dir) / CONFIG_FILE
    if path.is_symlink():
        path = path.resolve()
    lines = path.read_text().splitlines() if path.exists() else []
    if any(re.match(rf"^{section}:\s*[{{\[]", line) for line in lines):
        raise ConfigError(str(path), section, _NO_VALUE, f"`{section}:` as a block (one key "
                          "a line) for cappuccino to set keys in it; it is in flow style: "
                          "write it as a block, or set the keys by hand")
    return path


def write_active_study(config_dir: str | Path, name: str) -> Path:
    """Write active_study.yaml atomically (a complete temporary file, then one rename), so a
    reader (or the path unit) never sees half a file."""
    check_study_name(name, ACTIVE_STUDY_FILE, "study")
    return atomic_write_text(Path(config_dir) / ACTIVE_STUDY_FILE,
                             "# The study that training, the ensemble and the trader follow.\n"
                             "# Written by `cappuccino study activate`.\n"
                             + yaml.safe_dump({"study": name}))

"""optuna-dashboard on the product's studies: how to run it for the configured storage and
artifact store (`cappuccino study list` prints it), and `cappuccino dashboard`, which serves it
with the product's own artifact store, so that models download from the dashboard whatever
`artifacts.store` is (optuna-dashboard's command line knows a directory and, through a TOML
file, S3, but not the database store).

optuna-dashboard is not a dependency of the services: an operator installs it where they
browse (`PACKAGE`, the version the tests run).
"""

from __future__ import annotations

from ..common.config import Config, mask_text
from ..storage.database import driver_url, is_sqlite

PACKAGE = "optuna-dashboard==0.21.0"


def install_command(cfg: Config) -> str:
    """The pip line that makes the dashboard command work in a fresh virtualenv."""
    extra = [] if is_sqlite(cfg.storage_url) else ["psycopg2-binary"]  # the storage's driver
    if cfg.artifacts.store == "s3":
        extra.append("boto3")
    return "pip install " + " ".join(f"'{p}'" for p in [PACKAGE, *extra])


def dashboard_command(cfg: Config) -> str:
    """optuna-dashboard's own command line for the configured storage (password masked), with
    the artifact store where its command line can name it."""
    command = f"optuna-dashboard '{mask_text(driver_url(cfg.storage_url))}'"
    a = cfg.artifacts
    if a.store == "filesystem":
        command += f" --artifact-dir {a.path or cfg.state_dir / 'artifacts'}"
    elif a.store == "s3":
        command += " --from-config cappuccino-dashboard.toml"
    return command


def s3_config_toml(cfg: Config) -> str:
    """optuna-dashboard's TOML configuration for the S3 store (`--from-config`); the
    credentials come from the usual AWS environment variables or files."""
    a = cfg.artifacts
    lines = ["[artifact_store.boto3]", f'bucket_name = "{a.s3_bucket}"']
    return "\n".join(lines) + "\n"


def how_to_browse(cfg: Config) -> list[str]:
    """What `study list` prints under the table."""
    lines = ["browse them (trials, splits, PPO diagnostics, model artifacts):",
             f"  {install_command(cfg)}", f"  {dashboard_command(cfg)}"]
    a = cfg.artifacts
    if a.store == "s3":
        lines += ["  with cappuccino-dashboard.toml:",
                  *(f"    {line}" for line in s3_config_toml(cfg).splitlines()),
                  f"  and AWS_ENDPOINT_URL={a.s3_endpoint_url or '(AWS)'}"
                  + (f" AWS_DEFAULT_REGION={a.s3_region}" if a.s3_region else "")
                  + " plus the bucket's credentials in the environment"]
    elif a.store == "database":
        lines.append("  (optuna-dashboard's command line cannot read the database artifact "
                     "store: the trials show, the models do not download)")
    lines.append("  or, with models downloadable from any store: cappuccino dashboard "
                 "(needs the same pip line in the suite's virtualenv)")
    return lines


def serve(cfg: Config, host: str, port: int) -> None:
    """optuna-dashboard on the configured storage with the product's artifact store; blocks."""
    try:
        import optuna_dashboard
    except ImportError as e:
        raise SystemExit(f"optuna-dashboard is not installed here: {install_command(cfg)}") \
            from e
    from ..artifacts.store import make_store
    from ..storage.database import make_optuna_storage, read_engine
    engine = read_engine(cfg)
    storage = make_optuna_storage(cfg.storage_url)
    print(f"optuna-dashboard on {mask_text(cfg.storage_url)}, artifacts from the "
          f"{cfg.artifacts.store} store: http://{host}:{port}/", flush=True)
    optuna_dashboard.run_server(storage, host=host, port=port,
                                artifact_store=make_store(cfg, engine))

"""Studies: the active one, and importing studies from another storage. (Which studies exist
and how far they are: `optuna_db.study_summaries`.)"""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml

from .config import ACTIVE_STUDY_FILE, Config, ConfigError, check_study_name
from .files import atomic_write_text
from .storage import make_optuna_storage, optuna_storage


def write_active_study(config_dir: str | Path, name: str) -> Path:
    """Write active_study.yaml atomically (a complete temporary file, then one rename), so a
    reader (or the path unit) never sees half a file."""
    check_study_name(name, ACTIVE_STUDY_FILE, "study")
    return atomic_write_text(Path(config_dir) / ACTIVE_STUDY_FILE,
                             "# The study that training, the ensemble and the trader follow.\n"
                             "# Written by `cappuccino study activate`.\n"
                             + yaml.safe_dump({"study": name}))


def import_studies(cfg: Config, source_url: str, names: list[str] | None = None) -> list[str]:
    """Copy studies (all, or `names`) from another storage into the configured one. A study
    that already exists here is left alone."""
    path = source_url.removeprefix("sqlite:///") if source_url.startswith("sqlite:///") else None
    if path is not None and not Path(path).is_file():
        raise ConfigError("command line", "--from", source_url,
                          "an existing storage (no such SQLite file; nothing was created)")
    source = make_optuna_storage(source_url)
    target = optuna_storage(cfg)
    wanted = names or [s.study_name for s in optuna.get_all_study_summaries(source)]
    existing = {s.study_name for s in optuna.get_all_study_summaries(target)}
    copied = []
    for name in wanted:
        if name in existing:
            continue
        optuna.copy_study(from_study_name=name, from_storage=source, to_storage=target)
        copied.append(name)
    return copied

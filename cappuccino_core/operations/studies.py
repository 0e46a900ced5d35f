"""Studies: importing studies from another storage, deleting one (writing the active one:
`config.write_active_study`). (Which
studies exist and how far they are: `optuna_db.study_summaries`.)"""

from __future__ import annotations

from pathlib import Path

import optuna

from ..common.config import Config, ConfigError
from ..common.errors import CappuccinoError
from ..storage.database import make_optuna_storage, optuna_storage


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


class StudyRefused(CappuccinoError):
    """A study that must not be changed this way (the active one, the one being traded)."""
    label = "study refused"


def delete_study(cfg: Config, engine, name: str) -> dict[str, int]:
    """Delete study `name`: its trials (Optuna), its models in the artifact store and their
    records. Refused for the active study and for the study the current ensemble serves.
    Returns what was removed."""
    from sqlalchemy import delete, select

    from ..artifacts.store import make_store
    from ..ensemble.manifest import current_manifest, ensembles_dir
    from ..storage.database import trial_artifacts
    from ..storage.optuna_db import STATES, study_exists, trial_count
    if name == cfg.active_study:
        raise StudyRefused(f"study {name!r} is the active study: activate another first "
                           "(cappuccino study activate NAME)")
    current = current_manifest(ensembles_dir(cfg))
    if current is not None and current.study == name:
        raise StudyRefused(f"study {name!r} is what the current ensemble v{current.version} "
                           "serves: sync the active study's ensemble first")
    if not study_exists(engine, name):
        raise StudyRefused(f"study {name!r} does not exist in {cfg.storage_url.split('@')[-1]}")
    trials = trial_count(engine, name, STATES)
    store = make_store(cfg, engine)
    with engine.connect() as conn:
        artifact_ids = list(conn.execute(select(trial_artifacts.c.artifact_id).where(
            trial_artifacts.c.study == name)).scalars())
    for artifact_id in artifact_ids:  # models first: a crash leaves records, never orphans
        try:
            store.remove(artifact_id)
        except Exception:  # noqa: BLE001 - gone already (ArtifactNotFound, a missing file)
            pass
    with engine.begin() as conn:
        conn.execute(delete(trial_artifacts).where(trial_artifacts.c.study == name))
    optuna.delete_study(study_name=name, storage=optuna_storage(cfg))
    return {"trials": trials, "models": len(artifact_ids)}

"""The run folder: where a search job keeps everything it needs to be reviewed, exported and resumed.

    runs/NAME/
      config.yaml       the job file as validated (all defaults filled in)
      study.journal     the Optuna study (journal file storage, safe for one driver), unless the job
                        names an RDB URL in run.storage; the study is named after the job
      checkpoint.json   the searcher's state and the driver's (asked candidates not yet recorded, counters),
                        written atomically after every ask and every tell
      log.txt           what the driver did, one line per event
      .driver.lock      held (flock) by the driver working on the folder: one driver per run at a time;
                        the kernel releases it when the driver dies

Study user attributes: `decomp:normalizer` (JSON of `search.pareto.Normalizer`, fixed once per study so
hypervolumes stay comparable over time and across resumes) and `decomp:objectives` / `decomp:constraints`.
Trial attributes are those of `search.study.record_trial`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import optuna
import yaml

from cluster.config import JobConfig, load_config
from decomp.errors import SpecError

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "JOURNAL",
    "LOG",
    "NORMALIZER_ATTR",
    "open_study",
    "read_checkpoint",
    "read_run_config",
    "storage_of",
    "write_atomically",
    "write_run_config",
]

CONFIG, JOURNAL, CHECKPOINT, LOG = "config.yaml", "study.journal", "checkpoint.json", "log.txt"
NORMALIZER_ATTR = "decomp:normalizer"


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file renamed into place: a reader (or a resumed run)
    sees the old content or the new, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run_config(folder: Path, config: JobConfig) -> None:
    write_atomically(folder / CONFIG, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def read_run_config(folder: str | Path) -> JobConfig:
    """The job config a run was started with; a folder without one is not a run folder."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise SpecError(
            f"{folder} is not a run folder (no {CONFIG}); give the folder a search wrote, e.g. runs/quickstart"
        )
    return load_config(folder / CONFIG)


def storage_of(folder: Path, config: JobConfig) -> str | optuna.storages.BaseStorage:
    """The run's Optuna storage: the job's RDB URL, else the journal file in the run folder."""
    if config.run.storage:
        return config.run.storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(folder / JOURNAL)))


def open_study(folder: str | Path) -> tuple[JobConfig, optuna.Study]:
    """The run's config and its study (which must exist: the run has recorded at least its start)."""
    folder = Path(folder)
    config = read_run_config(folder)
    try:
        study = optuna.load_study(study_name=config.name, storage=storage_of(folder, config))
    except KeyError:
        raise SpecError(f"run {folder} has no study named {config.name!r} in its storage yet") from None
    return config, study


def read_checkpoint(folder: Path) -> dict[str, Any] | None:
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SpecError(f"checkpoint {path} is not valid JSON ({err}); it was changed by hand?") from None

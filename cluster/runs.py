"""The run folder: where a search job keeps everything it needs to be reviewed, exported and resumed.

    runs/NAME/
      config.yaml       the job file as validated (all defaults filled in)
      study.journal     the Optuna study (journal file storage, safe for one driver), unless the job
                        names an RDB URL in run.storage; the study is named after the job
      checkpoint.json   the searcher's state and the driver's (asked candidates not yet recorded, counters),
                        written atomically after every ask and every tell
      log.txt           what the driver did, one line per event
      weights/ID.safetensors  the weights a measured candidate's accuracy was measured with, kept for the
                        candidates that reached the top fidelity level or joined the front (what export loads)
      base/             the base model the job's `train:` section trained (a `decomp train` folder:
        weights.safetensors, summary.json with the request, test accuracy and losses): trained before the
                        search, reused while its request is the job's (on resume, or a fresh start after one
                        that failed later); every candidate is pruned from it
      .driver.lock      held (flock) by the driver working on the folder: one driver per run at a time;
                        the kernel releases it when the driver dies

A fresh start writes nothing before the whole job was checked; one that fails after training its base keeps
`base/` (whole, written atomically) and nothing else, so the same job starts again without training again.

Study user attributes: `decomp:normalizer` (JSON of `search.pareto.Normalizer`, fixed once per study so
hypervolumes stay comparable over time and across resumes) and `decomp:objectives` / `decomp:constraints`.
Trial attributes are those of `search.study.record_trial`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import yaml

from cluster.config import JobConfig, load_config
from decomp.errors import SpecError
from decomp.files import write_atomically
from search.records import Constraint, Objective
from search.study import create_study

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "JOURNAL",
    "LOCK",
    "LOG",
    "CONSTRAINTS_ATTR",
    "NORMALIZER_ATTR",
    "OBJECTIVES_ATTR",
    "WEIGHTS",
    "BASE",
    "RunLock",
    "RunLog",
    "abandon_run",
    "base_weights",
    "open_run",
    "open_study",
    "read_run_config",
    "run_study",
    "storage_of",
    "write_run_config",
]

CONFIG, JOURNAL, CHECKPOINT, LOG, LOCK = "config.yaml", "study.journal", "checkpoint.json", "log.txt", ".driver.lock"
WEIGHTS = "weights"  # weights/<candidate id>.safetensors: a measured candidate's weights, where kept
BASE = "base"  # base/weights.safetensors + summary.json: the base model the job's train: section trained
NORMALIZER_ATTR = "decomp:normalizer"
OBJECTIVES_ATTR, CONSTRAINTS_ATTR = "decomp:objectives", "decomp:constraints"


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


class RunLog:
    """log.txt: one line per event, flushed as written."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - held open for the run, closed in close()

    def __call__(self, line: str) -> str:
        self.file.write(f"{datetime.now().isoformat(timespec='seconds')} {line}\n")
        return line

    def close(self) -> None:
        self.file.close()


class RunLock:
    """Holds an exclusive lock on the run folder while a driver runs (the kernel frees it if the driver dies)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.file = open(folder / LOCK, "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise SpecError(
                f"run {folder} is being driven by another process (pid {holder}); wait for it or stop it"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            self.file.close()


def open_run(config_or_run: JobConfig | str | Path, resume: bool = False) -> tuple[JobConfig, Path]:
    """The job config (relative file names made absolute) and its run folder, checked against what is on disk:
    a fresh start may not overwrite a run, a resume needs a run with the same config."""
    if isinstance(config_or_run, JobConfig):
        config, folder, base = config_or_run, config_or_run.run_folder(), Path.cwd()
    else:
        path = Path(config_or_run)
        if path.is_dir():
            if not resume:
                raise SpecError(f"{path} is a run folder; continue it with --resume (resume=True)")
            return read_run_config(path), path
        if not path.is_file():
            raise SpecError(f"no job file or run folder at {path}")
        config = load_config(path)
        folder, base = config.run_folder(), path.parent
    config = _absolute(config, base)
    if resume:
        stored = read_run_config(folder) if folder.is_dir() else None
        if stored is None:
            raise SpecError(f"nothing to resume at {folder}; start the search without --resume")
        changed = _changed(stored, config)
        if changed:
            raise SpecError(
                f"the job config differs from the run's ({folder / CONFIG}) in: {', '.join(changed)}; resume with the "
                "run folder to continue it as it was, or give the changed job another name or run.folder"
            )
        return stored, folder
    if (folder / CONFIG).is_file():
        raise SpecError(
            f"{folder} already holds a run; continue it with --resume, or set another name or run.folder to start anew"
        )
    if folder.is_dir() and {p.name for p in folder.iterdir()} - {BASE, LOCK}:  # a failed start keeps a trained base
        raise SpecError(f"{folder} exists and is not a run folder; choose another run.folder or empty it")
    return config, folder


def base_weights(folder: Path, config: JobConfig) -> Path | None:
    """The weights of the base model the run trained (None: the job trains none, its own weights are the
    base); a run that trains one and has lost it is an error."""
    from decomp.training import WEIGHTS as TRAINED

    if config.train is None:
        return None
    path = folder / BASE / TRAINED
    if not path.is_file():
        raise SpecError(
            f"run {folder} trains its base model and {path} is missing; decomp search --resume {folder} trains it again"
        )
    return path


def _absolute(config: JobConfig, base: Path) -> JobConfig:
    """Files the job names (weights, op table, calibration, cluster file, python_path: by default the job file's
    folder) as absolute paths, so the run folder's config means the same wherever the run is resumed from."""

    def fix(name: str | None) -> str | None:
        if name is None or Path(name).expanduser().is_absolute():
            return name
        return str((base / name).resolve())

    latency = config.latency.model_copy(
        update={"table": fix(config.latency.table), "calibration": fix(config.latency.calibration)}
    )
    update: dict[str, Any] = {"weights": fix(config.weights), "latency": latency}
    update["python_path"] = config.module_folders(base)
    if isinstance(config.cluster, str) and (base / config.cluster).is_file():
        update["cluster"] = fix(config.cluster)
    return config.model_copy(update=update)


def _changed(a: JobConfig, b: JobConfig) -> list[str]:
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    return [k for k in da if da[k] != db.get(k)]


def run_study(
    folder: Path, config: JobConfig, objectives: Sequence[Objective], constraints: Sequence[Constraint], fresh: bool
) -> optuna.Study:
    """The run's study, created on a fresh start; a study recorded with other objectives or constraints (or,
    on a fresh start, one that already holds trials) is refused."""
    study = create_study(objectives, storage_of(folder, config), study_name=config.name, load_if_exists=True)
    wanted = ([o.to_json() for o in objectives], [c.to_json() for c in constraints])
    attrs = study.user_attrs
    if OBJECTIVES_ATTR not in attrs:
        if fresh and study.get_trials(deepcopy=False):
            raise SpecError(f"the storage already holds a study {config.name!r} with trials; give the job another name")
        study.set_user_attr(OBJECTIVES_ATTR, wanted[0])
        study.set_user_attr(CONSTRAINTS_ATTR, wanted[1])
    elif (attrs[OBJECTIVES_ATTR], attrs.get(CONSTRAINTS_ATTR)) != wanted:
        raise SpecError(
            f"study {config.name!r} was recorded with objectives {attrs[OBJECTIVES_ATTR]} and constraints "
            f"{attrs.get(CONSTRAINTS_ATTR)}, not these; give the job another name"
        )
    return study


def abandon_run(folder: Path, before: set[str] | None) -> None:
    """Undo a fresh start that failed before recording anything: remove the run files it wrote (those not
    among `before`, the folder's names before the start; None: the start made the folder, which goes too), so
    the same job can simply be run again."""
    for name in {CONFIG, LOG, JOURNAL, CHECKPOINT, LOCK} - (before or set()):
        (folder / name).unlink(missing_ok=True)
    if before is None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()

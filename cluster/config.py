"""Search job files (`configs/*.yaml`): what to search, how, on what, and where to keep the run.

A job file is YAML (or JSON) validated by pydantic models with unknown keys forbidden; every error names
the bad key by its path (e.g. `searcher.setings`) and lists the valid keys there. Names that other
registries own are checked against them too: objectives (`search.objectives.OBJECTIVES`), searchers and
their settings (`search.registry.check_searcher`), the space's keys (`search.joint.JointConfig`'s fields),
the cluster (a preset name, a file, or an inline mapping: `decomp.latency.load_cluster`).

Top-level keys:

- `name`: the run's name (default folder `runs/<name>`).
- `model`: a model spec (`torchvision:resnet18`, `hf:gpt2?n_layer=2`, `python:decomp.zoo:lenet5`);
  `weights`: an optional weights file; `input_shape`: the example input's shape, batch included
  (default: the model's own example); `tracer` (`fx` or `export`) and `leaf_modules` (module classes or
  paths fx keeps whole), as `decomp graph --tracer / --leaf-module` take them; `keep`: coupling groups or
  module paths the search leaves whole, as `decomp prune --keep` takes them.
- `data`: a data spec (`mnist?train=4000&test=1000`, `digits`, `synthetic`, `python:...`) for accuracy;
  without it `agreement` with the unpruned model on random inputs is the accuracy measure.
- `train`: `{epochs, lr, batch_size, optimizer, schedule, momentum, weight_decay, shift, rotate, scale, seed}`
  (`TrainSpec`; shift, rotate and scale augment images): train the base model once per run before the search,
  starting from `weights` where given, on the training data less the validation share the search selects on;
  kept in the run folder (`base/`) and reused on resume.
- `base_accuracy`: the test accuracy the base model (trained, or as `weights` loads it) must reach; checked
  before the search, which refuses a base below it with the measured figure.
- `python_path`: folders `python:` model and data modules are also imported from, after the current folder
  and `sys.path` (as `python -m` looks), relative to the job file; default: the job file's folder.
- `objectives`: names, or `{name, direction}` to override the registered direction.
- `constraints`: `{name, max}` or `{name, min}`; bounds may carry units (`2 GiB`, `5 ms`).
- `space`: `search.joint.JointConfig` fields (levels, encoding, mode, max_parts, ...).
- `searcher`: `{name, seed, settings}`.
- `budget`: `{evaluations, seconds}` (at least one; the search stops at the first reached).
- `cluster`: where the candidates will run (the latency model's cluster): preset, file or mapping.
- `latency`: `{micro_batches, batch_size, replicas, table, calibration}` for predicted latency and throughput
  (`replicas`: copies of the pipeline sharing the micro-batches, an integer or `auto` = the cluster's
  devices // the candidate's parts; `decomp export` records it as `decomp run`'s default).
- `evaluators`: `{count, cpus, gpus, threads, retries, in_flight, retry_backoff_s, pause_after}` (Ray actors that
  evaluate; a failed evaluation is retried after `retry_backoff_s`, doubling per retry; `pause_after` candidates
  failing in a row, default max(3, count), pause the search: see `cluster.driver`).
- `accuracy`: `{finetune_epochs, short_epochs, bn_batches, reduction, validation, lr, batch_size,
  max_samples}`: the fidelity levels accuracy is measured at (`AccuracySpec`).
- `run`: `{folder, storage}` (storage: an Optuna RDB URL for shared clusters; default a journal file
  in the run folder).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from decomp.errors import DecompError, SpecError

__all__ = ["JobConfig", "load_config", "parse_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectiveSpec(_Strict):
    name: str
    direction: Literal["minimize", "maximize"] | None = None


class ConstraintSpec(_Strict):
    name: str
    max: float | str | None = None
    min: float | str | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> ConstraintSpec:
        if (self.max is None) == (self.min is None):
            raise ValueError(f"constraint {self.name!r} needs exactly one of max or min")
        return self


class SearcherSpec(_Strict):
    name: str = "nsga2"
    seed: int = 0
    settings: dict[str, Any] = Field(default_factory=dict)


class BudgetSpec(_Strict):
    evaluations: int | None = Field(default=None, ge=1)
    seconds: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some_budget(self) -> BudgetSpec:
        if self.evaluations is None and self.seconds is None:
            raise ValueError("give budget.evaluations, budget.seconds, or both")
        return self


class LatencySpec(_Strict):
    micro_batches: int = Field(default=4, ge=1)
    batch_size: int = Field(default=1, ge=1)  # samples per micro-batch the graph is built at
    replicas: Annotated[int, Field(ge=1)] | Literal["auto"] = 1  # pipeline copies; auto: devices // parts
    table: str | None = None  # op table file (default: the cache of this device key, if any)
    calibration: str | None = None  # calibration file from `decomp calibrate`


class EvaluatorSpec(_Strict):
    count: int = Field(default=2, ge=1)
    cpus: float = Field(default=1.0, gt=0)
    gpus: float = Field(default=0.0, ge=0)
    threads: int = Field(default=1, ge=1)
    retries: int = Field(default=2, ge=0)
    in_flight: int | None = Field(default=None, ge=1)  # default: 2 per evaluator
    retry_backoff_s: float = Field(default=1.0, ge=0)  # before a candidate's first retry; doubles per retry, <= 30 s
    pause_after: int | None = Field(default=None, ge=1)  # failed candidates in a row that pause the search


class AccuracySpec(_Strict):
    """How `accuracy` / `agreement` are measured, at rising fidelity levels (`levels()`): `bn` (the pruned
    model with its BatchNorm statistics re-estimated on `bn_batches` training batches; no gradient step),
    then `short` (`short_epochs` of fine-tuning) and `full` (`finetune_epochs`) where asked for. About
    1 / `reduction` of the candidates climb to each next level (`search.fidelity.Ladder`). Selection uses
    a `validation` share of the training data; the test split is measured for the report only."""

    finetune_epochs: float = Field(default=0.0, ge=0)  # the top level's fine-tune (0: no fine-tune level)
    short_epochs: float | None = Field(default=None, gt=0)  # a cheaper fine-tune level before it
    bn_batches: int = Field(default=8, ge=0)  # 0: score the pruned weights as they are
    reduction: int = Field(default=3, ge=2)
    validation: float = Field(default=0.1, gt=0, lt=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=128, ge=1)
    max_samples: int | None = Field(default=None, ge=1)  # evaluate on at most this many test samples
    only: Literal["bn", "short", "full"] | None = None  # measure every candidate at this one level instead

    @model_validator(mode="after")
    def _short_before_full(self) -> AccuracySpec:
        if self.short_epochs is not None and not self.short_epochs < self.finetune_epochs:
            raise ValueError(
                f"short_epochs ({self.short_epochs:g}) must be less than finetune_epochs ({self.finetune_epochs:g}): "
                "the short fine-tune is the cheaper level before the full one"
            )
        if self.only is not None:
            epochs = {"short": self.short_epochs, "full": self.finetune_epochs}
            if self.only in epochs and not epochs[self.only]:
                name = "short_epochs" if self.only == "short" else "finetune_epochs"
                raise ValueError(f"only: {self.only!r} measures after {name} of fine-tuning; give {name}")
        return self

    def levels(self) -> tuple[str, ...]:
        """The measured levels, cheapest first (one, where `only` names it)."""
        levels = ("bn",) + (("short",) if self.short_epochs else ()) + (("full",) if self.finetune_epochs else ())
        return levels if self.only is None else (self.only,)


class TrainSpec(_Strict):
    """How the run's base model is trained (`decomp.training.TrainRequest` holds the meaning of each key)."""

    epochs: int = Field(ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    schedule: Literal["cosine", "constant"] = "cosine"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    shift: float = Field(default=0.0, ge=0)  # augmentation: each training image moved by up to this many pixels,
    rotate: float = Field(default=0.0, ge=0)  # turned by up to this many degrees,
    scale: float = Field(default=0.0, ge=0, lt=1)  # and resized by up to this share, either way
    seed: int = 0


class RunSpec(_Strict):
    folder: str | None = None  # default runs/<name>
    storage: str | None = None  # an Optuna RDB URL; default a journal file in the run folder


class JobConfig(_Strict):
    name: str
    model: str
    weights: str | None = None
    input_shape: list[int] | None = None
    tracer: Literal["fx", "export"] | None = None  # default: what suits the model spec
    leaf_modules: list[str] = Field(default_factory=list)
    keep: list[str] = Field(default_factory=list)
    python_path: list[str] | None = None
    data: str | None = None
    train: TrainSpec | None = None
    base_accuracy: float | None = Field(default=None, gt=0, le=1)
    objectives: list[str | ObjectiveSpec] = Field(min_length=1)
    constraints: list[ConstraintSpec] = Field(default_factory=list)
    space: dict[str, Any] = Field(default_factory=dict)
    searcher: SearcherSpec = Field(default_factory=SearcherSpec)
    budget: BudgetSpec
    cluster: str | dict[str, Any] = "cpu-host-x2"
    latency: LatencySpec = Field(default_factory=LatencySpec)
    evaluators: EvaluatorSpec = Field(default_factory=EvaluatorSpec)
    accuracy: AccuracySpec = Field(default_factory=AccuracySpec)
    run: RunSpec = Field(default_factory=RunSpec)

    # -- resolved views ------------------------------------------------------------------------------

    def objective_records(self):
        """`search.records.Objective`s, registered directions unless overridden."""
        from search.objectives import objectives_for
        from search.records import Objective

        names = [o if isinstance(o, str) else o.name for o in self.objectives]
        registered = objectives_for(names)
        return tuple(
            Objective(r.name, r.direction if isinstance(o, str) or o.direction is None else o.direction)
            for o, r in zip(self.objectives, registered, strict=True)
        )

    def constraint_records(self):
        """`search.records.Constraint`s, bounds read with their units."""
        from decomp.latency.cluster import parse_any_quantity
        from search.objectives import OBJECTIVES
        from search.records import Constraint

        out = []
        for c in self.constraints:
            if c.name not in OBJECTIVES:
                raise SpecError(f"constraints: unknown quantity {c.name!r}; valid: {', '.join(OBJECTIVES)}")
            bound, sense = (c.max, "<=") if c.max is not None else (c.min, ">=")
            out.append(Constraint(c.name, parse_any_quantity(bound, f"constraints.{c.name}"), sense))
        return tuple(out)

    def joint_config(self):
        """The `search.joint.JointConfig` the `space` section describes."""
        from search.joint import JointConfig

        valid = [f.name for f in dataclasses.fields(JointConfig)]
        unknown = sorted(set(self.space) - set(valid))
        if unknown:
            raise SpecError(f"unknown key(s) {', '.join(unknown)} in space; valid keys: {', '.join(valid)}")
        values = dict(self.space)
        if "levels" in values:
            values["levels"] = tuple(values["levels"])
        return JointConfig(**values)

    def cluster_spec(self, base: Path | None = None):
        from decomp.latency import load_cluster

        if isinstance(self.cluster, str) and base is not None and (base / self.cluster).is_file():
            return load_cluster(base / self.cluster)
        return load_cluster(self.cluster)

    def run_folder(self) -> Path:
        return Path(self.run.folder) if self.run.folder else Path("runs") / self.name

    def base_request(self):
        """The `decomp.training.TrainRequest` that trains the run's base model (None without `train`): the
        job's model and data, from its weights, holding out the validation share the search selects on (the
        same samples: `accuracy.validation` chosen by the searcher's seed)."""
        from decomp.training import TrainRequest

        if self.train is None:
            return None
        return TrainRequest(
            self.model,
            self.data,
            weights=self.weights,
            validation=self.accuracy.validation,
            validation_seed=self.searcher.seed,
            **self.train.model_dump(),
        )

    def module_folders(self, base: Path | None = None) -> list[str]:
        """The folders `python:` modules are also imported from: `python_path` read against `base` (the job
        file's folder), or without it `base` itself."""
        if self.python_path is None:
            return [str(base.resolve())] if base is not None else []
        return [str(_against(p, base)) for p in self.python_path]

    @contextmanager
    def importing(self, base: Path | None = None) -> Iterator[None]:
        """While inside, `python:` modules are also imported from `module_folders(base)`; modules imported stay
        imported after."""
        added = [f for f in self.module_folders(base) if f not in sys.path]
        sys.path.extend(added)
        try:
            yield
        finally:
            for folder in added:
                if folder in sys.path:
                    sys.path.remove(folder)

    def check(self, base: Path | None = None) -> JobConfig:
        """Resolve every name against its registry now, so a typo fails before any work starts."""
        from search.registry import check_searcher

        self.objective_records()
        self.constraint_records()
        joint = self.joint_config()
        cluster = self.cluster_spec(base)
        if joint.max_parts is not None and joint.max_parts > len(cluster.devices):
            raise SpecError(
                f"space.max_parts is {joint.max_parts} but cluster {cluster.name!r} has {len(cluster.devices)} "
                "devices; lower max_parts or use a larger cluster"
            )
        check_searcher(self.searcher.name, self.searcher.settings)
        for key, value in (("train", self.train), ("base_accuracy", self.base_accuracy)):
            if value is not None and not self.data:
                raise SpecError(
                    f"{key} needs the data the base model learns and is tested on: give `data` (e.g. mnist, digits "
                    f"or python:pkg.module:factory), or drop {key}"
                )
        self._check_modules(base)
        return self

    def _check_modules(self, base: Path | None) -> None:
        """The `python:` modules of the model and data specs can be found (the rule in the error if not)."""
        specs = [("model", self.model), ("data", self.data or "")]
        for key, spec in specs:
            if not spec.startswith("python:") or spec.count(":") < 2:
                continue  # not a python spec, or malformed: the spec's own parser says so
            module = spec.partition("?")[0].split(":")[1]
            with self.importing(base):
                here = os.getcwd() not in sys.path and "" not in sys.path
                if here:
                    sys.path.insert(0, os.getcwd())
                try:
                    found = importlib.util.find_spec(module) is not None
                except ModuleNotFoundError as err:  # the module or a package above it; else what it imports
                    if not (err.name and (module == err.name or module.startswith(err.name + "."))):
                        raise SpecError(f"{key}: importing {module!r} for {spec} failed: {err}") from None
                    found = False
                finally:
                    if here:
                        sys.path.remove(os.getcwd())
            if not found:
                folders = ", ".join(self.module_folders(base)) or "none given"
                raise SpecError(
                    f"{key}: no module {module!r} for {spec}; python: modules are imported from the current folder "
                    f"({os.getcwd()}), sys.path, then python_path ({folders}; by default the job file's folder): "
                    "put the module there, or fix its name"
                )


def parse_config(data: Any, source: str = "config", base: Path | None = None) -> JobConfig:
    """Validate a parsed job file; errors name the bad key by path and list the valid keys there."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a job file is a mapping of keys (name, model, objectives, ...), got {type(data)}")
    try:
        config = JobConfig.model_validate(data)
    except ValidationError as err:
        # an objective may be a name or a mapping: report only the branch the input was written as
        errors = [e for e in err.errors() if not (e["type"] == "string_type" and "str" in e["loc"][1:])]
        raise SpecError(f"{source}: " + "; ".join(_explain(e) for e in errors or err.errors())) from None
    try:
        return config.check(base)
    except DecompError as err:  # registry errors (SearchError, ...) carry the valid names already
        raise SpecError(f"{source}: {err}") from None


def load_config(path: str | Path) -> JobConfig:
    """Read and validate a job file (YAML or JSON)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(f"cannot read job file {path}: {err.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise SpecError(f"job file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None
    return parse_config(data, str(path), path.parent)


_SECTIONS: dict[str, type[BaseModel]] = {
    "": JobConfig,
    "searcher": SearcherSpec,
    "budget": BudgetSpec,
    "latency": LatencySpec,
    "evaluators": EvaluatorSpec,
    "accuracy": AccuracySpec,
    "train": TrainSpec,
    "run": RunSpec,
}


def _against(name: str, base: Path | None) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() or base is None else (base / path).resolve()


def _explain(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error["loc"] if p not in ("str", "ObjectiveSpec")]
    where = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        section = ".".join(p for p in loc[:-1] if not p.isdigit())
        model = _SECTIONS.get(section)
        if section.startswith("constraints"):
            model = ConstraintSpec
        elif section.startswith("objectives"):
            model = ObjectiveSpec
        valid = ", ".join(model.model_fields) if model else "see the docs"
        return f"unknown key {loc[-1]!r} in {section or 'the job file'}; valid keys: {valid}"
    if error["type"] == "missing":
        return f"missing required key {where!r}"
    return f"{where}: {error['msg']}"

"""The driver's checkpoint (`checkpoint.json` in the run folder) and how a resumed run is reconciled with it.

The checkpoint holds the searcher's state, every asked candidate that has no trial yet, the seconds searched
so far and the space's gene names. It is written atomically after every ask (before anything is submitted)
and after every tell, so together with the study it always describes a state some order of events left.
`reconcile` brings a freshly built searcher up to the study from it and names the candidates to submit again.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.runs import CHECKPOINT
from decomp.errors import SpecError
from decomp.files import write_atomically
from search.base import Searcher
from search.records import Candidate, Evaluation
from search.space import Space

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "CheckpointWriter", "Pending", "reconcile"]

CHECKPOINT_FORMAT = "decomp.search-checkpoint/1"


@dataclass
class Pending:
    """An asked candidate without a trial yet: the fidelity level it is evaluated at, its results at the
    levels below (`done`), its failed attempts at this level, and, for a candidate whose genome another
    pending candidate is being evaluated with, that one's id (it is answered with that one's result)."""

    candidate: Candidate
    errors: int = 0
    deaths: int = 0
    level: int = 0
    done: list[Evaluation] = field(default_factory=list)
    duplicate_of: int | None = None

    def climb(self, result: Evaluation) -> None:
        """On to the next level, `result` kept as this level's."""
        self.done.append(result)
        self.level += 1
        self.errors = self.deaths = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_json(),
            "errors": self.errors,
            "deaths": self.deaths,
            "level": self.level,
            "done": [e.to_json() for e in self.done],
            "duplicate_of": self.duplicate_of,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pending:
        return cls(
            Candidate.from_json(data["candidate"]),
            int(data.get("errors", 0)),
            int(data.get("deaths", 0)),
            int(data.get("level", 0)),
            [Evaluation.from_json(e) for e in data.get("done", [])],
            None if data.get("duplicate_of") is None else int(data["duplicate_of"]),
        )


@dataclass
class Checkpoint:
    """The driver's state in `checkpoint.json`: the searcher's, the asked candidates without a trial, the
    seconds searched so far, and the space's gene names (a resume over another space is refused)."""

    searcher: dict[str, Any]
    pending: list[Pending] = field(default_factory=list)
    elapsed_s: float = 0.0
    genes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "genes": self.genes,
            "elapsed_s": self.elapsed_s,
            "pending": [p.to_json() for p in self.pending],
            "searcher": self.searcher,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "checkpoint") -> Checkpoint:
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise SpecError(f"{where} is not a {CHECKPOINT_FORMAT} checkpoint; was it written by another version?")
        return cls(
            data["searcher"],
            [Pending.from_json(p) for p in data.get("pending", [])],
            float(data.get("elapsed_s", 0.0)),
            list(data.get("genes", [])),
        )

    @classmethod
    def read(cls, folder: Path) -> Checkpoint | None:
        """The run folder's checkpoint, None when it has none yet."""
        path = folder / CHECKPOINT
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SpecError(f"checkpoint {path} is not valid JSON ({err}); it was changed by hand?") from None
        return cls.from_json(data, str(path))


class CheckpointWriter:
    """Writes a run's checkpoint atomically, serialising the searcher's told history once per entry: the
    history only grows, and dumping all of it at every checkpoint would make each trial cost more than the one
    before."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / CHECKPOINT
        self.texts: list[str] = []

    def write(self, searcher: Searcher, pending: Sequence[Pending], elapsed_s: float, genes: Sequence[str]) -> None:
        state = searcher.state_dict()
        history = state.pop("history")
        checkpoint = Checkpoint(state, list(pending), elapsed_s, list(genes))
        write_atomically(self.path, self._text(checkpoint.to_json(), history))

    def _text(self, data: dict[str, Any], history: list[Any]) -> str:
        texts = self.texts
        if len(history) < len(texts) or (texts and json.dumps(history[len(texts) - 1]) != texts[-1]):
            texts.clear()  # not the history seen before (a restored searcher): start over
        texts.extend(json.dumps(entry) for entry in history[len(texts) :])
        searcher = json.dumps(data.pop("searcher"))
        searcher = searcher[:-1] + ("" if searcher == "{}" else ", ") + '"history": [' + ", ".join(texts) + "]}"
        return json.dumps(data)[:-1] + ', "searcher": ' + searcher + "}"


def reconcile(
    searcher: Searcher, checkpoint: Checkpoint | None, records: Sequence[tuple[Candidate, Evaluation]], space: Space
) -> list[Pending]:
    """Bring `searcher` up to the study's `records` from `checkpoint` and return the asked candidates that
    have no trial (to submit again). Refuses states no order of events could have left behind."""
    ids = [c.id for c, _ in records]
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise SpecError(f"the study records candidate(s) {repeated[:5]} more than once; it was written by hand?")
    if checkpoint is None:
        if records:
            raise SpecError(
                f"the study holds {len(records)} trials but the run has no {CHECKPOINT} (deleted?): the searcher's "
                "state is lost, so the run cannot resume exactly; start a new run"
            )
        return []
    if checkpoint.genes and checkpoint.genes != list(space.names):
        raise SpecError(
            f"the search space changed since the run started (genes {checkpoint.genes[:4]}... now "
            f"{list(space.names)[:4]}...): the model, job or code differs; start a new run"
        )
    searcher.load_state_dict(checkpoint.searcher)
    asked = {p.candidate.id: p.candidate for p in checkpoint.pending}
    told = {t.id for t in searcher.history}
    if not told <= set(ids):
        missing = sorted(told - set(ids))[:5]
        raise SpecError(f"the searcher was told candidate(s) {missing} the study does not hold; was the storage reset?")
    next_id = int(checkpoint.searcher.get("next_id", 0))
    if ids and max(ids) >= next_id:
        raise SpecError(f"the study holds candidate {max(ids)}, which the checkpointed searcher never asked")
    for candidate, evaluation in records:
        if candidate.id not in told:
            searcher.tell(asked.get(candidate.id, candidate), evaluation)
    recorded = set(ids)
    return [p for p in checkpoint.pending if p.candidate.id not in recorded]

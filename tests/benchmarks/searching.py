"""The ask / evaluate / tell loop the search benchmarks run."""

from __future__ import annotations

from search.records import Candidate, Evaluation


def drive(searcher, evaluator, objectives, budget: int, batch: int) -> list[tuple[Candidate, Evaluation]]:
    """`budget` candidates asked `batch` at a time, each evaluated by `evaluator` (a `CostEvaluator`) and told;
    (candidate, evaluation) in the order asked, failures included."""
    told: list[tuple[Candidate, Evaluation]] = []
    while len(told) < budget:
        for c in searcher.ask(min(batch, budget - len(told))):
            evaluation = evaluator.evaluate(c, objectives)
            searcher.tell(c, evaluation)
            told.append((c, evaluation))
    return told

"""Running an early-exit export (`decomp.partition.exits.exit_plan`): part 0 computes the backbone up to the
cut and the exit head, part 1 the rest. An input whose exit head is confident (top softmax probability >=
`threshold`) stops at part 0 and is never sent on: part 0 itself keeps only the other inputs' rows of the
cut's activation (`_RemotePart.run_exit`), so what travels to part 1 is what part 1 must compute. The answer
for an input is the exit's logits where it left early, the final logits otherwise, in the input's order.

`ExitRunner(layout, loaders, threshold)` runs the two parts as 1-thread Ray actors (a `RayRunner`) or in
this process (`local`: a `LocalRunner`), several micro-batches in flight at part 0; `map` yields (logits,
exited mask) per micro-batch; `report()` counts inputs, exits and the bytes sent to and kept from part 1.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cluster.runners import Loader, LocalRunner, RayRunner, exit_filter, from_wire
from decomp.errors import DecompError
from decomp.partition.parts import PartsLayout

__all__ = ["ExitCounts", "ExitRunner"]


@dataclass(frozen=True)
class ExitCounts:
    """What an `ExitRunner` has run so far."""

    inputs: int
    exited: int  # left at the exit
    bytes_sent: int  # of the cut's activation, to part 1
    bytes_kept: int  # of the cut's activation, not sent: the inputs that left


class ExitRunner:
    """See the module docstring. The parts run in a `RayRunner` (object store between them) or, with `local`,
    a `LocalRunner`; part 0 is called through its `run_exit`, part 1 with what part 0 kept."""

    def __init__(
        self,
        layout: PartsLayout,
        loaders: Sequence[Loader],
        threshold: float,
        threads: int = 1,
        local: bool = False,
        max_in_flight: int = 4,
    ) -> None:
        if len(layout.parts) != 2 or len(layout.outputs) != 2:
            raise DecompError(
                "an early-exit export has 2 parts and 2 outputs (final logits, exit logits); split it with exit_plan"
            )
        first, second = layout.parts
        final, exit_name = layout.outputs
        if (
            exit_name not in first.outputs
            or final not in second.outputs
            or not set(second.inputs) <= set(first.outputs)
        ):
            raise DecompError(
                "an early-exit export's part 0 makes the exit logits and everything part 1 reads; part 1 the final "
                "logits; split it with exit_plan"
            )
        self.threshold, self.local = threshold, local
        self.exit_at = first.outputs.index(exit_name)
        self.keep_at = tuple(first.outputs.index(n) for n in second.inputs)
        self.max_in_flight = max(1, max_in_flight)
        self.inputs = self.exited = self.bytes_sent = self.bytes_kept = 0
        if local:
            self.runner = LocalRunner(layout, loaders, threads)
        else:
            self.runner = RayRunner(layout, loaders, threads=threads, transport="object-store")

    def _first(self, inputs: Sequence[torch.Tensor]) -> Any:
        if self.local:
            return exit_filter(self.runner.parts[0].call(*inputs), self.exit_at, self.keep_at, self.threshold)
        method = self.runner.actors[0].run_exit.options(num_returns=3 + len(self.keep_at))
        return method.remote(self.exit_at, self.keep_at, self.threshold, *inputs)

    def _finish(self, first: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.local:
            logits, go_on, row_bytes, *kept = first
        else:
            logits, go_on, row_bytes = self.runner.get(list(first[:3]))
            logits, go_on = from_wire(logits, copy=True), from_wire(go_on, copy=True)
            kept = list(first[3:])
        rows = int(go_on.sum())
        out = logits.clone()
        if rows:
            if self.local:
                final = self.runner.parts[1].call(*kept)[0]
            else:
                final = from_wire(self.runner.get([self.runner.actors[1].run.remote(*kept)])[0])
            out[go_on] = final.to(out.dtype)
        self.inputs += len(go_on)
        self.exited += len(go_on) - rows
        self.bytes_sent += row_bytes * rows
        self.bytes_kept += row_bytes * (len(go_on) - rows)
        return out, ~go_on

    def map(self, batches: Iterable[Sequence[torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits, exited) per micro-batch, in order."""
        pending: deque = deque()
        for inputs in batches:
            pending.append(self._first(inputs))
            if len(pending) >= self.max_in_flight:
                yield self._finish(pending.popleft())
        while pending:
            yield self._finish(pending.popleft())

    def report(self) -> ExitCounts:
        return ExitCounts(self.inputs, self.exited, self.bytes_sent, self.bytes_kept)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> ExitRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

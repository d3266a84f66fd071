"""Helpers the model-based searchers share: per-ask seeds and single-threaded model fits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

__all__ = ["derived_seed", "one_thread"]


def derived_seed(seed: int, key: int) -> int:
    """A 32-bit seed that depends only on (seed, key): each ask is reproducible on its own."""
    return int(np.random.SeedSequence([int(seed), int(key)]).generate_state(1)[0])


@contextlib.contextmanager
def one_thread(torch_too: bool = False) -> Iterator[None]:
    """Run a small model fit on one thread. The GP fits here are on matrices of at most a few hundred rows,
    where BLAS (and torch) threads only add overhead, and on a busy machine they spin: measured on a shared
    2-core machine, skopt's 40-point fits ran 5x faster and Optuna's GP sampler 3x faster on one thread, with
    identical results. The limits are process-wide while they last and are restored after the ask."""
    try:
        from threadpoolctl import threadpool_limits  # scikit-learn's dependency
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        limits: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        limits = threadpool_limits(1)
    torch = None
    if torch_too:
        import torch
    threads = torch.get_num_threads() if torch is not None else 0
    with limits:
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(threads)

"""Connect to Ray: an embedded local cluster by default, an existing one with `address` (or under
`ray job submit`, which sets RAY_ADDRESS). Ray's token authentication stays as Ray configures it."""

from __future__ import annotations

import logging
import os

import ray

from decomp.errors import DecompError

__all__ = ["cluster_cpus", "cluster_gpus", "connect", "join"]


class _TokenNotice(logging.Filter):
    """Drops Ray's notice that a new local cluster has token authentication on by default: decomp keeps it on,
    so the notice printed by every command asks nothing of the user. Every other Ray message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled for this Ray cluster" not in record.getMessage()


logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_TokenNotice())


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start or join a Ray cluster unless this process is already connected.

    `address=None` joins the cluster named by RAY_ADDRESS if set, else starts a local one with
    `num_cpus` CPUs (all of this machine's by default)."""
    if ray.is_initialized():
        return
    local = address is None and not os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address,
        num_cpus=num_cpus if local else None,
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )


def join(address: str | None) -> bool:
    """`connect(address)` for a command: True when this call started the connection (the caller shuts it down),
    False when the process was connected already; a failure is a `DecompError` that says what to do."""
    if ray.is_initialized():
        return False
    try:
        connect(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        text, cause = str(err), err.__cause__
        while cause is not None:
            text, cause = f"{text} {cause}", cause.__cause__
        hint = "check the address (e.g. --address auto on a cluster node, or ray://HEAD:10001)"
        if "auth" in text.lower():
            hint = (
                "the cluster uses token authentication: export RAY_AUTH_MODE=token and put the cluster's token in "
                "~/.ray/auth_token (or RAY_AUTH_TOKEN)"
            )
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DecompError(f"cannot connect to Ray at {address or 'RAY_ADDRESS'}: {first}; {hint}") from None
    return True


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))

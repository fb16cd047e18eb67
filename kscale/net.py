"""Can the network services kscale talks to be reached? One place for the answer.

Why: an offline machine otherwise spends minutes in a client's retries (huggingface_hub,
datasets, wandb) before failing deep inside a job. Every caller asks here first, so the
environment variables that switch the hub off and the probe that finds it unreachable are the
same for models, data and tracking.
"""
from __future__ import annotations

import functools
import os
import socket
import urllib.parse

#: Any of these set to 1/true/yes/on forbids hub access (models and datasets alike).
HUB_OFFLINE_VARS: tuple[str, ...] = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_disabled() -> bool:
    """True when the environment forbids Hugging Face hub access (:data:`HUB_OFFLINE_VARS`)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in HUB_OFFLINE_VARS)


def unreachable_reason(url: str, *, timeout: float = 3.0) -> str | None:
    """Why ``url``'s host cannot be reached (None if it can, or if a proxy is configured).

    One TCP connect with a short timeout. With a proxy configured a direct connect proves
    nothing, so the check is skipped."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or url
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"{url} is unreachable ({err.strerror or err})"


@functools.lru_cache(maxsize=1)
def hub_unreachable_reason() -> str | None:
    """:func:`unreachable_reason` of ``$HF_ENDPOINT`` (the hub), probed once per process."""
    return unreachable_reason(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


def hub_unavailable_reason() -> str | None:
    """Why the hub cannot serve files right now (switched off, or unreachable), or None."""
    if hub_disabled():
        return f"the hub is disabled ({'/'.join(HUB_OFFLINE_VARS)} is set)"
    return hub_unreachable_reason()

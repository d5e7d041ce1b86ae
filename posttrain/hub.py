"""Is the Hugging Face hub reachable? `validate` asks once, so offline it fails in seconds, not retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def offline() -> bool:
    """This process was told to stay off the hub (HF_HUB_OFFLINE, as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable(timeout: float = 2.0) -> bool:
    if offline():
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline_if_unreachable() -> bool:
    """Set HF_HUB_OFFLINE=1 for this process when the hub cannot be reached; True if offline.

    Must run before huggingface_hub is imported (it reads the variable once)."""
    if hub_reachable():
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    return True

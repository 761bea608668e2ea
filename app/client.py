"""The API client now lives in `modelfarm_client` (no server dependencies); these names stay
importable from here for the callers that already use them (bench/, older scripts)."""

from __future__ import annotations

from modelfarm_client import TERMINAL_STATUSES as TERMINAL
from modelfarm_client import ApiError, Client, FarmUnreachable

__all__ = ["TERMINAL", "ApiError", "Client", "FarmUnreachable"]

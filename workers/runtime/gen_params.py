"""Sampling parameters of text generation: a job's `params` give the defaults, a line's own
`input` object may override each one. Every value is checked here, so a bad one is an
`invalid_parameter` error line naming it, never a silent ignore.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workers.runtime.base import ItemError

#: The names a line or a job may set; anything else in a line's `input` is refused.
PARAM_NAMES = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "repetition_penalty")
DEFAULT_MAX_TOKENS = 256
MAX_STOPS = 4  #: as OpenAI's API
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0  #: 0: greedy
    top_p: float = 1.0
    top_k: int = 0  #: 0: every token
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sampling(job: Mapping[str, Any], line: Mapping[str, Any], cap: int) -> Sampling:
    """The parameters of one line: its own values over the job's; `max_tokens` is capped by
    `cap` (a setting) here and by the context where the prompt's length is known."""
    merged = {name: job[name] for name in PARAM_NAMES if name in job and job[name] is not None}
    merged.update({k: v for k, v in line.items() if k in PARAM_NAMES and v is not None})
    max_tokens = _int(merged, "max_tokens", DEFAULT_MAX_TOKENS, low=1)
    return Sampling(
        max_tokens=min(max_tokens, cap),
        temperature=_number(merged, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(merged, "top_p", 1.0, 0.0, 1.0, open_low=True),
        top_k=_int(merged, "top_k", 0, low=0),
        seed=_seed(merged),
        stop=_stops(merged.get("stop")),
        repetition_penalty=_number(merged, "repetition_penalty", 1.0, 0.0, 10.0, open_low=True),
    )


def _bad(name: str, why: str) -> ItemError:
    return ItemError("invalid_parameter", f"`{name}` {why}")


def _int(values: Mapping[str, Any], name: str, default: int, low: int) -> int:
    value = values.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, "must be an integer")
    if value < low:
        raise _bad(name, f"must be at least {low}")
    return value


def _number(
    values: Mapping[str, Any],
    name: str,
    default: float,
    low: float,
    high: float,
    open_low: bool = False,
) -> float:
    value = values.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name, "must be a number")
    if value > high or value < low or (open_low and value == low):
        bound = f"above {low}" if open_low else f"at least {low}"
        raise _bad(name, f"must be {bound} and at most {high}")
    return float(value)


def _seed(values: Mapping[str, Any]) -> int | None:
    value = values.get("seed")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_SEED:
        raise _bad("seed", f"must be an integer within +-{MAX_SEED}")
    return value


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop", "must be a string or a list of strings")
    if len(stops) > MAX_STOPS:
        raise _bad("stop", f"may hold at most {MAX_STOPS} strings")
    for stop in stops:
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise _bad("stop", f"strings must have 1 to {MAX_STOP_CHARS} characters")
    return tuple(stops)

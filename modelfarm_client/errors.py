"""What a call can raise: the farm answered with an error, or the farm could not be reached."""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error this package raises, so a caller can catch them all at once."""


class ApiError(ClientError):
    """The farm answered with a non-2xx status and its `{"error": {"code", "message"}}` body.

    `retry_after` holds the seconds of a `Retry-After` header (429, 503) when one was sent.
    """

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class FarmUnreachable(ClientError):
    """No answer from the farm: nothing listens at the URL, the name does not resolve, the
    connection broke or a request timed out. Distinct from ApiError, since retrying later (or
    fixing the URL) is the remedy, not changing the request."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the farm at {url}: {reason}")
        self.url = url
        self.reason = reason

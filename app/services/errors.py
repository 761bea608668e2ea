"""Domain errors; the API turns each into its HTTP status in the one error shape."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None  # sent with the answer (Retry-After, say)

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class InvalidRequest(ServiceError):
    status_code = 422
    code = "invalid_request"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class RateLimited(ServiceError):
    """Over the tenant's request rate: try again after `retry_after` whole seconds."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class QuotaExceeded(ServiceError):
    """A tenant limit; 429 for jobs (they end, and room comes back), 413 for storage."""

    status_code = 429
    code = "quota_exceeded"


class StorageQuotaExceeded(QuotaExceeded):
    status_code = 413

"""A request line that fails, in OpenAI's error shape; shared by the batch lines
(workers/runtime/openai_lines.py) and the generation requests (openai_generation.py)."""

from __future__ import annotations

from typing import Any

from workers.runtime.base import ItemError


class RequestError(ItemError):
    """A request line that fails, with the HTTP status it answers and the field at fault."""

    def __init__(
        self, status: int, code: str, message: str, param: str | None = None, custom_id: Any = None
    ) -> None:
        super().__init__(code, message)
        self.status = status
        self.param = param
        self.custom_id = custom_id


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}

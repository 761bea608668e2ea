from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    purpose: str
    filename: str
    bytes: int
    sha256: str
    created_at: datetime

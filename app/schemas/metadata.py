"""A job's (and a batch's) metadata: OpenAI's limits on both surfaces.

OpenAI's batch metadata takes at most 16 pairs, keys of at most 64 characters and values of at
most 512. The farm took a 5,000-character key and 2 MiB values (issue 25): one job list then
answered 112 MiB. The same type bounds the native API and the OpenAI surface.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

MAX_KEYS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512

MetadataKey = Annotated[str, StringConstraints(max_length=MAX_KEY_CHARS)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_VALUE_CHARS)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_KEYS)]

"""The KV cache of the decoding loop: one row per sequence, left-padded to a shared length.

transformers' DynamicLayer grows by `torch.cat` at every step, copying the whole cache each
time (about 0.9 GB a step for 64 SmolLM2 sequences of 300 tokens); these layers write into
a buffer with room to spare and only copy when it is full, or when rows leave or join (the
loop does that a few sequences at a time, not at every finish).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

HEADROOM = 64  #: columns added beyond what is needed whenever a buffer is (re)allocated


# transformers' layers define __init_subclass__ without annotations.
class GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A layer whose keys and values are views of a larger buffer (batch, heads, cap, dim)."""

    length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.length = 0
        self._k = key_states.new_empty((*key_states.shape[:2], 0, key_states.shape[3]))
        self._v = value_states.new_empty((*value_states.shape[:2], 0, value_states.shape[3]))
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._k.shape[2]:
            self._set(self._k[:, :, : self.length], self._v[:, :, : self.length], end + HEADROOM)
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def _set(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
        """Copy (keys, values) into fresh buffers of `capacity` columns."""
        shape = (keys.shape[0], keys.shape[1], capacity, keys.shape[3])
        k, v = keys.new_zeros(shape), values.new_zeros(shape)
        n = keys.shape[2]
        k[:, :, :n], v[:, :, :n] = keys, values
        self._k, self._v, self.length = k, v, n
        self.keys, self.values = k[:, :, :n], v[:, :, :n]

    def regroup(self, rows: torch.Tensor, drop: int, joining: GrowingLayer | None) -> None:
        """Keep `rows` without their first `drop` columns, then append `joining`'s rows, the
        shorter side padded on the left (the attention mask hides the padding)."""
        keys = self._k[rows, :, drop : self.length]
        values = self._v[rows, :, drop : self.length]
        if joining is not None and joining.is_initialized:
            extra_k, extra_v = joining.keys, joining.values
            assert extra_k is not None and extra_v is not None
            width = max(keys.shape[2], extra_k.shape[2])
            keys = torch.cat([_left_pad(keys, width), _left_pad(extra_k, width)])
            values = torch.cat([_left_pad(values, width), _left_pad(extra_v, width)])
        self._set(keys, values, keys.shape[2] + HEADROOM)


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[2]
    if missing == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, 0, missing, 0))


def new_cache() -> Cache:
    return Cache(layer_class_to_replicate=GrowingLayer)


def regroup(cache: Cache, rows: torch.Tensor, drop: int, joining: Cache | None) -> None:
    """regroup() every layer of `cache` (rows kept, left columns dropped, new rows appended)."""
    for index, layer in enumerate(cache.layers):
        assert isinstance(layer, GrowingLayer)
        other = None if joining is None else joining.layers[index]
        assert other is None or isinstance(other, GrowingLayer)
        layer.regroup(rows, drop, other)

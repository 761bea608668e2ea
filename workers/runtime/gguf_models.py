"""GGUF files: checked before anything trusts them, then converted once to a transformers
folder (safetensors + tokenizer) that loads in about a second.

A GGUF upload is hostile: its header declares counts, string lengths, array lengths and tensor
shapes, and a reader that believes them allocates what they say. `check_gguf` walks the header
itself with every number bounded by the file's own size and by the limits below, before the
`gguf` package or transformers read a byte of it. transformers then dequantizes the tensors
(about 20 s for SmolLM2-135M on an idle 2-core CPU, 70 s on a busy one); the converted folder
is what jobs load.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import IO, Any

from workers.runtime.base import ModelLoadError

MAX_TENSORS = 65_536
MAX_KEYS = 65_536
MAX_STRING_BYTES = 16 * 1024 * 1024  #: a chat template or one token is far below this
MAX_ARRAY_ITEMS = 4_000_000  #: a tokenizer's vocabulary and merges are ~100k-300k
MAX_DIMS = 4
MAX_PARAMETERS = 4_000_000_000  #: declared weights; a bound on what dequantizing allocates
DONE_MARKER = ".converted"
_BLOCK = re.compile(r"blk\.(\d+)\.")

# ggml tensor types: (elements per block, bytes per block), from the GGUF specification.
_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
}  # fmt: skip
# Metadata value types: fixed sizes; 8 is a string, 9 an array.
_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class GGUFRefused(Exception):
    """Not a GGUF file this farm will read; the message says why (and names no path)."""


class _Reader:
    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.size = f, size

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.f.tell() + n > self.size:
            raise GGUFRefused(f"{what} runs past the end of the file")
        return self.f.read(n)

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.take(8, what))[0])

    def string(self, what: str, keep: bool = True) -> str:
        n = self.u64(what)
        if n > MAX_STRING_BYTES:
            raise GGUFRefused(f"{what} declares a string of {n} bytes")
        raw = self.take(n, what)
        if not keep:
            return ""
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise GGUFRefused(f"{what} is not UTF-8") from None

    def skip_value(self, kind: int, what: str, depth: int = 0) -> Any:
        if kind in _SCALARS:
            raw = self.take(_SCALARS[kind], what)
            fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
            return struct.unpack(fmt.get(kind, "<Q"), raw)[0]
        if kind == 8:
            return self.string(what)
        if kind == 9 and depth == 0:
            inner, count = self.u32(what), self.u64(what)
            if count > MAX_ARRAY_ITEMS:
                raise GGUFRefused(f"{what} declares an array of {count} items")
            if inner in _SCALARS:  # skipped in one step, bounded by the file's size
                self.take(_SCALARS[inner] * count, what)
            else:
                for _ in range(count):
                    self.skip_value(inner, what, depth + 1)
            return None
        raise GGUFRefused(f"{what} has an unknown value type {kind}")


def check_gguf(path: Path) -> dict[str, Any]:
    """The header's facts (architecture, tensors, parameters, context length); GGUFRefused if
    any declared size does not fit the file or the limits."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        r = _Reader(f, size)
        if r.take(4, "the header") != b"GGUF":
            raise GGUFRefused("not a GGUF file (no GGUF magic)")
        version = r.u32("the version")
        if version not in (2, 3):
            raise GGUFRefused(f"GGUF version {version} is not supported (2 or 3)")
        tensors, keys = r.u64("the tensor count"), r.u64("the key count")
        if tensors > MAX_TENSORS or keys > MAX_KEYS:
            raise GGUFRefused(f"the header declares {tensors} tensors and {keys} keys")
        meta: dict[str, Any] = {}
        for n in range(keys):
            key = r.string(f"metadata key {n}")
            value = r.skip_value(r.u32(f"metadata {key!r}"), f"metadata {key!r}")
            if not isinstance(value, str) or key in ("general.architecture", "general.name"):
                meta[key] = value
        alignment = meta.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
            raise GGUFRefused("general.alignment must be a power of two")
        spans, parameters = [], 0
        shapes: dict[str, list[int]] = {}
        for n in range(tensors):
            name = r.string(f"tensor {n}'s name")
            dims = r.u32(f"tensor {name!r}")
            if not 1 <= dims <= MAX_DIMS:
                raise GGUFRefused(f"tensor {name!r} has {dims} dimensions")
            shape = [r.u64(f"tensor {name!r}") for _ in range(dims)]
            kind, offset = r.u32(f"tensor {name!r}"), r.u64(f"tensor {name!r}")
            if kind not in _BLOCKS:
                raise GGUFRefused(f"tensor {name!r} has an unknown type {kind}")
            count = 1
            for d in shape:
                count *= d
            parameters += count
            if count == 0 or parameters > MAX_PARAMETERS:
                raise GGUFRefused(f"tensor {name!r} declares {count} values (limit in all: "
                                  f"{MAX_PARAMETERS})")  # fmt: skip
            per_block, block_bytes = _BLOCKS[kind]
            if count % per_block:
                raise GGUFRefused(f"tensor {name!r}'s size is not whole blocks of its type")
            spans.append((name, offset, count // per_block * block_bytes))
            shapes[name] = shape
        data_start = -(-f.tell() // alignment) * alignment
    end = 0
    # Sorted by offset, each tensor must start after the previous one ends: tensors that share
    # bytes would let a small file declare (and make a reader dequantize) any number of them.
    for name, offset, nbytes in sorted(spans, key=lambda span: span[1]):
        if offset % alignment or data_start + offset + nbytes > size:
            raise GGUFRefused(f"tensor {name!r} lies past the end of the file")
        if offset < end:
            raise GGUFRefused(f"tensor {name!r} overlaps another tensor")
        end = offset + nbytes
    architecture = meta.get("general.architecture")
    if not isinstance(architecture, str):
        raise GGUFRefused("general.architecture is missing")
    _check_declared_shape(architecture, meta, shapes)
    context = meta.get(f"{architecture}.context_length")
    return {
        "architecture": architecture,
        "tensors": tensors,
        "parameters": parameters,
        "context_length": context if isinstance(context, int) else None,
    }


def _check_declared_shape(
    architecture: str, meta: dict[str, Any], shapes: dict[str, list[int]]
) -> None:
    """The model transformers builds comes from the header's numbers (blocks, widths), and any
    weight the file lacks is made up at full size: so the numbers must describe the tensors the
    file holds, whose size the checks above bounded by the file's own."""
    blocks = meta.get(f"{architecture}.block_count")
    if blocks is not None:
        held = {int(m.group(1)) for name in shapes if (m := _BLOCK.match(name))}
        if not isinstance(blocks, int) or held != set(range(blocks)):
            raise GGUFRefused(
                f"{architecture}.block_count is {blocks}, but the file holds the tensors of "
                f"{len(held)} blocks"
            )
    for key, tensor in (("embedding_length", "token_embd.weight"),
                        ("feed_forward_length", "blk.0.ffn_up.weight")):  # fmt: skip
        width = meta.get(f"{architecture}.{key}")
        sides = shapes.get(tensor, [])
        if width is not None and (not isinstance(width, int) or width not in sides):
            raise GGUFRefused(
                f"{architecture}.{key} is {width}, which is not a side of its tensor {tensor}"
            )


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Write `dest` (a folder that must not exist) as a transformers folder of the GGUF's
    model and tokenizer, atomically: a folder beside it, renamed when whole."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    info = check_gguf(gguf)
    if info["architecture"] not in GGUF_SUPPORTED_ARCHITECTURES:
        raise GGUFRefused(f"architecture {info['architecture']!r} is not one transformers reads")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=dest.parent))
    try:
        folder, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, trust_remote_code=False
        )
        # Dequantized already: what is saved is plain weights, not a quantized model.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE_MARKER).write_text("1")
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / DONE_MARKER).is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def converted(gguf: Path, dest: Path) -> Path:
    """`dest`, converting the GGUF into it first unless a process did already."""
    if not (dest / DONE_MARKER).is_file():
        try:
            convert_gguf(gguf, dest)
        except GGUFRefused as exc:
            raise ModelLoadError(str(exc)) from None
    return dest

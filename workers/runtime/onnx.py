"""ONNX Runtime for transformer encoders: exported once per model version, checked, reused.

A graph folder (`ModelSpec.graph_dir`, beside the model version in the artifact store, outside
the folder a tenant's archive fills, and named by exporter and opset) holds `model.onnx`, the
tokenizer and `runner.json`; any worker that finds it loads it without torch doing any work.
The first worker to need it exports it:

- with `torch.onnx.export(dynamo=False)`, the TorchScript-tracing exporter: on this 2-core CPU
  its graph of all-MiniLM-L6-v2 ran 1.48x SentenceTransformer.encode against 1.08x for the
  dynamo exporter's, and it exports in 1.4 s instead of 7 s. (optimum-onnx was not needed: the
  graph is the model plus the runner's own pooling or softmax, wrapped in one module.)
- the graph computes what the torch runner returns (normalised pooled vectors, or label
  probabilities), so both backends share every line after the model;
- a probe batch then runs through both; unless every output agrees within ATOL and every
  vector's cosine is at least MIN_COSINE, the graph is refused: `refused.json` records why,
  and every worker uses torch for that version, saying so (`fallback_reason`).

The folder is written under a temporary name and renamed into place, so a reader never sees a
half-written graph and two workers exporting at once cannot mix their files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from workers.runtime import ranking
from workers.runtime.base import ModelLoadError, ModelSpec, Runner, RunOptions
from workers.runtime.tokens import INPUT_NAMES, TextInputs, scores

log = logging.getLogger(__name__)

EXPORTER = "torch-legacy"
OPSET = 17
GRAPH_NAME = f"{EXPORTER}-opset{OPSET}"  #: the graph folder's name, beside the model version
ATOL = 1e-4  #: largest difference allowed between any ONNX and torch output value
MIN_COSINE = 0.99999  #: smallest cosine allowed between an ONNX and a torch vector

#: Mixed lengths, punctuation, non-ASCII and one past every model's length limit.
PROBE = [
    "short",
    "The quick brown fox jumps over the lazy dog.",
    "Une phrase en français, avec des accents: é, è, à, ç.",
    "数字 123 and symbols #@! mixed in one line",
    "Embeddings map text to vectors; classifiers map text to labels. " * 3,
    " ".join(["a long input that is truncated at the model's maximum length"] * 80),
]


class ExportRefused(Exception):
    """The ONNX graph cannot stand in for the torch model; the message says why."""


def resolve_backend(setting: str, device: str) -> str:
    """`auto`: ONNX Runtime on CPU, torch on CUDA unless ONNX Runtime's CUDA provider exists."""
    if setting in ("onnx", "torch"):
        return setting
    if setting != "auto":
        raise ValueError(f"unknown inference backend {setting!r}; use auto, onnx or torch")
    if device == "cpu":
        return "onnx"
    import onnxruntime

    return "onnx" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "torch"


def load(kind: str, spec: ModelSpec, load_torch: Callable[[], Any]) -> Runner:
    """The ONNX runner of `spec`, exporting its graph first if no worker has; or the torch
    runner from `load_torch()` with `fallback_reason` set when the graph was refused."""
    assert spec.graph_dir is not None
    folder = Path(spec.graph_dir)
    if (folder / "model.onnx").is_file():
        return open_runner(folder, spec.device)
    if (folder / "refused.json").is_file():
        reason = json.loads((folder / "refused.json").read_text())["reason"]
        return _fallback(load_torch(), reason)
    torch_runner = load_torch()
    try:
        report = export(torch_runner, kind, folder)
    except ExportRefused as exc:
        log.warning("ONNX graph for %s refused, using torch: %s", spec.key, exc)
        refusal = json.dumps({"reason": str(exc)})
        publish(folder, lambda tmp: (tmp / "refused.json").write_text(refusal))
        return _fallback(torch_runner, str(exc))
    log.info("ONNX graph for %s exported and checked: %s", spec.key, report)
    return open_runner(folder, spec.device)


def _fallback(runner: Any, reason: str) -> Runner:
    runner.fallback_reason = reason
    return runner  # type: ignore[no-any-return]


def export(torch_runner: Any, kind: str, folder: Path) -> dict[str, Any]:
    """Export, check against `torch_runner` on PROBE, and publish the graph folder."""
    import torch

    options = RunOptions()
    sample = next(torch_runner.padded_batches(PROBE[:2], options))[1]
    names = [n for n in INPUT_NAMES if n in sample]
    compute = torch_runner.embed if kind == "embedding" else torch_runner.probabilities
    module = _graph_module(torch_runner.model, compute, names)
    args = tuple(torch.from_numpy(sample[n]).to(torch_runner.device) for n in names)
    report: dict[str, Any] = {"kind": kind, "inputs": names, "exporter": EXPORTER, "opset": OPSET}

    def write(tmp: Path) -> None:
        graph = tmp / "model.onnx"
        axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"output": {0: "batch"}}
        try:
            # Tracing warns about every Python branch it records; the probe below is the check
            # that matters, so the warnings would only be noise in the worker's log.
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    args,
                    str(graph),
                    dynamo=False,
                    input_names=names,
                    output_names=["output"],
                    opset_version=OPSET,
                    dynamic_axes=axes,
                )
        except Exception as exc:  # an operator ONNX lacks, a model too large for one file ...
            raise ExportRefused(f"the export failed: {type(exc).__name__}: {exc}") from exc
        torch_runner.tokenizer.save_pretrained(str(tmp))
        report.update(
            max_length=torch_runner.max_length,
            lowercase=torch_runner.lowercase,
            labels=getattr(torch_runner, "labels", None),
        )
        report.update(_compare(torch_runner, _runner(tmp, report, "cpu"), options))
        (tmp / "runner.json").write_text(json.dumps(report, indent=2))

    publish(folder, write)
    return report


def _graph_module(model: Any, compute: Callable[[dict[str, Any]], Any], names: list[str]) -> Any:
    """What the graph computes: the torch runner's own function of one padded batch."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # registered, so its weights become the graph's initializers

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = compute(dict(zip(names, inputs, strict=True)))
            return out

    return Graph().eval()


def _compare(torch_runner: Any, onnx_runner: _OnnxRunner, options: RunOptions) -> dict[str, float]:
    expected = _as_matrix(torch_runner.run(PROBE, options))
    got = _as_matrix(onnx_runner.run(PROBE, options))
    difference = float(np.abs(expected - got).max())
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1)
    cosine = float(((expected * got).sum(axis=1) / np.maximum(norms, 1e-12)).min())
    if not difference <= ATOL:
        raise ExportRefused(f"outputs differ from torch by up to {difference:.2e} (> {ATOL})")
    if not cosine >= MIN_COSINE:
        raise ExportRefused(f"a vector's cosine to torch's is {cosine:.7f} (< {MIN_COSINE})")
    return {"max_abs_difference": difference, "min_cosine": cosine}


def _as_matrix(outputs: list[Any]) -> np.ndarray:
    rows = [list(o["scores"].values()) if isinstance(o, dict) else o for o in outputs]
    return np.asarray(rows, dtype=np.float64)


def publish(folder: Path, write: Callable[[Path], Any]) -> None:
    """Write a graph folder under a temporary name, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.exists():
                raise
            # Another worker published first; theirs passed the same check.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- running a graph ------------------------------------------------------------------------


class _OnnxRunner(TextInputs):
    backend = "onnx"
    fallback_reason: str | None = None

    def __init__(self, session: Any, tokenizer: Any, report: dict[str, Any]) -> None:
        super().__init__(tokenizer, int(report["max_length"]), bool(report["lowercase"]))
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def run(self, values: list[str], options: RunOptions) -> list[Any]:
        raise NotImplementedError

    def _outputs(self, values: list[str], options: RunOptions) -> Iterator[tuple[list[int], Any]]:
        for indices, arrays in self.padded_batches(values, options):
            feed = {name: arrays[name] for name in self.input_names}
            yield indices, self.session.run(None, feed)[0]


class OnnxEmbeddingRunner(_OnnxRunner):
    def prepare(self, value: Any, options: RunOptions) -> Any:
        return ranking.prepare_embedding_item(value, options, super().prepare)

    def run(self, values: list[Any], options: RunOptions) -> list[Any]:
        """Vectors for texts; rank items scored by cosine (workers/runtime/ranking.py)."""
        return ranking.run_embedding_items(values, options, self.embed_texts)

    def embed_texts(self, values: list[str], options: RunOptions) -> list[Any]:
        results: list[Any] = [[] for _ in values]
        for indices, vectors in self._outputs(values, options):
            for index, vector in zip(indices, vectors.tolist(), strict=True):
                results[index] = vector
        return results


class OnnxTextClassifier(_OnnxRunner):
    def __init__(self, session: Any, tokenizer: Any, report: dict[str, Any]) -> None:
        super().__init__(session, tokenizer, report)
        self.labels = [str(label) for label in report["labels"]]

    def run(self, values: list[str], options: RunOptions) -> list[Any]:
        results: list[Any] = [{} for _ in values]
        for indices, probabilities in self._outputs(values, options):
            for index, row in zip(indices, probabilities.tolist(), strict=True):
                results[index] = scores(self.labels, row)
        return results


def open_runner(folder: Path, device: str) -> _OnnxRunner:
    try:
        report = json.loads((folder / "runner.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"the ONNX graph folder is unreadable ({type(exc).__name__})") from exc
    return _runner(folder, report, device)


def _runner(folder: Path, report: dict[str, Any], device: str) -> _OnnxRunner:
    import onnxruntime
    from transformers import AutoTokenizer

    options = onnxruntime.SessionOptions()
    # The same cores-per-process rule as torch: configure_threads sets OMP_NUM_THREADS.
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    # No spin-waiting between runs: ONNX Runtime's threads otherwise keep a core busy after each
    # run (measured: a one-item run cost 28 ms of CPU for 8 ms of wall time), and a farm shares
    # its cores with the API, PostgreSQL and the worker's own parsing and writing. With other
    # processes busy, 3,000 sentences ran at 242/s without spinning against 140/s with it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        providers.insert(0, "CUDAExecutionProvider")
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=providers)
    tokenizer = AutoTokenizer.from_pretrained(
        str(folder), local_files_only=True, trust_remote_code=False
    )
    cls = OnnxEmbeddingRunner if report["kind"] == "embedding" else OnnxTextClassifier
    return cls(session, tokenizer, report)

"""Checking a tenant's uploaded model before it may serve a job; plain functions, no Celery.

An upload is data: a skops file whose every type is on the allowlist (workers/runtime/trust.py),
or an archive of regular files (workers/runtime/archives.py) holding a config, safetensors
weights and tokenizer files. Once it passes, a probe loads it the way a job would and runs an
item or two through it, so a model that cannot serve is refused here and not by its first job.
Every refusal is a ModelRefused with the code and message the version's `error` shows; messages
never name a path.
"""

from __future__ import annotations

import contextlib
import json
import resource
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from workers.runtime.archives import ArchiveRefused, extract_archive
from workers.runtime.base import ItemError, ModelLoadError, ModelSpec, RunOptions
from workers.runtime.bounds import ModelLimits, ModelTooLarge, check_model_dir
from workers.runtime.registry import load_runner
from workers.runtime.sklearn_bounds import DEFAULT_WIDTHS, WidthLimits

# Weights are loaded from safetensors only and no code is ever imported from a model, so files
# that could only be pickles or code have no use here; refusing them keeps the stored version
# plain data that anyone can audit.
REFUSED_SUFFIXES = (".py", ".pyc", ".so", ".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
PROBE_TEXTS = ["a probe sentence", "and a second, longer one to make a batch of two"]
#: the probe of a task whose items are not plain texts
PROBE_ITEMS: dict[str, list[Any]] = {
    "text-ranking": [{"query": PROBE_TEXTS[0], "documents": PROBE_TEXTS}],
    "zero-shot-classification": [{"text": t, "labels": ["one", "two"]} for t in PROBE_TEXTS],
}


def probe_images() -> list[dict[str, str]]:
    """Two small pictures of different sizes, as data URLs (what a job's items hold)."""
    import base64
    import io

    from PIL import Image

    items = []
    for size, colour in (((32, 24), (200, 30, 30)), ((17, 40), (20, 90, 220))):
        buffer = io.BytesIO()
        Image.new("RGB", size, colour).save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode()
        items.append({"image": "data:image/png;base64," + encoded})
    return items


def probe_audio() -> list[dict[str, str]]:
    """One second of a tone as a WAV data URL (what a speech job's items hold)."""
    import base64
    import io

    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    t = np.arange(16_000) / 16_000
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000, format="WAV")
    return [{"audio": "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode()}]


class ModelRefused(Exception):
    """The upload cannot become a ready version; code and message go on its `error`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def check_sklearn(
    path: Path, task: str | None, max_unpacked_bytes: int, widths: WidthLimits = DEFAULT_WIDTHS
) -> tuple[str, dict[str, Any]]:
    """(task, info) of a skops file whose types are all trusted and whose widths agree with
    its arrays and the limits; ModelRefused otherwise."""
    from workers.runtime.sklearn import check_skops_file

    try:
        info = check_skops_file(str(path), max_unpacked_bytes, widths)
    except ModelLoadError as exc:
        raise ModelRefused("untrusted_model", f"not a usable scikit-learn model: {exc}") from None
    if task is not None and task != info["task"]:
        raise ModelRefused("invalid_model", f"the estimator does {info['task']}, not {task}")
    return str(info["task"]), {k: v for k, v in info.items() if k != "task"}


def unpack_archive(
    archive: Path, dest: Path, max_bytes: int, max_members: int
) -> tuple[Path, dict[str, Any]]:
    """Unpack a .tar(.gz) or .zip into the empty folder `dest` and check what it holds.

    Returns the model's folder (inside `dest`) and its info. The caller removes `dest` on a
    refusal (it holds nothing but what this unpacked).
    """
    try:
        files = extract_archive(archive, dest, max_bytes, max_members)
    except ArchiveRefused as exc:
        raise ModelRefused("invalid_archive", str(exc)) from None
    root = dest
    # An archive of one top-level folder is common (tar -czf m.tgz my-model/).
    tops = {name.split("/", 1)[0] for name in files}
    if len(tops) == 1 and all("/" in name for name in files):
        root = dest / tops.pop()
        files = [name.split("/", 1)[1] for name in files]
    names = {name.rsplit("/", 1)[-1] for name in files}
    refused = sorted(n for n in names if n.lower().endswith(REFUSED_SUFFIXES))
    if refused:
        raise ModelRefused(
            "invalid_archive",
            f"the model archive holds code or pickled files ({', '.join(refused[:5])}); "
            "only safetensors weights and JSON/text configs are accepted",
        )
    if "config.json" not in names:
        raise ModelRefused("invalid_archive", "the model archive has no config.json")
    if not any(n.endswith(".safetensors") for n in names):
        raise ModelRefused("invalid_archive", "the model archive has no .safetensors weights")
    refuse_custom_code(root)
    return root, {"files": sorted(files)}


def check_transformers(root: Path, task: str, limits: ModelLimits) -> dict[str, int]:
    """The size of an unpacked transformers model, measured from its config on the meta device
    and matched against its safetensors' headers before anything is built (bounds.py)."""
    from workers.runtime.text import _sentence_transformer_layout

    try:
        directory = _sentence_transformer_layout(root)[0] if task == "feature-extraction" else root
        size = check_model_dir(directory, task, limits)
    except ModelTooLarge as exc:
        raise ModelRefused("model_too_large", str(exc)) from None
    except ModelLoadError as exc:
        raise ModelRefused("invalid_model", str(exc)) from None
    return {"parameters": size.parameters, "weight_bytes": size.bytes}


@contextlib.contextmanager
def memory_limit(extra_bytes: int) -> Iterator[None]:
    """Let this process grow by at most `extra_bytes` of address space while the block runs
    (RLIMIT_AS, lowered and then put back: both are allowed below the hard limit). Past it an
    allocation fails (MemoryError, or the library's own error) instead of the kernel's OOM
    killer taking the whole worker; the caller refuses the model."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:  # in pages; the first figure is the address space
        current = int(f.read().split()[0]) * resource.getpagesize()
    limit = current + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def precisions(spec: ModelSpec, scratch: Path, default: str) -> dict[str, Any]:
    """Each precision's fidelity to fp32 on a probe set (workers/runtime/precision.py), and
    the version's default precision, which must be one offered."""
    from workers.runtime.precision import IMAGE_TASKS, measure

    measured: dict[str, Any] = {"fp32": {"offered": True}}
    kind = {
        "feature-extraction": "embedding",
        "text-classification": "text-classification",
        **IMAGE_TASKS,
    }
    if spec.framework != "sklearn" and spec.task in kind:
        try:
            measured = measure(
                kind[spec.task],
                lambda: load_runner(spec),
                lambda: load_runner(replace(spec, precision="bf16")),
                scratch,
                images=spec.task in IMAGE_TASKS,
            )
        except (ModelLoadError, ItemError) as exc:
            raise ModelRefused("invalid_model", f"measuring precisions failed: {exc}") from None
    if not measured.get(default, {}).get("offered"):
        raise ModelRefused(
            "invalid_model",
            f"precision {default!r} is not offered for this model: "
            f"{measured.get(default, 'it serves fp32 only')}",
        )
    return {"precisions": measured, "default_precision": default}


def refuse_custom_code(root: Path) -> None:
    """A config that names code to import (`auto_map`, as `trust_remote_code` would follow) is
    refused, even though loading never trusts remote code: the version must be plain data."""
    for name in ("config.json", "tokenizer_config.json", "generation_config.json"):
        path = root / name
        if not path.is_file() or path.stat().st_size > 16 * 1024 * 1024:
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ModelRefused("invalid_model", f"{name} is not valid JSON") from None
        if isinstance(config, dict) and ("auto_map" in config or config.get("trust_remote_code")):
            raise ModelRefused(
                "invalid_model",
                f"{name} asks for custom code (auto_map / trust_remote_code); only "
                "architectures transformers implements itself are accepted",
            )


def check_gguf_upload(upload: Path, dest: Path, max_bytes: int) -> dict[str, Any]:
    """Check a .gguf upload's header, then convert it into `dest` (a transformers folder).
    Its weights dequantized to fp32 (what converting holds in memory, and what is stored) must
    fit `max_bytes` (MODEL_MAX_UNPACKED_BYTES), as an archive's unpacked files must."""
    from workers.runtime.gguf_models import GGUFRefused, check_gguf, convert_gguf

    try:
        info = check_gguf(upload)
        if info["parameters"] * 4 > max_bytes:
            raise GGUFRefused(
                f"its {info['parameters']} weights take {info['parameters'] * 4} bytes "
                f"dequantized; the limit is {max_bytes}"
            )
        convert_gguf(upload, dest)
    except GGUFRefused as exc:
        raise ModelRefused("invalid_model", f"not a usable GGUF file: {exc}") from None
    except Exception as exc:  # what transformers raises reading a file it cannot use
        raise ModelRefused(
            "invalid_model", f"the GGUF file cannot be converted ({type(exc).__name__})"
        ) from None
    return {"gguf": info}


def probe(spec: ModelSpec, info: dict[str, Any]) -> None:
    """Load the model as a job would and run one or two items; ModelRefused if it cannot."""
    try:
        runner = load_runner(spec)
    except MemoryError:
        raise ModelRefused(
            "model_too_large", "loading the model exceeded the memory limit"
        ) from None
    except ModelLoadError as exc:
        raise ModelRefused("invalid_model", str(exc)) from None
    options = RunOptions(batch_tokens=256, batch_size=2)
    if spec.framework == "sklearn":
        items: list[Any] = [[0.0] * int(info["n_features"])]
    elif spec.task.startswith("image-"):
        items = probe_images()
    elif spec.task == "automatic-speech-recognition":
        items = probe_audio()
    elif spec.task in ("text-generation", "text2text-generation"):  # a few greedy tokens
        items = list(PROBE_TEXTS)
        options = RunOptions(batch_size=2, params={"max_tokens": 2, "temperature": 0})
        info["context_length"] = int(getattr(runner, "context_length", 0))
    else:
        items = list(PROBE_ITEMS.get(spec.task, PROBE_TEXTS))
    try:
        outputs = runner.run([runner.prepare(item, options) for item in items], options)
    except ItemError as exc:
        raise ModelRefused("invalid_model", f"the probe item was refused: {exc.message}") from None
    except MemoryError:
        raise ModelRefused("model_too_large", "the probe exceeded the memory limit") from None
    except Exception as exc:  # whatever a broken model raises, the version fails with it
        raise ModelRefused(
            "invalid_model", f"the model fails on a probe item ({type(exc).__name__})"
        ) from None
    if len(outputs) != len(items):
        raise ModelRefused("invalid_model", "the model answered a probe with the wrong count")

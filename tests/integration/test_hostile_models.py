"""Models bounded before they are built (issue 25, part 2): the probe's uploads, replayed.

Each is a few KB that once cost a worker minutes or gigabytes; now each is refused by a check
of the numbers it declares, before anything of that size exists, and the farm goes on serving.
"""

from __future__ import annotations

import io
import json
import secrets
import tarfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import register_model, run_job, upload, wait_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("cpu_worker")]

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "max_position_embeddings": 512,
    "id2label": {"0": "no", "1": "yes"},
    "label2id": {"no": 0, "yes": 1},
}


def _archive(config: dict[str, Any]) -> bytes:
    """A model archive as the probe sent it: a config and a tiny safetensors file."""
    from safetensors.numpy import save

    members = {
        "config.json": json.dumps(config).encode(),
        "model.safetensors": save({"bias": np.zeros(2, dtype=np.float32)}),
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"model/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _refused(client: httpx.Client, content: bytes, body: dict[str, Any], filename: str) -> Any:
    file = upload(client, content, purpose="model", name=filename)
    name = f"hostile-{secrets.token_hex(3)}"
    version = wait_model(
        client, register_model(client, {"name": name, **body, "file_id": file["id"]})
    )
    assert version["status"] == "failed", version
    return version["error"]


def test_a_config_of_100000_layers_is_refused_before_anything_is_built(
    client: httpx.Client,
) -> None:
    content = _archive({**TINY_BERT, "num_hidden_layers": 100_000})
    assert len(content) < 2048  # the probe's was 1.2 KB
    body = {"framework": "transformers", "task": "text-classification"}
    error = _refused(client, content, body, "deep.tar.gz")
    assert error["code"] == "model_too_large" and "num_hidden_layers" in error["message"], error
    # Refused from the config's counts, before the 5.3 GB it once grew to could exist.


def test_a_config_too_wide_for_the_limit_is_refused_by_its_count(client: httpx.Client) -> None:
    # 24 layers of width 16,384: about 77 billion parameters, counted on the meta device.
    wide = {**TINY_BERT, "num_hidden_layers": 24, "hidden_size": 16384, "intermediate_size": 65536}
    body = {"framework": "transformers", "task": "text-classification"}
    error = _refused(client, _archive(wide), body, "wide.tar.gz")
    assert error["code"] == "model_too_large" and "parameters" in error["message"], error


def test_weights_that_do_not_match_the_config_are_refused(client: httpx.Client) -> None:
    body = {"framework": "transformers", "task": "text-classification"}
    error = _refused(client, _archive(TINY_BERT), body, "empty.tar.gz")
    assert error["code"] == "invalid_model" and "lack" in error["message"], error


def _skops(estimator: Any, tmp_path: Path) -> bytes:
    import skops.io

    path = tmp_path / "m.skops"
    skops.io.dump(estimator, str(path))
    return path.read_bytes()


@pytest.mark.parametrize(
    ("kind", "attribute", "value", "says"),
    [
        ("classifier", "n_features_in_", 150_000_000, "n_features_in_"),
        ("regressor", "n_outputs_", 20_000_000, "n_outputs_"),
        ("regressor", "n_outputs_", 3, "constant_"),  # under the limit, but not what it holds
    ],
)
def test_declared_widths_of_a_skops_model_are_checked_before_any_probe(
    client: httpx.Client, tmp_path: Path, kind: str, attribute: str, value: int, says: str
) -> None:
    from sklearn.dummy import DummyClassifier, DummyRegressor

    x = np.zeros((4, 2))
    estimator: Any = (
        DummyClassifier().fit(x, [0, 1, 0, 1]) if kind == "classifier" else DummyRegressor()
    )
    if kind == "regressor":
        estimator.fit(x, [1.0, 2.0, 3.0, 4.0])
    setattr(estimator, attribute, value)
    content = _skops(estimator, tmp_path)
    assert len(content) < 8192
    error = _refused(client, content, {"framework": "sklearn"}, "m.skops")
    assert error["code"] == "untrusted_model" and says in error["message"], error
    # The worker that checked it is still serving.
    assert run_job(client, "minilm", [{"custom_id": 1, "input": "still here"}])["status"] == (
        "succeeded"
    )

"""Pictures, archives and tiny image models for the image tests, made here (nothing fetched)."""

from __future__ import annotations

import base64
import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png(picture: Image.Image, format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=format, **options)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with one tiny compressed row after it: what
    a decoder would allocate for is the header's, never the bytes'."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\x00" + b"\x00" * 30)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def bomb_png() -> bytes:
    """A real 9,000 x 9,000 one-bit PNG: a few kilobytes that decode to 81 million pixels."""
    return png(Image.new("1", (9000, 9000)))


def bad_images() -> dict[str, bytes]:
    """Each kind of hostile picture the farm must turn into one error line."""
    good = png(noise(40, 30))
    return {
        "bomb": bomb_png(),
        "truncated": good[: len(good) // 2],
        "text": b"this is not an image, just some text bytes\n",
        "huge": declared_png(40_000, 40_000),
    }


def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_of_members(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def digits_pngs() -> tuple[list[bytes], list[str]]:
    """scikit-learn's bundled 8 x 8 digits (1,797) as PNG files and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pictures = [
        png(Image.fromarray((image * 16).clip(0, 255).astype(np.uint8))) for image in digits.images
    ]
    return pictures, [str(label) for label in digits.target]


def make_tiny_vit_classifier(path: Path, labels: list[str]) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    ViTForImageClassification(config).eval().save_pretrained(path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def make_tiny_resnet(path: Path) -> Path:
    """A tiny ResNet encoder (image-feature-extraction), with ResNet's own processor."""
    import torch
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetModel

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetModel(config).eval().save_pretrained(path)
    ConvNextImageProcessorPil(size={"shortest_edge": 40}).save_pretrained(path)
    return path


def make_tiny_resnet_classifier(path: Path, labels: list[str]) -> Path:
    """A tiny ResNet classifier (image-classification): convolutions, batch norms and a head,
    the kind of network the CPU runs as a frozen graph (workers/runtime/vision.py)."""
    import torch
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(1)
    config = ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"
    )
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    ResNetForImageClassification(config).eval().save_pretrained(path)
    ConvNextImageProcessorPil(size={"shortest_edge": 48}).save_pretrained(path)
    return path

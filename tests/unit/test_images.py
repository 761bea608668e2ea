"""Image items: decoding bounds, archives of images, pixel-budget batches, the image runners."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.images import (
    bad_images,
    data_url,
    make_tiny_vit_classifier,
    noise,
    png,
    tar_of_members,
    zip_of,
)
from workers.runtime.archives import ArchiveRefused
from workers.runtime.base import ItemError
from workers.runtime.image_archive import (
    archive_items,
    class_labels,
    looks_like_archive,
    training_members,
)
from workers.runtime.images import decode, image_bytes, pixel_batches, prepare_image
from workers.runtime.training import TrainingError

LIMIT = 40_000_000


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("bomb", "image_too_large"),
        ("huge", "image_too_large"),
        ("truncated", "invalid_image"),
        ("text", "invalid_image"),
    ],
)
def test_hostile_images_are_item_errors(kind: str, code: str) -> None:
    with pytest.raises(ItemError) as caught:
        prepare_image({"image": data_url(bad_images()[kind])}, LIMIT)
    assert caught.value.code == code, caught.value
    if kind == "truncated":
        assert "truncated" in caught.value.message


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({"image": "https://example.com/cat.png"}, "invalid_image"),
        ({"image": "http://169.254.169.254/latest"}, "invalid_image"),
        ({"image": "data:image/png,notbase64"}, "invalid_image"),
        ({"image": "%%% not base64 %%%"}, "invalid_image"),
        ({"image": ""}, "empty_input"),
        ({"picture": "x"}, "invalid_input_type"),
        (42, "invalid_input_type"),
    ],
)
def test_inputs_that_are_not_image_data(value: object, code: str) -> None:
    with pytest.raises(ItemError) as caught:
        image_bytes(value)
    assert caught.value.code == code
    if "http" in str(value):
        assert "not fetched" in caught.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_every_supported_format_decodes_to_rgb(fmt: str) -> None:
    data = png(noise(20, 10).convert("RGB"), format=fmt)
    for value in ({"image": data_url(data)}, base64.b64encode(data).decode()):
        prepared = prepare_image(value, LIMIT)
        assert (prepared.width, prepared.height) == (20, 10)
        assert prepared.rgb(LIMIT).mode == "RGB"


def test_a_gif_gives_its_first_frame() -> None:
    import io

    frames = [Image.new("RGB", (8, 6), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    picture = decode(buffer.getvalue(), LIMIT)
    assert picture.mode == "RGB" and picture.size == (8, 6)
    red, _, blue = picture.getpixel((4, 3))  # type: ignore[misc]
    assert red > 200 and blue < 50


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = png(noise(30, 10), format="JPEG", exif=exif)
    assert decode(data, LIMIT).size == (10, 30)


def test_a_limit_below_the_picture_refuses_it_and_large_pictures_are_kept_encoded() -> None:
    data = png(noise(1200, 1000))
    with pytest.raises(ItemError, match="1200 x 1000"):
        decode(data, 1_000_000)
    prepared = prepare_image(base64.b64encode(data).decode(), LIMIT)
    assert prepared.image is None and prepared.data == data  # decoded again in its batch
    assert prepared.rgb(LIMIT).size == (1200, 1000)


def test_pixel_batches_keep_order_and_the_budget() -> None:
    assert pixel_batches([10, 10, 10, 50, 5], batch_pixels=30, batch_size=8) == [
        [0, 1, 2],
        [3],
        [4],
    ]
    assert pixel_batches([1] * 5, batch_pixels=100, batch_size=2) == [[0, 1], [2, 3], [4]]


def test_an_archive_becomes_one_item_per_image_in_archive_order(tmp_path: Path) -> None:
    members = [
        ("b/2.png", png(noise(4, 4))),
        ("a/1.png", b"not an image"),
        ("__MACOSX/a/._1.png", b"junk"),
        (".DS_Store", b"junk"),
        ("big.png", b"x" * 1000),
    ]
    for name, content in (("in.zip", zip_of(members)), ("in.tgz", tar_of_members(members))):
        path = tmp_path / name
        path.write_bytes(content)
        assert looks_like_archive(content[:512])
        lines = [json.loads(line) for line in archive_items(path, 10**6, 100, 500)]
        assert [line["custom_id"] for line in lines] == ["b/2.png", "a/1.png", "big.png"]
        assert base64.b64decode(lines[1]["input"]["image"]) == b"not an image"
        with pytest.raises(ItemError) as caught:
            image_bytes(lines[2]["input"])
        assert caught.value.code == "image_too_large"
    assert not looks_like_archive(b'{"custom_id": 1, "input": {"image": "..."}}\n')


def test_archive_members_pass_the_model_archive_checks(tmp_path: Path) -> None:
    for name in ("../escape.png", "/abs.png"):
        path = tmp_path / "bad.zip"
        path.write_bytes(zip_of([(name, b"x")]))
        with pytest.raises(ArchiveRefused):
            list(archive_items(path, 10**6, 100, 10**6))
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as archive:
        info = zipfile.ZipInfo("cat.png")
        info.external_attr = 0o120777 << 16  # a symlink
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveRefused, match="link"):
        list(archive_items(link, 10**6, 100, 10**6))
    many = tmp_path / "many.zip"
    many.write_bytes(zip_of([(f"{i}.png", b"x") for i in range(5)]))
    with pytest.raises(ArchiveRefused, match="more than 3 members"):
        list(archive_items(many, 10**6, 3, 10**6))


def test_a_training_archive_is_one_folder_per_class(tmp_path: Path) -> None:
    path = tmp_path / "train.zip"
    picture = png(noise(4, 4))
    path.write_bytes(zip_of([("set/cat/1.png", picture), ("set/dog/1.png", picture)]))
    members = list(training_members(path, 10**6, 100, 10**6))
    assert members == [("set/cat/1.png", picture), ("set/dog/1.png", picture)]
    assert class_labels([name for name, _ in members]) == ["cat", "dog"]
    with pytest.raises(TrainingError, match="one folder per class"):
        class_labels(["cat/1.png", "loose.png"])


def test_a_training_archive_is_read_one_picture_at_a_time(tmp_path: Path) -> None:
    """A training archive is never held whole: its pictures are read, decoded and preprocessed
    one by one, so what Python holds while preprocessing 24 MB of pictures is about one."""
    import tracemalloc

    import numpy as np
    from transformers import ViTImageProcessorPil

    from workers.runtime.image_training import preprocess_members

    rng = np.random.default_rng(0)
    pictures = [  # incompressible: each about 1 MB as a PNG, and in the archive
        png(Image.fromarray(rng.integers(0, 256, (580, 580, 3), dtype=np.uint8))) for _ in range(24)
    ]
    path = tmp_path / "train.zip"
    path.write_bytes(zip_of([(f"{i % 2}/{i}.png", p) for i, p in enumerate(pictures)]))
    total = sum(len(p) for p in pictures)
    del pictures
    processor = ViTImageProcessorPil(size={"height": 8, "width": 8})
    tracemalloc.start()
    try:
        members = training_members(path, 10**9, 100, 10**7)
        paths, pixels, _ = preprocess_members(members, processor, 40_000_000, {"seed": 0})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(paths) == 24 and pixels.shape == (24, 3, 8, 8)
    assert total > 20 * 1024**2
    assert peak < 4 * 1024**2, f"{peak} bytes held at once for {total} bytes of pictures"
    # a member over the per-image cap is refused as it comes (MAX_IMAGE_BYTES)
    members = training_members(path, 10**9, 100, 10**5)
    with pytest.raises(TrainingError, match="MAX_IMAGE_BYTES"):
        next(members)


def test_mixed_precision_on_cpu_stays_close_to_fp32(tmp_path: Path) -> None:
    """The GPU pool's half precision path, on the CPU (bf16 autocast there)."""
    from tests.images import make_tiny_vit_classifier
    from workers.runtime.base import RunOptions
    from workers.runtime.vision import load_image_runner

    path = make_tiny_vit_classifier(tmp_path / "vit", ["a", "b", "c"])
    options = RunOptions(top_k=3)
    items = [{"image": data_url(png(noise(30 + i, 20, seed=i)))} for i in range(3)]
    outputs = {}
    for precision in ("fp32", "mixed"):
        runner = load_image_runner(str(path), "image-classification", "cpu", precision)
        outputs[precision] = runner.run([runner.prepare(i, options) for i in items], options)
    for full, half in zip(outputs["fp32"], outputs["mixed"], strict=True):
        assert set(full["scores"]) == {"a", "b", "c"}
        for label, score in full["scores"].items():
            assert half["scores"][label] == pytest.approx(score, abs=0.03)


def test_a_sliver_is_refused_before_a_processor_can_blow_it_up() -> None:
    """40,000 x 2 is under the pixel limit, but a processor that resizes the short side to 224
    would make it 224 x 4,480,000: sides far apart are an error line."""
    with pytest.raises(ItemError) as refused:
        decode(png(noise(4000, 2)), max_pixels=40_000_000)
    assert refused.value.code == "image_too_large"
    assert decode(png(noise(400, 40)), max_pixels=40_000_000).size == (400, 40)  # 10:1 is fine


@pytest.mark.parametrize(
    ("size", "refused"),
    [({"height": 5000, "width": 32}, True), ({"shortest_edge": 224}, False), (4096, True)],
)
def test_a_processor_that_makes_huge_pictures_is_refused(
    tmp_path: Path, size: object, refused: bool
) -> None:
    from transformers import AutoImageProcessor

    from workers.runtime.base import ModelLoadError
    from workers.runtime.vision import check_processor_size

    config = {"image_processor_type": "ViTImageProcessor", "size": size, "do_resize": True}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    processor = AutoImageProcessor.from_pretrained(tmp_path, backend="pil", local_files_only=True)
    if refused:
        with pytest.raises(ModelLoadError, match="at most 1024 pixels a side"):
            check_processor_size(processor)
    else:
        check_processor_size(processor)


def _resnet_classifier(path: Path, batch_norm_shift: float = 0.0) -> Path:
    """A small ResNet classifier with trained-looking batch-norm statistics (a new network's
    are 0 and 1, which folding leaves unchanged), and ResNet's own processor."""
    import torch
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    config.id2label = {0: "a", 1: "b", 2: "c"}
    config.label2id = {"a": 0, "b": 1, "c": 2}
    model = ResNetForImageClassification(config).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels) * 0.2 + batch_norm_shift)
            module.running_var.copy_(torch.rand(channels) + 0.5)
            module.weight.data.copy_(torch.rand(channels) + 0.5)
            module.bias.data.copy_(torch.randn(channels) * 0.1)
    model.save_pretrained(path)
    ConvNextImageProcessorPil(size={"shortest_edge": 40}).save_pretrained(path)
    return path


def test_a_conv_net_runs_frozen_on_the_cpu_and_answers_as_transformers(tmp_path: Path) -> None:
    """compile_for_cpu: the frozen graph (batch norms folded) gives what in-process
    transformers gives, one picture at a time with the model's own processor."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from workers.runtime.base import RunOptions
    from workers.runtime.vision import load_image_runner

    path = _resnet_classifier(tmp_path / "resnet")
    runner = load_image_runner(str(path), "image-classification", "cpu")
    assert runner.frozen is not None  # type: ignore[attr-defined]
    options = RunOptions(top_k=3, batch_size=4)
    pictures = [noise(30 + 7 * i, 50 - 3 * i, seed=i) for i in range(6)]
    got = runner.run(
        [runner.prepare({"image": data_url(png(p))}, options) for p in pictures], options
    )
    processor = AutoImageProcessor.from_pretrained(path)
    model = AutoModelForImageClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        for picture, output in zip(pictures, got, strict=True):
            probs = model(**processor(images=picture, return_tensors="pt")).logits.softmax(-1)[0]
            for label, index in model.config.label2id.items():
                assert abs(output["scores"][label] - float(probs[index])) <= 1e-4
    # in the GPU pool's half precision, and for a transformer, nothing is frozen
    mixed = load_image_runner(str(path), "image-classification", "cpu", "mixed")
    assert mixed.frozen is None  # type: ignore[attr-defined]
    vit = make_tiny_vit_classifier(tmp_path / "vit", ["a", "b"])
    assert load_image_runner(str(vit), "image-classification", "cpu").frozen is None  # type: ignore[attr-defined]


def test_a_frozen_graph_that_answers_differently_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph is checked against the model before it serves: with a tolerance no float
    arithmetic meets, the model runs unfrozen (and still answers)."""
    from workers.runtime import vision
    from workers.runtime.base import RunOptions

    path = _resnet_classifier(tmp_path / "resnet", batch_norm_shift=3.0)
    monkeypatch.setattr(vision, "FROZEN_TOLERANCE", -1.0)
    runner = vision.load_image_runner(str(path), "image-classification", "cpu")
    assert runner.frozen is None  # type: ignore[attr-defined]
    options = RunOptions(top_k=1)
    out = runner.run([runner.prepare({"image": data_url(png(noise(20, 20)))}, options)], options)
    assert out[0]["label"] in {"a", "b", "c"}

"""Audio and a tiny Whisper for the speech tests, made here (nothing fetched).

The tokenizer is a byte-level BPE of the 256 byte symbols and a few merges, with Whisper's
special tokens (start of transcript, two languages, the tasks, no-timestamps) and its 1,501
timestamp tokens, so generate's prompt, language detection and timestamps all work as they
do with a published checkpoint; the weights are random (seeded).
"""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import numpy as np

LANGUAGES = ("en", "fr")
RATE = 16_000


def tone(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A few sines over noise: audio whose features are not flat, different for each seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(0.2 * np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 2000, 3))
    return (wave + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def encode(samples: np.ndarray, rate: int = RATE, format: str = "WAV") -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=format)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "audio/wav") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def flac_declaring(frames: int) -> bytes:
    """A short FLAC whose STREAMINFO declares `frames` samples (a header bomb: the length
    is the header's, never the bytes')."""
    data = bytearray(encode(tone(1.0), format="FLAC"))
    start = 8 + 10  # "fLaC", the block header, then 10 bytes before rate/channels/bits/total
    bits = int.from_bytes(data[start : start + 8], "big")
    bits = (bits & ~(2**36 - 1)) | min(frames, 2**36 - 1)
    data[start : start + 8] = bits.to_bytes(8, "big")
    return bytes(data)


def wav_declaring(channels: int, rate: int) -> bytes:
    """A WAV header declaring channels and a rate past what is accepted, over a few bytes."""
    data = bytearray(encode(tone(0.1)))
    data[22:24] = struct.pack("<H", channels)
    data[24:28] = struct.pack("<I", rate)
    return bytes(data)


def hostile_audio() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the error code the farm must give them)."""
    flac = encode(tone(3.0, seed=5), format="FLAC")
    return {
        "header-bomb": (flac_declaring(2**36 - 1), "audio_too_long"),
        "truncated-flac": (flac[: len(flac) // 2], "invalid_audio"),
        "truncated-wav": (encode(tone(3.0))[:5000], "invalid_audio"),
        "text": (b"this is a text file, not a recording\n" * 20, "invalid_audio"),
        "channels-bomb": (wav_declaring(65535, RATE), "invalid_audio"),
    }


def _bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges of a byte-level BPE: the 256 byte symbols and a few merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("a", "n"), ("e", "r")]
    vocab = {s: i for i, s in enumerate(symbols)}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    return vocab, merges


def make_tiny_whisper(path: str | Path, seed: int = 0, multilingual: bool = True) -> Path:
    """A WhisperForConditionalGeneration with random weights, its feature extractor, tokenizer
    and generation config, saved as safetensors: an upload for automatic-speech-recognition."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _bpe()
    specials = ["<|endoftext|>", "<|startoftranscript|>"]
    specials += [f"<|{code}|>" for code in LANGUAGES] if multilingual else []
    specials += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>"]
    specials += ["<|nospeech|>", "<|notimestamps|>"]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    tokenizer = WhisperTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    tokenizer.add_tokens(timestamps)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=24,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    model = WhisperForConditionalGeneration(config).eval()
    generation = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        max_length=24,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=multilingual,
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in LANGUAGES} if multilingual else {},
        suppress_tokens=[],
        begin_suppress_tokens=[ids["<|endoftext|>"]],
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )
    model.generation_config = generation
    model.save_pretrained(directory, safe_serialization=True)
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer)
    processor.save_pretrained(directory)
    return directory


def reference(whisper: Path, samples: np.ndarray, language: str, timestamps: bool = False) -> str:
    """In-process transformers: the model's generate on each 30 s window's features, the
    windows' texts joined by a space."""
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    processor = AutoProcessor.from_pretrained(whisper)
    model = WhisperForConditionalGeneration.from_pretrained(whisper).eval()
    texts = []
    for start in range(0, len(samples), 30 * RATE):
        window = samples[start : start + 30 * RATE]
        features = processor.feature_extractor(window, sampling_rate=RATE, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(
                features.input_features,
                language=language,
                task="transcribe",
                return_timestamps=timestamps,
                max_new_tokens=model.config.max_target_positions - 4,
            )
        texts.append(processor.tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return " ".join(t for t in texts if t)

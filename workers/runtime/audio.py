"""Audio items: from a data URL or base64 to mono samples at the model's rate, bounded.

Audio is hostile bytes. libsndfile (bundled in the `soundfile` wheel) reads only the formats
named here (WAV, FLAC, OGG; MP3 where the bundled library has its decoder), and everything a
decode will cost is known from the header before a sample is read: the length in seconds
(frames / rate) against MAX_AUDIO_SECONDS, the channels and the rate against fixed ranges, so a
44-byte WAV header that declares hours of 65,535 channels is refused without reading on. The
samples are then read a block at a time and mixed down to mono as they come, stopping one
block past the declared length (a header that lies about its length costs no more than the
limit), and a file shorter than its header says (truncated) is an error rather than a shorter
answer. A URL is never fetched. Each failure is an ItemError, so it costs one error line:
`audio_too_long`, `audio_too_large` (an archive member over MAX_AUDIO_BYTES) or
`invalid_audio`.

Resampling to the feature extractor's rate is scipy's polyphase filter (`resample_poly`) over
the whole mono signal: exact for any pair of rates, its memory a few times the signal's.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from math import gcd
from typing import Any

import numpy as np

from workers.runtime.base import ItemError
from workers.runtime.images import item_bytes

#: What libsndfile calls the formats the farm reads (SoundFile.format).
FORMATS = ("WAV", "WAVEX", "FLAC", "OGG", "MP3")
MIN_RATE, MAX_RATE = 4_000, 96_000  #: Hz; telephone speech to studio masters
MAX_CHANNELS = 8
BLOCK_FRAMES = 65_536  #: frames read at a time (at most 8 channels: 2 MiB of float32)
#: Audio at most this long is kept decoded between prepare and run (1.9 MiB at 16 kHz);
#: longer audio is kept as its encoded bytes and decoded again when its windows run.
KEEP_DECODED_SECONDS = 30.0


@dataclass
class PreparedAudio:
    """A checked audio item: its length, and its samples or the bytes to decode it again."""

    seconds: float
    samples: np.ndarray | None
    data: bytes | None
    language: str | None = None  #: the item's own `language`, over the job's
    timestamps: bool | None = None  #: the item's own `timestamps`, over the job's

    def waveform(self, rate: int, max_seconds: float) -> np.ndarray:
        if self.samples is not None:
            return self.samples
        assert self.data is not None
        return decode(self.data, rate, max_seconds)


def audio_bytes(value: Any) -> bytes:
    """The encoded bytes of an item's input: {"audio": data URL or base64}, or that string."""
    return item_bytes(value, "audio")


def _options(value: Any) -> tuple[str | None, bool | None]:
    if not isinstance(value, dict):
        return None, None
    language, timestamps = value.get("language"), value.get("timestamps")
    if language is not None and (not isinstance(language, str) or not 0 < len(language) <= 32):
        raise ItemError("invalid_input", "`language` must be a language code such as en")
    if timestamps is not None and not isinstance(timestamps, bool):
        raise ItemError("invalid_input", "`timestamps` must be true or false")
    return language, timestamps


def prepare_audio(value: Any, rate: int, max_seconds: float) -> PreparedAudio:
    """Check and decode one item's audio; ItemError if it is not usable audio."""
    language, timestamps = _options(value)
    data = audio_bytes(value)
    samples = decode(data, rate, max_seconds)
    seconds = len(samples) / rate
    if seconds <= KEEP_DECODED_SECONDS:
        return PreparedAudio(seconds, samples, None, language, timestamps)
    return PreparedAudio(seconds, None, data, language, timestamps)


def decode(data: bytes, rate: int, max_seconds: float) -> np.ndarray:
    """Bytes to mono float32 samples at `rate` Hz."""
    import soundfile as sf

    try:
        opened = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError, EOFError):
        raise ItemError(
            "invalid_audio", f"not audio in a supported format ({', '.join(FORMATS)})"
        ) from None
    try:
        with opened as f:
            source_rate, frames = _check_header(f, max_seconds)
            mono = _read_mono(f, frames, max_seconds)
    except ItemError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, OSError, EOFError):
        raise ItemError(
            "invalid_audio", "the audio cannot be decoded: it is truncated or corrupt"
        ) from None
    return resample(mono, source_rate, rate)


def _check_header(f: Any, max_seconds: float) -> tuple[int, int]:
    if f.format not in FORMATS:
        raise ItemError("invalid_audio", f"{f.format} audio is not read; send {', '.join(FORMATS)}")
    source_rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
    if not MIN_RATE <= source_rate <= MAX_RATE:
        raise ItemError(
            "invalid_audio",
            f"the sample rate is {source_rate} Hz; {MIN_RATE} to {MAX_RATE} Hz is accepted",
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise ItemError(
            "invalid_audio", f"the audio has {channels} channels; 1 to {MAX_CHANNELS} are accepted"
        )
    if frames < 0 or frames / source_rate > max_seconds:  # never read: the header says enough
        raise ItemError(
            "audio_too_long",
            f"the audio is {frames / source_rate:.1f} s long; the limit is {max_seconds:g} s "
            "(MAX_AUDIO_SECONDS)",
        )
    if frames == 0:
        raise ItemError("empty_input", "the audio holds no samples")
    if _shorter_than_declared(str(f.extra_info)):
        raise ItemError(
            "invalid_audio", "the file is truncated: its header declares more data than it holds"
        )
    return source_rate, frames


def _shorter_than_declared(log: str) -> bool:
    """libsndfile reads a WAV whose data chunk is cut short (or declares gigabytes: a header
    bomb) as the frames that are there, and says so in its log: `data : 96000 (should be
    4956)`. Either way the header lied: the file is refused, not answered in part."""
    return any(
        line.startswith(("data", "RIFF")) and "(should be" in line for line in log.splitlines()
    )


def _read_mono(f: Any, frames: int, max_seconds: float) -> np.ndarray:
    """Every frame the header declares, mixed to mono a block at a time."""
    mono = np.empty(frames, dtype=np.float32)
    done = 0
    while done < frames:
        block = f.read(min(BLOCK_FRAMES, frames - done), dtype="float32", always_2d=True)
        if len(block) == 0:
            break
        mono[done : done + len(block)] = block.mean(axis=1)
        done += len(block)
    if done < frames:
        raise ItemError(
            "invalid_audio",
            f"the file is truncated: {done} of the {frames} frames its header declares",
        )
    if len(f.read(1, dtype="float32")):  # more than declared: a header that lied
        raise ItemError(
            "audio_too_long", f"the audio runs past its declared length ({max_seconds:g} s limit)"
        )
    if not np.isfinite(mono).all():
        raise ItemError("invalid_audio", "the audio holds samples that are not numbers")
    return mono


def resample(samples: np.ndarray, source_rate: int, rate: int) -> np.ndarray:
    """Polyphase resampling (scipy's resample_poly) from source_rate to rate, float32."""
    if source_rate == rate:
        return samples
    from scipy.signal import resample_poly

    common = gcd(source_rate, rate)
    out = resample_poly(samples, rate // common, source_rate // common)
    return np.asarray(out, dtype=np.float32)


def audio_windows(samples: np.ndarray, rate: int, seconds: float) -> list[np.ndarray]:
    """Consecutive windows of at most `seconds` (Whisper's 30): the last one shorter."""
    size = int(rate * seconds)
    return [samples[start : start + size] for start in range(0, max(len(samples), 1), size)]

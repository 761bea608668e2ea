"""Speech to text with Whisper (automatic-speech-recognition), on torch.

An item is audio (workers/runtime/audio.py: decoded, bounded, mono at the feature extractor's
rate). Audio longer than Whisper's window (30 s) is cut into consecutive 30 s windows; every
window of every item in a call is one row of a batched `generate`, windows of one item decode
in the item's language, and an item's text is its windows' texts joined by a space. The
language is the item's `language`, else the job's `params.language`, else what the model
detects on the item's first window (a multilingual model; an English-only one answers `en`).
With `timestamps`, the model decodes timestamp tokens and the output holds `segments`, their
times counted from the start of the audio. See docs/decisions/0020-speech.md.

Only WhisperForConditionalGeneration is loaded (transformers implements it; trust_remote_code
is off), weights from safetensors only, with the upload's feature extractor and tokenizer.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.runtime.audio import PreparedAudio, audio_windows, prepare_audio
from workers.runtime.base import ItemError, ModelLoadError, Runner, RunOptions, Stopped
from workers.runtime.vision import computing

#: where transformers keeps a feature extractor's settings (the second: transformers 5's
#: processor file, which holds it)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
WINDOW_SECONDS = 30.0  #: Whisper's window: its feature extractor pads or cuts to this
FRAMES_PER_SECOND = 100  #: Whisper's mel frames; a segment's `seek` is its window's start in them


@dataclass
class _Window:
    item: int  #: index of the item it belongs to
    offset: float  #: seconds from the start of the item
    samples: np.ndarray
    language: str | None
    timestamps: bool


def language_code(language: str) -> str:
    """`en`, `english` or `<|en|>` as Whisper's code (`en`); ItemError if it knows none."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    name = language.strip().lower().removeprefix("<|").removesuffix("|>")
    if name in LANGUAGES:
        return name
    if name in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[name]
    raise ItemError("invalid_input", f"unknown language {language!r}; use a code such as en")


def language_name(code: str) -> str:
    """Whisper's name of a language code (`en` -> `english`), as OpenAI's verbose_json says."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code, code)


class SpeechRecognitionRunner:
    """{"text", "language", "duration"} per item; with timestamps, "segments": [{"start",
    "end", "text"}, each with its window's "seek", "tokens", "temperature", "avg_logprob",
    "compression_ratio" and "no_speech_prob"] (docs/tasks.md)."""

    backend = "torch"

    def __init__(self, model: Any, processor: Any, device: str, precision: str) -> None:
        self.model = model
        self.processor = processor
        self.extractor = processor.feature_extractor
        self.tokenizer = processor.tokenizer
        self.rate = int(self.extractor.sampling_rate)
        self.device = torch.device(device)
        self.precision = precision
        config = model.generation_config
        self.multilingual = bool(getattr(config, "is_multilingual", False)) and bool(
            getattr(config, "lang_to_id", None)
        )
        self.timestamp_begin = int(config.no_timestamps_token_id) + 1
        self.no_speech_token = no_speech_token(self.tokenizer, int(config.no_timestamps_token_id))
        # What generate may add to its prompt of at most 4 tokens (start, language, task, no
        # timestamps) within the decoder's positions.
        self.max_new_tokens = int(model.config.max_target_positions) - 4

    def prepare(self, value: Any, options: RunOptions) -> PreparedAudio:
        prepared = prepare_audio(value, self.rate, options.max_audio_seconds)
        if prepared.language is not None:
            prepared.language = self._language(prepared.language)
        return prepared

    def _language(self, language: str) -> str:
        code = language_code(language)
        if not self.multilingual:
            if code != "en":
                raise ItemError("invalid_input", "this model is English-only: language en")
            return code
        if f"<|{code}|>" not in self.model.generation_config.lang_to_id:
            raise ItemError("invalid_input", f"this model does not know language {code!r}")
        return code

    def features(self, windows: list[np.ndarray]) -> torch.Tensor:
        """Log-mel features of windows of at most 30 s, each padded to 30 s as Whisper's
        feature extractor does by default."""
        inputs = self.extractor(windows, sampling_rate=self.rate, return_tensors="pt")
        features: torch.Tensor = inputs.input_features.to(self.device)
        return features

    def run(self, values: list[PreparedAudio], options: RunOptions) -> list[dict[str, Any]]:
        job_language = options.params.get("language")
        default_language = self._language(job_language) if isinstance(job_language, str) else None
        default_timestamps = bool(options.params.get("timestamps") or False)
        texts: list[list[str]] = [[] for _ in values]
        segments: list[list[dict[str, Any]]] = [[] for _ in values]
        languages: list[str] = ["en"] * len(values)
        with computing(self.device, self.precision):
            for rows in self._batches(values, options, default_language, default_timestamps):
                self._check_stop(options)
                for row, (text, found) in zip(rows, self._generate(rows), strict=True):
                    texts[row.item].append(text.strip())
                    languages[row.item] = row.language or "en"
                    # In the audio's time, within the window: a model may time a second pass
                    # past the window's end.
                    end = min(values[row.item].seconds, row.offset + WINDOW_SECONDS)
                    for segment in found:
                        segment["start"] = round(min(segment["start"] + row.offset, end), 2)
                        segment["end"] = round(min(segment["end"] + row.offset, end), 2)
                        segments[row.item].append(segment)
        outputs: list[dict[str, Any]] = []
        for index, value in enumerate(values):
            output: dict[str, Any] = {
                "text": " ".join(t for t in texts[index] if t),
                "language": languages[index],
                "duration": round(value.seconds, 3),
            }
            wants = value.timestamps if value.timestamps is not None else default_timestamps
            if wants:
                output["segments"] = segments[index]
            outputs.append(output)
        return outputs

    @staticmethod
    def _check_stop(options: RunOptions) -> None:
        if options.should_stop is not None and options.should_stop():
            raise Stopped()

    def _batches(
        self,
        values: list[PreparedAudio],
        options: RunOptions,
        default_language: str | None,
        default_timestamps: bool,
    ) -> Iterator[list[_Window]]:
        """Rows of at most batch_size windows, in input order; an item's audio is decoded
        (again, when it was kept encoded) only as its windows are reached."""
        rows: list[_Window] = []
        for index, value in enumerate(values):
            samples = value.waveform(self.rate, options.max_audio_seconds)
            windows = audio_windows(samples, self.rate, WINDOW_SECONDS)
            language = value.language or default_language
            if language is None:
                language = self._detect(windows[0]) if self.multilingual else "en"
            wants = value.timestamps if value.timestamps is not None else default_timestamps
            for number, window in enumerate(windows):
                rows.append(_Window(index, number * WINDOW_SECONDS, window, language, wants))
                if len(rows) >= options.batch_size:
                    yield rows
                    rows = []
            del samples
        if rows:
            yield rows

    def _detect(self, window: np.ndarray) -> str:
        """The language the model hears in a window (its most likely language token)."""
        ids = self.model.detect_language(self.features([window]))
        token = self.tokenizer.convert_ids_to_tokens(int(ids[0]))
        return str(token).removeprefix("<|").removesuffix("|>")

    def _generate(self, rows: list[_Window]) -> list[tuple[str, list[dict[str, Any]]]]:
        """Each row's text and timed segments; rows of one kind (language, timestamps) decode
        in one call."""
        results: list[tuple[str, list[dict[str, Any]]]] = [("", [])] * len(rows)
        kinds: dict[tuple[str | None, bool], list[int]] = {}
        for position, row in enumerate(rows):
            kinds.setdefault((row.language, row.timestamps), []).append(position)
        for (language, timestamps), positions in kinds.items():
            features = self.features([rows[p].samples for p in positions])
            kwargs = self.generate_kwargs(language, timestamps)
            if not timestamps:
                sequences = self.model.generate(features, **kwargs)
                for position, ids in zip(positions, sequences.cpu().tolist(), strict=True):
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    results[position] = (text, [])
                continue
            # transformers times the segments: when a window's last segment is cut, it
            # decodes the window again from that segment's start (a second pass), and only
            # it knows where each pass began.
            generated = self.model.generate(features, return_segments=True, **kwargs)
            passes = [found[0]["result"] if found else None for found in generated["segments"]]
            scores = self.window_scores(features, passes, generated["segments"])
            for position, ids, found, score in zip(
                positions,
                generated["sequences"].cpu().tolist(),
                generated["segments"],
                scores,
                strict=True,
            ):
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                window = {
                    "seek": round(rows[position].offset * FRAMES_PER_SECOND),
                    "temperature": 0.0,  # greedy
                    **score,
                    "compression_ratio": compression_ratio(text),
                }
                results[position] = (text, [self.segment(f) | window for f in found])
        return results

    def segment(self, found: dict[str, Any]) -> dict[str, Any]:
        """One of generate's segments: its times in seconds within the window, its text and
        its tokens (the start and end timestamp tokens included)."""
        tokens = [int(t) for t in found["tokens"].tolist()]
        words = [t for t in tokens if t < self.timestamp_begin]
        return {
            "start": float(found["start"]),
            "end": float(found["end"]),
            "text": self.tokenizer.decode(words, skip_special_tokens=True).strip(),
            "tokens": tokens,
        }

    def window_scores(
        self, features: torch.Tensor, passes: list[Any], found: list[list[dict[str, Any]]]
    ) -> list[dict[str, float]]:
        """Per window, what OpenAI's Whisper reports of a decoding: `avg_logprob`, the mean
        log-probability of the tokens its first pass chose (its end of text included), and
        `no_speech_prob`, the no-speech token's probability after the start of transcript.
        One teacher-forced decoder pass over each first pass's tokens (generate's prompt
        included), on the window's encoder output. A window without segments has none."""
        from transformers.modeling_outputs import BaseModelOutput

        rows = [row for row, call in enumerate(passes) if call is not None]
        scores: list[dict[str, float]] = [{} for _ in passes]
        if not rows:
            return scores
        eos = self.model.generation_config.eos_token_id
        eos = int(eos[0] if isinstance(eos, list) else eos)  # a list in some configs
        states = self.model.get_encoder()(features[rows]).last_hidden_state
        for index, row in enumerate(rows):
            ids = passes[row].tolist()
            first = int(found[row][0]["idxs"][0])  # a pass's first token is a timestamp
            end = ids.index(eos, first) + 1 if eos in ids[first:] else len(ids)
            # One row at a time: a batch's logits (rows x tokens x a 51,865-token vocabulary)
            # would hold hundreds of MB at once.
            sequence = torch.tensor([ids[:end]], device=features.device)
            encoded = BaseModelOutput(last_hidden_state=states[index : index + 1])
            logits = self.model(encoder_outputs=encoded, decoder_input_ids=sequence).logits[0]
            logits = logits.float()
            totals = torch.logsumexp(logits, dim=-1)  # log_softmax without a second copy
            steps = torch.arange(first - 1, end - 1, device=logits.device)
            chosen = logits[steps, sequence[0, first:end]] - totals[steps]
            no_speech = torch.exp(logits[0, self.no_speech_token] - totals[0])
            scores[row] = {
                "avg_logprob": round(float(chosen.mean()), 6),
                "no_speech_prob": round(float(no_speech), 6),
            }
        return scores

    def generate_kwargs(self, language: str | None, timestamps: bool) -> dict[str, Any]:
        """What generate is called with for one window: greedy, the item's language."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "return_timestamps": timestamps,
            "do_sample": False,
            "num_beams": 1,
        }
        if self.multilingual:
            kwargs.update(language=language, task="transcribe")
        return kwargs


def no_speech_token(tokenizer: Any, no_timestamps: int) -> int:
    """The token Whisper predicts after the start of transcript when it hears no speech:
    `<|nospeech|>` (`<|nocaptions|>` in the first vocabularies); transformers' guess, the
    token before `<|notimestamps|>`, where the vocabulary names neither."""
    for name in ("<|nospeech|>", "<|nocaptions|>"):
        token = tokenizer.convert_tokens_to_ids(name)
        if isinstance(token, int) and token != tokenizer.unk_token_id:
            return token
    return no_timestamps - 1


def compression_ratio(text: str) -> float:
    """A text's size over its zlib-compressed size, as OpenAI's Whisper reports it (above
    2.4, the window probably repeats itself)."""
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 6) if data else 0.0


def load_speech_runner(path: str, device: str, precision: str = "fp32") -> Runner:
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    root = Path(path)
    if not any((root / name).is_file() for name in PROCESSOR_FILES):
        raise ModelLoadError(
            "a speech model needs its feature extractor's preprocessor_config.json"
        )
    if not any(root.glob("*.safetensors")):
        raise ModelLoadError("the model has no *.safetensors weights; pickled weights are refused")
    config = _config(root)
    if config.get("model_type") != "whisper":
        raise ModelLoadError(
            f"automatic-speech-recognition serves Whisper models (model_type whisper), "
            f"not {config.get('model_type')!r}"
        )
    processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]  # unannotated
        root, local_files_only=True, trust_remote_code=False
    )
    if not hasattr(processor, "feature_extractor") or not hasattr(processor, "tokenizer"):
        raise ModelLoadError("a speech model needs a feature extractor and a tokenizer")
    loaded: Any = WhisperForConditionalGeneration.from_pretrained(
        root,
        use_safetensors=True,
        local_files_only=True,
        trust_remote_code=False,
        output_loading_info=True,
    )
    model, info = loaded
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise ModelLoadError(
            f"the weights lack {len(missing)} tensor(s) the speech model needs (e.g. {missing[0]})"
        )
    if getattr(model.generation_config, "no_timestamps_token_id", None) is None:
        raise ModelLoadError(
            "the model needs a Whisper generation_config.json (no_timestamps_token_id ...)"
        )
    return SpeechRecognitionRunner(model.to(device).eval(), processor, device, precision)


def _config(root: Path) -> dict[str, Any]:
    import json

    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read config.json ({type(exc).__name__})") from None
    return config if isinstance(config, dict) else {}

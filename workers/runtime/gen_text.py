"""One sequence's text as it is generated: incremental decoding, stop strings, held-back text.

Text is decoded incrementally: each step decodes the tokens since the last whole piece, with the
piece before them as context (a tokenizer may write a token differently at the start of a
text), so a step costs the same at token 4,000 as at token 4, and a character split over
several tokens comes out whole once its last byte is there. What could
still be the start of a stop string, or an unfinished character, is held back until resolved,
so the deltas a caller streams always add up to the final text.
"""

from __future__ import annotations

from collections.abc import Callable

_PARTIAL = "\ufffd"  # what a decoder yields for the bytes of an unfinished character


class TextState:
    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...]) -> None:
        self._decode = decode
        self.stops = stops
        self.tokens: list[int] = []
        self.text = ""  #: the text so far (cut at a stop string once one is seen)
        self.sent = 0  #: characters of `text` already handed out as deltas
        self.stopped = False  #: a stop string was found; `text` ends before it
        self._committed = ""  #: text of tokens[:_read], final
        self._start = 0  #: the context window's first token
        self._read = 0  #: tokens before this one are in _committed

    def add(self, token: int) -> None:
        """Take one generated token (not EOS: the caller ends the sequence on that)."""
        self.tokens.append(token)
        context = self._decode(self.tokens[self._start : self._read])
        fresh = self._decode(self.tokens[self._start :])[len(context) :]
        text = self._committed + fresh
        if fresh and not fresh.endswith(_PARTIAL):  # a whole piece: the next window starts here
            self._committed = text
            self._start, self._read = self._read, len(self.tokens)
        for stop in self.stops:
            # Only the new end can hold a stop string that was not there before.
            at = text.find(stop, max(0, len(self.text) - len(stop) - 2))
            if at != -1:
                text, self.stopped = text[:at], True
        self.text = text

    def delta(self, final: bool) -> str:
        """The text not handed out yet that is safe to hand out (all of it when `final`)."""
        end = len(self.text) if final or self.stopped else self._safe_end()
        if end <= self.sent:
            return ""
        piece = self.text[self.sent : end]
        self.sent = end
        return piece

    def _safe_end(self) -> int:
        text = self.text
        end = len(text)
        while end > self.sent and text[end - 1] == _PARTIAL:
            end -= 1
        for stop in self.stops:
            # The longest end of the text that begins this stop string is held back.
            for size in range(min(len(stop) - 1, end - self.sent), 0, -1):
                if text.endswith(stop[:size], 0, end):
                    end -= size
                    break
        return max(end, self.sent)

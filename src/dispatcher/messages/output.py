"""Bounded, byte-exact capture of a container's logs.

:class:`TailBuffer` keeps at most ``cap`` bytes, the last ones, however much is fed, so a chatty
job cannot exhaust the dispatcher's memory. Output that fits is returned exactly (invalid UTF-8
bytes become U+FFFD); output that does not is returned as its tail, preceded by one line that
says how many bytes were left out, and the cut never splits a UTF-8 character.
"""

from __future__ import annotations

from typing import Final

_MAX_CONTINUATION_BYTES: Final = 3


class TailBuffer:
    """The last ``cap`` bytes of a byte stream, and how many bytes the stream had."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"cap must be at least 1 byte, got {cap}")
        self._cap = cap
        self._tail = bytearray()
        self._total = 0

    @property
    def total(self) -> int:
        """Bytes fed so far."""
        return self._total

    @property
    def truncated(self) -> bool:
        """True when bytes were dropped from the front."""
        return self._total > self._cap

    def feed(self, chunk: bytes) -> None:
        """Append ``chunk``, dropping the oldest bytes beyond ``cap``."""
        self._total += len(chunk)
        if len(chunk) >= self._cap:
            self._tail[:] = chunk[-self._cap :]
            return
        self._tail += chunk
        excess = len(self._tail) - self._cap
        if excess > 0:
            del self._tail[:excess]

    def text(self) -> str:
        """The output as text; when truncated, marked and cut at a character boundary."""
        if not self.truncated:
            return self._tail.decode("utf-8", errors="replace")
        start = _character_start(self._tail)
        omitted = self._total - len(self._tail) + start
        tail = self._tail[start:].decode("utf-8", errors="replace")
        return f"[output truncated: first {omitted} bytes omitted]\n{tail}"


def _character_start(data: bytes | bytearray) -> int:
    """Index of the first byte that does not continue a character cut off before ``data``."""
    start = 0
    while start < min(_MAX_CONTINUATION_BYTES, len(data)) and data[start] & 0xC0 == 0x80:
        start += 1
    return start


def decode_output(data: bytes, cap: int) -> str:
    """The text of ``data`` as :class:`TailBuffer` would return it after one feed."""
    buffer = TailBuffer(cap)
    buffer.feed(data)
    return buffer.text()

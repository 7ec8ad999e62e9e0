"""Log capture: exact when it fits, the marked tail when it does not, bounded either way."""

from __future__ import annotations

import json

import pytest

from dispatcher.messages.output import TailBuffer, decode_output


def fed(cap: int, *chunks: bytes) -> TailBuffer:
    buffer = TailBuffer(cap)
    for chunk in chunks:
        buffer.feed(chunk)
    return buffer


def test_output_that_fits_comes_back_exactly() -> None:
    document = json.dumps({"result": [1, 2, 3], "name": "ünïcode ✓"}, ensure_ascii=False)
    data = document.encode() + b"\n"

    buffer = fed(len(data), data[:5], data[5:])

    assert buffer.text() == document + "\n"
    assert json.loads(buffer.text()) == json.loads(document)
    assert (buffer.total, buffer.truncated) == (len(data), False)


def test_empty_output_is_empty_text() -> None:
    assert fed(1024).text() == ""


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert decode_output(b"ok \xff\xfe end", 1024) == "ok \ufffd\ufffd end"


@pytest.mark.parametrize(
    ("chunks", "cap", "text"),
    [
        pytest.param(
            [b"0123456789"], 4, "[output truncated: first 6 bytes omitted]\n6789", id="one-chunk"
        ),
        pytest.param(
            [b"01", b"23", b"45", b"67", b"89"],
            4,
            "[output truncated: first 6 bytes omitted]\n6789",
            id="many-small-chunks",
        ),
        pytest.param(
            [b"ab", b"0123456789"],
            4,
            "[output truncated: first 8 bytes omitted]\n6789",
            id="chunk-larger-than-cap",
        ),
        pytest.param(
            ["aé✓".encode()],
            4,
            "[output truncated: first 3 bytes omitted]\n✓",
            id="cut-inside-two-byte-char-drops-its-rest",
        ),
        pytest.param(
            ["a✓b".encode()],
            3,
            "[output truncated: first 4 bytes omitted]\nb",
            id="cut-inside-three-byte-char-drops-its-rest",
        ),
        pytest.param(
            ["x😀y".encode()],
            4,
            "[output truncated: first 5 bytes omitted]\ny",
            id="cut-inside-four-byte-char-drops-its-rest",
        ),
        pytest.param(
            [b"x" + b"\x80" * 5],
            5,
            "[output truncated: first 4 bytes omitted]\n\ufffd\ufffd",
            id="at-most-three-continuation-bytes-dropped",
        ),
    ],
)
def test_truncated_output_keeps_the_marked_tail(chunks: list[bytes], cap: int, text: str) -> None:
    buffer = fed(cap, *chunks)

    assert buffer.truncated
    assert buffer.total == sum(map(len, chunks))
    assert buffer.text() == text


def test_memory_stays_bounded_however_much_is_fed() -> None:
    buffer = TailBuffer(1024)
    for index in range(10_000):
        buffer.feed(f"line {index}\n".encode())

    head, _, tail = buffer.text().partition("\n")
    assert tail.endswith("line 9999\n")
    assert len(tail.encode()) <= 1024
    assert head == f"[output truncated: first {buffer.total - len(tail.encode())} bytes omitted]"


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 1000])
def test_chunking_does_not_change_the_text(chunk_size: int) -> None:
    data = ("é✓😀 log line\n" * 50).encode()
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]

    assert fed(100, *chunks).text() == decode_output(data, 100)


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cap must be at least 1 byte, got 0"):
        TailBuffer(0)

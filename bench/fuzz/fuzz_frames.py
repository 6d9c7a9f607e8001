"""Coverage-guided fuzzing of the ANPX frame and message decoders with atheris (libFuzzer).

For long runs, not CI (CI runs the bounded hypothesis fuzzers in tests/test_fuzz.py).

    python -m pip install atheris                     # wheels for CPython 3.8-3.11 on Linux
    python bench/fuzz/fuzz_frames.py --make-seeds bench/fuzz/corpus
    python bench/fuzz/fuzz_frames.py bench/fuzz/corpus -max_total_time=600 -rss_limit_mb=2048

libFuzzer options follow the corpus directory (``-help=1`` lists them; ``-jobs=N -workers=N``
runs in parallel). New interesting inputs are added to the corpus directory. A crash stops
the run and writes ``crash-<sha1>`` in the current directory; reproduce it with
``python bench/fuzz/fuzz_frames.py crash-<sha1>``, then add the input to the regression
vectors at the end of tests/test_fuzz.py and fix the decoder.

Input layout: byte 0-1 choose the max frame size (24 + value % 8192), byte 2 the read
size of the stream decoder (1 + value % 64) and, with its top bit set, that both CRCs of every
frame are recomputed first (so mutations reach the TLV and message rules); the rest is the
wire data. Properties checked:

* the decoders raise nothing but ``ProtocolError``;
* one message (``decode_frame``) decodes, re-encodes and decodes again to the same frame;
* the stream decoder gives the same frames (or the same error) however the input is cut,
  and holds at most one incomplete frame, under the limit;
* the message decoder keeps no more partial messages than its limit.
"""

from __future__ import annotations

import os
import sys
import zlib

import atheris

with atheris.instrument_imports():
    from anpx_core import frames as F
    from anpx_core import messages as M
    from anpx_core.errors import ProtocolError

LIMITS = M.Limits(max_frame_size=8192 + 24, max_meta_size=1024, max_partial_messages=4)


def _fix_crcs(payload: bytes) -> bytes:
    """Rewrite both CRCs of every frame, so mutations get past them to the TLVs and the
    message rules (random bytes almost never carry a valid CRC-32)."""
    buf = bytearray(payload)
    pos = 0
    while pos + F.HEADER_SIZE <= len(buf):
        total = int.from_bytes(buf[pos + 8 : pos + 12], "big")
        buf[pos + 12 : pos + 16] = zlib.crc32(buf[pos : pos + 12]).to_bytes(4, "big")
        if total < F.HEADER_SIZE or pos + total > len(buf):
            break
        body = zlib.crc32(buf[pos + F.HEADER_SIZE : pos + total])
        buf[pos + 16 : pos + 20] = body.to_bytes(4, "big")
        pos += total
    return bytes(buf)


def _stream(payload: bytes, max_frame: int, step: int) -> tuple[list, str | None]:
    decoder = F.FrameDecoder(max_frame)
    frames: list = []
    try:
        for i in range(0, len(payload), step):
            frames += decoder.feed(payload[i : i + step])
            assert decoder.buffered < max_frame, "stream decoder holds more than one frame"
    except ProtocolError as exc:
        return frames, exc.code
    return frames, None


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    max_frame = F.HEADER_SIZE + int.from_bytes(data[:2], "big") % 8192
    step = 1 + data[2] % 64
    payload = data[3:] if data[2] < 0x80 else _fix_crcs(data[3:])

    try:
        frame = F.decode_frame(payload, max_frame)
    except ProtocolError:
        frame = None
    if frame is not None:
        again = F.decode_frame(F.encode_frame(frame.type, frame.flags, frame.tlvs), max_frame)
        assert (again.type, again.flags, again.tlvs) == (frame.type, frame.flags, frame.tlvs)

    whole = _stream(payload, max_frame, max(len(payload), 1))
    cut = _stream(payload, max_frame, step)
    if whole[1] is None and cut[1] is None:
        assert [(f.type, f.flags, f.tlvs) for f in whole[0]] == [
            (f.type, f.flags, f.tlvs) for f in cut[0]
        ], "the stream decoder depends on how the input is cut"
    else:
        assert whole[1] == cut[1], f"errors differ: {whole[1]} vs {cut[1]}"

    decoder = M.MessageDecoder(LIMITS)
    for frame in cut[0]:
        try:
            decoder.receive(frame)
        except ProtocolError as exc:
            if exc.request_id is not None:
                decoder.forget(exc.request_id)
        assert decoder.partial_messages <= LIMITS.max_partial_messages


def make_seeds(directory: str) -> None:
    """A small starting corpus: valid messages of each kind, whole and chunked."""
    os.makedirs(directory, exist_ok=True)
    messages = [
        M.Request("r1", "GET", "/a?b=c", [("host", "example.com")]),
        M.Request("r2", "POST", "/upload", [("content-type", "text/plain")], b"x" * 300),
        M.Response("r1", 200, "OK", [("set-cookie", "a=1"), ("set-cookie", "b=2")], b"hello"),
        M.ErrorMessage("r3", "receiver failed"),
    ]
    for i, message in enumerate(messages):
        for size in (1 << 16, 256):
            wire = b"".join(M.encode_message(message, size))
            with open(os.path.join(directory, f"seed-{i}-{size}"), "wb") as f:
                f.write(b"\xff\xff\x87" + wire)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make-seeds":
        make_seeds(sys.argv[2])
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

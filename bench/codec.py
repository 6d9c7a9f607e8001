"""Codec throughput: large body frames (MB/s) and small request frames (frames/s).

Standard library and anpx_core only. Run from the repository root::

    python bench/codec.py            # defaults: 7 repeats, medians printed
    python bench/codec.py --repeat 15 --body-mib 64 --small 40000

Both measurements drive the codec the way the engine does: a
``MessageEncoder`` fed 64 KiB parts through ``data()`` on one side and a
``MessageDecoder.receive_bytes`` per frame on the other (CRC computed and
checked, every limit and validation active); small frames go through
``encode_message`` and ``receive_bytes``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from anpx_core import frames as F
from anpx_core.messages import (
    BodyReceived,
    MessageComplete,
    MessageDecoder,
    MessageEncoder,
    Request,
    encode_message,
)
from anpx_core.meta import ResponseHead

PART = 64 * 1024
RID = "550e8400-e29b-41d4-a716-446655440000"
# Chunk overhead: header, request_id, chunk_idx and body TLVs, room for final_chunk.
_CHUNK_OVERHEAD = F.HEADER_SIZE + 5 + len(RID) + 9 + 5 + 6
#: A frame size that carries exactly one 64 KiB part of body per frame.
BODY_FRAME_SIZE = PART + _CHUNK_OVERHEAD


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(amount: float, start: tuple[float, float]) -> tuple[float, float]:
    """amount per second of wall-clock time and of this process's CPU time."""
    wall, cpu = _clocks()
    return amount / (wall - start[0]), amount / max(cpu - start[1], 1e-9)


def bench_large(body_bytes: int, frame_size: int) -> tuple[float, float]:
    """Encode+decode one streamed response of ``body_bytes``; return MB/s of body (wall, CPU)."""
    part = os.urandom(PART)
    parts = body_bytes // PART
    head = ResponseHead(200, "OK", [("content-type", "application/octet-stream")])
    decoder = MessageDecoder()
    received = 0
    done = False
    start = _clocks()
    encoder = MessageEncoder(head, RID, frame_size)
    for _ in range(parts):
        for wire in encoder.data(part):
            for event in decoder.receive_bytes(wire):
                if type(event) is BodyReceived:
                    received += len(event.data)
    for wire in encoder.end():
        for event in decoder.receive_bytes(wire):
            if type(event) is BodyReceived:
                received += len(event.data)
            elif type(event) is MessageComplete:
                done = True
    rates = _rates(received / 1e6, start)
    assert done and received == parts * PART, (done, received)
    return rates


def small_request(i: int) -> Request:
    return Request(
        f"{RID[:-6]}{i % 1_000_000:06d}",
        "GET",
        "/api/v1/items?page=2&sort=name",
        [
            ("host", "example.com"),
            ("user-agent", "bench/1.0"),
            ("accept", "application/json"),
            ("authorization", "Bearer abcdef0123456789"),
        ],
    )


def bench_small(count: int) -> tuple[float, float]:
    """Encode+decode ``count`` small unchunked GET frames; return frames/s (wall, CPU)."""
    requests = [small_request(i) for i in range(count)]
    decoder = MessageDecoder()
    completed = 0
    start = _clocks()
    for request in requests:
        for wire in encode_message(request):
            for event in decoder.receive_bytes(wire):
                if type(event) is MessageComplete:
                    completed += 1
    rates = _rates(count, start)
    assert completed == count
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per measurement")
    parser.add_argument("--body-mib", type=int, default=64, help="MiB of body per large run")
    parser.add_argument("--small", type=int, default=40_000, help="small frames per run")
    parser.add_argument(
        "--frame-size",
        type=int,
        default=BODY_FRAME_SIZE,
        help=f"max_frame_size for the large run (default {BODY_FRAME_SIZE}: 64 KiB of body)",
    )
    args = parser.parse_args(argv)
    body = args.body_mib * 1024 * 1024
    bench_large(body // 8, args.frame_size)  # warm-up
    bench_small(args.small // 8)
    large = [bench_large(body, args.frame_size) for _ in range(args.repeat)]
    small = [bench_small(args.small) for _ in range(args.repeat)]
    print(f"{args.repeat} runs each; large: {args.body_mib} MiB in {args.frame_size}-byte frames")
    report("large", "MB/s    ", [wall for wall, _ in large], [cpu for _, cpu in large], ".1f")
    report("small", "frames/s", [wall for wall, _ in small], [cpu for _, cpu in small], ".0f")
    return 0


def report(name: str, unit: str, wall: list[float], cpu: list[float], fmt: str) -> None:
    # CPU-time rates show the codec's own cost when other processes share the machine.
    print(
        f"{name}: median {statistics.median(wall):10{fmt}} {unit} "
        f"(min {min(wall):{fmt}}, max {max(wall):{fmt}}; "
        f"per CPU second: {statistics.median(cpu):{fmt}})"
    )


if __name__ == "__main__":
    sys.exit(main())

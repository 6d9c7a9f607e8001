#!/usr/bin/env python3
"""Print the frames the v1 reference (anp-proxy at 62776d6) encodes for the quirk vectors.

Run with the reference's own environment and tree, e.g.::

    PYTHONPATH=../shared/peers/anp-proxy-62776d6 \\
        ~/.cache/anpx-interop/<hash>/venv/bin/python tests/v1ref_capture.py

conformance/make_vectors.py holds the hex this printed (REFERENCE_* constants) and checks that its own
from-first-principles frames equal it, so the vectors carry the reference's actual bytes.
"""

from __future__ import annotations

from anp_proxy.protocol import ANPXEncoder

RID = "550e8400-e29b-41d4-a716-446655440000"
BODY = bytes(range(256)) * 2  # every byte value, twice


def main() -> None:
    enc = ANPXEncoder(chunk_size=300)
    req = enc.encode_http_request(
        "POST", "/upload", {"content-type": "application/octet-stream"}, {}, BODY, RID
    )
    rsp = enc.encode_http_response(
        200, "OK", {"content-type": "application/octet-stream"}, BODY, RID
    )
    err = ANPXEncoder().encode_error("Failed to decode message: boom")
    for name, frames in (("REQUEST", req), ("RESPONSE", rsp), ("ERROR", [err])):
        print(f"REFERENCE_CHUNKED_{name} = [")
        for frame in frames:
            print(f'    "{frame.encode().hex()}",')
        print("]")


if __name__ == "__main__":
    main()

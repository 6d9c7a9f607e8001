"""HTTP messages <-> ANPX frames, as streaming state machines (standard library only).

:class:`MessageEncoder` turns one message into frames as its body arrives;
:class:`MessageDecoder` turns the frames of many interleaved messages into
events (head, body parts, end, error) as soon as each frame arrives. Neither
ever needs a whole body in memory. :func:`encode_message` and
:func:`decode_message` are whole-message helpers on top.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from . import frames as F
from .errors import ProtocolError
from .meta import (
    Headers,
    RequestHead,
    ResponseHead,
    decode_request_meta,
    decode_response_meta,
    encode_request_meta,
    encode_response_meta,
)

#: Default size of the frames we send, header included (the seed's chunk_size).
DEFAULT_SEND_FRAME_SIZE = 256 * 1024  # the reference sets no WebSocket message limit
DEFAULT_MAX_META_SIZE = 1024 * 1024
DEFAULT_MAX_PARTIAL_MESSAGES = 10_000
#: Largest frame from a v1 peer, which sends a whole body in one frame (the tunnel's limit).
DEFAULT_V1_MAX_FRAME_SIZE = 100 * 1024 * 1024
#: Body a v1 peer may send before the resp_meta it puts in its last chunk.
DEFAULT_MAX_HEADLESS_BODY = 32 * 1024 * 1024
#: Body held before their meta across all messages of one decoder (one tunnel).
DEFAULT_MAX_HEADLESS_TOTAL = 64 * 1024 * 1024
MAX_REQUEST_ID_BYTES = 128

_CHUNK_TLV = F.TLV_HEADER_SIZE + 4  # chunk_idx / chunk_tot
_FINAL_TLV = F.TLV_HEADER_SIZE + 1
_FINAL_VALUE = b"\x01"
# The reference at 62776d6 packs final_chunk through its u32 helper: accepted, never sent.
_FINAL_VALUES = (_FINAL_VALUE, b"\x00\x00\x00\x01")
_IDX_HEAD = F.tlv_header(F.TAG_CHUNK_IDX, 4)
_TOT_HEAD = F.tlv_header(F.TAG_CHUNK_TOT, 4)
_FINAL_TLV_BYTES = F.tlv_header(F.TAG_FINAL_CHUNK, 1) + _FINAL_VALUE
_TLV_PACK = struct.Struct(">BI").pack  # F.tlv_header without its call


# --- whole messages ------------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    request_id: str
    method: str
    target: str
    headers: Headers = field(default_factory=list)
    body: bytes = b""


@dataclass(slots=True)
class Response:
    request_id: str
    status: int
    reason: str = ""
    headers: Headers = field(default_factory=list)
    body: bytes = b""


@dataclass(slots=True)
class ErrorMessage:
    request_id: str | None
    text: str


Message = Request | Response | ErrorMessage


# --- decoder events ------------------------------------------------------------------------


class MessageEvent:
    """What a :class:`MessageDecoder` reports about the ANPX messages it reassembles.

    Each layer has one such base class: dispatch with ``isinstance`` or ``match``.
    """

    __slots__ = ()
    request_id: str | None  # the stream it belongs to (None: an ERROR frame without one)


@dataclass(slots=True)
class HeadReceived(MessageEvent):
    request_id: str
    head: RequestHead | ResponseHead


@dataclass(slots=True)
class BodyReceived(MessageEvent):
    request_id: str
    data: bytes


@dataclass(slots=True)
class MessageComplete(MessageEvent):
    request_id: str


@dataclass(slots=True)
class ErrorReceived(MessageEvent):
    request_id: str | None
    text: str


Event = MessageEvent  # the name this module used before


@dataclass(slots=True)
class Limits:
    """Receive-side limits of the codec; each exceeded one is ``too_large``."""

    max_frame_size: int = F.DEFAULT_MAX_FRAME_SIZE
    max_meta_size: int = DEFAULT_MAX_META_SIZE
    max_partial_messages: int = DEFAULT_MAX_PARTIAL_MESSAGES
    max_headless_body: int = DEFAULT_MAX_HEADLESS_BODY
    #: the same, summed over every message in progress: one peer cannot hold
    #: max_headless_body in each of many streams at once
    max_headless_total: int = DEFAULT_MAX_HEADLESS_TOTAL
    #: max_frame_size on a tunnel to a v1 peer (the larger of the two applies)
    v1_max_frame_size: int = DEFAULT_V1_MAX_FRAME_SIZE


# --- encoding ------------------------------------------------------------------------------


def encode_error(text: str, request_id: str | None = None) -> bytes:
    tlvs: list[tuple[int, bytes]] = []
    if request_id is not None:
        tlvs.append((F.TAG_REQUEST_ID, request_id.encode()))
    # the reason may quote a peer's value: never fail to say why a stream ends
    tlvs.append((F.TAG_HTTP_BODY, text.encode("utf-8", "replace")))
    return F.encode_frame(F.TYPE_ERROR, 0, tlvs)


class MessageEncoder:
    """Frames of one request or response, emitted as body parts arrive.

    Call :meth:`data` for each body part, :meth:`flush` to push out what is
    held now (so a streamed response is not delayed), and :meth:`end` once.
    A message that ends before anything was emitted and fits in one frame is
    sent unchunked, byte-identical to the v1 reference; otherwise chunk 0
    carries the meta (status and headers go out before the body ends),
    chunk_tot is sent only when given, and final_chunk marks the last frame.
    No frame exceeds ``max_frame_size`` bytes, header included.

    Held body is at most one frame's worth, kept as the parts given (copied
    only when not ``bytes``, since callers may reuse their buffers) and copied
    once, into the frame that carries it.
    """

    def __init__(
        self,
        head: RequestHead | ResponseHead,
        request_id: str,
        max_frame_size: int = DEFAULT_SEND_FRAME_SIZE,
        *,
        chunk_total: int | None = None,
        meta: bytes | None = None,
    ) -> None:
        """``meta``: the head's meta (:func:`head_meta`) when already encoded."""
        if isinstance(head, RequestHead):
            self._type, tag = F.TYPE_REQUEST, F.TAG_HTTP_META
        else:
            self._type, tag = F.TYPE_RESPONSE, F.TAG_RESP_META
        if meta is None:
            meta = head_meta(head)
        rid = self._rid = request_id.encode()
        self._max = max_frame_size
        self._total = chunk_total
        self._idx = 0  # next chunk index; 0 means nothing emitted yet
        self._parts: deque[bytes | memoryview] = deque()
        self._held = 0  # bytes in _parts
        self.ended = False
        # TLVs every frame repeats, serialized once
        rid_tlv = self._rid_tlv = _TLV_PACK(F.TAG_REQUEST_ID, len(rid)) + rid
        meta_tlv = self._meta_tlv = _TLV_PACK(tag, len(meta)) + meta
        tot_tlv = self._tot_tlv = b"" if chunk_total is None else _TOT_HEAD + F.u32(chunk_total)
        base = F.HEADER_SIZE + len(rid_tlv) + _CHUNK_TLV + len(tot_tlv)
        # body bytes a non-final chunk holds: chunk 0 (with the meta), then every later one
        room = self._room = max_frame_size - base - F.TLV_HEADER_SIZE
        self._room0 = max(room - len(meta_tlv), 0)
        head_min = base + len(meta_tlv)
        self._chunk_head_fits = head_min <= max_frame_size
        single_min = self._single_min = F.HEADER_SIZE + len(rid_tlv) + len(meta_tlv)
        if chunk_total is None:  # an unchunked frame needs no chunk_idx: the head may fit only so
            head_min = single_min
        if head_min > max_frame_size:
            raise ProtocolError(
                "too_large",
                f"message head needs {head_min} bytes, frames are limited to {max_frame_size}",
                request_id,
            )
        if room - _FINAL_TLV < 1:
            raise ProtocolError(
                "too_large",
                f"max_frame_size {max_frame_size} leaves no room for body bytes",
                request_id,
            )

    @property
    def frames_sent(self) -> int:
        return self._idx

    def _body_room(self, final: bool) -> int:
        """Body bytes that fit in the next chunk (negative: not even its TLVs do)."""
        if self._idx:
            return self._room - _FINAL_TLV if final else self._room
        return self._room0 - _FINAL_TLV if final else self._room0

    def _unchunkable(self) -> ProtocolError:
        return ProtocolError(
            "too_large",
            f"in {self._max}-byte frames this head fits only unchunked, and the body does not",
            self._rid.decode(),
        )

    def _hold(self, chunk: bytes | bytearray | memoryview) -> None:
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        self._parts.append(chunk)
        self._held += len(chunk)

    def _take(self, size: int) -> list[bytes | memoryview]:
        """Remove the first ``size`` held bytes, as buffers."""
        parts = self._parts
        taken: list[bytes | memoryview] = []
        self._held -= size
        while size:
            part = parts[0]
            if len(part) <= size:
                taken.append(parts.popleft())
                size -= len(part)
            else:
                view = memoryview(part)
                taken.append(view[:size])
                parts[0] = view[size:]
                size = 0
        return taken

    def _chunk(self, size: int, final: bool) -> bytes:
        """Emit the next chunk with ``size`` held body bytes."""
        if self._idx == 0 and not self._chunk_head_fits:
            raise self._unchunkable()
        pieces: list[bytes | memoryview] = [b"", self._rid_tlv, _IDX_HEAD + F.u32(self._idx)]
        if self._tot_tlv:
            pieces.append(self._tot_tlv)
        if self._idx == 0:
            pieces.append(self._meta_tlv)
        if size:
            pieces.append(F.tlv_header(F.TAG_HTTP_BODY, size))
            pieces += self._take(size)
        if final:
            pieces.append(_FINAL_TLV_BYTES)
        self._idx += 1
        return F.assemble(self._type, F.FLAG_CHUNKED, pieces)

    def data(self, chunk: bytes | bytearray | memoryview) -> list[bytes]:
        if self.ended:
            raise RuntimeError("data() after end()")
        if not chunk:
            return []
        self._hold(chunk)
        if not self._chunk_head_fits:  # hold the body for end()'s one unchunked frame
            if self._single_min + F.TLV_HEADER_SIZE + self._held > self._max:
                raise self._unchunkable()
            return []
        room = self._body_room(final=False)
        if self._held <= room:  # may still be the last (or only) frame: hold it
            return []
        out: list[bytes] = []
        while self._held > room:
            out.append(self._chunk(room, final=False))
            room = self._room
        return out

    def flush(self) -> list[bytes]:
        """Emit held body now as a non-final chunk (chunk 0 even with no body)."""
        if self.ended or (self._idx and not self._held):
            return []
        return [self._chunk(self._held, final=False)]

    def end(self, chunk: bytes | bytearray | memoryview = b"") -> list[bytes]:
        if self.ended:
            raise RuntimeError("end() called twice")
        # Held, not emitted via data(): the whole message may still fit one unchunked frame.
        if chunk:
            self._hold(chunk)
        self.ended = True
        held = self._held
        single = self._single_min + (F.TLV_HEADER_SIZE + held if held else 0)
        if self._idx == 0 and self._total is None and single <= self._max:
            pieces: list[bytes | memoryview] = [b"", self._rid_tlv, self._meta_tlv]
            if held:
                pieces.append(_TLV_PACK(F.TAG_HTTP_BODY, held))
                parts = self._parts
                if len(parts) == 1:
                    pieces.append(parts.pop())
                    self._held = 0
                else:
                    pieces += self._take(held)
            return [F.assemble(self._type, 0, pieces)]
        out: list[bytes] = []
        while self._held > self._body_room(final=True):
            out.append(self._chunk(min(self._body_room(final=False), self._held), final=False))
        out.append(self._chunk(self._held, final=True))
        return out


def head_meta(head: RequestHead | ResponseHead) -> bytes:
    """The meta TLV's value for ``head``."""
    if isinstance(head, RequestHead):
        return encode_request_meta(head)
    return encode_response_meta(head)


def check_head(meta: bytes, request_id: str, max_frame_size: int) -> None:
    """Raise what ``MessageEncoder(head, request_id, max_frame_size)`` raises for a head
    whose meta is ``meta`` (the head is too large, or the frames too small)."""
    rid_len = len(request_id.encode())
    head_min = F.HEADER_SIZE + 2 * F.TLV_HEADER_SIZE + rid_len + len(meta)
    if head_min > max_frame_size:
        raise ProtocolError(
            "too_large",
            f"message head needs {head_min} bytes, frames are limited to {max_frame_size}",
            request_id,
        )
    room = max_frame_size - F.HEADER_SIZE - 2 * F.TLV_HEADER_SIZE - rid_len - _CHUNK_TLV
    if room - _FINAL_TLV < 1:
        raise ProtocolError(
            "too_large",
            f"max_frame_size {max_frame_size} leaves no room for body bytes",
            request_id,
        )


def whole_frame(
    head: RequestHead | ResponseHead,
    request_id: str,
    body: bytes,
    max_frame_size: int,
    meta: bytes | None = None,
) -> bytes | None:
    """The one unchunked frame :class:`MessageEncoder` makes of a message given as its head,
    ``data(body)`` and ``end()``, byte for byte; None when the encoder would make more than
    one frame of it or refuse it. ``meta``: the head's meta when already encoded."""
    if isinstance(head, RequestHead):
        ftype, tag = F.TYPE_REQUEST, F.TAG_HTTP_META
    else:
        ftype, tag = F.TYPE_RESPONSE, F.TAG_RESP_META
    if meta is None:
        meta = head_meta(head)
    rid = request_id.encode()
    size = F.HEADER_SIZE + 2 * F.TLV_HEADER_SIZE + len(rid) + len(meta)
    if body:
        # data() holds a body only while chunk 0 could still carry it (room for chunk_idx)
        size += F.TLV_HEADER_SIZE + len(body)
        if size + _CHUNK_TLV > max_frame_size:
            return None
    # the encoder's own refusal (no room for body bytes in a chunk) comes first: leave it to it
    room = max_frame_size - F.HEADER_SIZE - F.TLV_HEADER_SIZE - len(rid) - _CHUNK_TLV
    if size > max_frame_size or room - F.TLV_HEADER_SIZE - _FINAL_TLV < 1:
        return None
    pieces: list[bytes | memoryview] = [
        b"",
        _TLV_PACK(F.TAG_REQUEST_ID, len(rid)) + rid,
        _TLV_PACK(tag, len(meta)) + meta,
    ]
    if body:
        pieces.append(_TLV_PACK(F.TAG_HTTP_BODY, len(body)))
        pieces.append(body)
    return F.assemble(ftype, 0, pieces)


def _count_chunks(meta_len: int, rid_len: int, body_len: int, max_frame_size: int) -> int:
    """How many chunks MessageEncoder.end() makes for a known body with chunk_tot sent."""
    base = F.HEADER_SIZE + F.TLV_HEADER_SIZE + rid_len + 2 * _CHUNK_TLV + F.TLV_HEADER_SIZE
    idx, left = 0, body_len
    while True:
        room = max_frame_size - base - (F.TLV_HEADER_SIZE + meta_len if idx == 0 else 0)
        if left <= room - _FINAL_TLV:
            return idx + 1
        taken = min(max(room, 0), left)
        left -= taken
        idx += 1


def encode_message(message: Message, max_frame_size: int = DEFAULT_SEND_FRAME_SIZE) -> list[bytes]:
    """All frames of a whole message: one unchunked frame when it fits, else chunks with chunk_tot."""
    if isinstance(message, ErrorMessage):
        frame = encode_error(message.text, message.request_id)
        if len(frame) > max_frame_size:
            raise ProtocolError(
                "too_large", f"error frame of {len(frame)} bytes exceeds {max_frame_size}"
            )
        return [frame]
    head: RequestHead | ResponseHead
    if isinstance(message, Request):
        head = RequestHead(message.method, message.target, message.headers)
        ftype, meta_tag, meta = F.TYPE_REQUEST, F.TAG_HTTP_META, encode_request_meta(head)
    else:
        head = ResponseHead(message.status, message.reason, message.headers)
        ftype, meta_tag, meta = F.TYPE_RESPONSE, F.TAG_RESP_META, encode_response_meta(head)
    rid = message.request_id.encode()
    body = message.body
    tlvs: list[tuple[int, bytes]] = [(F.TAG_REQUEST_ID, rid), (meta_tag, meta)]
    if body:
        tlvs.append((F.TAG_HTTP_BODY, body))
    # the v1 reference's one frame, as MessageEncoder.end() would make it (without
    # building a streaming encoder: this is the hot path for small messages)
    if F.HEADER_SIZE + F.TLV_HEADER_SIZE * len(tlvs) + len(rid) + len(meta) + len(body) <= (
        max_frame_size
    ):
        return [F.encode_frame(ftype, 0, tlvs)]
    total = _count_chunks(len(meta), len(rid), len(body), max_frame_size)
    encoder = MessageEncoder(head, message.request_id, max_frame_size, chunk_total=total)
    frames = encoder.end(body)
    assert len(frames) == total, (len(frames), total)
    return frames


# --- decoding ------------------------------------------------------------------------------

_KNOWN_TAGS = frozenset(
    {
        F.TAG_REQUEST_ID,
        F.TAG_HTTP_META,
        F.TAG_HTTP_BODY,
        F.TAG_RESP_META,
        F.TAG_CHUNK_IDX,
        F.TAG_CHUNK_TOT,
        F.TAG_FINAL_CHUNK,
    }
)


_CHUNK_TAGS = frozenset({F.TAG_CHUNK_IDX, F.TAG_CHUNK_TOT, F.TAG_FINAL_CHUNK})


def _fields(frame: F.Frame) -> dict[int, bytes]:
    """Known TLVs by tag; unknown tags (extensions included) are skipped."""
    found: dict[int, bytes] = {}
    for tag, value in frame.tlvs:
        if tag in _KNOWN_TAGS:
            if tag in found:
                raise ProtocolError("bad_tlv", f"TLV 0x{tag:02x} appears twice in one frame")
            found[tag] = value
    return found


def _request_id(fields: dict[int, bytes], required: bool) -> str | None:
    raw = fields.get(F.TAG_REQUEST_ID)
    if raw is None:
        if required:
            raise ProtocolError("missing_field", "frame has no request_id TLV")
        return None
    if not raw or len(raw) > MAX_REQUEST_ID_BYTES:
        raise ProtocolError("bad_tlv", f"request_id must be 1 to {MAX_REQUEST_ID_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("bad_tlv", "request_id is not UTF-8") from None


def _u32(fields: dict[int, bytes], tag: int, name: str, rid: str) -> int | None:
    raw = fields.get(tag)
    if raw is None:
        return None
    if len(raw) != 4:
        raise ProtocolError("bad_tlv", f"{name} must be 4 bytes, got {len(raw)}", rid)
    return int.from_bytes(raw, "big")


@dataclass(slots=True)
class _Partial:
    frame_type: int
    next_idx: int = 0
    total: int | None = None
    head_sent: bool = False
    held: list[bytes] = field(default_factory=list)
    held_bytes: int = 0


class MessageDecoder:
    """Frames of many interleaved messages -> events, per frame, in arrival order.

    Accepts our layout and the reference's (resp_meta in the last chunk:
    body parts before the head are held, up to ``max_headless_body`` per message
    and ``max_headless_total`` over all of them; the message whose chunk goes
    over is refused with ``too_large`` and dropped, the others go on).
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._partials: dict[str, _Partial] = {}
        self._headless = 0  # body bytes held before their meta, over all partials

    @property
    def headless_bytes(self) -> int:
        """Body bytes held for messages whose meta has not arrived."""
        return self._headless

    def _drop(self, rid: str) -> None:
        part = self._partials.pop(rid, None)
        if part is not None:
            self._headless -= part.held_bytes

    @property
    def partial_messages(self) -> int:
        return len(self._partials)

    def receive_bytes(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Decode one frame (one binary WebSocket message) and receive it."""
        return self.receive(F.decode_frame(data, self.limits.max_frame_size))

    def forget(self, request_id: str) -> None:
        """Drop a partial message (its stream was cancelled)."""
        self._drop(request_id)

    def receive_whole(self, frame_type: int, rid: str, meta: bytes, body: bytes) -> list[Event]:
        """What :meth:`receive` gives for an unchunked frame found by
        :func:`~anpx_core.frames.whole_message` (``rid`` already checked)."""
        events: list[Event] = [HeadReceived(rid, self.whole_head(frame_type, rid, meta))]
        if body:
            events.append(BodyReceived(rid, body))
        events.append(MessageComplete(rid))
        return events

    def whole_head(self, frame_type: int, rid: str, meta: bytes) -> RequestHead | ResponseHead:
        """The head of the message in such a frame (its body and end follow at once)."""
        if rid in self._partials:
            raise ProtocolError("bad_chunk", "unchunked frame for a message still in progress", rid)
        return self._head(frame_type, meta, rid)

    def receive(self, frame: F.Frame) -> list[Event]:
        fields = _fields(frame)
        if frame.type == F.TYPE_ERROR:
            rid = _request_id(fields, required=False)
            if frame.chunked:
                raise ProtocolError("bad_chunk", "an error frame cannot be chunked", rid)
            if rid is not None:
                self._drop(rid)
            text = fields.get(F.TAG_HTTP_BODY, b"").decode("utf-8", "replace")
            return [ErrorReceived(rid, text)]
        rid = _request_id(fields, required=True)
        assert rid is not None
        meta_tag = F.TAG_HTTP_META if frame.type == F.TYPE_REQUEST else F.TAG_RESP_META
        wrong_meta = F.TAG_RESP_META if frame.type == F.TYPE_REQUEST else F.TAG_HTTP_META
        if wrong_meta in fields:
            raise ProtocolError("bad_tlv", "meta TLV does not match the frame type", rid)
        if frame.flags & F.FLAG_CHUNKED:
            return self._chunk(frame.type, rid, fields, meta_tag)
        if rid in self._partials:
            raise ProtocolError("bad_chunk", "unchunked frame for a message still in progress", rid)
        if not _CHUNK_TAGS.isdisjoint(fields):
            raise ProtocolError("bad_chunk", "chunk TLVs in a frame without the chunked flag", rid)
        raw_meta = fields.get(meta_tag)
        if raw_meta is None:
            raise ProtocolError("missing_field", "frame has no meta TLV", rid)
        events: list[Event] = [HeadReceived(rid, self._head(frame.type, raw_meta, rid))]
        body = fields.get(F.TAG_HTTP_BODY)
        if body:
            events.append(BodyReceived(rid, body))
        events.append(MessageComplete(rid))
        return events

    def _head(self, frame_type: int, raw: bytes, rid: str) -> RequestHead | ResponseHead:
        try:
            if frame_type == F.TYPE_REQUEST:
                return decode_request_meta(raw, self.limits.max_meta_size)
            return decode_response_meta(raw, self.limits.max_meta_size)
        except ProtocolError as exc:
            exc.request_id = rid
            raise

    def _chunk(
        self, frame_type: int, rid: str, fields: dict[int, bytes], meta_tag: int
    ) -> list[Event]:
        idx = _u32(fields, F.TAG_CHUNK_IDX, "chunk_idx", rid)
        if idx is None:
            raise ProtocolError("missing_field", "chunked frame has no chunk_idx", rid)
        total = _u32(fields, F.TAG_CHUNK_TOT, "chunk_tot", rid)
        final_raw = fields.get(F.TAG_FINAL_CHUNK)
        if final_raw is not None and final_raw not in _FINAL_VALUES:
            raise ProtocolError(
                "bad_tlv", "final_chunk must be 01 (or the reference's 00000001)", rid
            )
        part = self._partials.get(rid)
        if part is None:
            if idx != 0:
                raise ProtocolError("bad_chunk", f"message starts at chunk {idx}, not 0", rid)
            if len(self._partials) >= self.limits.max_partial_messages:
                raise ProtocolError(
                    "too_large",
                    f"more than {self.limits.max_partial_messages} chunked messages in progress",
                    rid,
                )
            part = _Partial(frame_type)
        elif part.frame_type != frame_type:
            raise ProtocolError("bad_chunk", "chunks of one message change frame type", rid)
        elif idx != part.next_idx:
            raise ProtocolError("bad_chunk", f"chunk {idx} arrived, expected {part.next_idx}", rid)
        if total is not None:
            if part.total is not None and total != part.total:
                raise ProtocolError(
                    "bad_chunk", f"chunk_tot changed from {part.total} to {total}", rid
                )
            if idx >= total:
                raise ProtocolError("bad_chunk", f"chunk {idx} is beyond chunk_tot {total}", rid)
            part.total = total
        last = final_raw is not None or (part.total is not None and idx + 1 == part.total)
        if final_raw is not None and part.total is not None and idx + 1 != part.total:
            raise ProtocolError("bad_chunk", f"final_chunk on chunk {idx} of {part.total}", rid)
        events: list[Event] = []
        raw_meta = fields.get(meta_tag)
        if raw_meta is not None:
            if part.head_sent:
                raise ProtocolError("bad_chunk", "meta sent twice in one message", rid)
            events.append(HeadReceived(rid, self._head(frame_type, raw_meta, rid)))
            part.head_sent = True
            events.extend(BodyReceived(rid, held) for held in part.held)
            self._headless -= part.held_bytes
            part.held, part.held_bytes = [], 0
        body = fields.get(F.TAG_HTTP_BODY)
        if body:
            if part.head_sent:
                events.append(BodyReceived(rid, body))
            else:
                limits = self.limits
                if part.held_bytes + len(body) > limits.max_headless_body:
                    self._drop(rid)
                    raise ProtocolError(
                        "too_large",
                        f"over {limits.max_headless_body} body bytes before the meta",
                        rid,
                    )
                if self._headless + len(body) > limits.max_headless_total:
                    self._drop(rid)
                    raise ProtocolError(
                        "too_large",
                        f"over {limits.max_headless_total} body bytes before the meta "
                        "in all messages in progress",
                        rid,
                    )
                part.held_bytes += len(body)
                self._headless += len(body)
                part.held.append(body)
        if last:
            self._partials.pop(rid, None)  # ``part`` itself, or not stored yet
            self._headless -= part.held_bytes
            if not part.head_sent:
                raise ProtocolError("missing_field", "chunked message ended without meta", rid)
            events.append(MessageComplete(rid))
        else:
            part.next_idx = idx + 1
            self._partials[rid] = part
        return events


def decode_message(wire: list[bytes], limits: Limits | None = None) -> Message:
    """Collect exactly one whole message from its frames."""
    decoder = MessageDecoder(limits)
    rid: str | None = None
    head: RequestHead | ResponseHead | None = None
    body: list[bytes] = []
    result: Message | None = None
    for data in wire:
        if result is not None:
            raise ProtocolError("bad_chunk", "frames follow a complete message", rid)
        for event in decoder.receive_bytes(data):
            if isinstance(event, ErrorReceived):
                if rid is not None and event.request_id != rid:
                    raise ProtocolError("bad_chunk", "frames of two messages", event.request_id)
                result = ErrorMessage(event.request_id, event.text)
                continue
            if rid is None:
                rid = event.request_id
            elif event.request_id != rid:
                raise ProtocolError("bad_chunk", "frames of two messages", event.request_id)
            if isinstance(event, HeadReceived):
                head = event.head
            elif isinstance(event, BodyReceived):
                body.append(event.data)
            else:
                assert head is not None and rid is not None  # a head came first, with its id
                if isinstance(head, RequestHead):
                    result = Request(rid, head.method, head.target, head.headers, b"".join(body))
                else:
                    result = Response(rid, head.status, head.reason, head.headers, b"".join(body))
    if result is None:
        raise ProtocolError("truncated", "the frames end before the message does", rid)
    return result

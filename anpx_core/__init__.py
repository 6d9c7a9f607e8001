"""anpx_core: the sans-IO heart of anpx.

The wire codec (:mod:`.frames`, :mod:`.meta`, :mod:`.messages`, :mod:`.adapter`)
uses only the standard library, so it can be vendored as a reference oracle.
"""

from .errors import ERROR_CODES, ProtocolError
from .frames import Frame, FrameDecoder, decode_frame, encode_frame
from .messages import (
    BodyReceived,
    ErrorMessage,
    ErrorReceived,
    HeadReceived,
    Limits,
    MessageComplete,
    MessageDecoder,
    MessageEncoder,
    Request,
    Response,
    decode_message,
    encode_error,
    encode_message,
)
from .meta import RequestHead, ResponseHead

__all__ = [
    "ERROR_CODES",
    "BodyReceived",
    "ErrorMessage",
    "ErrorReceived",
    "Frame",
    "FrameDecoder",
    "HeadReceived",
    "Limits",
    "MessageComplete",
    "MessageDecoder",
    "MessageEncoder",
    "ProtocolError",
    "Request",
    "RequestHead",
    "Response",
    "ResponseHead",
    "decode_frame",
    "decode_message",
    "encode_error",
    "encode_frame",
    "encode_message",
]

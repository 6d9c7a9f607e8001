"""http_meta / resp_meta: v1 fields, extension keys only when needed, lossless round trips."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, quote, unquote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anpx_core.errors import ProtocolError
from anpx_core.meta import (
    RequestHead,
    ResponseHead,
    decode_request_meta,
    decode_response_meta,
    encode_request_meta,
    encode_response_meta,
    join_target,
    split_target,
    v1_view,
)

from .hypothesis_profiles import examples

SETTINGS = settings(max_examples=examples(300), deadline=None)
MAX = 1 << 20


# The v1 view as docs/protocol.md specifies it, written with urllib independently of meta.py.
def ref_split(target: str) -> tuple[str, dict[str, str]]:
    raw_path, _, raw_query = target.partition("?")
    return unquote(raw_path), dict(parse_qsl(raw_query, keep_blank_values=True))


def ref_join(path: str, query: dict) -> str:
    target = quote(path, safe="/!$&'()*+,;=:@")
    return target + "?" + urlencode(query, doseq=True) if query else target


def ref_lossless(target: str) -> bool:
    return ref_join(*ref_split(target)) == target


PCT = st.sampled_from(["%2F", "%2f", "%20", "%41", "%25", "%zz", "%", "%C3%A9", "%c3%a9", "%FF"])
WORD = st.lists(st.one_of(st.text("abcXZ09-._~+ é中&=;/?%", max_size=3), PCT), max_size=3).map(
    "".join
)
PLAIN = st.text("abcXZ09-._~", max_size=4)
# plain but for the separators a query string uses, which urlencode must escape
NEAR_PLAIN = st.lists(st.sampled_from(["a", "0", "~", "&", "="]), max_size=5).map("".join)
SEGMENT = st.lists(
    st.one_of(st.text("abcXZ09-._~!$&'()*+,;=:@ é中😀\"<>\\^`{|}#", min_size=1, max_size=4), PCT),
    max_size=3,
).map("".join)
PATHS = st.lists(SEGMENT, max_size=4).map(lambda segs: "/" + "/".join(segs))
KEYS = st.one_of(st.sampled_from(["a", "b", "q"]), PLAIN, WORD)
FIELDS = st.one_of(
    st.tuples(KEYS, st.one_of(PLAIN, WORD)).map("=".join),  # name=value
    KEYS,  # a bare name
)
QUERIES = st.lists(FIELDS, max_size=5).map("&".join)
#: Request-targets: structured (percent-encoding, encoded slashes, repeated keys,
#: non-ASCII) or anything at all.
TARGETS = st.one_of(
    st.builds(lambda p, q: p if q is None else f"{p}?{q}", PATHS, st.none() | QUERIES),
    st.builds(lambda p, q: f"/{p}?{q}", PLAIN, st.lists(st.tuples(PLAIN, PLAIN)).map(urlencode)),
    st.text(min_size=1, max_size=24),
    st.sampled_from(["*", "/", "/?", "?a=b", "http://example.com/a?b=c", "/a?x=1&x=2"]),
)

TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
NAMES = st.one_of(
    st.sampled_from(["set-cookie", "content-type", "x-dup"]), st.text(TOKEN, min_size=1, max_size=8)
)
LATIN1 = st.text(st.characters(max_codepoint=255), max_size=16)
# what the decoder accepts (anpx_core.strict): field values without control characters but
# HTAB, request-targets without whitespace or control characters
FIELD_VALUES = st.text(
    st.characters(max_codepoint=255, blacklist_characters=[*map(chr, range(32)), "\x7f"])
    | st.just("\t"),
    max_size=16,
)
VALID_TARGETS = TARGETS.filter(lambda t: not any(c <= " " or c == "\x7f" for c in t))
HEADERS = st.lists(st.tuples(NAMES, FIELD_VALUES), max_size=6)
METHODS = st.text(TOKEN.upper(), min_size=1, max_size=8)
REQUEST_HEADS = st.builds(RequestHead, METHODS, VALID_TARGETS, HEADERS)
RESPONSE_HEADS = st.builds(ResponseHead, st.integers(100, 999), LATIN1, HEADERS)


def unique_names(headers: list[tuple[str, str]]) -> bool:
    return len({name for name, _ in headers}) == len(headers)


@SETTINGS
@given(REQUEST_HEADS)
def test_request_meta_v1_fields_extension_keys_only_when_needed(head: RequestHead) -> None:
    raw = encode_request_meta(head)
    meta = json.loads(raw)
    assert raw == json.dumps(meta).encode()  # byte for byte what json.dumps writes
    path, query = ref_split(head.target)
    merged: dict[str, str] = {}
    for name, value in head.headers:
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    v1 = {"method": head.method, "path": path, "headers": merged, "query": query}
    assert list(meta)[:4] == list(v1)
    assert {k: meta[k] for k in v1} == v1
    extensions = {k: v for k, v in meta.items() if k not in v1}
    expected = {}
    if not ref_lossless(head.target):
        expected["anpx_target"] = head.target
    if not unique_names(head.headers):
        expected["anpx_headers"] = [list(pair) for pair in head.headers]
    assert extensions == expected
    assert list(extensions) == list(expected)  # anpx_target before anpx_headers
    assert decode_request_meta(encode_request_meta(head), MAX) == head


@SETTINGS
@given(RESPONSE_HEADS)
def test_response_meta_v1_fields_extension_keys_only_when_needed(head: ResponseHead) -> None:
    raw = encode_response_meta(head)
    meta = json.loads(raw)
    assert list(meta)[:3] == ["status", "reason", "headers"]
    assert (meta["status"], meta["reason"]) == (head.status, head.reason)
    assert ("anpx_headers" in meta) == (not unique_names(head.headers))
    assert set(meta) <= {"status", "reason", "headers", "anpx_headers"}
    if unique_names(head.headers):
        assert (
            raw
            == json.dumps(
                {"status": head.status, "reason": head.reason, "headers": dict(head.headers)}
            ).encode()
        )
    assert decode_response_meta(raw, MAX) == head


@SETTINGS
@given(TARGETS)
def test_target_fast_paths_agree_with_urllib(target: str) -> None:
    path, query = ref_split(target)
    assert split_target(target) == (path, query)
    assert v1_view(target) == (path, query, ref_lossless(target))
    assert join_target(path, query) == ref_join(path, query)


@SETTINGS
@given(
    st.one_of(PLAIN.map(lambda p: "/" + p), PATHS),
    st.dictionaries(
        st.one_of(PLAIN, NEAR_PLAIN, WORD),
        st.one_of(PLAIN, NEAR_PLAIN, WORD, st.lists(st.one_of(PLAIN, WORD))),
    ),
)
def test_join_target_agrees_with_urllib(path: str, query: dict) -> None:
    assert join_target(path, query) == ref_join(path, query)


@pytest.mark.parametrize(
    ("target", "path", "query", "needs_extension"),
    [  # the table in docs/protocol.md
        ("/api/v1/run?q=test", "/api/v1/run", {"q": "test"}, False),
        ("/a%20b", "/a b", {}, False),
        ("/caf%C3%A9", "/café", {}, False),
        ("/a?q=a+b", "/a", {"q": "a b"}, False),
        ("/a%2Fb", "/a/b", {}, True),
        ("/caf%c3%a9", "/café", {}, True),
        ("/a?q=a%20b", "/a", {"q": "a b"}, True),
        ("/a?x=1&x=2", "/a", {"x": "2"}, True),
        ("/a?", "/a", {}, True),
        ("/a?q", "/a", {"q": ""}, True),
    ],
)
def test_documented_target_examples(
    target: str, path: str, query: dict, needs_extension: bool
) -> None:
    meta = json.loads(encode_request_meta(RequestHead("GET", target)))
    assert (meta["path"], meta["query"]) == (path, query)
    assert ("anpx_target" in meta) == needs_extension
    assert decode_request_meta(json.dumps(meta).encode(), MAX).target == target


def test_documented_worked_example() -> None:
    head = RequestHead(
        "GET",
        "/files/a%2Fb?tag=x&tag=y",
        [("Host", "example.com"), ("Cookie", "a=1"), ("Cookie", "b=2")],
    )
    assert encode_request_meta(head) == (
        b'{"method": "GET", "path": "/files/a/b", "headers": {"host": "example.com", '
        b'"cookie": "a=1, b=2"}, "query": {"tag": "y"}, "anpx_target": '
        b'"/files/a%2Fb?tag=x&tag=y", "anpx_headers": [["host", "example.com"], '
        b'["cookie", "a=1"], ["cookie", "b=2"]]}'
    )
    resp = ResponseHead(200, "OK", [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2")])
    assert encode_response_meta(resp) == (
        b'{"status": 200, "reason": "OK", "headers": {"set-cookie": "a=1; Path=/, b=2"}, '
        b'"anpx_headers": [["set-cookie", "a=1; Path=/"], ["set-cookie", "b=2"]]}'
    )


def test_v1_meta_from_a_reference_peer() -> None:
    raw = (
        b'{"method": "POST", "path": "/api/v1/run", "headers": {"content-type": '
        b'"application/json"}, "query": {"q": "test"}}'
    )
    assert decode_request_meta(raw, MAX) == RequestHead(
        "POST", "/api/v1/run?q=test", [("content-type", "application/json")]
    )
    # upper-case names from a lax peer are lower-cased; query lists are accepted
    raw = b'{"method": "GET", "path": "/a b", "headers": {"X-A": "1"}, "query": {"k": ["1", "2"]}}'
    assert decode_request_meta(raw, MAX) == RequestHead("GET", "/a%20b?k=1&k=2", [("x-a", "1")])
    assert decode_response_meta(b'{"status": 204, "headers": {}}', MAX) == ResponseHead(204, "")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=examples(150), deadline=None)
@given(
    st.integers(100, 999),
    LATIN1,
    st.dictionaries(NAMES, FIELD_VALUES, max_size=3),
    st.sampled_from([(", ", ": "), (",", ":")]),
    st.booleans(),
    st.sampled_from(["", " ", "\n\t"]),
    st.sampled_from(["", " ", "\r\n", "x", "{}", "\x00"]),
    st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32-le", "latin-1"]),
)
def test_meta_json_accepted_exactly_as_json_loads_accepts_it(
    status: int,
    reason: str,
    headers: dict,
    separators: tuple[str, str],
    ascii_only: bool,
    before: str,
    after: str,
    encoding: str,
) -> None:
    obj = {"status": status, "reason": reason, "headers": headers}
    text = before + json.dumps(obj, separators=separators, ensure_ascii=ascii_only) + after
    raw = text.encode(encoding)
    try:
        expected = json.loads(raw)
    except ValueError:
        with pytest.raises(ProtocolError) as info:
            decode_response_meta(raw, MAX)
        assert info.value.code == "bad_meta"
    else:
        assert decode_response_meta(raw, MAX) == ResponseHead(
            expected["status"], expected["reason"], list(expected["headers"].items())
        )


@SETTINGS
@given(st.one_of(JSON_VALUES.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40)))
def test_arbitrary_meta_raises_only_protocol_error(raw: bytes) -> None:
    for decode in (decode_request_meta, decode_response_meta):
        try:
            decode(raw, MAX)
        except ProtocolError as exc:
            assert exc.code == "bad_meta"


@pytest.mark.parametrize(
    "raw",
    [
        # nesting deep enough to exhaust the recursion limit
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
        b'{"method": "GET", "path": "/\\ud800", "headers": {}, "query": {}}',  # lone surrogate
        b'{"method": "GET", "path": "/", "headers": {}, "query": {"\\udc80": "x"}}',
        b'{"method": "", "path": "/", "headers": {}, "query": {}}',
        b'{"path": "/", "headers": {}, "query": {}}',
        b'{"method": "GET", "path": "", "headers": {}, "query": {}}',
        b'{"method": "GET", "path": "/", "headers": {"a": 1}, "query": {}}',
        b'{"method": "GET", "path": "/", "headers": {}, "query": {"a": [1]}}',
        b'{"method": "GET", "path": "/", "headers": {}, "anpx_headers": [["a"]]}',
        b'{"method": "GET", "anpx_target": 5}',
        b'{"method": "GET", "path": "/"} trailing',
        b"\xff\xfe\xfd",
    ],
)
def test_bad_request_meta(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request_meta(raw, MAX)
    assert info.value.code == "bad_meta"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"status": true, "headers": {}}',
        b'{"status": 99, "headers": {}}',
        b'{"status": 1000, "headers": {}}',
        b'{"status": "200", "headers": {}}',
        b'{"status": 200, "reason": null, "headers": {}}',
        b'{"status": 200, "headers": []}',
        b"[200]",
        b'{"status": 1' + b"0" * 5000 + b"}",  # beyond int() digit limits
    ],
)
def test_bad_response_meta(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_response_meta(raw, MAX)
    assert info.value.code == "bad_meta"


def test_meta_size_limit_edge() -> None:
    raw = encode_response_meta(ResponseHead(200, "OK", [("a", "b")]))
    assert decode_response_meta(raw, len(raw)).status == 200
    for decode in (decode_request_meta, decode_response_meta):
        with pytest.raises(ProtocolError) as info:
            decode(raw, len(raw) - 1)
        assert info.value.code == "too_large"

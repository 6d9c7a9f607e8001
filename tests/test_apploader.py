"""anpx_host.apploader (what local_app_module names) and anpx_host.demo (what `both` serves)."""

from __future__ import annotations

import base64
import itertools
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from anpx_host import demo
from anpx_host.apploader import AppLoadError, load_app
from anpx_host.config import ConfigError
from anpx_host.wsgi import WsgiApp

from .test_wsgi import AnyioThreads

_names = itertools.count()


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory for throwaway modules; sys.path and sys.modules are restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write_module(root: Path, source: str, package: str | None = None) -> str:
    """Write a uniquely named module (inside ``package`` if given) and return its dotted name."""
    name = f"anpx_testmod_{next(_names)}"
    directory = root
    dotted = name
    if package:
        directory = root / package
        directory.mkdir(exist_ok=True)
        (directory / "__init__.py").touch()
        dotted = f"{package}.{name}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return dotted


ASGI_APP = """
    async def app(scope, receive, send):
        pass
"""


def load_error(spec: str, root: Path, factory: bool = False) -> str:
    with pytest.raises(AppLoadError) as info:
        load_app(spec, factory, app_dir=str(root))
    text = str(info.value)
    assert text.startswith("app error: ") and "\n" not in text
    assert isinstance(info.value, ConfigError)  # one except clause catches both in a driver
    return text


# --- loading -------------------------------------------------------------------------------


def test_loads_the_named_attribute(sandbox: Path) -> None:
    mod = write_module(sandbox, ASGI_APP)
    app = load_app(f"{mod}:app", app_dir=str(sandbox))
    assert app is sys.modules[mod].app


def test_module_in_a_package_and_dotted_attribute(sandbox: Path) -> None:
    mod = write_module(
        sandbox,
        """
        class Holder:
            async def app(self, scope, receive, send):
                pass

        holder = Holder()
        """,
        package=f"anpx_testpkg_{next(_names)}",
    )
    app = load_app(f"{mod}:holder.app", app_dir=str(sandbox))
    assert app == sys.modules[mod].holder.app


def test_current_directory_goes_on_sys_path_like_uvicorn(
    sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = write_module(sandbox, ASGI_APP)
    monkeypatch.chdir(sandbox)
    assert str(sandbox) not in sys.path
    load_app(f"{mod}:app")
    assert sys.path[0] == str(sandbox)


def test_factory_is_called_once_without_arguments(sandbox: Path) -> None:
    mod = write_module(
        sandbox,
        """
        calls = []

        def create_app():
            calls.append(1)

            async def app(scope, receive, send):
                pass

            return app
        """,
    )
    app = load_app(f"{mod}:create_app", factory=True, app_dir=str(sandbox))
    module = sys.modules[mod]
    assert module.calls == [1] and callable(app) and app is not module.create_app


def test_instance_with_asgi_call_method(sandbox: Path) -> None:
    mod = write_module(
        sandbox,
        """
        class App:
            async def __call__(self, scope, receive, send):
                pass

        app = App()
        """,
    )
    assert load_app(f"{mod}:app", app_dir=str(sandbox)) is sys.modules[mod].app


def test_the_demo_app_loads_by_name() -> None:
    assert load_app("anpx_host.demo:app") is demo.app


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["nocolon", ":app", "mod:", "mod:a:b", "mod:a..b", "mod:.a"])
def test_malformed_spec(spec: str, sandbox: Path) -> None:
    assert load_error(spec, sandbox) == (
        f'app error: "{spec}" must be "module:attribute", e.g. "myapp.main:app"'
    )


def test_module_that_does_not_exist(sandbox: Path) -> None:
    assert load_error("anpx_no_such_module.sub:app", sandbox) == (
        'app error: cannot import module "anpx_no_such_module.sub": '
        f"No module named 'anpx_no_such_module' (searched {sandbox} and sys.path)"
    )


def test_module_whose_own_import_fails(sandbox: Path) -> None:
    mod = write_module(sandbox, "import anpx_missing_dependency_q\n")
    assert load_error(f"{mod}:app", sandbox) == (
        f'app error: error while importing "{mod}": '
        "ModuleNotFoundError: No module named 'anpx_missing_dependency_q'"
    )


def test_module_raising_at_import(sandbox: Path) -> None:
    mod = write_module(sandbox, "raise RuntimeError('database\\nunreachable')\n")
    assert load_error(f"{mod}:app", sandbox) == (
        f'app error: error while importing "{mod}": RuntimeError: database unreachable'
    )


def test_module_with_a_syntax_error(sandbox: Path) -> None:
    mod = write_module(sandbox, "def broken(:\n")
    text = load_error(f"{mod}:app", sandbox)
    assert text.startswith(f'app error: error while importing "{mod}": SyntaxError: ')


def test_missing_attribute_with_suggestion(sandbox: Path) -> None:
    mod = write_module(sandbox, ASGI_APP)
    assert load_error(f"{mod}:ap", sandbox) == (
        f'app error: module "{mod}" has no attribute "ap" (did you mean app?)'
    )
    assert load_error(f"{mod}:zzz", sandbox) == f'app error: module "{mod}" has no attribute "zzz"'


def test_missing_sub_attribute(sandbox: Path) -> None:
    mod = write_module(sandbox, "class holder:\n    pass\n")
    assert load_error(f"{mod}:holder.app", sandbox) == (
        f'app error: "{mod}:holder" has no attribute "app"'
    )


def test_not_callable(sandbox: Path) -> None:
    mod = write_module(sandbox, "app = 42\nnothing = None\n")
    assert load_error(f"{mod}:app", sandbox) == (
        f'app error: "{mod}:app" is not callable (it is a int); expected an ASGI or WSGI app'
    )
    assert load_error(f"{mod}:nothing", sandbox) == (
        f'app error: "{mod}:nothing" is not callable (it is None); expected an ASGI or WSGI app'
    )


def test_factory_given_without_factory_flag_gets_a_hint(sandbox: Path) -> None:
    mod = write_module(sandbox, "def create_app():\n    return None\n")
    assert load_error(f"{mod}:create_app", sandbox) == (
        f'app error: "{mod}:create_app" is not an ASGI or WSGI app: it cannot be called as '
        "app(scope, receive, send) or app(environ, start_response); "
        "if it makes the app, use --factory (app_factory = true)"
    )


def test_factory_errors(sandbox: Path) -> None:
    mod = write_module(
        sandbox,
        """
        def failing():
            raise ValueError("no settings")

        def returns_nothing():
            return None

        def returns_factory():
            return lambda: None

        not_a_factory = 3
        """,
    )
    assert load_error(f"{mod}:failing", sandbox, factory=True) == (
        f'app error: app factory "{mod}:failing" failed: ValueError: no settings'
    )
    assert load_error(f"{mod}:returns_nothing", sandbox, factory=True) == (
        f'app error: the app made by factory "{mod}:returns_nothing" is not callable '
        "(it is None); expected an ASGI or WSGI app"
    )
    assert load_error(f"{mod}:returns_factory", sandbox, factory=True) == (
        f'app error: the app made by factory "{mod}:returns_factory" is not an ASGI or WSGI app: '
        "it cannot be called as app(scope, receive, send) or app(environ, start_response)"
    )
    assert load_error(f"{mod}:not_a_factory", sandbox, factory=True) == (
        f'app error: app factory "{mod}:not_a_factory" is not callable (it is a int)'
    )


def test_original_exception_is_chained_for_debugging(sandbox: Path) -> None:
    mod = write_module(sandbox, "raise KeyError('x')\n")
    with pytest.raises(AppLoadError) as info:
        load_app(f"{mod}:app", app_dir=str(sandbox))
    assert isinstance(info.value.__cause__, KeyError)


# --- interfaces: ASGI, WSGI (through anpx_host.wsgi), detected or named ------------------

WSGI_APP = """
    def app(environ, start_response):
        body = (environ["REQUEST_METHOD"] + " " + environ["PATH_INFO"] + "?" +
                environ["QUERY_STRING"] + " " + environ["wsgi.input"].read().decode()).encode()
        start_response("201 Created", [("Content-Type", "text/plain"), ("X-Wsgi", "yes")])
        return [body]
"""


def call_over_asgi(
    app, method: str, url: str, backend: str = "asyncio", **kwargs
) -> httpx.Response:
    if isinstance(app, WsgiApp):
        app.threads = AnyioThreads()  # what a receiver driver does

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
            return await client.request(method, url, **kwargs)

    return anyio.run(go, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_wsgi_function_is_detected_and_served_on_either_loop(sandbox: Path, backend: str) -> None:
    mod = write_module(sandbox, WSGI_APP)
    app = load_app(f"{mod}:app", app_dir=str(sandbox))
    assert isinstance(app, WsgiApp) and app.app is sys.modules[mod].app
    assert app.name == f'"{mod}:app"'
    r = call_over_asgi(app, "POST", "/p/q?x=1", backend=backend, content=b"body")
    assert (r.status_code, r.text, r.headers["x-wsgi"]) == (201, "POST /p/q?x=1 body", "yes")
    assert isinstance(load_app(f"{mod}:app", interface="wsgi", app_dir=str(sandbox)), WsgiApp)


def test_flask_app_and_flask_factory_are_wsgi(sandbox: Path) -> None:
    mod = write_module(
        sandbox,
        """
        from flask import Flask, request

        def create_app():
            flask_app = Flask(__name__)

            @flask_app.get("/hi/<name>")
            def hi(name):
                return {"hi": name, "q": request.args.get("q")}

            return flask_app

        app = create_app()
        """,
    )
    for app in (
        load_app(f"{mod}:app", app_dir=str(sandbox)),
        load_app(f"{mod}:create_app", factory=True, app_dir=str(sandbox)),
    ):
        assert call_over_asgi(app, "GET", "/hi/ann?q=7").json() == {"hi": "ann", "q": "7"}


def test_asgi_detection_is_unchanged(sandbox: Path) -> None:
    mod = write_module(
        sandbox,
        """
        import functools

        async def app(scope, receive, send):
            pass

        class Instance:
            async def __call__(self, scope, receive, send):
                pass

        def sync_three(scope, receive, send):
            pass

        def wrapper(*args, **kwargs):
            pass

        instance = Instance()
        partial = functools.partial(app)
        """,
    )
    for name in ("app", "instance", "sync_three", "wrapper", "partial"):
        app = load_app(f"{mod}:{name}", app_dir=str(sandbox))
        assert app is getattr(sys.modules[mod], name)


def test_named_interface_overrides_detection_when_the_signature_allows(sandbox: Path) -> None:
    # (*args) fits both; auto says ASGI, and --interface wsgi is taken at its word.
    mod = write_module(
        sandbox,
        """
        def wrapper(*args):
            environ, start_response = args
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"wrapped"]
        """,
    )
    assert load_app(f"{mod}:wrapper", app_dir=str(sandbox)) is sys.modules[mod].wrapper
    app = load_app(f"{mod}:wrapper", interface="wsgi", app_dir=str(sandbox))
    assert isinstance(app, WsgiApp) and call_over_asgi(app, "GET", "/").text == "wrapped"


def test_interface_mismatch_errors_name_the_fix(sandbox: Path) -> None:
    wsgi = write_module(sandbox, WSGI_APP)
    asgi = write_module(sandbox, ASGI_APP)
    assert load_error_with(f"{wsgi}:app", sandbox, interface="asgi") == (
        f'app error: "{wsgi}:app" is not an ASGI app: it cannot be called as '
        "app(scope, receive, send); it looks like a WSGI app: use --interface wsgi or auto"
    )
    assert load_error_with(f"{asgi}:app", sandbox, interface="wsgi") == (
        f'app error: "{asgi}:app" is not a WSGI app: it cannot be called as '
        "app(environ, start_response); it looks like an ASGI app: use --interface asgi or auto"
    )
    assert load_error_with(f"{asgi}:app", sandbox, interface="both") == (
        'app error: interface must be "auto", "asgi" or "wsgi", got "both"'
    )


def test_django_asgi_refuses_to_start_under_trio(sandbox: Path) -> None:
    """Django's ASGI handler (asgiref) needs asyncio: under trio the lifespan startup fails
    with the reason, which the trio receiver turns into a start-up refusal."""
    django_mod = write_module(
        sandbox,
        """
        from django.core.handlers.asgi import ASGIHandler

        class Handler(ASGIHandler):
            def __init__(self):  # no settings needed to be recognised
                pass

        app = Handler()
        """,
    )
    app = load_app(f"{django_mod}:app", app_dir=str(sandbox))
    expected = (
        f'"{django_mod}:app" is a Django app, which needs asyncio: '
        "run the receiver with python -m anpx_asyncio"
    )
    assert app.reason == expected
    sent: list[dict] = []

    async def lifespan() -> None:
        async def receive() -> dict:
            return {"type": "lifespan.startup"}

        async def send(message: dict) -> None:
            sent.append(message)

        await app({"type": "lifespan"}, receive, send)

    anyio.run(lifespan, backend="trio")
    assert sent == [{"type": "lifespan.startup.failed", "message": expected}]
    with pytest.raises(RuntimeError, match="needs asyncio"):
        call_over_asgi(app, "GET", "/", backend="trio")


def load_error_with(spec: str, root: Path, **kwargs) -> str:
    with pytest.raises(AppLoadError) as info:
        load_app(spec, app_dir=str(root), **kwargs)
    return str(info.value)


# --- the demo app, through httpx's ASGI transport (an independent ASGI server) -------------


def request(method: str, url: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=demo.app, client=("203.0.113.9", 41000))
        async with httpx.AsyncClient(transport=transport, base_url="http://demo.test") as client:
            return await client.request(method, url, **kwargs)

    return anyio.run(go)


def test_demo_index_for_a_browser_escapes_what_the_client_sent() -> None:
    r = request(
        "GET",
        "/",
        headers={"accept": "text/html", "x-request-id": "<script>x</script>", "x-forwarded-for": "198.51.100.1"},
    )  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "The anpx tunnel works" in r.text
    assert "&lt;script&gt;x&lt;/script&gt;" in r.text and "<script>" not in r.text
    assert "203.0.113.9:41000" in r.text and "198.51.100.1" in r.text


def test_demo_index_for_curl_is_plain_text() -> None:
    r = request("GET", "/", headers={"accept": "*/*", "x-request-id": "rid-42"})
    assert r.headers["content-type"].startswith("text/plain")
    assert "request id: rid-42" in r.text and "client: 203.0.113.9:41000" in r.text
    assert int(r.headers["content-length"]) == len(r.content)


def test_demo_echo_returns_the_request() -> None:
    body = b"\xff\x00binary"
    r = request("PUT", "/echo?a=1&a=2&empty=&q=%C3%A9", content=body, headers={"x-test": "yes"})
    echo = r.json()
    assert r.status_code == 200
    assert (echo["method"], echo["path"]) == ("PUT", "/echo")
    assert echo["query_string"] == "a=1&a=2&empty=&q=%C3%A9"
    assert echo["query"] == {"a": ["1", "2"], "empty": [""], "q": ["é"]}
    assert ["x-test", "yes"] in echo["headers"]
    assert echo["body_encoding"] == "base64" and echo["body_length"] == len(body)
    assert base64.b64decode(echo["body"]) == body
    assert echo["client"] == ["203.0.113.9", 41000]
    text = request("POST", "/echo", content="héllo".encode()).json()
    assert (text["body"], text["body_encoding"]) == ("héllo", "utf-8")


def test_demo_echo_refuses_a_body_over_its_limit() -> None:
    r = request("POST", "/echo", content=b"x" * (demo.ECHO_MAX_BODY + 1))
    assert r.status_code == 413
    assert request("POST", "/echo", content=b"x" * demo.ECHO_MAX_BODY).json()["body_length"] == (
        demo.ECHO_MAX_BODY
    )


def test_demo_stream_sends_server_sent_events() -> None:
    r = request("GET", "/stream?n=3")
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [block for block in r.text.split("\n\n") if block]
    assert len(events) == 4
    for i, block in enumerate(events[:3], start=1):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        assert lines["id"] == str(i) and lines["event"] == "tick"
        assert json.loads(lines["data"]) == {"n": i, "of": 3}
    assert events[3].startswith("event: done")
    default = [b for b in request("GET", "/stream").text.split("\n\n") if b]
    assert len(default) == demo.STREAM_DEFAULT + 1


@pytest.mark.parametrize("n", ["0", "-1", "abc", str(demo.STREAM_MAX + 1)])
def test_demo_stream_rejects_a_bad_count(n: str) -> None:
    assert request("GET", f"/stream?n={n}").status_code == 400


def test_demo_routes_methods_and_health() -> None:
    assert request("GET", "/nope").status_code == 404
    r = request("DELETE", "/")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert request("POST", "/stream").status_code == 405
    health = request("GET", "/health")
    assert health.status_code == 200 and health.json()["served_by"] == "anpx demo app"


def sent_to(sent: list[dict]):
    async def send(message: dict) -> None:
        sent.append(message)

    return send


def test_demo_awaits_nothing_but_asgi_receive_and_send() -> None:
    """Driven without an event loop: any other await (a sleep, a clock) would suspend it."""
    for path, query in [("/", b""), ("/echo", b"x=1"), ("/stream", b"n=5"), ("/health", b"")]:
        sent: list[dict] = []
        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "headers": [],
            "client": None,
        }

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        coro = demo.app(scope, receive, sent_to(sent))
        with pytest.raises(StopIteration):
            coro.send(None)
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
        assert sent[-1].get("more_body", False) is False


def test_demo_lifespan() -> None:
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict] = []

    async def receive() -> dict:
        return next(incoming)

    async def send(message: dict) -> None:
        sent.append(message)

    coro = demo.app({"type": "lifespan"}, receive, send)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

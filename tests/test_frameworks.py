"""Real frameworks through a real gateway and receiver, checked with a real HTTP client.

Every back end implements the same small contract (below) in its own idiom, and the same
checks run against each through the tunnel: JSON with path and query parameters, a multipart
upload, a large raw body each way, a streamed response that must arrive in pieces, two cookies
set and sent back, a redirect. FastAPI adds BackgroundTasks. Forward mode is checked against a
Node `http` server (the same contract) and `python -m http.server` (static files: what it can do).

The contract:

    GET  /items/{id}?q=       {"id": id, "q": q, "host": <Host header>}
    POST /upload              multipart field "file" -> {"filename", "size", "sha256"}
    POST /body                raw body -> {"size", "sha256"}
    GET  /blob?size=N         N bytes of blob(N)
    GET  /stream?key=K        "first\\n", then waits until /release?key=K, then "second\\nthird\\n"
                              (or "timed out\\n" after GATE_TIMEOUT: buffering is caught)
    GET  /release?key=K       opens that gate
    GET  /cookies/set         Set-Cookie a=1 and b=2 (HttpOnly)
    GET  /cookies             the cookies received, as JSON
    GET  /redirect            302 to /items/5?q=moved

Django's ASGI handler (asgiref) needs asyncio, so its receivers are asyncio-driven; the refusal
under trio is tested in tests/test_examples.py. Flask (WSGI) runs under both receiver drivers.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

# FastAPI reads the handlers' annotations: its names must be module globals.
from fastapi import BackgroundTasks, FastAPI, Request, UploadFile
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from anpx_core.receiver import ReceiverSettings
from anpx_host.apploader import load_app
from anpx_host.wsgi import WsgiApp

from .deploy import start_gateway, start_receiver, wait_until

GATE_TIMEOUT = 10.0
UPLOAD = os.urandom(3 * 1024 * 1024 + 17)
BODY = os.urandom(5 * 1024 * 1024 + 3)
BLOB_SIZE = 4 * 1024 * 1024 + 5
_keys = itertools.count()


def blob(size: int) -> bytes:
    """The /blob payload: bytes 0..250 repeated (251 is prime, so chunk seams show)."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def digest(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# --- FastAPI ---------------------------------------------------------------------------------


def fastapi_app() -> FastAPI:
    api = FastAPI()
    gates: dict[str, anyio.Event] = {}
    done: list[str] = []

    @api.get("/items/{item_id}")
    async def item(item_id: int, request: Request, q: str = ""):
        return {"id": item_id, "q": q, "host": request.headers["host"]}

    @api.post("/upload")
    async def upload(file: UploadFile):
        return {"filename": file.filename, **digest(await file.read())}

    @api.post("/body")
    async def body(request: Request):
        return digest(await request.body())

    @api.get("/blob")
    async def get_blob(size: int):
        return Response(blob(size), media_type="application/octet-stream")

    @api.get("/stream")
    async def stream(key: str):
        gate = gates[key] = anyio.Event()

        async def parts():
            yield b"first\n"
            with anyio.move_on_after(GATE_TIMEOUT) as scope:
                await gate.wait()
            yield b"timed out\n" if scope.cancelled_caught else b"second\nthird\n"

        return StreamingResponse(parts(), media_type="text/plain")

    @api.get("/release")
    async def release(key: str):
        gates[key].set()
        return {"released": key}

    @api.get("/cookies/set")
    async def set_cookies():
        response = Response("set")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2", httponly=True)
        return response

    @api.get("/cookies")
    async def cookies(request: Request):
        return request.cookies

    @api.get("/redirect")
    async def redirect():
        return RedirectResponse("/items/5?q=moved", status_code=302)

    async def record(name: str) -> None:
        await anyio.sleep(0.01)  # a task that awaits, after the response went out
        done.append(name)

    @api.post("/tasks/{name}")
    async def queue_task(name: str, tasks: BackgroundTasks):
        tasks.add_task(record, name)
        return {"queued": name}

    @api.get("/tasks")
    async def tasks_done():
        return done

    return api


# --- Starlette -------------------------------------------------------------------------------


def starlette_app():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
    from starlette.routing import Route

    gates: dict[str, anyio.Event] = {}

    async def item(request: Request):
        return JSONResponse(
            {
                "id": int(request.path_params["item_id"]),
                "q": request.query_params.get("q", ""),
                "host": request.headers["host"],
            }
        )

    async def upload(request: Request):
        async with request.form() as form:
            file = form["file"]
            return JSONResponse({"filename": file.filename, **digest(await file.read())})

    async def body(request: Request):
        h, size = hashlib.sha256(), 0
        async for chunk in request.stream():  # hashed as it arrives, never held whole
            h.update(chunk)
            size += len(chunk)
        return JSONResponse({"size": size, "sha256": h.hexdigest()})

    async def get_blob(request: Request):
        return Response(blob(int(request.query_params["size"])))

    async def stream(request: Request):
        gate = gates[request.query_params["key"]] = anyio.Event()

        async def parts():
            yield b"first\n"
            with anyio.move_on_after(GATE_TIMEOUT) as scope:
                await gate.wait()
            yield b"timed out\n" if scope.cancelled_caught else b"second\nthird\n"

        return StreamingResponse(parts(), media_type="text/plain")

    async def release(request: Request):
        gates[request.query_params["key"]].set()
        return JSONResponse({})

    async def set_cookies(request: Request):
        response = Response("set")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2", httponly=True)
        return response

    async def cookies(request: Request):
        return JSONResponse(request.cookies)

    async def redirect(request: Request):
        return RedirectResponse("/items/5?q=moved", status_code=302)

    return Starlette(
        routes=[
            Route("/items/{item_id:int}", item),
            Route("/upload", upload, methods=["POST"]),
            Route("/body", body, methods=["POST"]),
            Route("/blob", get_blob),
            Route("/stream", stream),
            Route("/release", release),
            Route("/cookies/set", set_cookies),
            Route("/cookies", cookies),
            Route("/redirect", redirect),
        ]
    )


# --- Django (ASGI), settings made here: no project files -------------------------------------


def django_app():
    """Factory for load_app(..., factory=True): configures Django once per process."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="anpx-test-only",
            ALLOWED_HOSTS=["127.0.0.1", "localhost"],
            ROOT_URLCONF=_django_urlconf(),
            MIDDLEWARE=[],  # no CSRF: the client is a script
            INSTALLED_APPS=[],
            DATA_UPLOAD_MAX_MEMORY_SIZE=None,  # /body takes a large raw body
            USE_TZ=True,
        )
        django.setup()
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


def _django_urlconf() -> types.ModuleType:
    from django.http import (
        HttpResponse,
        HttpResponseRedirect,
        JsonResponse,
        StreamingHttpResponse,
    )
    from django.urls import path

    gates: dict[str, asyncio.Event] = {}

    def item(request, item_id: int):
        return JsonResponse(
            {"id": item_id, "q": request.GET.get("q", ""), "host": request.get_host()}
        )

    def upload(request):
        file = request.FILES["file"]
        return JsonResponse({"filename": file.name, **digest(file.read())})

    def body(request):
        return JsonResponse(digest(request.body))

    def get_blob(request):
        return HttpResponse(blob(int(request.GET["size"])), content_type="application/octet-stream")

    async def stream(request):
        gate = gates[request.GET["key"]] = asyncio.Event()

        async def parts():
            yield b"first\n"
            try:
                await asyncio.wait_for(gate.wait(), GATE_TIMEOUT)
                yield b"second\nthird\n"
            except asyncio.TimeoutError:
                yield b"timed out\n"

        return StreamingHttpResponse(parts(), content_type="text/plain")

    async def release(request):
        gates[request.GET["key"]].set()
        return JsonResponse({})

    def set_cookies(request):
        response = HttpResponse("set")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2", httponly=True)
        return response

    def cookies(request):
        return JsonResponse(request.COOKIES)

    def redirect(request):
        return HttpResponseRedirect("/items/5?q=moved")

    urlconf = types.ModuleType("anpx_test_urls")  # Django takes a module object as well
    urlconf.urlpatterns = [
        path("items/<int:item_id>", item),
        path("upload", upload),
        path("body", body),
        path("blob", get_blob),
        path("stream", stream),
        path("release", release),
        path("cookies/set", set_cookies),
        path("cookies", cookies),
        path("redirect", redirect),
    ]
    return urlconf


# --- Flask (WSGI, served through anpx_host.wsgi by the app loader) ---------------------------


def flask_app():
    from flask import Flask, Response, redirect, request

    app = Flask(__name__)
    gates: dict[str, threading.Event] = {}

    @app.get("/items/<int:item_id>")
    def item(item_id: int):
        return {"id": item_id, "q": request.args.get("q", ""), "host": request.host}

    @app.post("/upload")
    def upload():
        file = request.files["file"]
        return {"filename": file.filename, **digest(file.read())}

    @app.post("/body")
    def body():
        h, size = hashlib.sha256(), 0
        while chunk := request.stream.read(65536):  # streamed in, not held whole
            h.update(chunk)
            size += len(chunk)
        return {"size": size, "sha256": h.hexdigest()}

    @app.get("/blob")
    def get_blob():
        return Response(blob(int(request.args["size"])), mimetype="application/octet-stream")

    @app.get("/stream")
    def stream():
        gate = gates[request.args["key"]] = threading.Event()

        def parts():
            yield b"first\n"
            yield b"second\nthird\n" if gate.wait(GATE_TIMEOUT) else b"timed out\n"

        return Response(parts(), mimetype="text/plain")

    @app.get("/release")
    def release():
        gates[request.args["key"]].set()
        return {}

    @app.get("/cookies/set")
    def set_cookies():
        response = Response("set")
        response.set_cookie("a", "1")
        response.set_cookie("b", "2", httponly=True)
        return response

    @app.get("/cookies")
    def cookies():
        return dict(request.cookies)

    @app.get("/redirect")
    def go():
        return redirect("/items/5?q=moved", 302)

    return app


# --- Node's http module, for forward mode ----------------------------------------------------

NODE_SERVER = r"""
const http = require("http");
const crypto = require("crypto");
const gates = new Map();

function blob(size) {
  const out = Buffer.alloc(size);
  for (let i = 0; i < size; i++) out[i] = i % 251;
  return out;
}
function readAll(req) {
  return new Promise((resolve) => {
    const parts = [];
    req.on("data", (c) => parts.push(c));
    req.on("end", () => resolve(Buffer.concat(parts)));
  });
}
function digest(buf) {
  return { size: buf.length, sha256: crypto.createHash("sha256").update(buf).digest("hex") };
}
function json(res, obj, status = 200) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}
function multipartFile(body, contentType) {
  const boundary = Buffer.from("--" + /boundary=("?)([^";]+)\1/.exec(contentType)[2]);
  let start = body.indexOf(boundary);
  while (start !== -1) {
    const next = body.indexOf(boundary, start + boundary.length);
    if (next === -1) break;
    const part = body.subarray(start + boundary.length + 2, next - 2);  // \r\n ... \r\n
    const split = part.indexOf("\r\n\r\n");
    const head = part.subarray(0, split).toString("latin1");
    const name = /filename="([^"]*)"/.exec(head);
    if (/name="file"/.test(head) && name) return { filename: name[1], data: part.subarray(split + 4) };
    start = next;
  }
  return null;
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, "http://x");
  const q = url.searchParams;
  const items = /^\/items\/(\d+)$/.exec(url.pathname);
  if (items) return json(res, { id: Number(items[1]), q: q.get("q") || "", host: req.headers.host });
  switch (url.pathname) {
    case "/upload": {
      const file = multipartFile(await readAll(req), req.headers["content-type"]);
      return json(res, { filename: file.filename, ...digest(file.data) });
    }
    case "/body": return json(res, digest(await readAll(req)));
    case "/blob": {
      const data = blob(Number(q.get("size")));
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": data.length });
      return res.end(data);
    }
    case "/stream": {
      res.writeHead(200, { "content-type": "text/plain" });  // chunked
      res.write("first\n");
      const released = new Promise((resolve) => gates.set(q.get("key"), resolve));
      const timer = new Promise((resolve) => setTimeout(() => resolve(false), GATE_TIMEOUT_MS));
      const ok = await Promise.race([released.then(() => true), timer]);
      return res.end(ok ? "second\nthird\n" : "timed out\n");
    }
    case "/release": gates.get(q.get("key"))(); return json(res, {});
    case "/cookies/set":
      res.setHeader("set-cookie", ["a=1; Path=/", "b=2; Path=/; HttpOnly"]);
      return res.end("set");
    case "/cookies": {
      const jar = {};
      for (const pair of (req.headers.cookie || "").split(/;\s*/).filter(Boolean)) {
        const [k, v] = pair.split("=");
        jar[k] = v;
      }
      return json(res, jar);
    }
    case "/redirect":
      res.writeHead(302, { location: "/items/5?q=moved", "content-length": 0 });
      return res.end();
  }
  json(res, { error: "not found" }, 404);
});
server.listen(0, "127.0.0.1", () => console.log("listening " + server.address().port));
""".replace("GATE_TIMEOUT_MS", str(int(GATE_TIMEOUT * 1000)))


class Service:
    """A subprocess serving HTTP on a free loopback port, read from its first output line."""

    def __init__(self, argv: list[str], marker: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the server is listening
        if marker not in line:
            self.close()
            raise AssertionError(f"{argv[0]} did not start: {line!r}")
        self.port = int(line.split(marker, 1)[1].split()[0])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


# --- the tunnel and the checks ---------------------------------------------------------------


class Tunnel:
    def __init__(self, gw: str, rc: str, app=None, forward: int | None = None) -> None:
        self.gateway = start_gateway(gw)
        settings = ReceiverSettings(reconnect_delay=0.05)
        settings.gateway_urls = [f"ws://127.0.0.1:{self.gateway.obj.ports.tunnel}/"]
        if forward is not None:
            settings.forward = ("127.0.0.1", forward)
        self.receiver = start_receiver(rc, settings, app)
        wait_until(lambda: len(self.gateway.obj.core.receivers) == 1)
        self.authority = f"127.0.0.1:{self.gateway.obj.ports.http}"
        self.http = httpx.Client(base_url=f"http://{self.authority}", timeout=30)

    def close(self) -> None:
        self.http.close()
        self.receiver.stop()
        self.gateway.stop()


@pytest.fixture
def tunnel_for() -> Iterator:
    made: list[Tunnel] = []

    def make(*args, **kwargs) -> Tunnel:
        made.append(Tunnel(*args, **kwargs))
        return made[-1]

    yield make
    for t in made:
        t.close()


def check_contract(t: Tunnel) -> None:
    """The same end-to-end checks for every back end."""
    http = t.http
    r = http.get("/items/42", params={"q": "hello wörld & more"})
    assert r.status_code == 200
    assert r.json() == {"id": 42, "q": "hello wörld & more", "host": t.authority}

    r = http.post("/upload", files={"file": ("report.bin", UPLOAD, "application/octet-stream")})
    assert r.status_code == 200 and r.json() == {"filename": "report.bin", **digest(UPLOAD)}

    assert http.post("/body", content=BODY).json() == digest(BODY)

    r = http.get("/blob", params={"size": BLOB_SIZE})
    assert r.status_code == 200 and r.content == blob(BLOB_SIZE)

    check_streaming(t)

    r = http.get("/cookies/set")
    assert sorted(c.split(";")[0] for c in r.headers.get_list("set-cookie")) == ["a=1", "b=2"]
    assert "httponly" in r.headers.get_list("set-cookie")[1].lower()
    assert http.get("/cookies").json() == {"a": "1", "b": "2"}  # sent back by the client's jar

    r = http.get("/redirect")
    assert r.status_code == 302 and r.headers["location"] == "/items/5?q=moved"
    r = http.get("/redirect", follow_redirects=True)
    assert r.json()["id"] == 5 and r.json()["q"] == "moved" and len(r.history) == 1


def check_streaming(t: Tunnel) -> None:
    """The first part must arrive while the app still waits: a buffering hop would hold it
    until the gate times out, and the body would then say so."""
    key = f"k{next(_keys)}"
    with t.http.stream("GET", "/stream", params={"key": key}) as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        received = b""
        while b"\n" not in received:
            received += next(chunks)
        assert received == b"first\n"
        assert httpx.get(f"http://{t.authority}/release?key={key}").status_code == 200
        received += b"".join(chunks)
    assert received == b"first\nsecond\nthird\n"


# --- the runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gw", "rc"), [("trio", "trio"), ("asyncio", "asyncio"), ("asyncio", "trio")]
)
def test_fastapi(tunnel_for, gw: str, rc: str) -> None:
    t = tunnel_for(gw, rc, fastapi_app())
    check_contract(t)
    names = [f"job{i}" for i in range(3)]
    for name in names:
        assert t.http.post(f"/tasks/{name}").json() == {"queued": name}
    wait_until(lambda: sorted(t.http.get("/tasks").json()) == names, timeout=5)


def test_starlette(tunnel_for) -> None:
    check_contract(tunnel_for("trio", "asyncio", starlette_app()))


def test_django_asgi(tunnel_for) -> None:
    app = load_app(f"{__name__}:django_app", factory=True)
    check_contract(tunnel_for("trio", "asyncio", app))
    # Django's own answers pass through unchanged.
    t = tunnel_for("asyncio", "asyncio", app)
    assert t.http.get("/nope").status_code == 404
    assert t.http.get("/items/1", headers={"host": "evil.example"}).status_code == 400


@pytest.mark.parametrize(("gw", "rc"), [("trio", "trio"), ("trio", "asyncio")])
def test_flask_wsgi_detected_and_served_by_either_receiver(tunnel_for, gw: str, rc: str) -> None:
    app = load_app(f"{__name__}:flask_app", factory=True)  # detected: no --interface given
    assert isinstance(app, WsgiApp)
    check_contract(tunnel_for(gw, rc, app))


@pytest.fixture
def node_server(tmp_path: Path) -> Iterator[Service]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no `node` on PATH: the Node forward-mode check needs Node.js")
    script = tmp_path / "server.js"
    script.write_text(NODE_SERVER)
    service = Service([node, str(script)], "listening ", tmp_path)
    yield service
    service.close()


@pytest.mark.parametrize(("gw", "rc"), [("trio", "trio"), ("asyncio", "trio")])
def test_forward_to_node_http_server(tunnel_for, node_server: Service, gw: str, rc: str) -> None:
    check_contract(tunnel_for(gw, rc, forward=node_server.port))


def test_forward_to_python_http_server(tunnel_for, tmp_path: Path) -> None:
    """`python -m http.server` serves files only: large download, directory redirect, HEAD,
    and its own errors pass through; cookies and uploads it cannot do."""
    (tmp_path / "big.bin").write_bytes(blob(6 * 1024 * 1024 + 1))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.html").write_text("<p>index</p>")
    service = Service(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        " port ",
        tmp_path,
    )
    try:
        t = tunnel_for("trio", "asyncio", forward=service.port)
        with t.http.stream("GET", "/big.bin") as r:  # streamed: more than the window in flight
            assert r.headers["content-length"] == str(6 * 1024 * 1024 + 1)
            assert b"".join(r.iter_bytes()) == blob(6 * 1024 * 1024 + 1)
        r = t.http.get("/docs")
        assert r.status_code == 301 and r.headers["location"] == "/docs/"
        r = t.http.get("/docs", follow_redirects=True)
        assert r.text == "<p>index</p>" and str(r.url).endswith("/docs/")
        head = t.http.head("/big.bin")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(6 * 1024 * 1024 + 1)
        assert t.http.get("/missing").status_code == 404
        assert t.http.post("/big.bin", content=b"x").status_code == 501
    finally:
        service.close()

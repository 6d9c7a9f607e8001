"""A FastAPI "agent" with a streaming endpoint, served through anpx.

    cd examples/fastapi_agent
    python -m anpx_trio both --local-app agent:app
    curl -N -X POST http://127.0.0.1:8080/chat -H 'content-type: application/json' \
         -d '{"prompt": "hello from the internet"}'

The reply streams as server-sent events, one word at a time, the way a language model's tokens
would; the tunnel delivers each event as soon as the agent yields it. It runs under either
driver (FastAPI is built on anyio).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

app = FastAPI(title="echo agent")


class Prompt(BaseModel):
    prompt: str
    delay: float = 0.05  # seconds between tokens, to make the streaming visible


@app.get("/")
async def describe() -> dict:
    return {"agent": "echo", "endpoints": ["POST /chat (text/event-stream)"]}


@app.post("/chat")
async def chat(body: Prompt) -> StreamingResponse:
    return StreamingResponse(_tokens(body), media_type="text/event-stream")


async def _tokens(body: Prompt) -> AsyncIterator[str]:
    words = body.prompt.split() or ["..."]
    for i, word in enumerate(words):
        yield f"data: {json.dumps({'token': word, 'index': i})}\n\n"
        await anyio.sleep(body.delay)
    yield f"event: done\ndata: {json.dumps({'tokens': len(words)})}\n\n"

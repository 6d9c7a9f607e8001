"""A plain Flask (WSGI) app, served through anpx.

    cd examples/flask_app
    python -m anpx_trio both --local-app app:app

anpx sees that ``app`` is a WSGI app (it is called as ``app(environ, start_response)``) and runs
each request in a worker thread; ``python -m anpx_asyncio`` serves it the same way.
"""

from __future__ import annotations

from flask import Flask, jsonify, redirect, request, url_for

app = Flask(__name__)
notes: list[str] = []


@app.get("/")
def index():
    return redirect(url_for("list_notes"))


@app.get("/notes")
def list_notes():
    return jsonify(notes=notes, served_to=request.headers.get("X-Forwarded-For"))


@app.post("/notes")
def add_note():
    text = request.form.get("text") or (request.get_json(silent=True) or {}).get("text")
    if not text:
        return jsonify(error="give a note as form field or JSON key 'text'"), 400
    notes.append(text)
    return jsonify(added=text, count=len(notes)), 201

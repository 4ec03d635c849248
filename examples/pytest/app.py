"""A tiny Flask service for the portwatch pytest example.

Run it the way the fixture does:

    portwatch run --free --port 5050 --health http://127.0.0.1:5050/api/health \
        -- python3 -m gunicorn --bind 127.0.0.1:5050 --workers 2 app:app
"""

import os

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/api/health")
def health():
    return jsonify(status="ok", pid=os.getpid())


@app.get("/api/echo/<word>")
def echo(word):
    return jsonify(echo=word)

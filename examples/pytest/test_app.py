"""Real HTTP requests against the gunicorn service started by the `base_url` fixture."""

import json
import urllib.request


def get(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.headers.get_content_type(), json.load(resp)


def test_health_is_200_json(base_url):
    status, ctype, body = get(f"{base_url}/api/health")
    assert status == 200
    assert ctype == "application/json"
    assert body["status"] == "ok"


def test_a_second_request_works(base_url):
    # The service keeps serving after the first request (2 gunicorn workers).
    pids = set()
    for _ in range(5):
        status, _, body = get(f"{base_url}/api/health")
        assert status == 200
        pids.add(body["pid"])
    assert pids, "no worker answered"

    status, _, body = get(f"{base_url}/api/echo/portwatch")
    assert status == 200
    assert body == {"echo": "portwatch"}

"""The shared server core: bind rules, bearer token, size limit, JSON errors, one model thread."""

from __future__ import annotations

import threading

import httpx
import pytest
from starlette.responses import JSONResponse
from starlette.routing import Route

from mechscope.errors import MechscopeError
from mechscope.server.core import ModelWorker, Running, check_bind, make_app

TOKEN = "s3cret-token"


def _app(token=None, max_body=64):
    worker = ModelWorker()
    threads = []

    async def echo(request):
        body = await request.body()
        name = await worker.call(lambda: threading.current_thread().name)
        threads.append(name)
        return JSONResponse({"n": len(body), "thread": name})

    async def bad(request):
        raise MechscopeError("no such latent 99: the dictionary has 16")

    async def bug(request):
        raise RuntimeError("boom\nTraceback (most recent call last): secret")

    routes = [Route("/echo", echo, methods=["POST"]), Route("/bad", bad), Route("/bug", bug)]
    return make_app(routes, token=token, max_body=max_body)


def test_nonlocal_bind_needs_a_token():
    with pytest.raises(MechscopeError, match="without a token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(MechscopeError, match="at least 8"):
        check_bind("0.0.0.0", "short")
    check_bind("0.0.0.0", TOKEN)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)


def test_token_size_and_errors_over_real_http():
    with Running(_app(token=TOKEN), port=0, token=TOKEN) as server:
        assert server.url.startswith("http://127.0.0.1:")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.post(server.url + "/echo", content=b"x").status_code == 401
        assert (
            httpx.post(server.url + "/echo", content=b"x", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        ok = httpx.post(server.url + "/echo", content=b"hello", headers=auth)
        assert ok.status_code == 200 and ok.json()["n"] == 5
        assert ok.json()["thread"].startswith("mechscope-model")
        big = httpx.post(server.url + "/echo", content=b"x" * 65, headers=auth)
        assert big.status_code == 413 and "error" in big.json()
        bad = httpx.get(server.url + "/bad", headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("no such latent")
        bug = httpx.get(server.url + "/bug", headers=auth)
        assert bug.status_code == 500 and bug.json()["error"]["message"] == "boom"
        missing = httpx.get(server.url + "/../../etc/passwd", headers=auth)
        assert missing.status_code == 404 and "error" in missing.json()


def test_chunked_body_over_the_limit_is_refused():
    with Running(_app(), port=0) as server:

        def chunks():
            for _ in range(10):
                yield b"y" * 16

        response = httpx.post(server.url + "/echo", content=chunks())
        assert response.status_code == 413

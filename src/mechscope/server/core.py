"""What every mechscope server shares: where it may listen, who may ask, how big a request
may be, errors as JSON, and one worker thread for the model.

The dashboard (`mechscope serve`) and the steering API (`mechscope serve-steer`) are both
Starlette apps built by `make_app`; this module holds no science and no routes of its own.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from ..errors import MechscopeError

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 1 << 20
"""Default request size limit (1 MiB): a prompt or a steering request, never a file upload."""


def is_local(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """A server listens on the loopback interface unless a token guards it."""
    if not is_local(host) and not token:
        raise MechscopeError(
            f"refusing to listen on {host!r} without a token: anyone on the network could use the model; "
            "pass --token SECRET (clients send 'Authorization: Bearer SECRET') or bind 127.0.0.1"
        )
    if token is not None and len(token) < 8:
        raise MechscopeError("--token must be at least 8 characters")


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": {"status": status, "message": message}}).encode()


async def send_error(send, status: int, message: str) -> None:
    body = error_body(status, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: bearer token on every request (when set), a body size limit, and
    JSON instead of a traceback page for anything a route did not handle."""

    def __init__(self, app, *, token: str | None, max_body: int = MAX_BODY_BYTES):
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.token is not None:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return await send_error(send, 401, "missing or wrong bearer token")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await send_error(send, 413, f"request body over {self.max_body} bytes")
        received = 0
        started = False

        async def bounded_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except _TooLarge:
            if not started:
                await send_error(send, 413, f"request body over {self.max_body} bytes")
        except Exception as err:  # a bug or a bad input a route did not catch: one line, no traceback page
            if started:  # the app already answered in JSON (make_app's handlers); keep the trace in the log
                log.debug("request failed after its response", exc_info=True)
                return
            log.exception("request failed")
            if not started:
                status = 400 if isinstance(err, MechscopeError) else 500
                await send_error(send, status, str(err).splitlines()[0] if str(err) else type(err).__name__)


class _TooLarge(Exception):
    pass


class ModelWorker:
    """One thread runs every model call, in arrival order, so that concurrent users queue
    instead of thrashing the CPU (and torch modules are never entered from two threads)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mechscope-model")

    async def call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def make_app(routes: Sequence, *, token: str | None = None, max_body: int = MAX_BODY_BYTES):
    """A Starlette app of `routes` behind the `Guard`; HTTP errors come back as JSON."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse

    async def http_error(request, exc: HTTPException):
        return JSONResponse({"error": {"status": exc.status_code, "message": exc.detail}}, status_code=exc.status_code)

    async def bad_input(request, exc: MechscopeError):
        return JSONResponse({"error": {"status": 400, "message": str(exc)}}, status_code=400)

    async def unhandled(request, exc: Exception):  # Starlette's last resort: JSON, not its text page
        if isinstance(exc, _TooLarge):
            return JSONResponse({"error": {"status": 413, "message": f"request body over {max_body} bytes"}}, 413)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return JSONResponse({"error": {"status": 500, "message": first}}, status_code=500)

    handlers: dict[Any, Any] = {HTTPException: http_error, MechscopeError: bad_input, Exception: unhandled}
    app = Starlette(routes=list(routes), exception_handlers=handlers)
    return Guard(app, token=token, max_body=max_body)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: the system picks a free one), so the URL is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # no Nagle: asyncio only turns it off for sockets it creates, and otherwise every small
    # response waits ~40 ms for the client's delayed ACK (accepted sockets inherit this)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise MechscopeError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Running:
    """A server started in a background thread (tests, notebooks): `.url`, `.stop()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        import uvicorn

        check_bind(host, token)
        self._sock = bind_socket(host, port)
        self.url = url_of(self._sock)
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            threading.Event().wait(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(app, host: str, port: int, token: str | None, *, announce: Callable[[str], None] = print) -> None:
    """Serve `app` until Ctrl-C; `announce` gets the URL (with the chosen port) before the first request."""
    import uvicorn

    check_bind(host, token)
    sock = bind_socket(host, port)
    announce(url_of(sock))
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[sock])

"""`mechscope serve`: the local dashboard over feature stores, a model and saved circuits.

    app = dashboard_app(["runs/store"], model=ms.load("zoo:pycode"), circuits=["runs/circuit"])
    with Running(app) as server: ...           # or serve_forever(app, "127.0.0.1", 0, None)

Pages: the feature browser (/), a feature (/feature/STORE/LATENT), the prompt page (/prompt),
circuits (/circuits, /circuit/NAME); each also as JSON under /api/. Built on `server.core`:
127.0.0.1 unless a token guards it, read-only (GET, and POST only to analyse a prompt), no
path ever taken from a request (stores and circuits are looked up by name in tables made at
start; static files from a fixed list), request bodies and prompts size-limited, errors as
JSON, model calls queued on one thread. Every number comes from a method or the store."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from ..errors import MechscopeError
from . import dashboard_pages as pages
from .core import ModelWorker, make_app
from .dashboard_prompt import Analyser, PromptTooLong

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
"""The only files /static/ serves (never a path from the request)."""
MAX_BODY = 64 * 1024
MAX_PROMPT_TOKENS = 256


def _names(paths: Sequence[Path]) -> list[str]:
    """Short unique names for URLs (folder names; a number added where two clash)."""
    names: list[str] = []
    for p in paths:
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in p.name) or "store"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


class Dashboard:
    """The state behind the routes: stores, model, dictionaries, circuits, probe."""

    def __init__(
        self,
        stores: Sequence,
        *,
        model=None,
        circuits: Sequence = (),
        probe=None,
        max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    ):
        from ..features import FeatureStore

        opened = [s if isinstance(s, FeatureStore) else FeatureStore(s) for s in stores]
        self.stores = dict(zip(_names([s.folder for s in opened]), opened))
        self.model, self.probe, self.max_prompt_tokens = model, probe, max_prompt_tokens
        self.readers = self._readers() if model is not None else {}
        self.analyser = Analyser(model, self.readers, probe, max_prompt_tokens) if model is not None else None
        from ..circuits.circuit import Circuit

        loaded = [(Path(c), Circuit.load(c)) for c in circuits]
        self.circuits = dict(zip(_names([p for p, _ in loaded]), [c for _, c in loaded]))
        self.worker = ModelWorker()

    def _readers(self) -> dict:
        """A latent reader per store whose dictionary was built on this model (checked by identity)."""
        from ..dictionary import read
        from ..dictionary.fingerprint import model_identity
        from ..features import LatentReader, dictionary_identity

        readers = {}
        for name, store in self.stores.items():
            models = store.meta.get("models") or {}
            if list(models.values()) != [model_identity(self.model)]:
                raise MechscopeError(
                    f"store {name} was built on {', '.join(m['name'] for m in models.values())}, not "
                    f"{self.model.name}: serve it with that --model, or without --model"
                )
            path = store.meta.get("dictionary_path")
            if not path or not Path(path).exists():
                log.warning("store %s: its dictionary (%s) is not on disk; the prompt page leaves it out", name, path)
                continue
            coder = read(path)
            if dictionary_identity(coder) != store.meta.get("dictionary"):
                log.warning("store %s: the dictionary at %s changed since the build; left out of prompts", name, path)
                continue
            readers[name] = LatentReader({"": self.model}, coder)
        return readers

    def store(self, name: str | None):
        from starlette.exceptions import HTTPException

        if name is None:
            return next(iter(self.stores.items()), (None, None))
        if name not in self.stores:
            raise HTTPException(404, f"no store named {name!r}")
        return name, self.stores[name]

    def search(self, params) -> tuple[str | None, dict, dict]:
        name, store = self.store(params.get("store"))
        query = {
            k: params[k]
            for k in ("token", "explanation", "min_density", "max_density", "sort", "asc", "dead")
            if params.get(k)
        }
        if store is None:
            return name, query, {"total": 0, "rows": [], "page": 0, "per_page": 50}
        try:
            page = store.search(
                token=query.get("token"),
                explanation=query.get("explanation"),
                min_density=float(query["min_density"]) if "min_density" in query else None,
                max_density=float(query["max_density"]) if "max_density" in query else None,
                sort=query.get("sort", "max"),
                descending=not query.get("asc"),
                page=int(params.get("page", 0)),
                per_page=int(params.get("per_page", 50)),
                include_dead=bool(query.get("dead")),
            )
        except ValueError:
            raise MechscopeError("density bounds, page and per_page must be numbers") from None
        return name, query, asdict(page)

    def feature(self, name: str, latent: int) -> dict:
        _, store = self.store(name)
        return {"store": name, **store.feature(latent).to_dict()}

    async def prompt(self, payload: Any) -> bytes:
        """The prompt page's analysis as JSON bytes; a prompt seen lately is answered from the
        cache here, without queueing behind the model thread."""
        if self.analyser is None:
            raise MechscopeError("this server has no model: start it with --model to analyse prompts")
        if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str):
            raise MechscopeError('send JSON {"prompt": "...", "stores": [names]}')
        wanted = payload.get("stores") or list(self.readers)
        if not isinstance(wanted, list):
            raise MechscopeError('"stores" must be a list of store names')
        names = tuple(dict.fromkeys(n for n in wanted if isinstance(n, str) and n in self.readers))
        hit = self.analyser.cached((payload["prompt"], names))
        return hit if hit is not None else await self.worker.call(self.analyser.answer, payload["prompt"], names)

    def circuit(self, name: str) -> dict:
        from starlette.exceptions import HTTPException

        if name not in self.circuits:
            raise HTTPException(404, f"no circuit named {name!r}")
        from ..circuits.graph import layer_of, node_of

        c = self.circuits[name]
        nodes = [{"id": n, "layer": layer_of(n, c.graph.n_layers)} for n in c.nodes]
        edges = [
            {"from": s, "to": node_of(r), "receiver": r, "channel": r[len(node_of(r)) + 1 :], "score": float(v)}
            for (s, r), v in zip(c.edges, c.scores.tolist())
        ]
        return {"name": name, "model": c.model, "method": c.method, "metric": c.metric, "nodes": nodes, "edges": edges}


def _routes(d: Dashboard) -> list:
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    async def browser(request):
        name, query, page = await run_in_threadpool(d.search, request.query_params)
        return HTMLResponse(pages.browser_page(list(d.stores), name or "", query, page))

    async def api_features(request):
        name, query, page = await run_in_threadpool(d.search, request.query_params)
        return JSONResponse({"store": name, "query": query, **page})

    async def feature(request):
        name, latent = request.path_params["store"], request.path_params["latent"]
        return HTMLResponse(pages.feature_page(name, await run_in_threadpool(d.feature, name, latent)))

    async def api_feature(request):
        return JSONResponse(
            await run_in_threadpool(d.feature, request.path_params["store"], request.path_params["latent"])
        )

    async def api_stores(request):
        return JSONResponse({n: s.info() for n, s in d.stores.items()})

    async def prompt(request):
        return HTMLResponse(pages.prompt_page(list(d.readers), d.model is not None, d.probe is not None))

    async def api_prompt(request):
        try:
            payload = await request.json()
        except ValueError:
            raise MechscopeError('send JSON {"prompt": "..."}') from None
        try:
            return Response(await d.prompt(payload), media_type="application/json")
        except PromptTooLong as err:
            return JSONResponse({"error": {"status": 413, "message": str(err)}}, status_code=413)

    async def circuits(request):
        return HTMLResponse(pages.circuits_page(list(d.circuits)))

    async def circuit(request):
        name = request.path_params["name"]
        d.circuit(name)  # 404 for an unknown name
        return HTMLResponse(pages.circuit_page(name))

    async def api_circuit(request):
        return JSONResponse(d.circuit(request.path_params["name"]))

    async def static(request):
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such file")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])

    return [
        Route("/", browser),
        Route("/feature/{store}/{latent:int}", feature),
        Route("/prompt", prompt),
        Route("/circuits", circuits),
        Route("/circuit/{name}", circuit),
        Route("/static/{name}", static),
        Route("/api/stores", api_stores),
        Route("/api/features", api_features),
        Route("/api/feature/{store}/{latent:int}", api_feature),
        Route("/api/prompt", api_prompt, methods=["POST"]),
        Route("/api/circuit/{name}", api_circuit),
    ]


def dashboard_app(
    stores: Sequence = (),
    *,
    model=None,
    circuits: Sequence = (),
    probe=None,
    token: str | None = None,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
):
    """The dashboard as an ASGI app (behind `core.make_app`'s guard); see the module docstring."""
    if not stores and model is None and not circuits:
        raise MechscopeError("nothing to serve: give --store STORE, --model MODEL or --circuit DIR")
    board = Dashboard(stores, model=model, circuits=circuits, probe=probe, max_prompt_tokens=max_prompt_tokens)
    app = make_app(_routes(board), token=token, max_body=MAX_BODY)
    app.dashboard = board  # for tests and the CLI
    return app

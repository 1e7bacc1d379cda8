"""The steering API (`mechscope serve-steer`): OpenAI-compatible `/v1/completions` and
`/v1/chat/completions` where each request may carry its own steering:

    "steering": [{"vector": "formal", "strength": 4.0, "where": "generated"},
                 {"sae": "res2", "latent": 123, "clamp": 5.0}]

Vectors and dictionaries are named by their subfolder in the server's --vectors / --saes
folders (a request never names a path). Requests that arrive together are generated in
one batch, each row with its own edits (per-row strengths and clamp rows); a row without
steering is exactly the unsteered model. Bad steering is a 400 with a one-line reason.
Greedy decoding by default; temperature > 0 samples. No streaming.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MechscopeError
from ..steering import SteeringVector, clamp, generate
from ..steering.apply import WHERE, one_hot
from .core import ModelWorker, make_app

log = logging.getLogger(__name__)

MAX_TOKENS = 512


@dataclass
class Job:
    """One row of a batch: a prompt, its steering, and how much to generate."""

    prompt: str
    steering: list[dict]
    max_tokens: int
    temperature: float
    future: Any = field(default=None, repr=False)


def _named_folders(folder: str | Path | None) -> dict[str, Path]:
    if folder is None:
        return {}
    root = Path(folder)
    if not root.is_dir():
        raise MechscopeError(f"no folder at '{root}': give a folder of saved steering vectors / dictionaries")
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and (p / "cfg.json").is_file()}


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MechscopeError(f"{what} must be a finite number, got {value!r}")
    return float(value)


class SteerService:
    """The model, the named vectors and dictionaries, and batched steered generation."""

    def __init__(self, model, vectors: str | Path, *, saes: str | Path | None = None, max_batch: int = 8):
        from ..dictionary import read

        self.model, self.max_batch = model, max_batch
        self.vectors = {name: SteeringVector.load(path) for name, path in _named_folders(vectors).items()}
        for vector in self.vectors.values():
            vector.check_model(model)
        self.saes = {name: read(path) for name, path in _named_folders(saes).items()}
        self.batch_sizes: list[int] = []

    def check(self, steering) -> list[dict]:
        """The request's steering list, validated (MechscopeError -> 400)."""
        if steering is None:
            return []
        if not isinstance(steering, list) or not all(isinstance(item, dict) for item in steering):
            raise MechscopeError("'steering' must be a list of objects")
        for item in steering:
            where = item.get("where", "all")
            if where not in WHERE:
                raise MechscopeError(f"'where' must be one of {', '.join(WHERE)}, got {where!r}")
            if "vector" in item:
                if item["vector"] not in self.vectors:
                    known = ", ".join(self.vectors) or "none"
                    raise MechscopeError(f"unknown steering vector {item['vector']!r}: this server has {known}")
                _number(item.get("strength", 1.0), "'strength'")
            elif "sae" in item:
                coder = self.saes.get(item["sae"])
                if coder is None:
                    raise MechscopeError(
                        f"unknown dictionary {item['sae']!r}: this server has {', '.join(self.saes) or 'none'}"
                    )
                latent = item.get("latent")
                if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < coder.cfg.d_sae:
                    raise MechscopeError(f"'latent' must be an integer in 0-{coder.cfg.d_sae - 1}, got {latent!r}")
                _number(item.get("clamp"), "'clamp'")
            else:
                raise MechscopeError(
                    "each steering item names a 'vector' (with 'strength') or an 'sae' (with 'latent', 'clamp')"
                )
        return steering

    def _terms(self, jobs: list[Job]) -> list:
        import torch

        terms: list = []
        for row, job in enumerate(jobs):
            for item in job.steering:
                where = item.get("where", "all")
                if "vector" in item:
                    strengths = one_hot(row, len(jobs), float(item.get("strength", 1.0)))
                    terms.append((self.vectors[item["vector"]], strengths, where))
                else:
                    rows = torch.zeros(len(jobs), dtype=torch.bool)
                    rows[row] = True
                    coder = self.saes[item["sae"]]
                    terms.append(clamp(coder, {item["latent"]: float(item["clamp"])}, where=where, rows=rows))
        return terms

    def generate(self, jobs: list[Job]) -> list[str]:
        """Completions (prompt removed) of one batch of jobs sharing max_tokens and temperature."""
        self.batch_sizes.append(len(jobs))
        first = jobs[0]
        sampling = {"do_sample": True, "temperature": first.temperature} if first.temperature > 0 else {}
        prompts = [job.prompt for job in jobs]
        texts = generate(self.model, prompts, *self._terms(jobs), max_new_tokens=first.max_tokens, **sampling)
        return [completion(self.model, p, t) for p, t in zip(prompts, texts)]


def completion(model, prompt: str, text: str) -> str:
    """The generated part of `text` (the decoded prompt + continuation)."""
    if text.startswith(prompt):
        return text[len(prompt) :]
    decoded = model.tokenizer.decode(model.tokenize(prompt)["input_ids"][0], skip_special_tokens=True)
    return text[len(decoded) :] if text.startswith(decoded) else text


class Batcher:
    """Collects requests for `wait` seconds, then generates them in batches of compatible jobs."""

    def __init__(self, service: SteerService, worker: ModelWorker, wait: float = 0.02):
        self.service, self.worker, self.wait = service, worker, wait
        self.pending: list[Job] = []
        self.flushing: asyncio.Task | None = None

    async def submit(self, jobs: list[Job]) -> list[str]:
        loop = asyncio.get_running_loop()
        for job in jobs:
            job.future = loop.create_future()
            self.pending.append(job)
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._flush())
        return list(await asyncio.gather(*(job.future for job in jobs)))

    async def _flush(self) -> None:
        await asyncio.sleep(self.wait)
        while self.pending:
            key = (self.pending[0].max_tokens, self.pending[0].temperature)
            batch = [j for j in self.pending if (j.max_tokens, j.temperature) == key][: self.service.max_batch]
            self.pending = [j for j in self.pending if j not in batch]
            try:
                texts = await self.worker.call(self.service.generate, batch)
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error, not a hang
                for job in batch:
                    job.future.set_exception(err)
                continue
            for job, text in zip(batch, texts):
                job.future.set_result(text)


def _params(body: dict) -> tuple[int, float]:
    max_tokens = body.get("max_tokens", 16)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
        raise MechscopeError(f"'max_tokens' must be an integer in 1-{MAX_TOKENS}, got {max_tokens!r}")
    temperature = _number(body.get("temperature", 0.0), "'temperature'")
    if temperature < 0:
        raise MechscopeError(f"'temperature' must be 0 or more, got {temperature}")
    if body.get("n", 1) != 1 or body.get("stream"):
        raise MechscopeError("this server returns one choice per prompt and does not stream: leave out n and stream")
    return max_tokens, temperature


def chat_prompt(model, messages) -> str:
    """The chat as one prompt: the tokenizer's chat template, else 'role: content' lines."""
    if not isinstance(messages, list) or not messages:
        raise MechscopeError("'messages' must be a non-empty list of {role, content} objects")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise MechscopeError("each message needs string 'role' and 'content'")
    if getattr(model.tokenizer, "chat_template", None):
        return model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def steer_app(service: SteerService, *, token: str | None = None, wait: float = 0.02):
    """The Starlette app (behind the shared guard) serving `service`."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    worker = ModelWorker()
    batcher = Batcher(service, worker, wait)

    async def body_of(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise MechscopeError("the request body must be a JSON object") from None
        if not isinstance(body, dict):
            raise MechscopeError("the request body must be a JSON object")
        return body

    def envelope(kind: str, choices: list[dict]) -> dict:
        return {"id": f"{kind}-{uuid.uuid4().hex[:12]}", "object": kind, "created": int(time.time()),
                "model": service.model.name, "choices": choices}  # fmt: skip

    async def completions(request: Request):
        body = await body_of(request)
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise MechscopeError("'prompt' must be a non-empty string or list of strings")
        max_tokens, temperature = _params(body)
        steering = service.check(body.get("steering"))
        texts = await batcher.submit([Job(p, steering, max_tokens, temperature) for p in prompts])
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": "length"} for i, t in enumerate(texts)]
        return JSONResponse(envelope("text_completion", choices))

    async def chat(request: Request):
        body = await body_of(request)
        prompt = chat_prompt(service.model, body.get("messages"))
        max_tokens, temperature = _params(body)
        steering = service.check(body.get("steering"))
        [text] = await batcher.submit([Job(prompt, steering, max_tokens, temperature)])
        message = {"role": "assistant", "content": text}
        return JSONResponse(envelope("chat.completion", [{"index": 0, "message": message, "finish_reason": "length"}]))

    async def models(request: Request):
        data = [{"id": service.model.name, "object": "model", "owned_by": "mechscope"}]
        return JSONResponse(
            {"object": "list", "data": data, "vectors": sorted(service.vectors), "saes": sorted(service.saes)}
        )

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ]
    return make_app(routes, token=token)

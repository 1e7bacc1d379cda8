"""serve-steer: OpenAI-compatible routes on an ephemeral 127.0.0.1 port, per-request
steering batched per row, 400s with a reason, the bind rule."""

from __future__ import annotations

import threading

import httpx
import pytest
import torch

from mechscope import dictionary, steering
from mechscope.cli import main
from mechscope.errors import MechscopeError
from mechscope.server.core import Running
from mechscope.server.steer_app import SteerService, chat_prompt, steer_app

from .conftest import PAIRS

PROMPT_A, PROMPT_B = "def f(x):", "for i in range(3):"


@pytest.fixture(scope="module")
def served(pycode, tmp_path_factory):
    root = tmp_path_factory.mktemp("vectors")
    plus = steering.contrast(pycode, PAIRS, "blocks.2.hook_resid_post", progress=False)
    plus.save(root / "plus")
    (-1.0 * steering.contrast(pycode, PAIRS, "blocks.1.hook_resid_post", progress=False)).save(root / "minus")
    saes = tmp_path_factory.mktemp("saes")
    torch.manual_seed(0)
    cfg = dictionary.CoderConfig(arch="topk", d_in=256, d_sae=64, k=8, hook_name="blocks.2.hook_resid_post")
    dictionary.build(cfg).save(saes / "res2")
    service = SteerService(pycode, root, saes=saes)
    with Running(steer_app(service, wait=0.3), port=0) as server:
        yield server, service, root


def test_two_concurrent_requests_match_separate_generation(pycode, served):
    server, service, root = served
    requests = [
        (PROMPT_A, [{"vector": "plus", "strength": 6.0, "where": "generated"}]),
        (PROMPT_B, [{"vector": "minus", "strength": 5.0}]),
    ]
    answers: dict[int, httpx.Response] = {}

    def post(i: int) -> None:
        prompt, steer = requests[i]
        body = {"model": "x", "prompt": prompt, "max_tokens": 10, "steering": steer}
        answers[i] = httpx.post(server.url + "/v1/completions", json=body, timeout=120)

    before = len(service.batch_sizes)
    threads = [threading.Thread(target=post, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert service.batch_sizes[before:] == [2]  # one batch, a different vector per row
    vectors = {name: steering.SteeringVector.load(root / name) for name in ("plus", "minus")}
    for i, (prompt, [item]) in enumerate(requests):
        assert answers[i].status_code == 200, answers[i].text
        text = answers[i].json()["choices"][0]["text"]
        alone = steering.generate(
            pycode, prompt, (vectors[item["vector"]], item["strength"], item.get("where", "all")), max_new_tokens=10
        )
        assert prompt + text == alone != pycode.generate(prompt, max_new_tokens=10)


def test_chat_and_unsteered_rows(pycode, served):
    server, _, _ = served
    messages = [{"role": "user", "content": "write a loop"}]
    got = httpx.post(server.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 6}, timeout=120)
    assert got.status_code == 200 and got.json()["object"] == "chat.completion"
    prompt = chat_prompt(pycode, messages)
    assert prompt + got.json()["choices"][0]["message"]["content"] == pycode.generate(prompt, max_new_tokens=6)
    listed = httpx.get(server.url + "/v1/models").json()
    assert listed["vectors"] == ["minus", "plus"]


@pytest.mark.parametrize(
    ("steer", "reason"),
    [
        ([{"vector": "nope", "strength": 1.0}], "unknown steering vector 'nope'"),
        ([{"vector": "plus", "strength": "lots"}], "'strength' must be a finite number"),
        ([{"vector": "plus", "strength": 1.0, "where": "later"}], "'where' must be one of"),
        ([{"sae": "none", "latent": 1, "clamp": 2.0}], "unknown dictionary"),
        ({"vector": "plus"}, "must be a list"),
    ],
)
def test_bad_steering_is_a_400_with_a_reason(served, steer, reason):
    server, _, _ = served
    got = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "steering": steer}, timeout=60)
    assert got.status_code == 400 and reason in got.json()["error"]["message"]
    assert len(got.json()["error"]["message"].splitlines()) == 1


def test_nan_strength_and_non_local_bind(served, capsys):
    server, service, _ = served
    raw = b'{"prompt": "x", "steering": [{"vector": "plus", "strength": NaN}]}'
    got = httpx.post(server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert got.status_code == 400 and "finite" in got.json()["error"]["message"]
    with pytest.raises(MechscopeError, match="without a token"):
        Running(steer_app(service), host="0.0.0.0", port=0)
    assert main(["serve-steer", "zoo:pycode", "--vectors", ".", "--host", "0.0.0.0"]) == 2
    assert "without a token" in capsys.readouterr().err


def test_clamp_request_matches_a_separate_clamp(pycode, served):
    server, service, _ = served
    item = {"sae": "res2", "latent": 3, "clamp": 40.0, "where": "generated"}
    body = {"prompt": PROMPT_A, "max_tokens": 8, "steering": [item]}
    got = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
    assert got.status_code == 200, got.text
    edit = steering.clamp(service.saes["res2"], {3: 40.0}, where="generated")
    alone = steering.generate(pycode, PROMPT_A, edit, max_new_tokens=8)
    assert PROMPT_A + got.json()["choices"][0]["text"] == alone != pycode.generate(PROMPT_A, max_new_tokens=8)
    bad = httpx.post(server.url + "/v1/completions", json={**body, "steering": [{**item, "latent": 64}]})
    assert bad.status_code == 400 and "'latent' must be an integer in 0-63" in bad.json()["error"]["message"]

"""The dashboard over real HTTP: pages and their JSON agree with the store, the prompt page
reads the dictionary on the model, every token string is escaped, and the security rules
hold (bind, token, traversal, sizes, JSON errors)."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import httpx
import pytest
import torch

from mechscope import features
from mechscope.circuits.circuit import Circuit
from mechscope.circuits.graph import Graph
from mechscope.errors import MechscopeError
from mechscope.server.core import Running
from mechscope.server.dashboard import dashboard_app
from tests.conftest import requires_pycode
from tests.features.helpers import SCRIPT_TOKEN, dashboard_store

pytestmark = requires_pycode
TOKEN = "dashboard-secret"
LATENT = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dash")
    model, coder, store, token = dashboard_store(folder, LATENT)
    graph = Graph.from_model(model)
    edges = graph.edges[:12]
    Circuit(graph, edges, torch.linspace(1, -1, len(edges)), method="eap", metric="logit_diff", model=model.name).save(
        folder / "circuit"
    )
    app = dashboard_app([store], model=model, circuits=[folder / "circuit"])
    with Running(app) as server:
        yield model, coder, store, token, server.url


def _raw_get(url: str, path: str) -> tuple[int, bytes]:
    """A GET of `path` exactly as written (httpx would normalise dot segments)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def test_feature_page_and_json_agree_with_the_store(setup):
    _, _, store, _, url = setup
    expected = features.open(store).feature(LATENT)
    data = httpx.get(f"{url}/api/feature/store/{LATENT}").json()
    assert data["count"] == expected.count and data["density"] == expected.density
    assert [e["token_index"] for e in data["top"]] == [e.token_index for e in expected.top]
    page = httpx.get(f"{url}/feature/store/{LATENT}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for e in expected.top:
        for act in e.acts or []:
            assert f'data-act="{act!r}"' in page.text
    assert "activation (log-spaced bins)" in page.text and ">count</text>" in page.text


def test_every_token_string_is_escaped(setup):
    _, _, _, _, url = setup
    for path in ("/", f"/feature/store/{LATENT}", f"/?token={SCRIPT_TOKEN}", "/?token=%3Cscript%3E"):
        text = httpx.get(url + path).text
        assert "<script>alert" not in text, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in httpx.get(f"{url}/feature/store/{LATENT}").text
    browser = httpx.get(url + "/", params={"token": "<script>", "sort": "density"}).text
    assert f"<a href='/feature/store/{LATENT}'>{LATENT}</a>" in browser  # found by its (hostile) token


def test_search_sort_and_paging(setup):
    _, _, store, _, url = setup
    s = features.open(store)
    page = httpx.get(url + "/api/features", params={"sort": "density", "per_page": 5, "page": 1}).json()
    everything = s.search(sort="density", per_page=1000)
    assert page["total"] == everything.total
    assert [r["id"] for r in page["rows"]] == [r["id"] for r in everything.rows[5:10]]
    low = httpx.get(url + "/api/features", params={"max_density": 0.01, "sort": "density", "asc": 1}).json()
    assert all(r["density"] <= 0.01 for r in low["rows"])
    assert [r["density"] for r in low["rows"]] == sorted(r["density"] for r in low["rows"])
    with_dead = httpx.get(url + "/api/features", params={"dead": 1}).json()
    assert with_dead["total"] == s.d_sae == page["total"] + len(s.dead())
    bad = httpx.get(url + "/api/features", params={"sort": "nonsense"})
    assert bad.status_code == 400 and "unknown sort" in bad.json()["error"]["message"]


def test_prompt_api_reads_the_dictionary(setup):
    model, coder, _, token, url = setup
    text = model.tokenizer.decode([token])
    prompt = f"x ={text} 1\nfor{text} y"
    data = httpx.post(url + "/api/prompt", json={"prompt": prompt}, timeout=60).json()
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(data["tokens"]) == len(ids)
    for i, t in enumerate(ids):  # the planted latent is listed exactly at the planted token
        listed = [lat for lat, _ in data["latents"]["store"][i]]
        assert (LATENT in listed) == (t == token)
    with torch.no_grad():
        acts = coder.encode(model.run(torch.tensor([ids]), record=["hook_embed"]).cache["hook_embed"])[0]
    for i, listed in enumerate(data["latents"]["store"]):  # each token's strongest latents, as encode gives them
        top = acts[i].topk(8)
        expected = [(int(j), float(v)) for j, v in zip(top.indices, top.values) if v > 0]
        assert [lat for lat, _ in listed] == [j for j, _ in expected]
        assert [v for _, v in listed] == pytest.approx([v for _, v in expected], abs=1e-4)
    assert any(data["latents"]["store"])
    assert len(data["attention"]) == model.dims.n_layers and len(data["attention"][0]) == model.dims.n_heads
    for row in data["attention"][1][0]:
        assert sum(row) == pytest.approx(1.0, abs=5e-3)
    assert data["lens"]["layers"][0] == "embed" and len(data["lens"]["top"][0]) == len(ids)
    assert data["probe"] is None


def test_circuit_page(setup):
    _, _, _, _, url = setup
    data = httpx.get(url + "/api/circuit/circuit").json()
    assert len(data["edges"]) == 12 and {e["from"] for e in data["edges"]} <= {n["id"] for n in data["nodes"]}
    assert httpx.get(url + "/circuit/circuit").status_code == 200
    assert httpx.get(url + "/api/circuit/nope").status_code == 404


def test_security(setup, tmp_path):
    _, _, store, _, url = setup
    for path in (
        "/api/feature/../../etc/passwd",
        "/api/feature/..%2F..%2Fetc%2Fpasswd",
        "/api/feature/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2F..%2Fdashboard.py",
        "/static/../core.py",
        "/feature/..%2Fstore/1",
        "/api/feature/store/..%2F1",
    ):
        status, body = _raw_get(url, path)
        assert status == 404, path
        assert b"root:" not in body and b"import" not in body
    assert httpx.get(url + "/static/app.js").status_code == 200
    long = httpx.post(url + "/api/prompt", json={"prompt": "x " * 400})
    assert long.status_code == 413 and "at most" in long.json()["error"]["message"]
    huge = httpx.post(url + "/api/prompt", content=b"x" * (70 * 1024))
    assert huge.status_code == 413
    assert httpx.post(url + "/api/feature/store/1").status_code == 405  # read-only
    broken = httpx.post(url + "/api/prompt", content=b"{not json")
    assert broken.status_code == 400 and "error" in broken.json()
    missing = httpx.get(url + "/api/feature/store/99999")
    assert missing.status_code == 400 and missing.json()["error"]["message"].startswith("no latent")
    with pytest.raises(MechscopeError, match="without a token"):
        Running(dashboard_app([store]), host="0.0.0.0")
    with Running(dashboard_app([store], token=TOKEN), token=TOKEN) as guarded:
        assert httpx.get(guarded.url + "/api/features").status_code == 401
        ok = httpx.get(guarded.url + "/api/features", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200


def test_bad_stores(setup, tmp_path):
    model, _, store, _, _ = setup
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "store.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(MechscopeError, match="not a readable feature store"):
        dashboard_app([tmp_path / "junk"])
    with pytest.raises(MechscopeError, match="nothing to serve"):
        dashboard_app([])
    import mechscope as ms

    with pytest.raises(MechscopeError, match="built on zoo:pycode, not zoo:induction"):
        dashboard_app([store], model=ms.load("zoo:induction"))


class _StandInProbe:
    """The shape of a `mechscope.concepts` confidence probe (a site, called on its activations)."""

    site = "blocks.1.hook_resid_post"

    def __call__(self, x):
        return torch.sigmoid(x[..., 0])


def test_probe_row_and_explanation_search(setup):
    model, _, store, _, _ = setup
    features.set_explanations(store, {LATENT: "detects one token (planted)"})
    with Running(dashboard_app([store], model=model, probe=_StandInProbe())) as server:
        found = httpx.get(server.url + "/api/features", params={"explanation": "PLANTED"}).json()
        assert [r["id"] for r in found["rows"]] == [LATENT] and found["rows"][0]["explanation"].startswith("detects")
        assert "detects one token (planted)" in httpx.get(f"{server.url}/feature/store/{LATENT}").text
        prompt = "def f(x):\n    return x"
        data = httpx.post(server.url + "/api/prompt", json={"prompt": prompt}, timeout=60).json()
        ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            x = model.run(torch.tensor([ids]), record=[_StandInProbe.site]).cache[_StandInProbe.site]
        assert data["probe"] == pytest.approx(torch.sigmoid(x[0, :, 0]).tolist(), abs=1e-4)


def test_lens_strip_is_the_logit_lens_from_one_forward(setup, monkeypatch):
    model, _, _, _, url = setup
    from mechscope.lens import logit_lens

    prompt = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))"
    forwards = []
    original = type(model).run
    monkeypatch.setattr(type(model), "run", lambda self, *a, **k: forwards.append(1) or original(self, *a, **k))
    data = httpx.post(url + "/api/prompt", json={"prompt": prompt}, timeout=60).json()
    assert len(forwards) == 1  # the run, the latents and the lens strip all read one recorded forward
    monkeypatch.undo()
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    lens = logit_lens(model, torch.tensor([ids]), k=1, include_mid=False)
    assert data["lens"]["layers"] == lens.layers
    for li in range(len(lens.layers)):
        assert data["lens"]["top"][li] == [lens.text(lens.top_ids[li, 0, p, 0]) for p in range(len(ids))]
        assert data["lens"]["prob"][li] == pytest.approx(lens.top_probs[li, 0, :, 0].tolist(), abs=1e-4)
    patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.dims.n_layers)]
    with torch.no_grad():  # the last stream is the model's own next-token prediction
        run = model.run(torch.tensor([ids]), record=patterns)
    assert data["lens"]["prob"][-1] == pytest.approx(run.logits[0].softmax(-1).max(-1).values.tolist(), abs=1e-4)
    expected = torch.stack([run.cache[p][0] for p in patterns])  # [layer, head, query, key], to 3 decimals
    assert (torch.tensor(data["attention"]) - expected).abs().max() <= 5e-4 + 1e-6


def test_repeated_prompt_is_answered_from_the_cache(setup, monkeypatch):
    _, _, _, _, url = setup
    from mechscope.server.dashboard_prompt import Analyser

    prompt = "import os\nos.path.join('a', 'b')"
    first = httpx.post(url + "/api/prompt", json={"prompt": prompt}, timeout=60)
    calls = []
    original = Analyser.analyse
    monkeypatch.setattr(Analyser, "analyse", lambda self, *a: calls.append(a) or original(self, *a))
    again = httpx.post(url + "/api/prompt", json={"prompt": prompt, "stores": ["store"]}, timeout=60)
    assert first.status_code == again.status_code == 200 and first.content == again.content
    assert calls == []  # answered from the cache: no analysis, no model call
    other = httpx.post(url + "/api/prompt", json={"prompt": prompt, "stores": []}, timeout=60).json()
    assert other == first.json()  # [] means every store, as before
    none = httpx.post(url + "/api/prompt", json={"prompt": prompt, "stores": ["nope"]}, timeout=60).json()
    assert none["latents"] == {} and none["lens"] == first.json()["lens"]
    bad = httpx.post(url + "/api/prompt", json={"prompt": prompt, "stores": "store"})
    assert bad.status_code == 400 and "list of store names" in bad.json()["error"]["message"]


def test_concurrent_feature_pages_agree_with_the_store(setup):
    """The server's threads each keep a connection to the store: answers under concurrent
    clients are the store's own, latent for latent."""
    from concurrent.futures import ThreadPoolExecutor

    _, _, store, _, url = setup
    s = features.open(store)
    latents = list(range(s.d_sae)) * 3
    with httpx.Client() as http, ThreadPoolExecutor(8) as pool:
        pages = list(pool.map(lambda i: http.get(f"{url}/api/feature/store/{i}").json(), latents))
    for i, page in zip(latents, pages):
        expected = s.feature(i).to_dict()
        assert page["id"] == i and page["count"] == expected["count"] and page["max"] == expected["max"]
        assert [e["token_index"] for e in page["top"]] == [e["token_index"] for e in expected["top"]]
        assert [list(p) for p in expected["co_occurring"]] == page["co_occurring"]


def test_prompt_cache_is_bounded(setup):
    from mechscope.server.dashboard_prompt import Analyser

    model = setup[0]
    analyser = Analyser(model, {}, None, 256, cache_size=2)
    for prompt in ("a = 1", "b = 2", "c = 3"):
        analyser.answer(prompt, ())
    assert [k[0] for k in analyser.cache] == ["b = 2", "c = 3"]  # the oldest went first
    small = Analyser(model, {}, None, 256, cache_bytes=len(analyser.cache[("c = 3", ())]) + 1)
    small.answer("a = 1", ())
    small.answer("b = 2", ())
    assert small.cached(("b = 2", ())) is not None and small.cached(("a = 1", ())) is None

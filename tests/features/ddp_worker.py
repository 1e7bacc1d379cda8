"""Run by test_distributed.py under `python -m torch.distributed.run --nproc_per_node 2`:
three feature-store builds on two gloo ranks (a token corpus, a text corpus whose batches do
not split evenly, and the resumption of an interrupted one-rank build), then one that rank 0
refuses (another dictionary). Each rank writes how many batches it ran the model on, per
build, and the refusal it raised to counts-rank{r}.json."""

import json
import sys
from pathlib import Path

import torch

from mechscope import features
from mechscope.distributed import init_distributed
from mechscope.errors import MechscopeError
from mechscope.features import accumulate
from tests.features.helpers import CFG, pycode, texts
from tests.features.test_invariants import _coder

UNEVEN_TOKENS = 32 * 27  # 27 contexts: 7 batches of 4 (the last of 3), 4 on rank 0 and 3 on rank 1


def main(root: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world = init_distributed()
    assert world == 2, world
    calls = {"n": 0}
    update = accumulate.Accumulator.update

    def counted(self, *args):
        calls["n"] += 1
        return update(self, *args)

    accumulate.Accumulator.update = counted  # type: ignore[method-assign]
    counts = {}
    try:
        out = Path(root)
        tokens = torch.load(out / "tokens.pt", weights_only=True)
        model, coder = pycode(), _coder()
        for name, corpus, limit in (
            ("even", tokens, None),
            ("uneven", texts(), UNEVEN_TOKENS),
            ("resume", tokens, None),
        ):
            calls["n"] = 0
            store = features.build(model, coder, corpus, out / name, tokens=limit, cfg=CFG)
            counts[name] = calls["n"]
            assert store.info()["n_tokens"] > 0  # every rank returns the finished store
        try:  # rank 0 refuses; the other rank must raise the same, not wait for it
            features.build(model, _coder(seed=2), tokens, out / "even", cfg=CFG)
        except MechscopeError as err:
            counts["refused"] = str(err)
        (out / f"counts-rank{rank}.json").write_text(json.dumps(counts))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

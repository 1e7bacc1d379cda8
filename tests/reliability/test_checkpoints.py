"""Checkpoints are committed in the order that survives a kill at any moment: the step file
(synced, then its folder), then state.json (synced, then the folder), and only then the
older step files are deleted. A kill simulated before each of these operations leaves a
state.json whose step file exists and loads, and a resumed run ends bit for bit where an
uninterrupted one does."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from mechscope import io
from mechscope.dictionary.config import CoderConfig
from mechscope.dictionary.source import SourceConfig
from mechscope.dictionary.train import train
from mechscope.dictionary.trainer_config import TrainConfig
from tests.models.tiny import tiny_model


class Killed(BaseException):
    """What a kill -9 does to the writer: it stops right there (no except clause catches it)."""


def _name(path: str) -> str:
    name = os.path.basename(path)
    temp = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}\.tmp", name)
    return f"tmp:{temp.group(1)}" if temp else name


class Recorder:
    """Records fsync / replace / unlink inside `folder`; raises Killed before operation `kill_at`."""

    def __init__(self, monkeypatch, folder: Path, kill_at: int | None = None):
        self.folder, self.kill_at, self.ops = str(folder), kill_at, []
        fsync, replace, unlink = os.fsync, os.replace, os.unlink

        def record(op: str, path: str) -> None:
            if not str(path).startswith(self.folder):
                return
            if self.kill_at is not None and len(self.ops) == self.kill_at:
                raise Killed(op)
            self.ops.append((op, "folder" if str(path) == self.folder else _name(str(path))))

        def _fsync(fd):
            record("fsync", os.readlink(f"/proc/self/fd/{fd}"))
            return fsync(fd)

        def _replace(src, dst, **kw):
            record("replace", str(dst))
            return replace(src, dst, **kw)

        def _unlink(path, **kw):
            record("unlink", str(path))
            return unlink(path, **kw)

        monkeypatch.setattr(os, "fsync", _fsync)
        monkeypatch.setattr(os, "replace", _replace)
        monkeypatch.setattr(os, "unlink", _unlink)


ORDER = [
    ("fsync", "tmp:step-0000002.safetensors"),
    ("replace", "step-0000002.safetensors"),
    ("fsync", "folder"),
    ("fsync", "tmp:state.json"),
    ("replace", "state.json"),
    ("fsync", "folder"),
    ("unlink", "step-0000001.safetensors"),
]


def _commit(folder: Path, step: int) -> None:
    name = f"step-{step:07d}.safetensors"
    io.write_checkpoint(folder, name, {"w": torch.full((4,), float(step))}, {"step": step, "file": name})


def _committed(folder: Path) -> int:
    """The step that state.json commits, checked to be in the step file it names."""
    state = json.loads((folder / "state.json").read_text())
    tensors = io.read_tensors(folder / state["file"])
    assert torch.equal(tensors["w"], torch.full((4,), float(state["step"])))
    return state["step"]


def test_the_step_file_is_durable_before_state_json_names_it_and_old_steps_go_last(tmp_path, monkeypatch):
    _commit(tmp_path, 1)
    recorder = Recorder(monkeypatch, tmp_path)
    _commit(tmp_path, 2)
    assert recorder.ops == ORDER
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "step-0000002.safetensors"]


@pytest.mark.parametrize("kill_at", range(len(ORDER) + 1))
def test_a_kill_at_any_point_leaves_a_state_json_whose_step_file_exists(tmp_path, monkeypatch, kill_at):
    _commit(tmp_path, 1)
    recorder = Recorder(monkeypatch, tmp_path, kill_at)
    if kill_at < len(ORDER):
        with pytest.raises(Killed):
            _commit(tmp_path, 2)
    else:
        _commit(tmp_path, 2)
    assert _committed(tmp_path) == (1 if kill_at <= ORDER.index(("replace", "state.json")) else 2)
    recorder.kill_at = None
    with io.folder_lock(tmp_path):  # the next job: its lock removes the killed writer's temp file,
        _commit(tmp_path, 3)  # its first checkpoint the older step files
    assert _committed(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [io.LOCK_FILE, "state.json", "step-0000003.safetensors"]


def _ops_of(monkeypatch, folder: Path, write) -> list:
    recorder = Recorder(monkeypatch, folder)
    write()
    monkeypatch.undo()
    return [(op, re.sub(r"step-\d+", "step-N", name)) for op, name in recorder.ops]


def test_dictionary_tuned_lens_and_zoo_checkpoints_commit_in_that_order(tmp_path, monkeypatch):
    from mechscope.lens.tuned import TunedLensConfig, TunedLensTrainer
    from mechscope.zoo import checkpoint
    from tests.lens.helpers import worded_model

    expected = [(op, re.sub(r"step-\d+", "step-N", name)) for op, name in ORDER]
    expected[-1] = ("unlink", "step-N.safetensors")
    data = torch.randint(1, 50, (8, 9), generator=torch.Generator().manual_seed(0))

    model = worded_model()
    lens = TunedLensTrainer(model, TunedLensConfig(steps=2, batch_size=4))
    for step in range(2):
        lens.step(data)
        ops = _ops_of(monkeypatch, tmp_path / "lens", lambda: lens.save_checkpoint(tmp_path / "lens", data))
        assert ops == (expected if step else expected[:-1])

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    for step in (1, 2):
        ops = _ops_of(
            monkeypatch, tmp_path / "zoo", lambda step=step: checkpoint.save(tmp_path / "zoo", net, opt, {"step": step})
        )
        assert ops == (expected if step == 2 else expected[:-1])

    ops = _ops_of(
        monkeypatch,
        tmp_path / "sae" / "checkpoint",
        lambda: train(
            tiny_model("llama"),
            SITE,
            CODER,
            SMALL,
            data=data,
            source=SOURCE,
            out=tmp_path / "sae",
            progress=False,
            stop_after=4,
        ),
    )
    assert ops == expected[:-1] + expected  # checkpoints at steps 2 and 4


SITE = "blocks.1.hook_resid_post"
CODER = CoderConfig("topk", 32, 64, k=4, aux_k=8)
SMALL = TrainConfig(
    total_tokens=8 * 32, batch_tokens=32, lr=3e-3, warmup_steps=2, checkpoint_every=2, norm_batches=2, dead_window=64
)
SOURCE = SourceConfig(model_batch=5, buffer_contexts=6)


@pytest.mark.parametrize("kill_at", [6, 7, 8, 9, 10, 11, 12])  # each operation of the checkpoint at step 4
def test_training_killed_while_checkpointing_resumes_bit_for_bit(tmp_path, monkeypatch, kill_at):
    model = tiny_model("llama")
    data = torch.randint(1, 97, (16, 9), generator=torch.Generator().manual_seed(0))
    straight = train(model, SITE, CODER, SMALL, data=data, source=SOURCE, progress=False)
    out = tmp_path / "sae"
    (out / "checkpoint").mkdir(parents=True)
    Recorder(monkeypatch, out / "checkpoint", kill_at)
    with pytest.raises(Killed):
        train(model, SITE, CODER, SMALL, data=data, source=SOURCE, out=out, progress=False)
    monkeypatch.undo()
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert (out / "checkpoint" / state["file"]).is_file() and state["step"] in (2, 4)
    resumed = train(model, SITE, CODER, SMALL, data=data, source=SOURCE, out=out, progress=False)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_cache_manifest_is_written_only_after_its_shards_are_on_disk(tmp_path, monkeypatch):
    from mechscope.dictionary.cache import write_cache

    folder = tmp_path / "acts"
    folder.mkdir()
    recorder = Recorder(monkeypatch, folder)
    data = torch.randint(1, 97, (12, 9), generator=torch.Generator().manual_seed(0))
    write_cache(tiny_model("llama"), SITE, data, folder, shard_contexts=5)
    ops = recorder.ops
    shards = [i for i, (op, name) in enumerate(ops) if op == "replace" and name.endswith(".npy")]
    synced = [i for i, op in enumerate(ops) if op in (("fsync", SITE), ("fsync", "folder"))]
    manifests = [i for i, op in enumerate(ops) if op == ("replace", "cfg.json")]
    assert len(shards) == 6 and len(manifests) == 2  # 3 shards x (site, tokens); the site's and the cache's
    assert max(shards) < min(synced) and max(synced[:2]) < min(manifests)
    assert ops[-1] == ("unlink", "progress.json")  # last: the cache is complete

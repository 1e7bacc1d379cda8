"""A full disk (or quota, or I/O error) while writing: one line, exit 2, the temporary file
gone, the previous file byte-identical. On a real full file system (a tmpfs mounted for the
test, when the test runs as root and may mount) or, failing that, on one whose fsync
reports ENOSPC: a writer that bypassed mechscope.io would then succeed and change files,
which these tests catch."""

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import mechscope as ms
from mechscope import io
from mechscope.cli import main

SITE = "blocks.1.hook_resid_post"


class Disk:
    """A folder on a small file system that `fill()` makes full."""

    def __init__(self, path: Path, real: bool, monkeypatch):
        self.path, self.real, self._patch = path, real, monkeypatch

    def fill(self) -> None:
        if not self.real:
            fsync = os.fsync

            def full(fd):
                if os.readlink(f"/proc/self/fd/{fd}").startswith(str(self.path)):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return fsync(fd)

            self._patch.setattr(os, "fsync", full)
            return
        fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            for chunk in (1 << 20, 1 << 12, 1):
                try:
                    while os.write(fd, b"\0" * chunk):
                        pass
                except OSError as err:
                    assert err.errno == errno.ENOSPC
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0

    def files(self) -> dict[str, bytes]:
        """Every file's bytes (but the filler and lock files), by relative path."""
        return {
            str(p.relative_to(self.path)): p.read_bytes()
            for p in sorted(self.path.rglob("*"))
            if p.is_file() and p.name not in ("filler", io.LOCK_FILE)
        }


def _mount(path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], capture_output=True, check=False
    )
    return done.returncode == 0


@pytest.fixture
def disk(tmp_path, monkeypatch):
    path = tmp_path / "disk"
    path.mkdir()
    real = _mount(path)
    yield Disk(path, real, monkeypatch)
    if real:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tests.lens.helpers import save_worded

    tmp = tmp_path_factory.mktemp("disk_inputs")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"text": f"line {i}: the quick brown fox jumps over the lazy dog"}) for i in range(60))
    )
    return str(save_worded(tmp / "model")), str(corpus)


def _fails_in_one_line(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mechscope: error: no space left on device writing "), err
    assert last.endswith("free space or choose another --out")
    return last


def _no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*.tmp")]


# The atomic writers


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "no space left on device writing"),
        (errno.EDQUOT, "disk quota exceeded writing"),
        (errno.EIO, "Input/output error"),
    ],
)
def test_a_failed_write_is_one_line_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch, code, words):
    path = io.write_json(tmp_path / "state.json", {"step": 1})
    before = path.read_bytes()

    def broken(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", broken)
    for write in (
        lambda: io.write_json(path, {"step": 2}),
        lambda: io.write_tensors(path, {"x": torch.ones(3)}),
        lambda: io.write_bytes(path, b"new"),
    ):
        with pytest.raises(ms.MechscopeError, match=words) as err:
            write()
        assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["state.json"]


def test_safetensors_full_disk_error_is_recognised():
    from safetensors import SafetensorError

    err = io.write_error(
        Path("x.safetensors"),
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    )
    assert str(err) == "no space left on device writing x.safetensors: free space or choose another --out"


def test_writers_on_a_full_file_system_fail_in_one_line(disk):
    old = io.write_tensors(disk.path / "acts.safetensors", {"x": torch.arange(4.0)})
    io.write_json(disk.path / "cfg.json", {"a": 1})
    before = disk.files()
    disk.fill()
    with pytest.raises(ms.MechscopeError, match="no space left on device writing"):
        io.write_tensors(old, {"x": torch.zeros(100_000)})
    with pytest.raises(ms.MechscopeError, match="no space left on device writing"):
        io.write_json(disk.path / "cfg.json", {"a": list(range(5000))})
    assert disk.files() == before
    _no_temp_files(disk.path)


# The commands


def test_run_out_on_a_full_disk_exits_2_and_keeps_the_previous_file(disk, inputs, capsys):
    model, _ = inputs
    argv = [
        "run",
        model,
        "the quick brown fox",
        "--record",
        "blocks.*.hook_resid_post",
        "--out",
        str(disk.path / "acts.safetensors"),
    ]
    assert main(argv) == 0
    before = disk.files()
    disk.fill()
    _fails_in_one_line(argv, capsys)
    assert disk.files() == before
    _fails_in_one_line([*argv[:-1], str(disk.path / "new.safetensors")], capsys)
    assert disk.files() == before
    _no_temp_files(disk.path)


def test_sae_cache_train_convert_on_a_full_disk(disk, inputs, capsys):
    model, corpus = inputs
    data = ["--data", corpus, "--ctx", "16", "--heldout", "0.2"]
    cache = ["sae", "cache", model, "--site", SITE, "--out", str(disk.path / "acts"), *data, "--no-progress"]
    train = [
        "sae",
        "train",
        model,
        "--site",
        SITE,
        "--out",
        str(disk.path / "sae"),
        "--width",
        "64",
        "--k",
        "4",
        "--total-tokens",
        "256",
        "--batch-tokens",
        "32",
        "--warmup",
        "1",
        "--checkpoint-every",
        "3",
        "--eval-contexts",
        "3",
        "--no-progress",
        *data,
    ]
    convert = ["sae", "convert", str(disk.path / "sae"), str(disk.path / "sl"), "--to", "saelens"]
    for argv in (cache, train, convert):
        assert main(argv) == 0
    capsys.readouterr()
    before = disk.files()
    disk.fill()
    for argv in (cache, train, convert):  # each writes again over its own output
        _fails_in_one_line(argv, capsys)
        assert disk.files() == before
    _fails_in_one_line([*cache[:6], str(disk.path / "acts2"), *cache[7:]], capsys)  # a new cache: its first shard
    _fails_in_one_line([*train[:6], str(disk.path / "sae2"), *train[7:]], capsys)  # a new run: its first checkpoint
    assert {k: v for k, v in disk.files().items() if not k.startswith(("acts2", "sae2"))} == before
    _no_temp_files(disk.path)


def test_lens_train_on_a_full_disk(disk, inputs, capsys):
    model, corpus = inputs
    argv = [
        "lens",
        "train",
        model,
        "--data",
        corpus,
        "--out",
        str(disk.path / "lens"),
        "--steps",
        "3",
        "--ctx",
        "16",
        "--batch",
        "4",
        "--no-progress",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    before = disk.files()
    disk.fill()
    _fails_in_one_line(argv, capsys)
    assert disk.files() == before
    _no_temp_files(disk.path)


@pytest.mark.slow  # two reports of every section: ~30 s on a busy 2-core machine
def test_report_on_a_full_disk(disk, inputs, capsys):
    model, _ = inputs
    argv = ["report", model, "--prompt", "the quick brown fox", "--out", str(disk.path / "report")]
    assert main(argv) == 0
    capsys.readouterr()
    before = disk.files()
    disk.fill()
    _fails_in_one_line(argv, capsys)
    assert disk.files() == before
    _no_temp_files(disk.path)


def test_a_full_disk_met_outside_mechscope_io_is_one_line_too(tmp_path, monkeypatch, capsys):
    from mechscope import zoo

    def save_pretrained(*args, **kwargs):  # e.g. transformers writing a zoo model's folder
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "model.safetensors"))

    monkeypatch.setattr(zoo, "train", save_pretrained)
    assert main(["zoo", "train", "superposition", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"mechscope: error: no space left on device writing {tmp_path / 'model.safetensors'}: free space "
        "or choose another --out\n"
    )

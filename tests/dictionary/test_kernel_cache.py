"""The native kernels' cache is this user's alone: created 0700, never loaded from a folder
or file that someone else owns or can write, keyed on the CPU and the compiler, and a
failed build is remembered instead of retried by every process."""

from __future__ import annotations

import os
import stat

import pytest

from mechscope.dictionary import kernels


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "kernels"


def _fake_compiler(tmp_path, name: str, version: str, fails: bool = False):
    """A 'compiler' that logs each call and writes an empty library (or fails)."""
    calls = tmp_path / f"{name}.calls"
    script = tmp_path / name
    body = "exit 1" if fails else 'prev=""; for a; do [ "$prev" = -o ] && : > "$a"; prev=$a; done'
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = --version ]; then echo "{version}"; exit 0; fi\necho x >> "{calls}"\n{body}\n'
    )
    script.chmod(0o755)
    return str(script), calls


def test_the_cache_is_created_private_and_the_library_is_ours(cache, tmp_path):
    compiler, _ = _fake_compiler(tmp_path, "cc1", "cc 1.0")
    target = kernels._build_or_reuse(compiler)
    assert target is not None and target.parent == cache
    for path in (cache.parent, cache):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert not target.stat().st_mode & 0o022


def test_a_cache_writable_by_others_is_not_loaded(cache, tmp_path, caplog):
    compiler, calls = _fake_compiler(tmp_path, "cc1", "cc 1.0")
    cache.mkdir(parents=True)
    cache.chmod(0o777)
    assert kernels._build_or_reuse(compiler) is None
    assert "writable by others" in caplog.text and not calls.exists()


def test_a_planted_library_writable_by_others_is_not_loaded(cache, tmp_path, caplog):
    compiler, _ = _fake_compiler(tmp_path, "cc1", "cc 1.0")
    target = kernels._build_or_reuse(compiler)
    target.chmod(0o666)
    assert kernels._build_or_reuse(compiler) is None and "not loading it" in caplog.text


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="changing a file's owner needs root")
def test_a_cache_owned_by_another_user_is_not_loaded(cache, tmp_path):
    compiler, _ = _fake_compiler(tmp_path, "cc1", "cc 1.0")
    cache.mkdir(parents=True, mode=0o700)
    os.chown(cache, 65534, 65534)
    assert kernels._build_or_reuse(compiler) is None


def test_the_key_names_the_compiler_version(cache, tmp_path):
    one, _ = _fake_compiler(tmp_path, "cc1", "cc 1.0")
    two, _ = _fake_compiler(tmp_path, "cc2", "cc 2.0")
    assert kernels._build_or_reuse(one) != kernels._build_or_reuse(two)


def test_a_failed_build_is_remembered(cache, tmp_path):
    compiler, calls = _fake_compiler(tmp_path, "bad", "bad 1.0", fails=True)
    assert kernels._build_or_reuse(compiler) is None
    tries = len(calls.read_text().splitlines())
    assert tries == len(kernels.FLAGS) and list(cache.glob("*.failed"))
    assert kernels._build_or_reuse(compiler) is None
    assert len(calls.read_text().splitlines()) == tries  # not tried again

"""The only module that registers torch hooks.

`hooked(...)` installs one hook per module boundary that any requested site reads,
applies the edits for those sites (in the order given), hands recorded values to a
callback, and removes every hook on exit, exceptions included.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from torch import Tensor, nn

from .edits import Edit
from .errors import MechscopeError
from .sites import Site, SiteTable


class StopForward(Exception):
    """Raised from a hook once every requested site is recorded, to skip the rest."""


def resolve_edits(table: SiteTable, edits: Sequence[Edit]) -> dict[str, list[Edit]]:
    """Site name -> the edits that apply there, in order; checks that each can be edited."""
    by_site: dict[str, list[Edit]] = defaultdict(list)
    for edit in edits:
        if not isinstance(edit, Edit):
            raise MechscopeError(f"edits must be made with mechscope.edits (replace, add, ...), got {type(edit).__name__}")
        for name in table.resolve(edit.site):
            site = table[name]
            if not site.view.editable or not site.module:
                raise MechscopeError(
                    f"'{name}' can be recorded but not edited: the model has already used it when it is "
                    "computed (edit hook_z, hook_v or hook_resid_* instead)")
            by_site[name].append(edit)
    return dict(by_site)


@contextmanager
def hooked(
    model: nn.Module,
    table: SiteTable,
    *,
    record: Sequence[str] = (),
    edits: dict[str, list[Edit]] | None = None,
    on_record: Callable[[str, Tensor], None] | None = None,
    lengths: Tensor | None = None,
    strict: bool = True,
    stop_when_recorded: bool = False,
) -> Iterator[None]:
    """Hooks that record `record` (through `on_record`) and apply `edits` while active.

    With `stop_when_recorded`, the forward pass raises `StopForward` as soon as the last
    recorded site is computed; the caller catches it.
    """
    edits = edits or {}
    wanted = {n for n in record if table[n].module}
    groups: dict[tuple[str, str], list[Site]] = defaultdict(list)
    for name in sorted(wanted | set(edits), key=table.order.__getitem__):
        site = table[name]
        groups[(site.module, site.boundary)].append(site)
    remaining = set(wanted)

    def process(raw_of: Callable[[int], Tensor], set_raw: Callable[[int, Tensor], None], sites: list[Site]) -> None:
        for site in sites:
            raw = raw_of(site.view.index)
            for edit in edits.get(site.name, ()):
                value = edit.apply(site.view.read(raw), site=site.name, dims=site.dims, lengths=lengths, strict=strict)
                raw = site.view.write(raw, value)
                set_raw(site.view.index, raw)
            if site.name in wanted:
                on_record(site.name, site.view.read(raw))
                remaining.discard(site.name)
        if stop_when_recorded and not remaining:
            raise StopForward

    def out_hook(sites):
        def hook(module, args, output):
            box = list(output) if isinstance(output, tuple) else [output]

            def set_raw(i, value):
                box[i] = value

            process(box.__getitem__, set_raw, sites)
            return tuple(box) if isinstance(output, tuple) else box[0]
        return hook

    def in_hook(sites):
        def hook(module, args, kwargs):
            args, kwargs = list(args), dict(kwargs)
            use_args = bool(args)

            def raw_of(_):
                return args[0] if use_args else kwargs["hidden_states"]

            def set_raw(_, value):
                if use_args:
                    args[0] = value
                else:
                    kwargs["hidden_states"] = value

            process(raw_of, set_raw, sites)
            return tuple(args), kwargs
        return hook

    handles = []
    try:
        for (path, boundary), sites in groups.items():
            module = model.get_submodule(path)
            if boundary == "out":
                handles.append(module.register_forward_hook(out_hook(sites)))
            else:
                handles.append(module.register_forward_pre_hook(in_hook(sites), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()

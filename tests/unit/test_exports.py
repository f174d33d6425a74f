"""The public surface of `worker` is deliberate: every exported name exists and nothing public is
left out of it (ruff's RUF022 keeps the list sorted)."""

from __future__ import annotations

import types

import worker


def test_all_is_complete() -> None:
    exported = [name for name in worker.__all__ if name != "__version__"]
    assert len(exported) == len(set(exported))
    public = {
        name
        for name, value in vars(worker).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(exported)
    for name in worker.__all__:
        assert getattr(worker, name) is not None

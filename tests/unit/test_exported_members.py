"""The public names of the ``fedscreen`` package: changing them is a deliberate act."""

from __future__ import annotations

import fedscreen


def test_public_names_are_pinned() -> None:
    assert fedscreen.__all__ == ["FedscreenError", "__version__"]
    public = sorted(n for n in vars(fedscreen) if not n.startswith("_"))
    # subpackages appear as attributes once imported; everything else is in __all__
    modules = {n for n in public if type(getattr(fedscreen, n)).__name__ == "module"}
    assert sorted(set(public) - modules) == ["FedscreenError"]


def test_public_names_resolve() -> None:
    for name in fedscreen.__all__:
        assert getattr(fedscreen, name) is not None
    assert fedscreen.FedscreenError is fedscreen.errors.FedscreenError
    assert fedscreen.__version__.count(".") == 2

"""The public surface: sorted, complete ``__all__`` lists and the documented hierarchy."""

from __future__ import annotations

import importlib
import inspect

import pytest

import reality_core
from reality_core import errors

PACKAGES = ["reality_core", "reality_sqlalchemy", "reality_tortoise", "reality_peewee"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_complete(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"
    public = {
        n for n, v in vars(module).items()
        if not n.startswith("_") and not inspect.ismodule(v) and n != "annotations"
    }
    assert public <= set(exported), f"{name} exposes unlisted names: {public - set(exported)}"


def test_every_error_derives_from_reality_error_and_has_a_code() -> None:
    classes = [
        c for c in vars(errors).values()
        if inspect.isclass(c) and issubclass(c, Exception) and c.__module__ == errors.__name__
    ]
    assert len(classes) >= 8
    codes = set()
    for cls in classes:
        assert issubclass(cls, reality_core.RealityError)
        assert cls.code not in codes, f"duplicate code {cls.code}"
        codes.add(cls.code)
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} missing from the diagram"


def test_core_imports_no_orm() -> None:
    import subprocess
    import sys

    code = (
        "import sys, reality_core, reality_core.asgi, reality_core.wsgi, reality_core.cli;"
        "bad = [m for m in ('sqlalchemy', 'peewee', 'tortoise') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr

"""The API pages in docs/api/ match the docstrings, and every public name has one."""

import importlib
import inspect
import pathlib
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(DOCS))
import generate  # noqa: E402  (docs/generate.py)


@pytest.mark.parametrize("package", generate.PACKAGES)
def test_api_page_is_current(package):
    written = (DOCS / "api" / f"{package}.md").read_text()
    assert written == generate.page(package), (
        f"docs/api/{package}.md is out of date: run .venv/bin/python docs/generate.py")


@pytest.mark.parametrize("package", [p for p in generate.PACKAGES if p != "kernels"])
def test_every_public_name_has_a_docstring(package):
    module = importlib.import_module(f"jaxlm.{package}")
    public = [(name, getattr(module, name)) for name in module.__all__]
    undocumented = [name for name, obj in public if callable(obj) and not inspect.getdoc(obj)]
    assert not undocumented, f"jaxlm.{package}: no docstring for {undocumented}"

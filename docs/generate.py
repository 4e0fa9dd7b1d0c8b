"""Writes the API pages ``docs/api/<package>.md`` from the docstrings of jaxlm's public names
(each package's ``__all__``; for ``jaxlm.kernels``, the public functions of its modules).

Run:  .venv/bin/python docs/generate.py      (tests/test_docs.py checks the pages are current)
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re

PACKAGES = ("ops", "layers", "models", "kernels", "parallel", "train", "probes", "data")
KERNEL_MODULES = ("backend", "flash_attention", "chunked", "linear_attention", "delta_rule",
                  "selective_scan", "split", "tpu.chunked", "tpu.flash_attention", "vmem",
                  "measured")
API = pathlib.Path(__file__).resolve().parent / "api"


def _signature(obj) -> str:
    try:
        if inspect.isclass(obj):  # the constructor's arguments (NNX modules hide them)
            sig = inspect.signature(obj.__init__)
            sig = sig.replace(parameters=list(sig.parameters.values())[1:],
                              return_annotation=inspect.Signature.empty)
        else:
            sig = inspect.signature(obj)
        text = str(sig)
    except (TypeError, ValueError):
        return ""
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def _entry(name: str, obj) -> list[str]:
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "value"
    if kind == "value":
        return [f"### `{name}`", "", f"`{type(obj).__name__}`", ""]
    doc = inspect.getdoc(obj) or ""
    return [f"### {kind} `{name}{_signature(obj)}`", "", doc, ""]


def _public(module) -> list[tuple[str, object]]:
    if hasattr(module, "__all__"):
        return [(name, getattr(module, name)) for name in module.__all__]
    return [(name, obj) for name, obj in vars(module).items()
            if not name.startswith("_") and inspect.isfunction(obj)
            and obj.__module__ == module.__name__]


def page(package: str) -> str:
    """The Markdown page of ``jaxlm.<package>``."""
    module = importlib.import_module(f"jaxlm.{package}")
    lines = [f"# `jaxlm.{package}`", "", inspect.getdoc(module) or "", ""]
    sections = [(module, _public(module))]
    if package == "kernels":
        sections = [(m, _public(m)) for m in (importlib.import_module(f"jaxlm.kernels.{n}")
                                              for n in KERNEL_MODULES)]
    for section, entries in sections:
        if section is not module:
            lines += [f"## `{section.__name__}`", "", inspect.getdoc(section) or "", ""]
        for name, obj in sorted(entries, key=lambda e: e[0].lower()):
            lines += _entry(name, obj)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    API.mkdir(exist_ok=True)
    for package in PACKAGES:
        (API / f"{package}.md").write_text(page(package))
        print(f"wrote {API / package}.md")


if __name__ == "__main__":
    main()

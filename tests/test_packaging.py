"""Packaging: ``kernels/`` imports as ``jaxlm.kernels``, and pyproject lists every subpackage."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_kernels_import_as_jaxlm_kernels():
    import jaxlm.kernels
    assert pathlib.Path(jaxlm.kernels.__file__).parent == ROOT / "kernels"


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "jaxlm").rglob("__init__.py")}
    found |= {"jaxlm." + ".".join(p.parent.relative_to(ROOT).parts)
              for p in (ROOT / "kernels").rglob("__init__.py")}
    assert found == listed

"""pyproject.toml says what is true: every runtime dependency is used, and the description promises what exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: distribution name → import name, where they differ
IMPORT_NAME = {"scikit-learn": "sklearn", "transformer-lens": "transformer_lens", "sae-lens": "sae_lens"}
#: used at run time without an import from fer_diag
INDIRECT = {"gguf": "transformers reads the zoo models' GGUF files with it (from_pretrained(gguf_file=...))"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_dependency_is_imported_by_the_package():
    sources = "\n".join(p.read_text() for p in (ROOT / "fer_diag").rglob("*.py"))
    unused = []
    for requirement in _project()["dependencies"]:
        dist = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
        module = IMPORT_NAME.get(dist, dist.replace("-", "_"))
        if dist not in INDIRECT and not re.search(rf"^\s*(import|from) {module}\b", sources, re.MULTILINE):
            unused.append(dist)
    assert not unused, f"declared in pyproject.toml but never imported by fer_diag: {unused}"


def test_indirect_dependencies_are_what_their_user_needs():
    import transformers.utils

    assert transformers.utils.is_gguf_available()  # what the GGUF loading of the zoo models checks


def test_description_promises_only_what_exists():
    description = _project()["description"].lower()
    for missing in ("probe", "fractured", "entanglement", "fer score"):
        assert missing not in description, missing

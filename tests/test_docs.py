"""The documents point only at what the repository holds, and the library loads no benchmark."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bundle" / "docs" / "README.md",
             REPO / "monailabel_app" / "README.md"]
TOP_LEVEL = ("tokenseg/", "bundle/", "monailabel_app/", "benchmarks/", "tools/", "docs/", "tests/", "scripts/", ".ci/")
# written by the commands the documents describe, not part of a clone
GENERATED = ("bundle/data/", "bundle/eval/", "monailabel_app/model/", "monailabel_app/logs/", "runs/", "artifacts/")
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
MODULE = re.compile(r"python -m ((?:tokenseg|benchmarks)(?:\.\w+)*)")


def _named_paths(text: str, bases: list[Path]) -> set[str]:
    """Paths a document names in code spans: they start with a top-level folder of one of ``bases``, or are a
    root file."""
    folders = tuple({f"{p.name}/" for base in bases for p in base.iterdir() if p.is_dir()} & {*TOP_LEVEL, "configs/",
                                                                                          "models/", "docs/"})
    paths = set()
    for span in CODE.findall(text):
        for word in span.split():
            word = word.strip("'\",;:()").split("#")[0].split("::")[0]
            if word.startswith(folders) and not word.startswith(GENERATED) and not any(c in word for c in "*{<$"):
                paths.add(word.rstrip("/."))
            elif re.fullmatch(r"[A-Z]+\.md|pyproject\.toml|constraints\.txt", word):
                paths.add(word)
    return paths


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_and_path_a_document_names_exists(document):
    text = document.read_text(encoding="utf-8")
    missing = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        target = target.split("#")[0]
        if not ((document.parent / target).exists() or (REPO / target).exists()):
            missing.append(f"link {target}")
    # a path is named from the repository's root or, in the model card, from the bundle's (`configs/...`)
    bases = [REPO, REPO / "bundle"] if document.is_relative_to(REPO / "bundle") else [REPO]
    missing += [f"path {p}" for p in _named_paths(text, bases) if not any((base / p).exists() for base in bases)]
    for module in MODULE.findall(text):
        if importlib.util.find_spec(module) is None:
            missing.append(f"module {module}")
    assert "../shared" not in text and "DESIGN.md" not in text, "a reference outside the repository"
    assert not missing, f"{document.relative_to(REPO)} names what the repository does not hold: {missing}"


def test_import_tokenseg_loads_no_benchmark_and_no_app():
    code = (
        "import json, sys\n"
        "import tokenseg, tokenseg.bundle_task\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('benchmarks', 'monailabel', 'dynamic_network_architectures', 'lib'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

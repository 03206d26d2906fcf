"""Export bundle/ as a self-contained MONAI Bundle for the model zoo: it runs with MONAI and the packages its metadata lists.

    python tools/export_bundle.py --out /tmp/export [--source bundle] [--name tokenseg_breast_dce_mri_segmentation]

writes ``OUT/NAME``: the source bundle's configs, docs, licence and weights,
with every ``tokenseg.*`` reference in the configs turned into ``scripts.*``,
and ``scripts/``, a copy of the ``tokenseg`` modules the configs use (and what
they import), with their imports rewritten the same way. ``scripts/`` is
generated, never edited: ``tokenseg`` stays the one source. The metadata's
``required_packages_version`` lists the distributions those modules and the
configs import (versions of this environment) instead of ``tokenseg``.
The zoo's CI puts the bundle folder on ``sys.path``, as ``python -m
monai.bundle`` run from the bundle folder does, so ``import scripts`` finds it.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import re
import shutil
import sys
from pathlib import Path

import tokenseg

PACKAGE = "tokenseg"
SCRIPTS = "scripts"
SOURCE_ROOT = Path(tokenseg.__file__).resolve().parent
# Top-level imports that are part of Python or come with MONAI's own requirements.
PROVIDED = {"monai", "torch", "numpy", PACKAGE, SCRIPTS}
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"ignite": "pytorch-ignite", "SimpleITK": "SimpleITK", "yaml": "pyyaml"}
# Used through MONAI, which imports them optionally: image reading and handlers of the configs, the
# attention block (einops), the `python -m monai.bundle` command line (fire) with its metadata check (jsonschema),
# and DeepEdit's click simulation in the interactive model's training (scipy, scikit-image).
CONFIG_RUNTIME = (
    "nibabel", "pytorch-ignite", "tensorboard", "tqdm", "einops", "fire", "jsonschema", "scipy", "scikit-image"
)
REFERENCE = re.compile(rf"\b{PACKAGE}((?:\.\w+)+)")
IMPORT_LINE = re.compile(rf"^(\s*)(from|import) {PACKAGE}\b", re.MULTILINE)


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` (``tokenseg.x.y``), or None when it is not a module of the package."""
    relative = Path(*name.split(".")[1:])
    for candidate in (SOURCE_ROOT / relative / "__init__.py", SOURCE_ROOT / relative.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def referenced_modules(text: str) -> set[str]:
    """The longest module prefix of every ``tokenseg.a.b.C`` in ``text``."""
    modules = set()
    for match in REFERENCE.finditer(text):
        parts = [PACKAGE, *match.group(1).lstrip(".").split(".")]
        while len(parts) > 1 and module_file(".".join(parts)) is None:
            parts.pop()
        if len(parts) > 1:
            modules.add(".".join(parts))
    return modules


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(modules of the package, other top-level names) that the file at ``path`` imports."""
    own, other = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE:
                if module_file(name):
                    own.add(name)
            else:
                other.add(name.split(".")[0])
    return own, other - {"__future__"}


def module_closure(roots: set[str]) -> tuple[set[str], set[str]]:
    """Every module reachable from ``roots`` by imports (packages' ``__init__`` included), and their outside imports."""
    seen, outside, todo = set(), set(), sorted(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(2, len(parts)))  # parent packages run on import
        own, other = imports_of(module_file(name))
        todo.extend(own)
        outside |= other
    return seen - {PACKAGE}, outside


def rewrite(text: str) -> str:
    """``tokenseg`` references in configs and import lines -> ``scripts``."""
    return REFERENCE.sub(lambda m: SCRIPTS + m.group(1), text).replace(f"$import {PACKAGE}", f"$import {SCRIPTS}")


def write_scripts(modules: set[str], out: Path) -> None:
    """Copy ``modules`` into ``out/scripts`` with their own imports pointing at ``scripts``."""
    header = f"# Generated from {PACKAGE} {tokenseg.__version__} by tools/export_bundle.py; do not edit.\n"
    for name in sorted(modules):
        source = module_file(name)
        target = out / SCRIPTS / source.relative_to(SOURCE_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(header + IMPORT_LINE.sub(lambda m: f"{m.group(1)}{m.group(2)} {SCRIPTS}", source.read_text()))
    # The package's own __init__ imports tools the bundle does not ship (benchmarks): import what is shipped.
    top = sorted({name.split(".")[1] for name in modules})
    (out / SCRIPTS / "__init__.py").write_text(
        header + f'"""{PACKAGE} {tokenseg.__version__}, the parts this bundle uses."""\n\n'
        f"from {SCRIPTS} import {', '.join(top)}  # noqa: F401\n"
    )


def required_packages(outside: set[str]) -> dict[str, str]:
    names = {DISTRIBUTIONS.get(name, name) for name in outside} | set(CONFIG_RUNTIME)
    versions = {}
    for name in sorted(names - PROVIDED, key=str.lower):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # part of Python's standard library
            continue
    return versions


def export(source: Path, out: Path) -> Path:
    """Write the self-contained bundle for ``source`` to ``out``; returns ``out``."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("eval", "data", "__pycache__", "*.ts", "scripts"))
    # the runnable configs; metadata.json and the schema only describe
    configs = [c for c in sorted((out / "configs").glob("*.json")) if c.name not in ("metadata.json", "meta_schema.json")]
    modules = set()
    for config in configs:
        modules |= referenced_modules(config.read_text())
    modules, outside = module_closure(modules)
    for config in configs:
        config.write_text(rewrite(config.read_text()))
    write_scripts(modules, out)
    metadata_path = out / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["required_packages_version"] = required_packages(outside)
    metadata_path.write_text(json.dumps(metadata, indent=4) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder to write the bundle into (as OUT/NAME)")
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1] / "bundle")
    parser.add_argument("--name", default="tokenseg_breast_dce_mri_segmentation", help="the bundle's zoo name")
    args = parser.parse_args(argv)
    if not (args.source / "configs" / "metadata.json").is_file():
        sys.exit(f"{args.source}: not a bundle (no configs/metadata.json)")
    print(export(args.source, args.out / args.name))


if __name__ == "__main__":
    main()

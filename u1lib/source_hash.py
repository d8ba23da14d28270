"""What code produced a result: the u1lib modules a stage runs, found by following its imports.

One mechanism for the three places that must notice a code change: the workflow's per-stage code
hashes (Snakemake reruns a stage whose hash changed), the prefix-cache key (stale K/V are never
reused) and the checkpoint lineage (a resume under other maths is refused). Each names its entry
modules; every u1lib module they import, directly or not, counts, with the ``__init__.py`` of the
packages around them, less the modules a caller excludes on purpose and says why. Excluded modules
are not followed either. The hash covers names and bytes, so a rename counts as a change.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def imported_modules(path: Path) -> frozenset[Path]:
    """Files of the u1lib modules and packages that ``path`` imports (anywhere in the file)."""
    stat = path.stat()
    return _imported_modules(path, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _imported_modules(path: Path, size: int, mtime_ns: int) -> frozenset[Path]:
    """Parsed once per version of the file: the workflow hashes nine stages that share most modules."""
    dotted = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    package = dotted[:-1]  # where a relative import starts from (for an __init__.py: its own package)
    names = []
    for node in _statements(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names += [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            base = [*base, *(node.module.split(".") if node.module else [])]
            names += [base, *([*base, alias.name] for alias in node.names)]
    files = set()
    for parts in names:
        if parts and parts[0] == PACKAGE_DIR.name:
            inner = PACKAGE_DIR.joinpath(*parts[1:])
            for candidate in (inner.with_suffix(".py"), inner / "__init__.py"):
                if candidate.is_file():
                    files.add(candidate)
    return frozenset(files)


def _statements(tree: ast.Module) -> Iterator[ast.stmt]:
    """Every statement, however nested (an import is one); expressions, most of a tree, are skipped."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            todo += getattr(node, block, [])


def module_closure(entries: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Package-relative paths (sorted) of ``entries`` and everything they import, less ``exclude``."""
    excluded = {PACKAGE_DIR / rel for rel in exclude}
    todo = []
    for rel in entries:
        path = PACKAGE_DIR / rel
        if not path.is_file():
            raise FileNotFoundError(f"code hash entry {rel!r}: no such u1lib module {path}")
        todo.append(path)
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen or path in excluded:
            continue
        seen.add(path)
        todo += imported_modules(path)
        todo += [parent / "__init__.py" for parent in path.parents if PACKAGE_DIR in (parent, *parent.parents)]
    return sorted(str(path.relative_to(PACKAGE_DIR).as_posix()) for path in seen if path.is_file())


def code_hash(entries: Iterable[str], exclude: Iterable[str] = ()) -> str:
    """16 hex digits over the u1lib version and the names and bytes of :func:`module_closure`."""
    from u1lib import __version__

    digest = hashlib.sha256(__version__.encode())
    for rel in module_closure(entries, exclude):
        digest.update(rel.encode() + b"\0" + (PACKAGE_DIR / rel).read_bytes())
    return digest.hexdigest()[:16]

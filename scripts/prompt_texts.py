"""Print the telephone's prompt list, `name<TAB>text` lines, with nothing but the standard library.

The list is `PROMPT_SETS` in src/citycast/hub/telephone/prompts.py: every language's texts, a language's names
prefixed by its folder (`ur/welcome`). A wheel is built in an isolated environment
that holds setuptools and not the product's dependencies (numpy, PyAV), so that module cannot be imported there:
its top-level assignments are evaluated instead, skipping those that need a name it imports. The result is the
module's own list (tests/test_wheel.py compares it with `python -m citycast.hub.telephone.prompts --list`), and a
change that makes `PROMPT_TEXTS` depend on an import fails here, loudly, rather than ship a wheel without prompts.

Usage: python3 scripts/prompt_texts.py [path/to/prompts.py]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "src/citycast/hub/telephone/prompts.py"


def prompt_texts(source: Path) -> dict[str, str]:
    """Every prompt of every language: "<folder><name>" -> text."""
    tree = ast.parse(source.read_text(encoding="utf-8"), str(source))
    namespace: dict[str, object] = {"__name__": "prompt_texts"}
    skipped: dict[str, NameError] = {}
    for node in tree.body:
        # An annotated assignment is evaluated without its annotation (the module does not evaluate them either).
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            node = ast.fix_missing_locations(ast.copy_location(ast.Assign([node.target], node.value), node))
        if not isinstance(node, ast.Assign):
            continue
        try:
            exec(compile(ast.Module([node], []), str(source), "exec"), namespace)
        except NameError as e:  # needs an imported name (logging, Path, numpy): not part of the list
            for target in node.targets:
                skipped[ast.unparse(target)] = e
    for name in ("PROMPT_TEXTS", "PROMPT_SETS"):
        if name in skipped:
            raise SystemExit(f"{source}: {name} needs an imported name ({skipped[name]}): keep it plain")
    sets = namespace.get("PROMPT_SETS")
    texts: dict[str, str] = {}
    for texts_of, folder in sets.values() if isinstance(sets, dict) else ():
        texts.update({f"{folder}{name}": text for name, text in texts_of.items()})
    if not texts or not all(isinstance(v, str) for v in texts.values()):
        raise SystemExit(f"{source}: no PROMPT_SETS of (names to texts, folder) found")
    return texts


def main(argv: list[str]) -> int:
    for name, text in prompt_texts(Path(argv[0]) if argv else DEFAULT).items():
        print(f"{name}\t{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

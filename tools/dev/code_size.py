"""List modules over 600 lines and functions over 80 lines under gateway/ (issue 17).

Development aid for tests/test_code_size.py: ``python tools/dev/code_size.py [paths]``
prints one line per offender, so a refactor can check its own files as it goes.
"""

from __future__ import annotations

import ast
import pathlib
import sys

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
ROOT = pathlib.Path(__file__).resolve().parents[2]


def offenders(paths: list[pathlib.Path]) -> list[str]:
    out = []
    for path in paths:
        text = path.read_text()
        rel = path.relative_to(ROOT) if path.is_absolute() else path
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            out.append(f"{rel}: module {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{node.lineno}: function {node.name} {n} lines")
    return out


def main(argv: list[str]) -> int:
    targets = [pathlib.Path(a).resolve() for a in argv] or [ROOT / "gateway"]
    files = sorted(p for t in targets for p in ([t] if t.is_file() else t.rglob("*.py")))
    found = offenders(files)
    print("\n".join(found) or "no offenders")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

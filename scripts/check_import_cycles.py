#!/usr/bin/env python3
"""Fail when any two modules of ``ttt_checks`` import each other, directly or through others.

The layers contract of ``[tool.importlinter]`` orders the packages; inside a package modules may
still import each other in a circle, which the contract does not see. This finds every circle
(strongly connected component of the import graph, imports inside functions included), using
the same graph import-linter builds (grimp). ``make lint`` runs it after ``lint-imports``.

    python scripts/check_import_cycles.py [PACKAGE]      exit 0: no circle, 1: circles listed
"""

from __future__ import annotations

import sys

import grimp


def import_circles(package: str) -> list[list[str]]:
    """Every circle of modules that import each other, each sorted, largest first."""
    graph = grimp.build_graph(package, cache_dir=None)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & graph.modules) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    circles: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit)
        nonlocal counter
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    return sorted(circles, key=len, reverse=True)


def main(argv: list[str]) -> int:
    package = argv[1] if len(argv) > 1 else "ttt_checks"
    circles = import_circles(package)
    if not circles:
        print(f"import circles in {package}: none")
        return 0
    for circle in circles:
        print(f"import circle ({len(circle)} modules): {' <-> '.join(circle)}")
    print(f"{len(circles)} import circle(s) in {package}: break each by moving the shared name down a layer "
          "(docs/architecture.md)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Size figures of the package for issue reviews: files over N lines, functions over M lines.

    python tools/code_stats.py [--files 450] [--functions 60] [ROOT ...]

Prints the total lines, the median file, each file over the file limit and each function (or
method) over the function limit, longest first. Exit 0 always: a report, not a gate.
"""
import argparse
import ast
import os
import statistics
import sys


def python_files(roots):
    for root in roots:
        if root.endswith(".py"):
            yield root
            continue
        for d, _, names in os.walk(root):
            for n in sorted(names):
                if n.endswith(".py"):
                    yield os.path.join(d, n)


def function_lengths(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="*", default=["maskrcnn"])
    p.add_argument("--files", type=int, default=450)
    p.add_argument("--functions", type=int, default=60)
    a = p.parse_args(argv)
    sizes, long_funcs = {}, []
    for path in python_files(a.roots):
        with open(path, encoding="utf-8") as f:
            sizes[path] = sum(1 for _ in f)
        long_funcs += [(n, path, line, name) for name, line, n in function_lengths(path) if n > a.functions]
    print(f"{len(sizes)} files, {sum(sizes.values())} lines, median file {statistics.median(sizes.values()):.0f} lines")
    big = sorted(((n, p) for p, n in sizes.items() if n > a.files), reverse=True)
    print(f"{len(big)} files over {a.files} lines")
    for n, path in big:
        print(f"  {n:5d}  {path}")
    print(f"{len(long_funcs)} functions over {a.functions} lines")
    for n, path, line, name in sorted(long_funcs, reverse=True):
        print(f"  {n:5d}  {path}:{line}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

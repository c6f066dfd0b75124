"""Mutation check: plant known bugs one at a time in a scratch copy and see whether the tests fail.

    python tools/mutation_check.py                   # every mutation of tools/mutations.py, its own tests
    python tools/mutation_check.py --list            # the mutations and the tests each runs
    python tools/mutation_check.py --only nms_dispatch_twin,anchor_sizes_doubled
    python tools/mutation_check.py --full            # the whole suite per mutation (slow)
    python tools/mutation_check.py --jobs 2 --markdown out.md

The repository (tracked and untracked-but-not-ignored files, plus the built ``maskrcnn/_C*.so``)
is copied once to a temporary folder; the worktree itself is never modified. For each mutation
its edits are applied to the copy, the mutation's tests run there
(``python -m pytest -q -x``, with ``MASKRCNN_REQUIRE_EXT=1``), and the files are put back.

A mutation is *caught* when pytest reports failing tests (exit code 1), *missed* when the tests
pass (exit 0); any other exit code (collection error, no tests, timeout) is an *error*: the
mutation or its test list needs fixing. Before anything runs, every edit's snippet must occur
exactly once in its file, else the tool stops and names the stale mutations (code moved: update
the snippet in ``tools/mutations.py``). The unmutated copy must pass all the listed tests first.

Two entries remove the built extension or replace it by junk: the README's test command (which
sets ``MASKRCNN_REQUIRE_EXT=1``, as this tool does) must then fail, whatever tests it runs.
Mutations that edit C++ (``rebuild=True``) rebuild the extension in the copy (about a minute
each on 2 cores) and are run only with ``--cpp``.

Exit status: 0 when every mutation run was caught, 1 when one was missed or errored, 2 when a
snippet is stale or the unmutated baseline fails.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mutations import MUTATIONS, Mutation  # noqa: E402


# ------------------------------------------------------------------------ checking the list
def check_snippets(mutations: Sequence[Mutation], root: str = REPO) -> List[str]:
    """Problems with the mutation list: unknown files, snippets found 0 or 2+ times, no-op edits."""
    problems = []
    names = set()
    for m in mutations:
        if m.name in names:
            problems.append(f"{m.name}: duplicate mutation name")
        names.add(m.name)
        if not m.tests:
            problems.append(f"{m.name}: no tests listed")
        if not m.edits and not m.extension:
            problems.append(f"{m.name}: no edits")
        for t in m.tests:
            path = t.split("::")[0]
            if not os.path.exists(os.path.join(root, path)):
                problems.append(f"{m.name}: test path {path} does not exist")
        for path, old, new in m.edits:
            full = os.path.join(root, path)
            if not os.path.isfile(full):
                problems.append(f"{m.name}: file {path} does not exist")
                continue
            with open(full) as f:
                text = f.read()
            n = text.count(old)
            if n != 1:
                problems.append(f"{m.name}: snippet found {n} times in {path} (expected once): {old[:70]!r}")
            if old == new:
                problems.append(f"{m.name}: edit in {path} changes nothing")
    return problems


# --------------------------------------------------------------------------- scratch copies
def _repo_files(root: str) -> List[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    files = [f for f in out.split("\0") if f and os.path.isfile(os.path.join(root, f))]
    files += [os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "maskrcnn", "_C*.so"))]
    return files


def _shared_dir(root: str) -> Optional[str]:
    # ../shared beside the repository (CI, /work/main) or two levels up (worktrees /work/wt/<name>).
    for base in (os.path.dirname(root), os.path.dirname(os.path.dirname(root))):
        d = os.path.join(base, "shared")
        if os.path.isdir(d):
            return d
    return None


def make_scratch(root: str, parent: str, name: str) -> str:
    """Copy the repository into ``parent/name/repo`` (with ``shared`` linked beside it)."""
    dst = os.path.join(parent, name, "repo")
    for rel in _repo_files(root):
        target = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), target)
    shared = _shared_dir(root)
    if shared:
        os.symlink(shared, os.path.join(parent, name, "shared"))
    if not glob.glob(os.path.join(dst, "maskrcnn", "_C*.so")):
        raise SystemExit("error: maskrcnn/_C*.so is not built (python setup.py build_ext --inplace)")
    return dst


# ----------------------------------------------------------------------------------- running
_FAILED = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", re.M)
_EXIT = re.compile(r"_pytest\.outcomes\.Exit: (.*?) !*$", re.M)


def run_pytest(repo: str, tests: Sequence[str], timeout: float, extra: Sequence[str] = ()) -> Tuple[int, str, float]:
    env = dict(os.environ, MASKRCNN_REQUIRE_EXT="1", PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=repo)
    env.pop("MASKRCNN_FORCE_FALLBACK", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           *extra, *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        partial = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc, out = 124, partial + f"\ntimed out after {timeout:.0f} s"
    return rc, out, time.perf_counter() - t0


def _build(repo: str) -> None:
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("extension build failed:\n" + proc.stdout[-2000:] + proc.stderr[-2000:])


def apply_mutation(repo: str, m: Mutation) -> Dict[str, str]:
    """Apply ``m``'s edits in ``repo``; returns the original text of each edited file."""
    originals: Dict[str, str] = {}
    for path, old, new in m.edits:
        full = os.path.join(repo, path)
        with open(full) as f:
            current = f.read()
        originals.setdefault(path, current)
        if current.count(old) != 1:
            restore(repo, originals)
            raise RuntimeError(f"{m.name}: snippet not found once in {path} after the earlier edits: {old[:70]!r}")
        with open(full, "w") as f:
            f.write(current.replace(old, new, 1))
    return originals


def restore(repo: str, originals: Dict[str, str]) -> None:
    for path, text in originals.items():
        with open(os.path.join(repo, path), "w") as f:
            f.write(text)


def run_one(repo: str, m: Mutation, full: bool, timeout: float, pristine_so: Dict[str, bytes]) -> dict:
    originals = apply_mutation(repo, m)
    for path in pristine_so:
        if m.extension == "missing":
            os.remove(path)
        elif m.extension == "broken":
            with open(path, "wb") as f:
                f.write(b"not a shared object")
    try:
        if m.rebuild:
            try:
                _build(repo)
            except RuntimeError as e:
                return {"name": m.name, "result": "error", "by": "build failed", "seconds": 0.0, "output": str(e)}
        tests = ["tests"] if full else list(m.tests)
        rc, out, secs = run_pytest(repo, tests, timeout)
    finally:
        restore(repo, originals)
        if m.rebuild or m.extension:  # put the unmutated extension back (restoring the sources is not enough)
            for path, data in pristine_so.items():
                with open(path, "wb") as f:
                    f.write(data)
    failed = _FAILED.findall(out)
    stopped = _EXIT.search(out)
    if rc == 1:
        result, by = "caught", (failed[0] if failed else ("run stopped: " + stopped.group(1)[:60]) if stopped else "?")
    elif rc == 0:
        result, by = "MISSED", ""
    else:
        result, by = "error", f"pytest exit {rc}" + (f" ({failed[0]})" if failed else "")
    return {"name": m.name, "result": result, "by": by, "seconds": secs, "output": out}


# ------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated mutation names")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--full", action="store_true", help="run the whole suite per mutation instead of its tests")
    p.add_argument("--cpp", action="store_true", help="also run the mutations that rebuild the C++ extension")
    p.add_argument("--jobs", type=int, default=1, help="mutations run at once (one scratch copy each)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    p.add_argument("--skip-baseline", action="store_true", help="do not run the unmutated tests first")
    p.add_argument("--markdown", default="", help="also write the table as Markdown to this file")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = p.parse_args(argv)

    mutations = list(MUTATIONS)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in {m.name for m in mutations}]
        if unknown:
            print(f"error: unknown mutation(s) {', '.join(unknown)} (see --list)", file=sys.stderr)
            return 2
        mutations = [m for m in mutations if m.name in wanted]
    problems = check_snippets(MUTATIONS)
    if problems:
        print("error: the mutation list does not fit the code any more (update tools/mutations.py):", file=sys.stderr)
        for pr in problems:
            print("  " + pr, file=sys.stderr)
        return 2
    if args.list:
        for m in mutations:
            print(f"{m.name:34s} {'[C++] ' if m.rebuild else ''}{m.what}\n{'':34s} tests: {' '.join(m.tests)}")
        return 0
    skipped = [m for m in mutations if m.rebuild and not args.cpp]
    mutations = [m for m in mutations if args.cpp or not m.rebuild]

    scratch = tempfile.mkdtemp(prefix="mutation_check_")
    t_start = time.perf_counter()
    try:
        jobs = max(1, min(args.jobs, len(mutations) or 1))
        repos = [make_scratch(REPO, scratch, f"w{k}") for k in range(jobs)]
        print(f"scratch copies in {scratch} ({jobs}); {len(mutations)} mutation(s)"
              + (f", {len(skipped)} C++ mutation(s) skipped (--cpp runs them)" if skipped else ""), flush=True)
        if not args.skip_baseline:
            tests = sorted({t for m in mutations for t in m.tests}) if not args.full else ["tests"]
            rc, out, secs = run_pytest(repos[0], tests, args.timeout * 2)
            if rc != 0:
                print(out[-4000:], file=sys.stderr)
                print(f"error: the unmutated copy fails its tests (pytest exit {rc}); fix that first", file=sys.stderr)
                return 2
            print(f"baseline: the listed tests pass unmutated ({secs:.0f} s)", flush=True)

        pool: List[str] = list(repos)
        lock = threading.Lock()
        pristine = {}
        for r in repos:
            for so in glob.glob(os.path.join(r, "maskrcnn", "_C*.so")):
                with open(so, "rb") as f:
                    pristine[so] = f.read()

        def work(m: Mutation) -> dict:
            with lock:
                repo = pool.pop()
            try:
                so = {k: v for k, v in pristine.items() if k.startswith(repo)}
                res = run_one(repo, m, args.full, args.timeout, so)
            finally:
                with lock:
                    pool.append(repo)
            line = f"{res['result']:7s} {m.name:34s} {res['seconds']:6.1f} s  {res['by']}"
            print(line, flush=True)
            if res["result"] == "error":
                print(res["output"][-3000:], flush=True)
            return res

        with ThreadPoolExecutor(max_workers=jobs) as ex:
            results = list(ex.map(work, mutations))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    caught = sum(r["result"] == "caught" for r in results)
    missed = [r["name"] for r in results if r["result"] == "MISSED"]
    errors = [r["name"] for r in results if r["result"] == "error"]
    total = time.perf_counter() - t_start
    print(f"\n{len(results)} planted, {caught} caught, {len(missed)} missed, {len(errors)} errors "
          f"({total / 60:.1f} min{', whole suite per mutation' if args.full else ''})")
    if missed:
        print("missed: " + ", ".join(missed))
    if errors:
        print("errors: " + ", ".join(errors))
    if args.markdown:
        by_name = {m.name: m for m in MUTATIONS}
        lines = ["| mutation | what | result | caught by | s |", "| --- | --- | --- | --- | ---: |"]
        for r in results:
            lines.append(f"| `{r['name']}` | {by_name[r['name']].what} | {r['result']} | "
                         f"{('`' + r['by'] + '`') if r['by'] else ''} | {r['seconds']:.0f} |")
        lines.append(f"\n{len(results)} planted, {caught} caught ({total / 60:.1f} min).")
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

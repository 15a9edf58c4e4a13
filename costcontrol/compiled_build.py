"""Build the compiled hot modules (``costcontrol.compiled``): ``python -m costcontrol.compiled_build``.

Needs mypyc (with mypy, in requirements-dev.txt) and a C compiler, here only: the gateway's processes
load what it built. A build that fails says so and exits 0: the gateway then runs the same code as plain
Python.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from costcontrol.compiled import (
    BUILD_DIR,
    GROUP,
    HOT_MODULES,
    MANIFEST,
    ROOT,
    abi,
    fresh_build,
    source_digests,
    source_path,
)


def build(build_dir: Path = BUILD_DIR, root: Path = ROOT) -> str:
    """Compile the hot modules into a new directory of ``build_dir`` and point the manifest at it;
    nothing when the build there is fresh. Returns what it did, in words.

    Each build gets a directory of its own and the manifest is replaced last: a running gateway keeps
    the libraries it loaded (their files are never rewritten in place), and a build that fails leaves
    the last good one in use."""
    if fresh_build(build_dir, root)[0] is not None:
        return "up to date"
    from mypyc.build import mypycify  # only the build needs mypyc and setuptools
    from setuptools import setup

    digests = source_digests(HOT_MODULES, root)
    build_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=build_dir))
    try:
        config = work / "mypy.ini"
        # Not the project's mypy settings: the hot modules need no Django plugin, and a cache of their own
        # keeps `make typecheck`'s cache valid.
        config.write_text(
            f"[mypy]\npython_version = 3.11\nignore_missing_imports = True\ncache_dir = {build_dir / 'mypy-cache'}\n"
        )
        cwd = os.getcwd()
        os.chdir(root)  # mypyc names each module from its path relative to here
        try:
            extensions = mypycify(
                ["--config-file", str(config), *(str(source_path(m, Path("."))) for m in HOT_MODULES)],
                opt_level="3",
                group_name=GROUP,
                target_dir=str(work / "c"),
            )
            setup(
                name=GROUP,
                ext_modules=extensions,
                script_args=["--quiet", "build_ext", "--build-lib", str(work / "lib"),
                             "--build-temp", str(work / "temp"), "--parallel", str(os.cpu_count() or 1)],
            )  # fmt: skip
        finally:
            os.chdir(cwd)
        directory = "lib-" + hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
        final = build_dir / directory
        shutil.rmtree(final, ignore_errors=True)
        (work / "lib").rename(final)
        manifest = work / MANIFEST
        manifest.write_text(json.dumps({"abi": abi(), "sources": digests, "directory": directory}, indent=1))
        manifest.replace(build_dir / MANIFEST)
        for old in build_dir.glob("lib-*"):
            if old.name != directory:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return f"compiled {len(HOT_MODULES)} modules into {final}"


def main(argv: Sequence[str]) -> int:
    if argv:
        print("usage: python -m costcontrol.compiled_build", file=sys.stderr)
        return 2
    try:
        print(f"hot path: {build()}")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 (any failure: the gateway runs as plain Python)
        print(
            f"*** hot path NOT compiled ({type(exc).__name__}: {exc}); the gateway runs it as plain Python",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The gateway's hot modules compiled to C with mypyc, used only while they match their sources.

Two thirds of the gateway's CPU a request is CPython interpreting Python. The modules below do the
per-request work (parse and check the body, authenticate, plan, admit, price, record); compiled
with mypyc they run the same code in about a sixth fewer instructions a request (README, Benchmark;
whether that saves time depends on the box, and it was not shown on a noisy one).

``make compile`` (``costcontrol.compiled_build``, which ``make run``, ``make test`` and ``make bench``
run first) builds them into ``var/compiled/``, outside the source tree, with a manifest of each
source's SHA-256. Every process
installs the compiled modules at start-up (``install``, called from ``costcontrol/__init__``) only
when all of them still match their sources: after an edit, the process runs the plain ``.py`` files
and logs that the build is stale until the next ``make compile``. It is all or nothing because
mypyc compiles the modules as one library whose calls between them are direct: a mix of compiled
and plain copies of the same module would hold two of each class.

Where the build cannot run (no C compiler), everything runs as plain Python, which is the same
code. ``COSTCONTROL_COMPILED=0`` (or false, no, off) turns the compiled modules off.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from costcontrol.env import env_bool

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "var" / "compiled"
MANIFEST = "manifest.json"
GROUP = "costcontrol_hot"  # the shared library is the top-level module costcontrol_hot__mypyc

# What runs for every request, and is plain typed Python mypyc compiles as it is. Not here: modules
# that read files beside themselves (__file__: breaker, scripts, catalog); upstream_http (an async
# generator, which mypyc does not compile); fastredis (compiled, ReplicaWait took True for an int and
# refused a float with TypeError, not the ValueError that names the setting); the ledger writer (a
# ``continue`` inside a ``with``, which mypyc does not compile) and the metrics (weak references to
# native objects are refused).
HOT_MODULES: tuple[str, ...] = (
    "apps.core.apikeys",
    "apps.core.errors",
    "apps.core.events",
    "apps.core.names",
    "apps.core.periods",
    "apps.core.pricing",
    "apps.core.request",
    "apps.core.responses",
    "apps.core.route",
    "apps.core.routing",
    "apps.core.snapshot",
    "apps.core.text",
    "apps.enforcement.leases",
    "apps.enforcement.limiter",
    "apps.enforcement.replies",
    "apps.cache.keys",
    "apps.gateway.call",
    "apps.gateway.stages.admit",
    "apps.gateway.stages.auth",
    "apps.gateway.stages.cache",
    "apps.gateway.stages.plan",
    "apps.gateway.stages.price",
    "apps.gateway.stages.record",
    "apps.gateway.stages.relay",
    "apps.gateway.stages.responses_stream",  # its ResponsesSse subclasses relay's SseRelay
    "apps.gateway.stages.upstream",
    "apps.gateway.stages.validate",
    "apps.gateway.handlers.proxy",
)


def source_path(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digests(modules: Sequence[str] = HOT_MODULES, root: Path = ROOT) -> dict[str, str]:
    return {module: hashlib.sha256(source_path(module, root).read_bytes()).hexdigest() for module in modules}


def library_path(directory: Path, module: str) -> Path:
    """Where a build in ``directory`` holds ``module``'s compiled library (as setuptools lays it out)."""
    return directory.joinpath(*module.split(".")).with_name(module.rpartition(".")[2] + abi()["suffix"])


def abi() -> dict[str, str]:
    """What a compiled library is only good for: this interpreter's ABI and extension suffix."""
    return {"cache_tag": sys.implementation.cache_tag or "", "suffix": importlib.machinery.EXTENSION_SUFFIXES[0]}


@dataclass(frozen=True)
class Build:
    """A build that matches the sources: where each compiled module's library is."""

    libraries: dict[str, Path]  # module name (and the group's shared library) -> its .so
    directory: Path


def fresh_build(build_dir: Path = BUILD_DIR, root: Path = ROOT) -> tuple[Build | None, str]:
    """The build in ``build_dir`` if it matches every hot module's source and this interpreter, else
    None; and why, in words."""
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "not built (make compile)"
    except (OSError, ValueError) as exc:
        return None, f"unreadable manifest: {exc}"
    if not isinstance(manifest, dict):
        return None, "unreadable manifest: not an object"
    this_abi = abi()
    if manifest.get("abi") != this_abi:
        return None, "built for another Python"
    digests = manifest.get("sources")
    if not isinstance(digests, dict) or set(digests) != set(HOT_MODULES):
        return None, "built from another module list (make compile)"
    try:
        current = source_digests(HOT_MODULES, root)
    except OSError as exc:
        return None, f"a source is unreadable: {exc}"
    stale = sorted(module for module in HOT_MODULES if digests[module] != current[module])
    if stale:
        return None, f"stale: {', '.join(stale)} changed since the build (make compile)"
    directory = build_dir / str(manifest.get("directory", ""))
    libraries = {module: library_path(directory, module) for module in HOT_MODULES}
    libraries[f"{GROUP}__mypyc"] = directory / f"{GROUP}__mypyc{this_abi['suffix']}"
    missing = [str(path) for path in libraries.values() if not path.is_file()]
    if missing:
        return None, f"incomplete: {missing[0]} is missing (make compile)"
    return Build(libraries=libraries, directory=directory), "compiled"


class _CompiledFinder(importlib.abc.MetaPathFinder):
    """Serves the hot modules (and their shared library) from the build, ahead of the source files."""

    def __init__(self, build: Build) -> None:
        self.build = build

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        library = self.build.libraries.get(fullname)
        if library is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(library))
        return importlib.util.spec_from_file_location(fullname, library, loader=loader)


# What this process runs, for `manage.py status` and the tests: "compiled", or why not.
state = "not installed"


def install(build_dir: Path = BUILD_DIR) -> str:
    """Put the compiled hot modules ahead of their sources in this process, if the build is fresh.

    Call before any of them is imported (``costcontrol/__init__`` does). Returns ``state``."""
    global state
    if any(isinstance(finder, _CompiledFinder) for finder in sys.meta_path):
        return state
    if not env_bool("COSTCONTROL_COMPILED", True):  # garbage stops the process, naming the variable
        state = "off (COSTCONTROL_COMPILED=0)"
        return state
    imported = [module for module in HOT_MODULES if module in sys.modules]
    if imported:
        state = f"plain Python: {imported[0]} was imported before the compiled modules could be installed"
        logger.warning("hot path: %s", state)
        return state
    build, why = fresh_build(build_dir)
    if build is None:
        state = f"plain Python: {why}"
        # A stale or broken build is worth a warning; no build at all is a choice (or no compiler).
        (logger.info if why.startswith("not built") else logger.warning)("hot path: %s", state)
        return state
    sys.meta_path.insert(0, _CompiledFinder(build))
    state = "compiled"
    return state


def compiled_now() -> bool:
    """Whether this process runs the compiled hot modules (every one of them, as ``install`` does)."""
    suffix = abi()["suffix"]
    return all(getattr(sys.modules.get(module), "__file__", "").endswith(suffix) for module in HOT_MODULES)

"""The compiled hot path (costcontrol/compiled.py): used exactly when it matches the sources, else plain Python."""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from costcontrol import compiled
from costcontrol.compiled_build import build

REPO = Path(__file__).resolve().parent.parent


def test_this_suite_runs_the_compiled_hot_path_when_it_is_built() -> None:
    """`make test` compiles first (make compile), so the whole suite exercises the code the gateway runs."""
    build_found, why = compiled.fresh_build()
    if build_found is None:
        pytest.skip(f"*** THE HOT PATH IS NOT COMPILED HERE ({why}): this run tested it as plain Python")
    assert compiled.state == "compiled"
    for module in compiled.HOT_MODULES:
        importlib.import_module(module)
    assert compiled.compiled_now(), "the hot modules in sys.modules are not the compiled libraries"


@pytest.fixture
def fake_build(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the hot modules' sources and a build of them whose libraries are empty files: enough for
    the checks, which read the manifest, the sources and which files exist (nothing here is imported)."""
    root, build_dir = tmp_path / "root", tmp_path / "build"
    for module in compiled.HOT_MODULES:
        target = compiled.source_path(module, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(compiled.source_path(module), target)
    directory = build_dir / "lib-test"
    for module in compiled.HOT_MODULES:
        library = compiled.library_path(directory, module)
        library.parent.mkdir(parents=True, exist_ok=True)
        library.touch()
    (directory / f"{compiled.GROUP}__mypyc{compiled.abi()['suffix']}").touch()
    manifest = {"abi": compiled.abi(), "sources": compiled.source_digests(root=root), "directory": "lib-test"}
    (build_dir / compiled.MANIFEST).write_text(json.dumps(manifest))
    return root, build_dir


def test_a_build_that_matches_every_source_is_used(fake_build: tuple[Path, Path]) -> None:
    root, build_dir = fake_build
    found, why = compiled.fresh_build(build_dir, root)
    assert why == "compiled" and found is not None
    assert set(found.libraries) == {*compiled.HOT_MODULES, f"{compiled.GROUP}__mypyc"}
    assert found.libraries["apps.core.request"].parent == build_dir / "lib-test" / "apps" / "core"
    assert build(build_dir, root) == "up to date"  # nothing to compile


def test_one_edited_source_makes_the_whole_build_stale(fake_build: tuple[Path, Path]) -> None:
    root, build_dir = fake_build
    text = compiled.source_path("apps.core.text", root)
    text.write_text(text.read_text() + "\n# edited\n")
    found, why = compiled.fresh_build(build_dir, root)
    assert found is None
    assert why.startswith("stale: apps.core.text changed")


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda m: {**m, "abi": {"cache_tag": "cpython-312", "suffix": ".so"}}, "built for another Python"),
        (lambda m: {**m, "sources": dict(list(m["sources"].items())[1:])}, "built from another module list"),
        (lambda m: {**m, "sources": {**m["sources"], "apps.evil": "0"}}, "built from another module list"),
        (lambda m: {**m, "sources": ["apps.core.text"]}, "built from another module list"),
        (lambda m: ["not", "a", "manifest"], "unreadable manifest"),
        (lambda m: {**m, "directory": "../../elsewhere"}, "incomplete"),
    ],
)
def test_a_build_that_does_not_fit_is_not_used(fake_build: tuple[Path, Path], change, reason: str) -> None:
    root, build_dir = fake_build
    path = build_dir / compiled.MANIFEST
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    found, why = compiled.fresh_build(build_dir, root)
    assert found is None and why.startswith(reason)


def test_a_missing_library_or_a_garbled_manifest_is_not_used(fake_build: tuple[Path, Path]) -> None:
    root, build_dir = fake_build
    next((build_dir / "lib-test").rglob("limiter*")).unlink()
    assert compiled.fresh_build(build_dir, root)[1].startswith("incomplete: ")
    (build_dir / compiled.MANIFEST).write_bytes(b"\xff{not json")
    assert compiled.fresh_build(build_dir, root)[1].startswith("unreadable manifest")
    (build_dir / compiled.MANIFEST).unlink()
    assert compiled.fresh_build(build_dir, root) == (None, "not built (make compile)")


def _in_a_fresh_process(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code + "\nimport costcontrol.compiled as c; print(c.state)"],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _state_in_a_fresh_process(code: str, **env: str) -> str:
    done = _in_a_fresh_process(code, **env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_a_hot_module_imported_before_the_install_keeps_the_process_plain() -> None:
    """A mix of compiled and plain copies would hold two of each class: the process stays plain, and says why."""
    state = _state_in_a_fresh_process("import apps.core.text\nimport costcontrol")
    assert state == "plain Python: apps.core.text was imported before the compiled modules could be installed"


@pytest.mark.parametrize("off", ["0", "false", "Off"])
def test_the_compiled_modules_can_be_turned_off(off: str) -> None:
    assert _state_in_a_fresh_process("import costcontrol", COSTCONTROL_COMPILED=off) == "off (COSTCONTROL_COMPILED=0)"


@pytest.mark.parametrize("garbage", ["2", "maybe", "0; rm -rf /", "\u00a0"])
def test_a_garbage_switch_stops_the_process_with_its_name(garbage: str) -> None:
    """As every other setting (costcontrol.env): "fals" must not quietly leave the compiled modules on."""
    done = _in_a_fresh_process("import costcontrol", COSTCONTROL_COMPILED=garbage)
    assert done.returncode != 0
    assert "COSTCONTROL_COMPILED must be a boolean" in done.stderr


def _python_files() -> list[Path]:
    return [path for folder in ("apps", "costcontrol", "tests") for path in (REPO / folder).rglob("*.py")]


def test_no_await_in_a_finally_of_a_compiled_module() -> None:
    """mypyc (2.4) compiles an ``await`` inside ``finally`` so that, in a coroutine called while its caller
    handles an exception, the block re-raises the caller's exception after the await: a refused request's
    GatewayError came back out after its error had been sent. ``except BaseException: await ...; raise``
    followed by the same await does what was meant (record.while_sending)."""
    found = []
    for module in compiled.HOT_MODULES:
        for node in ast.walk(ast.parse(compiled.source_path(module).read_text())):
            if isinstance(node, ast.Try):
                for statement in node.finalbody:
                    found += [
                        f"{module}:{inner.lineno}"
                        for inner in ast.walk(statement)
                        if isinstance(inner, ast.Await | ast.AsyncFor | ast.AsyncWith)
                    ]
    assert found == []


def test_no_plain_class_subclasses_a_compiled_one() -> None:
    """A class compiled by mypyc refuses interpreted subclasses at run time ("interpreted classes cannot
    inherit from compiled"): a subclass of a hot module's class must be in a hot module itself."""
    hot_classes = {
        node.name: module
        for module in compiled.HOT_MODULES
        for node in ast.walk(ast.parse(compiled.source_path(module).read_text()))
        if isinstance(node, ast.ClassDef)
    }
    hot_files = {compiled.source_path(module) for module in compiled.HOT_MODULES}
    found = []
    for path in _python_files():
        if path in hot_files:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
                    if name in hot_classes:
                        found.append(f"{path.relative_to(REPO)}: {node.name}({name}) of {hot_classes[name]}")
    assert found == []

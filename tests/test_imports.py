"""The import rules of the layout (DEVELOPERS.md: Layout), read from the source with `ast`.

Layers, top to bottom: cli (cli/) -> stages (pipeline/stages/) -> libraries -> core. Imports
run one way, down:

- a library never imports a stage;
- a stage never imports another stage, except the chains: pipeline/stages/run.py (`fairl run`,
  whose recipe is the other stages in order) and pipeline/stages/flywheel.py (`fairl flywheel`:
  audit, triage, refine, and re_rlhf with --re-rlhf);
- core imports neither a library nor a stage (pipeline/__init__.py may re-export library
  symbols lazily: imports inside its module-level `__getattr__` are allowed);
- nothing in pipeline/ imports cli;
- an import of a fairl module (pipeline.*, cli.*) sits at module top level, never inside a
  function, method or class body, so that every edge between modules is visible at the top of
  the file. Exceptions: cli/main.py (imports stage modules when a command runs, to keep
  `fairl --help` fast) and pipeline/__init__.py's `__getattr__`. Top-level `if TYPE_CHECKING:`
  blocks are top level.

- no module under pipeline/ imports dynamically (`importlib.import_module`, `__import__`):
  such an edge is invisible to this test (cli/main.py may, for its lazy stage imports);

and neither `import pipeline.config` nor `import cli.main` imports torch (run in a fresh
interpreter), and the tables that name the stages agree (config.STAGES, cli.main.COMMANDS,
stages/run.STAGE_RUNNERS, distributed.DATA_PARALLEL_STAGES).

Every module under pipeline/ must belong to a layer: a new one is added to LIBRARIES or CORE
below, which is where the layout is written down for this test. Relative imports are resolved;
an `if TYPE_CHECKING:` import still counts as an edge between layers.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAIRL_PACKAGES = ("pipeline", "cli")

STAGES = "pipeline.stages"
CHAIN = "pipeline.stages.run"  # `fairl run`: may import the other stages, and only it
FLYWHEEL = "pipeline.stages.flywheel"  # `fairl flywheel`: audit, triage, refine, re_rlhf
LIBRARIES = (
    "pipeline.data",
    "pipeline.policy",
    "pipeline.irl",
    "pipeline.evaluate",
    "pipeline.world",
    "pipeline.audit",
    "pipeline.scorers",
    "pipeline.embed",
)
CORE = (
    "pipeline",  # pipeline/__init__.py only (its subpackages are classified above)
    "pipeline.config",
    "pipeline.errors",
    "pipeline.artifacts",
    "pipeline.metrics",
    "pipeline.distributed",
    "pipeline.runtime",
    "pipeline.hub",
    "pipeline.seeds",
    "pipeline.figures",
    "pipeline.env",
)
LAZY_CLI = "cli/main.py"  # may import fairl modules inside functions (fast `--help`)
PACKAGE_INIT = "pipeline/__init__.py"  # may import libraries inside its `__getattr__`


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer(module: str) -> str | None:
    """'cli', 'stage', 'library', 'core', or None for a module the layout does not place."""
    if _within(module, "cli"):
        return "cli"
    if _within(module, STAGES):
        return "stage"
    if any(_within(module, p) for p in LIBRARIES):
        return "library"
    if module in CORE:
        return "core"
    return None


@dataclass(frozen=True)
class Import:
    """One edge: `file`:`line` (module `source`) imports fairl module `target`."""

    file: str  # relative to the root, posix
    line: int
    source: str
    target: str
    scope: str  # 'top', 'function' (inside a def or class body), 'getattr' (PACKAGE_INIT)

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(root: Path, name: str) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _resolve(root: Path, rel: Path, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = module_name(rel).split(".")
    if rel.name != "__init__.py":
        package = package[:-1]  # a plain module's package is its parent
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(root: Path, rel: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    module = _resolve(root, rel, node)
    out = []
    for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
        sub = f"{module}.{alias.name}" if module else alias.name
        out.append(sub if alias.name != "*" and _is_module(root, sub) else module)
    return out


def imports_of(root: Path, rel: Path) -> list[Import]:
    """Every import of a fairl module in one file, with the scope it sits in."""
    tree = ast.parse((root / rel).read_text(encoding="utf-8"), filename=str(rel))
    source, file = module_name(rel), rel.as_posix()
    found: list[Import] = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in dict.fromkeys(_targets(root, rel, child)):
                    if target.split(".")[0] in FAIRL_PACKAGES:
                        found.append(Import(file, child.lineno, source, target, scope))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                lazy_reexport = (
                    file == PACKAGE_INIT
                    and scope == "top"
                    and isinstance(child, ast.FunctionDef)
                    and child.name == "__getattr__"
                )
                visit(
                    child, "getattr" if lazy_reexport else "function" if scope == "top" else scope
                )
            else:  # module-level if / try / with (TYPE_CHECKING included) stay top level
                visit(child, scope)

    visit(tree, "top")
    return found


def python_files(root: Path) -> list[Path]:
    return sorted(
        p.relative_to(root)
        for pkg in FAIRL_PACKAGES
        if (root / pkg).is_dir()
        for p in (root / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    )


def all_imports(root: Path) -> list[Import]:
    return [imp for rel in python_files(root) for imp in imports_of(root, rel)]


@functools.cache
def tree_imports() -> tuple[Import, ...]:
    """This checkout's imports, parsed once for the tests below."""
    return tuple(all_imports(ROOT))


# ----------------------------------------------------------------------------- the rules
def layering_violations(imports: Sequence[Import]) -> list[str]:
    """'file:line: rule (source -> target)' for every import that climbs a layer."""
    out = []
    for imp in imports:
        src, dst = layer(imp.source), layer(imp.target)
        rule = None
        if _within(imp.source, "pipeline") and dst == "cli":
            rule = "pipeline/ never imports cli"
        elif src == "library" and dst == "stage":
            rule = "a library never imports a stage"
        elif src == "stage" and dst == "stage" and imp.source not in (imp.target, CHAIN, FLYWHEEL):
            rule = f"a stage never imports another stage (only {CHAIN} and {FLYWHEEL} do)"
        elif src == "core" and dst in ("library", "stage") and imp.scope != "getattr":
            rule = f"core never imports a {dst} (pipeline/__init__.py may, inside __getattr__ only)"
        if rule:
            out.append(f"{imp.where()}: {rule} ({imp.source} -> {imp.target})")
    return out


def local_import_violations(imports: Sequence[Import]) -> list[str]:
    """'file:line: rule (source -> target)' for every fairl import below module top level."""
    return [
        f"{imp.where()}: fairl modules are imported at module top level, not inside a function "
        f"or class (exceptions: {LAZY_CLI}, {PACKAGE_INIT}'s __getattr__) "
        f"({imp.source} -> {imp.target})"
        for imp in imports
        if imp.scope == "function" and imp.file != LAZY_CLI
    ]


def unplaced_modules(root: Path) -> list[str]:
    return [
        f"{rel.as_posix()}:1: module {module_name(rel)} belongs to no layer: add it to "
        "LIBRARIES or CORE in tests/test_imports.py (and to the layout in DEVELOPERS.md)"
        for rel in python_files(root)
        if layer(module_name(rel)) is None
    ]


def dynamic_import_violations(root: Path) -> list[str]:
    """'file:line: ...' for every `importlib.import_module(...)` / `__import__(...)` call in a
    module of pipeline/ (whatever its argument: a computed name hides the edge just as well)."""
    out = []
    for rel in python_files(root):
        if rel.as_posix() == LAZY_CLI:
            continue
        tree = ast.parse((root / rel).read_text(encoding="utf-8"), filename=str(rel))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in ("import_module", "__import__"):
                out.append(
                    f"{rel.as_posix()}:{node.lineno}: a dynamic import ({name}) hides an edge "
                    f"between modules; import at the top of the file (only {LAZY_CLI} may)"
                )
    return out


def _report(problems: list[str]) -> str:
    return f"{len(problems)} import rule violation(s):\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------ the tests
def test_imports_run_one_way():
    problems = layering_violations(tree_imports())
    assert not problems, _report(problems)


def test_fairl_imports_sit_at_module_top_level():
    problems = local_import_violations(tree_imports())
    assert not problems, _report(problems)


def test_every_module_belongs_to_a_layer():
    problems = unplaced_modules(ROOT)
    assert not problems, _report(problems)


def test_no_module_imports_dynamically():
    problems = dynamic_import_violations(ROOT)
    assert not problems, _report(problems)


@pytest.mark.parametrize("module", ["pipeline.config", "cli.main"])
def test_the_config_and_the_cli_do_not_import_torch(module):
    """`fairl --help` and config validation must not pay for torch (seconds to import)."""
    probe = (
        f"import sys, {module}\n"
        "fairl = sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'cli'))\n"
        "assert 'torch' not in sys.modules, 'torch imported; fairl modules loaded: ' + str(fairl)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_tables_of_stages_agree():
    """A stage is named in four places, each for its own reader: the config (order, sections),
    the CLI (commands), the chain (runners), the launch (data-parallel stages)."""
    from cli.main import COMMANDS
    from pipeline.config import STAGES
    from pipeline.distributed import DATA_PARALLEL_STAGES
    from pipeline.stages.run import STAGE_RUNNERS

    assert sorted(stage for stage, _, _ in COMMANDS.values()) == sorted(STAGES)
    assert list(STAGE_RUNNERS) == list(STAGES)
    assert set(DATA_PARALLEL_STAGES) <= set(STAGES)
    for stage in STAGES:
        assert (ROOT / "pipeline" / "stages" / f"{stage}.py").is_file(), stage


def test_the_rules_catch_each_violation(tmp_path):
    """The checker itself, on a made-up tree with one violation of each rule and each allowed
    exception: the tests above pass because the tree obeys the rules, not because the checker
    sees nothing."""
    files = {
        "pipeline/__init__.py": """
            from pipeline.config import X
            from pipeline.irl.reward import RewardModel        # core -> library
            def __getattr__(name):
                from pipeline.irl import reward                 # allowed: lazy re-export
                return getattr(reward, name)
            """,
        "pipeline/config.py": """
            from typing import TYPE_CHECKING
            from . import errors
            if TYPE_CHECKING:
                from .stages import irl                         # core -> stage (still an edge)
            """,
        "pipeline/errors.py": "",
        "pipeline/stages/__init__.py": "",
        "pipeline/stages/irl.py": """
            from pipeline.irl import bank
            from . import evaluate                              # stage -> stage
            """,
        "pipeline/stages/evaluate.py": """
            from pipeline.config import X
            import cli.main                                     # pipeline -> cli
            from pipeline.stages.run import run                 # stage -> the chain
            """,
        "pipeline/stages/run.py": """
            from pipeline.stages import evaluate, irl           # allowed: the chain
            """,
        "pipeline/irl/__init__.py": "",
        "pipeline/irl/bank.py": """
            from ..stages.irl import run                        # library -> stage
            def train():
                from pipeline.irl import reward                 # import inside a function
            class Head:
                from pipeline import errors                     # import inside a class body
            """,
        "pipeline/irl/reward.py": "import torch\nfrom .. import config\n",
        "pipeline/irl/heads.py": """
            import importlib
            def load(name):
                return importlib.import_module(name)            # dynamic import
            mod = __import__("pipeline.stages.irl")             # dynamic import
            """,
        "pipeline/mystery.py": "",  # in no layer
        "cli/__init__.py": "",
        "cli/main.py": """
            def irl():
                from pipeline.stages import irl                 # allowed: cli/main.py is lazy
            """,
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    imports = all_imports(tmp_path)

    layering = layering_violations(imports)
    assert layering == [
        "pipeline/__init__.py:3: core never imports a library (pipeline/__init__.py may, "
        "inside __getattr__ only) (pipeline -> pipeline.irl.reward)",
        "pipeline/config.py:5: core never imports a stage (pipeline/__init__.py may, "
        "inside __getattr__ only) (pipeline.config -> pipeline.stages.irl)",
        "pipeline/irl/bank.py:2: a library never imports a stage "
        "(pipeline.irl.bank -> pipeline.stages.irl)",
        "pipeline/stages/evaluate.py:3: pipeline/ never imports cli "
        "(pipeline.stages.evaluate -> cli.main)",
        "pipeline/stages/evaluate.py:4: a stage never imports another stage (only "
        "pipeline.stages.run and pipeline.stages.flywheel do) "
        "(pipeline.stages.evaluate -> pipeline.stages.run)",
        "pipeline/stages/irl.py:3: a stage never imports another stage (only "
        "pipeline.stages.run and pipeline.stages.flywheel do) "
        "(pipeline.stages.irl -> pipeline.stages.evaluate)",
    ], layering
    local = [p.split(": ")[0] for p in local_import_violations(imports)]
    assert local == ["pipeline/irl/bank.py:4", "pipeline/irl/bank.py:6"], local
    assert [p.split(":")[0] for p in unplaced_modules(tmp_path)] == ["pipeline/mystery.py"]
    dynamic = sorted(p.split(": ")[0] for p in dynamic_import_violations(tmp_path))
    assert dynamic == ["pipeline/irl/heads.py:4", "pipeline/irl/heads.py:5"], dynamic
    # Relative imports resolve like absolute ones; `from pkg import mod` names the module.
    targets = {(i.file, i.target) for i in imports}
    assert ("pipeline/config.py", "pipeline.errors") in targets
    assert ("pipeline/irl/reward.py", "pipeline.config") in targets
    assert ("pipeline/irl/bank.py", "pipeline.stages.irl") in targets
    assert ("cli/main.py", "pipeline.stages.irl") in targets
    assert ("pipeline/stages/run.py", "pipeline.stages.evaluate") in targets

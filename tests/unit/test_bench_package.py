"""The bench package's place in the house: nothing outside it imports it; ``all`` covers every benchmark."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import icasc
from icasc.bench.__main__ import ALL_FULL, ALL_QUICK, build_parser

PACKAGE = Path(icasc.__file__).resolve().parent
BENCH = PACKAGE / "bench"


def _imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """What ``path`` imports, as absolute names (relative ones resolved; ``from a import b``: a and a.b).

    Args:
        path: A ``.py`` file under ``root``.
        root: The folder that holds the top-level package.
    """
    package = list(path.relative_to(root).parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _bench_imports(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """The names of ``icasc.bench`` or its modules that ``path`` imports."""
    names = _imported_modules(path, root)
    return sorted(n for n in names if n == "icasc.bench" or n.startswith("icasc.bench."))


def test_no_module_outside_the_bench_imports_it() -> None:
    outside = [path for path in sorted(PACKAGE.rglob("*.py")) if BENCH not in path.parents]
    assert len(outside) > 20
    offenders = {str(path.relative_to(PACKAGE.parent)): _bench_imports(path) for path in outside}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_import_walk_sees_absolute_relative_and_package_imports(tmp_path: Path) -> None:
    room = tmp_path / "icasc" / "saliency"
    room.mkdir(parents=True)
    lines = {
        "a.py": "from ..bench import timing\n",
        "b.py": "from icasc import bench\n",
        "c.py": "import icasc.bench.step as s\n",
        "d.py": "from icasc.bench.timing import interleaved_medians\n",
        "__init__.py": "from .. import bench\n",
        "e.py": "from . import benchmark\nfrom icasc import benches\nimport icasc.saliency\n",
    }
    for name, text in lines.items():
        (room / name).write_text(text, encoding="utf-8")
    found = {name: bool(_bench_imports(room / name, tmp_path)) for name in lines}
    assert found == {name: name != "e.py" for name in lines}


def test_all_runs_every_benchmark_in_both_sizes_and_every_line_parses() -> None:
    assert list(ALL_FULL) == list(ALL_QUICK) == ["step", "step_timm", "saliency", "augment", "param_saliency"]
    parser = build_parser()
    for line in [*ALL_FULL.values(), *ALL_QUICK.values()]:
        args = parser.parse_args([*shlex.split(line), "--device", "cpu"])
        assert args.what != "all" and args.device == "cpu"
    assert parser.parse_args(shlex.split(ALL_FULL["step_timm"])).source == "timm"


def test_tf32_state_reads_the_backend_flags() -> None:
    """GPU gaps between float32 paths are TF32 rounding when conv TF32 is on: the reports say which."""
    import torch

    from icasc.bench.timing import run_info, tf32_state

    assert tf32_state(torch.device("cpu")) is None and run_info(torch.device("cpu"))["tf32"] is None
    # torch.backends.cuda.matmul is a proxy object that monkeypatch cannot restore: save by hand.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for conv, matmul in ((True, False), (False, True)):
            torch.backends.cudnn.allow_tf32 = conv
            torch.backends.cuda.matmul.allow_tf32 = matmul
            assert tf32_state(torch.device("cuda")) == {"conv": conv, "matmul": matmul}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

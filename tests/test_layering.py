"""Who may import whom, read from the code's import statements (ast, function-level imports included), not from its
text: the model knows nothing of Ray, DeepSpeed, MLflow or storage; entry points (cli, bench, demo) are imported by
nobody below them; every subpackage has a rule, so a new one must be placed."""

from __future__ import annotations

import ast

import pytest

from .conftest import REPO

PKG = REPO / "platform" / "pbp"
DISTRIBUTION = {"ray", "deepspeed"}
SERVICES = {"mlflow", "boto3", "botocore", "s3fs", "pyarrow", "webdataset"}
ENTRY = {"pbp.cli", "pbp.bench", "pbp.demo"}
# subpackage -> module prefixes it must not import (besides the entry points, which nobody below them imports)
RULES: dict[str, set[str]] = {
    "model": DISTRIBUTION | SERVICES | {"pbp.data", "pbp.train", "pbp.finetune", "pbp.tune", "pbp.registry",
                                        "pbp.predict", "pbp.stack", "pbp.config", "pbp.submit"},
    "data": DISTRIBUTION | {"mlflow", "pbp.train", "pbp.finetune", "pbp.tune", "pbp.registry", "pbp.predict"},
    "train": {"pbp.finetune", "pbp.tune", "pbp.registry"},
    "finetune": {"pbp.tune", "pbp.registry"},
    "tune": {"pbp.registry"},
    "predict": DISTRIBUTION | {"pbp.tune", "pbp.registry", "pbp.stack"},
    "registry": DISTRIBUTION | {"pbp.tune"},
    "stack": {"deepspeed", "pbp.model", "pbp.train", "pbp.finetune", "pbp.tune", "pbp.registry", "pbp.predict"},
    "cli": set(),
    "bench": set(),
    "demo": set(),
}  # fmt: skip


def imports(path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_every_subpackage_has_a_rule():
    subs = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subs == set(RULES), f"place the new subpackage(s) in RULES: {sorted(subs ^ set(RULES))}"


@pytest.mark.parametrize("sub", sorted(RULES))
def test_subpackage_imports_follow_the_layers(sub):
    banned = RULES[sub] | ({e for e in ENTRY if e != f"pbp.{sub}"} if f"pbp.{sub}" not in ENTRY else set())
    if sub == "cli":
        banned = set()
    bad = []
    for path in sorted((PKG / sub).rglob("*.py")):
        for name in imports(path):
            hit = [b for b in banned if _matches(name, b)]
            if hit:
                bad.append(f"{path.relative_to(PKG)} imports {name}")
    assert not bad, "\n".join(bad)


def test_function_level_imports_count(tmp_path):
    """The check reads imports made inside functions too (pbp defers heavy imports), and not mere mentions."""
    f = tmp_path / "m.py"
    f.write_text(
        '"""Mentions import ray in a docstring."""\n\ndef g():\n    from ray import train\n    import mlflow.pyfunc\n'
    )
    found = imports(f)
    assert {"ray", "ray.train", "mlflow.pyfunc"} <= found
    assert any(_matches(n, "ray") for n in found) and not _matches("rayleigh", "ray")

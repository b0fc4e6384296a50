"""Layering: paddleseg.core (and the utils and deploy code it uses) never imports the pruning
engine, so training, evaluation and export work on any checkpoint without paddleseg.slim."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_modules(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or "")


def test_core_utils_and_deploy_never_import_slim():
    offenders = []
    for package in ("core", "utils", "deploy", "cvlibs", "datasets", "models", "transforms"):
        for path in glob.glob(os.path.join(ROOT, "paddleseg", package, "**", "*.py"), recursive=True):
            offenders += [f"{os.path.relpath(path, ROOT)}: {m}" for m in imported_modules(path)
                          if "slim" in m.split(".")]
    assert not offenders, offenders

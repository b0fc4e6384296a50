"""docs/prune.md's flags table must say what prune.py --help does."""
import importlib.util
import os
import re

from conftest import ROOT


def load_prune_cli():
    spec = importlib.util.spec_from_file_location("prune_cli", os.path.join(ROOT, "slim", "prune", "prune.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def doc_flag_rows():
    """{flag: (required, default)} from the table rows that start with a --flag."""
    rows = {}
    with open(os.path.join(ROOT, "docs", "prune.md"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\|\s*`?(--\w+)`?\s*\|(.*)\|(.*)\|(.*)\|\s*$", line)
            if m:
                rows[m.group(1)] = (m.group(3).strip(), m.group(4).strip().strip("`"))
    return rows


def parser_flags():
    flags = {}
    for action in load_prune_cli().build_parser()._actions:
        if not action.option_strings or action.option_strings[0] == "-h":
            continue
        default = action.default
        if default is None or default is False:
            default = ""
        elif isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        flags[action.option_strings[0]] = ("yes" if action.required else "no", str(default))
    return flags


def test_prune_flags_table_matches_help():
    documented, actual = doc_flag_rows(), parser_flags()
    assert set(documented) == set(actual), (
        f"only in docs: {sorted(set(documented) - set(actual))}, "
        f"only in prune.py: {sorted(set(actual) - set(documented))}")
    for flag, (required, default) in actual.items():
        assert documented[flag][0] == required, f"{flag}: docs say required={documented[flag][0]}"
        assert documented[flag][1] == default, f"{flag}: docs default {documented[flag][1]!r}, prune.py {default!r}"


def test_readme_links_the_tutorial():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert "docs/prune.md" in f.read()

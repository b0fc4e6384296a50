"""docs/prune.md's flag table is what prune.py's parser says (help text, defaults, groups, old
names), and the docs' links lead to files that exist."""
import os
import re
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import prune_flags_doc  # noqa: E402

DOC = os.path.join(ROOT, "docs", "prune.md")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_prune_flags_table_is_the_one_generated_from_the_parser():
    documented = prune_flags_doc.doc_block(read(DOC))
    assert documented == prune_flags_doc.block(), (
        "docs/prune.md's flag table differs from prune.py's parser; run "
        "python tools/prune_flags_doc.py")


def test_the_table_names_every_flag_and_old_name_of_the_parser():
    parser = prune_flags_doc.load_prune_cli().build_parser()
    table = prune_flags_doc.flag_table(parser)
    names = [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]
    assert "--sen_engine" in names and "--engine" in names   # the old names are aliases
    for name in names:
        assert f"`{name}`" in table, name
    for group in parser._action_groups:
        if any(a.option_strings and a.option_strings[0] != "-h" for a in group._group_actions):
            assert f"| {group.title} |" in table, group.title


def test_the_tutorial_stays_a_tutorial():
    assert len(read(DOC).splitlines()) <= 250


def test_readme_links_the_tutorial():
    assert "docs/prune.md" in read(os.path.join(ROOT, "README.md"))


def test_relative_links_of_the_docs_lead_to_files():
    docs = [os.path.join(ROOT, "README.md")] + [
        os.path.join(ROOT, "docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
        if name.endswith(".md")]
    missing = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(doc)):
            if "://" in target:
                continue
            if not os.path.exists(os.path.join(os.path.dirname(doc), target)):
                missing.append(f"{os.path.relpath(doc, ROOT)}: {target}")
    assert not missing, missing

"""Blocks of a hand-written document that a command writes: the text between a begin marker
line and an end marker line (HTML comments in Markdown, so they do not show). The benchmark's
tables in README.md, prune.py's flag table in docs/prune.md and the quick start's figures are
such blocks; each is rewritten by its command, never by hand."""


def find_block(text, begin, end):
    """(start, stop) of the block in ``text``, markers included; ValueError unless ``begin``
    and ``end`` occur once each, in that order."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"no generated block: one '{begin}' line, then '{end}'")
    return text.index(begin), text.index(end) + len(end)


def replace_block(text, begin, end, body):
    """``text`` with its block's contents (between the marker lines) replaced by ``body``."""
    start, stop = find_block(text, begin, end)
    return f"{text[:start]}{begin}\n{body}\n{end}{text[stop:]}"

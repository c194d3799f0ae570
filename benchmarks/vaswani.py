"""Readers of the Vaswani test collection (TREC format): documents, queries and relevance judgements.

The collection (11,429 abstracts, 93 queries) is in ``../shared/datasets/vaswani``; its README gives the source.
"""

from __future__ import annotations

import re
from pathlib import Path

_DOC = re.compile(r"<DOC>\s*<DOCNO>\s*(\S+?)\s*</DOCNO>(.*?)</DOC>", re.S)
_TOP = re.compile(r"<num>\s*(\S+?)\s*</num>\s*<title>(.*?)</title>", re.S)


def read_documents(root: Path) -> dict[str, str]:
    """``{docno: text}`` from ``corpus/doc-text.trec``."""
    text = (Path(root) / "corpus" / "doc-text.trec").read_text(encoding="utf-8", errors="replace")
    return {m.group(1): " ".join(m.group(2).split()) for m in _DOC.finditer(text)}


def read_queries(root: Path) -> dict[str, str]:
    """``{query id: text}`` from ``query-text.trec``."""
    text = (Path(root) / "query-text.trec").read_text(encoding="utf-8", errors="replace")
    return {m.group(1): " ".join(m.group(2).split()) for m in _TOP.finditer(text)}


def read_qrels(root: Path) -> dict[str, dict[str, int]]:
    """``{query id: {docno: relevance}}`` from ``qrels`` (TREC qrels: ``qid iter docno rel``)."""
    qrels: dict[str, dict[str, int]] = {}
    for line in (Path(root) / "qrels").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels

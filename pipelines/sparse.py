"""The BM25 leg of hybrid search: text → sparse vector (term ids and weights), the same for ingest and search.

Input: chunk text (ingest) or query text (search). Output: ``(indices, values)``, the two lists of a Qdrant
``SparseVector`` for the collection's ``bm25`` vector, which is created with ``Modifier.IDF`` so that Qdrant
multiplies in each term's inverse document frequency at query time.

Scoring (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and Beyond", eq. 3.15): the
document side stores each term's saturated, length-normalised frequency
``tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))``; the query side stores ``1.0`` per distinct term;
Qdrant's dot product with IDF then gives ``sum over query terms of idf(t) * weight(t, d)``, which is BM25.
``avg_len`` is a configured constant (``SLUICE_BM25_AVG_LEN``) rather than the live collection average, so that a
chunk's vector never changes after it is written.

Tokenization (:meth:`Bm25Encoder.tokenize`): Unicode NFKC, case folding, words of letters and digits, English stop
words removed (the Snowball list), Snowball (Porter2) stemming by PyStemmer; a token with a digit in it is a code
(``x-42b``, ``3.11``, ``utf-8``) and is kept whole, unstemmed.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any

import mmh3
import Stemmer

#: The Snowball English stop-word list (https://snowballstem.org/algorithms/english/stop.txt, BSD licence),
#: as distributed with the Snowball stemmers; 174 words, contractions included.
ENGLISH_STOP_WORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
    herself it its itself they them their theirs themselves what which who whom this that these those am is are
    was were be been being have has had having do does did doing would should could ought i'm you're he's she's
    it's we're they're i've you've we've they've i'd you'd he'd she'd we'd they'd i'll you'll he'll she'll we'll
    they'll isn't aren't wasn't weren't hasn't haven't hadn't doesn't don't didn't won't wouldn't shan't
    shouldn't can't cannot couldn't mustn't let's that's who's what's here's there's when's where's why's how's a
    an the and but if or because as until while of at by for with about against between into through during
    before after above below to from up down in out on off over under again further then once here there when
    where why how all any both each few more most other some such no nor not only own same so than too very
    """.split()
)

#: Stop words per stemmer language; other languages are stemmed but keep their stop words.
STOP_WORDS: dict[str, frozenset[str]] = {"english": ENGLISH_STOP_WORDS}

#: A word: letters and digits (no underscore), possibly joined by - . _ ' or ’ to more of them (``x-42b``,
#: ``don't``, ``max_length``, ``3.11``).
_WORD = re.compile(r"[^\W_]+(?:[-._'\u2019][^\W_]+)*")
_JOINERS = re.compile(r"[-._']")
_DIGIT = re.compile(r"\d")


class Bm25Encoder:
    """Turn text into BM25 sparse vectors for Qdrant.

    Cheap to build and picklable (the stemmer is made on first use in each process). Not thread-safe: PyStemmer
    stemmers are not; give each thread its own encoder.

    Args:
        k1: term-frequency saturation (> 0); 1.2 is the usual default.
        b: length normalisation, from 0 (none) to 1 (full); 0.75 is the usual default.
        avg_len: the average document (chunk) length in terms, after stop-word removal (> 0).
        language: a Snowball stemmer language (``Stemmer.algorithms()``); stop words are removed for English only.

    Raises:
        ValueError: naming the parameter, when ``k1 <= 0``, ``b`` is outside [0, 1], ``avg_len <= 0``, or
            ``language`` has no stemmer.
    """

    def __init__(self, k1: float = 1.2, b: float = 0.75, avg_len: float = 80.0, language: str = "english") -> None:
        if not k1 > 0:
            raise ValueError(f"k1={k1!r} must be greater than 0 (1.2 is the usual value)")
        if not 0 <= b <= 1:
            raise ValueError(f"b={b!r} must be between 0 and 1 (0.75 is the usual value)")
        if not avg_len > 0:
            raise ValueError(f"avg_len={avg_len!r} must be greater than 0 (the mean chunk length in terms)")
        if language not in Stemmer.algorithms():
            raise ValueError(f"language={language!r} has no Snowball stemmer; choose one of {Stemmer.algorithms()}")
        self.k1 = float(k1)
        self.b = float(b)
        self.avg_len = float(avg_len)
        self.language = language
        self.stop_words = STOP_WORDS.get(language, frozenset())
        self._stemmer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stemmer"] = None  # PyStemmer objects do not pickle; each process makes its own
        return state

    def tokenize(self, text: str) -> list[str]:
        """Split text into BM25 terms.

        Steps: NFKC normalisation (ligatures and full-width forms become plain letters); case folding; words of
        Unicode letters and digits; a word with a digit (``x-42b``, ``3.11``, ``utf-8``) is kept whole and
        unstemmed; other words joined by ``-``, ``.``, ``_`` or an apostrophe are split into their parts, a
        possessive ``'s`` dropped; stop words removed (checked before splitting, so ``don't`` goes); the rest
        stemmed with the Snowball stemmer of ``language``. Punctuation never makes a term.

        Args:
            text: any text.

        Returns:
            The terms in text order, repeats kept (``[]`` for empty text).
        """
        if not text:
            return []
        text = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
        stop_words = self.stop_words
        codes: dict[int, str] = {}
        words: list[str] = []
        for word in _WORD.findall(text):
            if word in stop_words:
                continue
            if word.isalpha():  # the common case: a plain word
                words.append(word)
                continue
            if _DIGIT.search(word):
                codes[len(words)] = word
                words.append(word)
                continue
            if word.endswith("'s"):
                word = word[:-2]
            if _JOINERS.search(word):
                words.extend(part for part in _JOINERS.split(word) if part and part not in stop_words)
            else:
                words.append(word)
        if not words:
            return []
        stemmed = self._stem(words)
        for position, code in codes.items():
            stemmed[position] = code
        return stemmed

    @staticmethod
    def term_id(term: str) -> int:
        """The sparse-vector index of a term: its 32-bit MurmurHash3 (seed 0), unsigned.

        Qdrant sparse indices are unsigned 32-bit integers. Collisions follow the birthday bound: with ``V``
        distinct terms in the collection, about ``V**2 / 2**33`` pairs of terms share an id (10^5 terms: ~1 pair;
        10^6 terms: ~116 pairs), and a given term collides with another with probability about ``V / 2**32``
        (10^6 terms: 0.02 %). A collision merges two terms' frequencies and IDF, which slightly blurs their scores;
        it never loses a match.

        Args:
            term: a term from :meth:`tokenize`.

        Returns:
            An integer in ``[0, 2**32)``, the same in every process and run.
        """
        return _term_id(term)

    def encode_document(self, text: str) -> tuple[list[int], list[float]]:
        """The BM25 document-side sparse vector of a chunk.

        ``weight = tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))`` with ``tf`` the term's count in the
        chunk and ``len`` the chunk's number of terms (Robertson & Zaragoza 2009, eq. 3.15, without IDF, which
        Qdrant's ``Modifier.IDF`` applies). Each weight lies in ``(0, k1 + 1)`` and grows with ``tf``.

        Args:
            text: the chunk's text.

        Returns:
            ``(indices, values)``: unique term ids in increasing order and their weights (float); both empty
            for text without terms.
        """
        terms = self.tokenize(text)
        if not terms:
            return [], []
        counts: Counter[int] = Counter(map(_term_id, terms))
        norm = self.k1 * (1.0 - self.b + self.b * len(terms) / self.avg_len)
        indices = sorted(counts)
        values = [counts[index] * (self.k1 + 1.0) / (counts[index] + norm) for index in indices]
        return indices, values

    def encode_documents(self, texts: Iterable[str]) -> list[tuple[list[int], list[float]]]:
        """:meth:`encode_document` for each text of a batch.

        Args:
            texts: chunk texts.

        Returns:
            One ``(indices, values)`` pair per text, in order.
        """
        return [self.encode_document(text) for text in texts]

    def encode_query(self, text: str) -> tuple[list[int], list[float]]:
        """The BM25 query-side sparse vector: weight 1.0 for each distinct term.

        A repeated query term counts once, as in Lucene's BM25 and ``bm25s``; IDF comes from Qdrant's
        ``Modifier.IDF`` on the collection.

        Args:
            text: the query.

        Returns:
            ``(indices, values)``: unique term ids in increasing order, all values ``1.0``; both empty for a query
            without terms (only stop words or punctuation).
        """
        indices = sorted(set(map(_term_id, self.tokenize(text))))
        return indices, [1.0] * len(indices)

    def _stem(self, words: list[str]) -> list[str]:
        if self._stemmer is None:
            self._stemmer = Stemmer.Stemmer(self.language)
        return self._stemmer.stemWords(words)


@functools.lru_cache(maxsize=1 << 16)
def _term_id(term: str) -> int:
    return mmh3.hash(term, 0, signed=False)

"""The BM25 sparse encoder: tokenization, stable term ids, document and query weights."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from itertools import pairwise

import mmh3
import pytest

from pipelines.sparse import ENGLISH_STOP_WORDS, Bm25Encoder

pytestmark = pytest.mark.unit


@pytest.fixture
def encoder() -> Bm25Encoder:
    return Bm25Encoder()


# --- tokenize ----------------------------------------------------------------------------------------------------


def test_stemming_conflates_word_forms(encoder) -> None:
    assert encoder.tokenize("running") == encoder.tokenize("runs") == encoder.tokenize("Run") == ["run"]
    assert encoder.tokenize("connections connected connecting") == ["connect"] * 3


def test_stop_words_removed(encoder) -> None:
    assert encoder.tokenize("The cat is on the mat and it doesn't move") == ["cat", "mat", "move"]
    assert encoder.tokenize("the and of to was") == []
    assert len(ENGLISH_STOP_WORDS) == 174  # the Snowball English list


def test_case_folding_and_unicode(encoder) -> None:
    assert encoder.tokenize("STRASSE Straße") == encoder.tokenize("strasse strasse")
    assert encoder.tokenize("Café") == encoder.tokenize("CAFÉ")
    assert encoder.tokenize("ﬁle") == encoder.tokenize("file")  # the PDF ligature fi (NFKC)
    assert encoder.tokenize("データベース 検索") == ["データベース", "検索"]


def test_punctuation_dropped(encoder) -> None:
    assert encoder.tokenize("... !!! -- , ; : ( ) [ ] {} — “ ”") == []
    assert encoder.tokenize("hello, world!") == ["hello", "world"]


def test_numbers_and_part_numbers_kept_whole(encoder) -> None:
    assert encoder.tokenize("Part X-42B fits model 3.11 with utf-8 in 2024") == [
        "part",
        "x-42b",
        "fit",
        "model",
        "3.11",
        "utf-8",
        "2024",
    ]
    assert encoder.tokenize("x-42b") == encoder.tokenize("X-42B")


def test_joined_words_split_and_possessives_dropped(encoder) -> None:
    assert encoder.tokenize("state-of-the-art") == ["state", "art"]
    assert encoder.tokenize("max_length") == ["max", "length"]
    assert encoder.tokenize("the cluster's nodes") == encoder.tokenize("cluster nodes")
    assert encoder.tokenize("the cluster’s nodes") == encoder.tokenize("cluster nodes")


def test_empty_text(encoder) -> None:
    assert encoder.tokenize("") == []
    assert encoder.encode_document("") == ([], [])
    assert encoder.encode_query("") == ([], [])
    assert encoder.encode_document("the of and") == ([], [])


# --- term ids ----------------------------------------------------------------------------------------------------


def test_term_ids_are_murmur3_unsigned_and_pinned(encoder) -> None:
    assert encoder.term_id("run") == mmh3.hash("run", 0, signed=False) == 4051061832
    assert encoder.term_id("x-42b") == 4175600509
    assert all(0 <= encoder.term_id(term) < 2**32 for term in ["a", "run", "データ", "x" * 1000])


def test_term_ids_same_in_another_process() -> None:
    code = "from pipelines.sparse import Bm25Encoder as E; print(E().encode_query('Running shoes x-42b'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == str(Bm25Encoder().encode_query("Running shoes x-42b"))


# --- document weights --------------------------------------------------------------------------------------------


def _weight(encoder: Bm25Encoder, text: str, word: str) -> float:
    """The document weight of a word (stemmed as the encoder stems it)."""
    [term] = encoder.tokenize(word)
    indices, values = encoder.encode_document(text)
    return dict(zip(indices, values))[encoder.term_id(term)]


def test_document_vector_shape(encoder) -> None:
    indices, values = encoder.encode_document("Replicas replicate; the replica set replicates data across racks.")
    assert indices == sorted(set(indices))
    assert len(indices) == len(values)
    assert all(isinstance(value, float) and value > 0 for value in values)


def test_document_weights_follow_the_bm25_formula(encoder) -> None:
    text = "storage storage storage cluster nodes"
    terms = encoder.tokenize(text)
    length = len(terms)
    norm = encoder.k1 * (1 - encoder.b + encoder.b * length / encoder.avg_len)
    expected = 3 * (encoder.k1 + 1) / (3 + norm)
    assert _weight(encoder, text, "storage") == pytest.approx(expected)


def test_saturation_monotone_in_tf_and_bounded(encoder) -> None:
    filler = [f"filler{i}" for i in range(40)]
    weights = []
    for tf in (1, 2, 3, 5, 10, 20, 40):
        # a constant document length, so only tf changes
        weights.append(_weight(encoder, " ".join(["alpha"] * tf + filler[: 40 - tf]), "alpha"))
    assert all(a < b for a, b in pairwise(weights))
    assert all(w < encoder.k1 + 1 for w in weights)
    # saturation: each extra occurrence adds less
    gains = [b - a for a, b in pairwise(weights)]
    assert gains[0] > gains[-1]
    assert _weight(encoder, " ".join(["alpha"] * 10000), "alpha") < encoder.k1 + 1


def test_length_normalisation_lowers_weight_in_longer_documents(encoder) -> None:
    short = "alpha beta gamma"
    long = "alpha " + " ".join(f"word{i}" for i in range(200))
    assert _weight(encoder, long, "alpha") < _weight(encoder, short, "alpha")
    flat = Bm25Encoder(b=0.0)  # no length normalisation
    assert _weight(flat, long, "alpha") == pytest.approx(_weight(flat, short, "alpha"))


def test_encode_documents_batch(encoder) -> None:
    texts = ["first chunk about storage", "", "second chunk about search and fusion"]
    assert encoder.encode_documents(texts) == [encoder.encode_document(text) for text in texts]


# --- query weights -----------------------------------------------------------------------------------------------


def test_query_weights_one_per_distinct_term(encoder) -> None:
    indices, values = encoder.encode_query("running runs the shoes shoe")
    assert indices == sorted({encoder.term_id("run"), encoder.term_id("shoe")})
    assert values == [1.0, 1.0]


def test_ranking_with_idf_as_qdrant_applies_it(encoder) -> None:
    """Dot product of query and document vectors, times Qdrant's IDF, ranks the relevant chunk first."""
    corpus = [
        "Running shoes for trail runners, with a grippy sole.",
        "The storage cluster replicates every object three times.",
        "A guide to shoes: leather, canvas and rubber.",
        "Running a storage cluster needs monitoring.",
    ]
    vectors = encoder.encode_documents(corpus)
    df: dict[int, int] = {}
    for indices, _ in vectors:
        for index in indices:
            df[index] = df.get(index, 0) + 1
    n = len(corpus)

    def idf(index: int) -> float:  # Qdrant's Modifier.IDF (the BM25 IDF)
        return math.log(1 + (n - df.get(index, 0) + 0.5) / (df.get(index, 0) + 0.5))

    def score(query: str, document: tuple[list[int], list[float]]) -> float:
        weights = dict(zip(*document))
        q_indices, q_values = encoder.encode_query(query)
        return sum(q * idf(i) * weights.get(i, 0.0) for i, q in zip(q_indices, q_values))

    scores = [score("run shoes", vector) for vector in vectors]
    assert max(range(n), key=scores.__getitem__) == 0
    scores = [score("replicated objects in the cluster", vector) for vector in vectors]
    assert max(range(n), key=scores.__getitem__) == 1


# --- construction ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"k1": 0}, "k1"),
        ({"k1": -1.0}, "k1"),
        ({"b": 1.5}, "b"),
        ({"b": -0.1}, "b"),
        ({"avg_len": 0}, "avg_len"),
        ({"language": "klingon"}, "language"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict, parameter: str) -> None:
    with pytest.raises(ValueError, match=rf"^{parameter}="):
        Bm25Encoder(**kwargs)


def test_other_language_stems_without_stop_words() -> None:
    german = Bm25Encoder(language="german")
    assert german.tokenize("die Häuser") == ["die", "haus"]


def test_pickles_for_ray_workers(encoder) -> None:
    encoder.tokenize("warm the stemmer up")
    clone = pickle.loads(pickle.dumps(encoder))
    assert clone.encode_document("running shoes") == encoder.encode_document("running shoes")


def test_term_id_collisions_follow_the_birthday_bound() -> None:
    """10^5 distinct terms share about 10^10 / 2^33 ≈ 1.2 pairs of ids (documented in ``term_id``); far fewer than 10."""
    terms = {f"term{i}" for i in range(100_000)} | {f"x-{i}b" for i in range(1_000)}
    ids = [Bm25Encoder.term_id(term) for term in terms]
    assert len(ids) - len(set(ids)) < 10

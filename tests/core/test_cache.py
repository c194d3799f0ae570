"""The Redis cache against a real Redis: generations, answers, query embeddings, and fail-open when Redis is down."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

from core.cache import Cache

pytestmark = pytest.mark.integration


@pytest.fixture
def cache(settings) -> Cache:
    return Cache(settings)


def test_generation_starts_at_zero_and_advances(cache):
    assert cache.generation() == 0
    assert cache.bump_generation() == 1
    assert cache.bump_generation() == 2
    assert cache.generation() == 2


def test_generations_are_per_collection(make_settings):
    a, b = Cache(make_settings()), Cache(make_settings())
    a.bump_generation()
    assert (a.generation(), b.generation()) == (1, 0)


def test_a_tenants_generation_moves_alone_and_with_the_collections(cache):
    before = {t: cache.tenant_generation(t) for t in ("acme", "globex")}
    assert before == {"acme": "0.0", "globex": "0.0"}
    assert cache.bump_generation("acme") == 1
    assert (cache.tenant_generation("acme"), cache.tenant_generation("globex")) == ("0.1", "0.0")
    cache.bump_generation()  # a change of unknown scope: every tenant's answers go
    assert (cache.tenant_generation("acme"), cache.tenant_generation("globex")) == ("1.1", "1.0")


def test_answer_keys_depend_on_generation_and_every_parameter(cache):
    params = {"tenant": "acme", "request": {"query": "q", "top_k": 10}}
    key = cache.key("search", 3, params)
    assert key == cache.key("search", 3, {"request": {"top_k": 10, "query": "q"}, "tenant": "acme"})  # order-free
    assert key != cache.key("search", 4, params)
    assert key != cache.key("search", 3, params | {"tenant": "globex"})
    assert key != cache.key("search", 3, {"tenant": "acme", "request": {"query": "q", "top_k": 11}})
    cache.set_json(key, [{"path": "a.md", "score": 0.5}])
    assert cache.get_json(key) == [{"path": "a.md", "score": 0.5}]
    assert cache.get_json(cache.key("search", 4, params)) is None


def test_ttl_zero_disables_answer_caching(make_settings):
    cache = Cache(make_settings(search_cache_ttl_s=0))
    key = cache.key("search", 0, {"q": 1})
    cache.set_json(key, [1])
    assert cache.get_json(key) is None


def test_query_embeddings_round_trip_per_model(cache):
    vectors = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    assert cache.get_embeddings("model-a", ["x", "y"]) == [None, None]
    cache.set_embeddings("model-a", ["x", "y"], vectors)
    got = cache.get_embeddings("model-a", ["y", "z", "x"])
    assert got[1] is None
    np.testing.assert_array_equal(got[0], vectors[1])
    np.testing.assert_array_equal(got[2], vectors[0])
    assert got[0].dtype == np.float32
    assert cache.get_embeddings("model-b", ["x"]) == [None]  # keyed by model
    assert cache.get_embeddings("model-a", []) == []


def test_redis_down_is_fail_open_and_logged_once(make_settings, unused_port, caplog):
    down = Cache(make_settings(redis_url=f"redis://127.0.0.1:{unused_port}/0"), timeout_s=0.2, retry_after_s=60)
    with caplog.at_level(logging.WARNING, logger="core.cache"):
        assert down.generation() is None
        assert down.get_json("k") is None
        down.set_json("k", [1])
        assert down.get_embeddings("m", ["x"]) == [None]
        down.set_embeddings("m", ["x"], np.zeros((1, 4), dtype=np.float32))
    assert caplog.text.count("redis unavailable") == 1
    assert not down.available
    assert down.bump_generation() is None  # always tried, never skipped: a missed bump could leave stale answers


def test_picklable_for_ray(cache):
    cache.generation()
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.generation() == cache.generation()


def test_arguments_are_checked(settings):
    with pytest.raises(ValueError, match="timeout_s"):
        Cache(settings, timeout_s=0)
    with pytest.raises(ValueError, match="retry_after_s"):
        Cache(settings, retry_after_s=-1)

"""The local MiniLM embedder against sentence-transformers' vectors, and the remote one."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from apps.cache.embedding import LocalEmbedder, OpenAIEmbedder, embedder_for, local_embedder

TEXTS = [
    "How do I reset my password?",
    "I forgot my password, how can I reset it?",
    "Sync fails on iOS, any fix?",
    "Sync fails on Android, any fix?",
    "",
    "Ünïcödé, emoji 🎉 and 中文 in one prompt",
    "def square(x):\n    return x ** 2",
]


# Reference vectors: see its "source". They are what the cache was calibrated on, so the
# embedder must reproduce them to float32 rounding, not merely approximately.
REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())
PARITY_ATOL = 1e-5  # per component; measured: 2e-7


def test_vectors_match_the_reference_one_by_one_and_as_a_padded_batch() -> None:
    expected = np.array(REFERENCE["vectors"], dtype=np.float32)
    singles = np.stack([local_embedder().embed([text])[0] for text in REFERENCE["texts"]])
    np.testing.assert_allclose(singles, expected, atol=PARITY_ATOL)
    np.testing.assert_allclose(local_embedder().embed(REFERENCE["texts"]), expected, atol=PARITY_ATOL)


def cosine(a: str, b: str) -> float:
    vectors = local_embedder().embed([a, b])
    return float(vectors[0] @ vectors[1])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # Measured with sentence-transformers on torch (see DESIGN.md, "Cache").
        ("How do I reset my password?", "I forgot my password, how can I reset it?", 0.94),
        ("Sync fails on iOS, any fix?", "Sync fails on Android, any fix?", 0.80),
    ],
)
def test_cosines_match_sentence_transformers(a: str, b: str, expected: float) -> None:
    assert cosine(a, b) == pytest.approx(expected, abs=0.02)


def test_rows_are_unit_norm_float32_of_384() -> None:
    vectors = local_embedder().embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_padded_batch_gives_each_text_its_single_result() -> None:
    embedder = local_embedder()
    batch = embedder.embed(TEXTS)
    singles = np.stack([embedder.embed([text])[0] for text in TEXTS])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_more_texts_than_one_chunk_come_back_in_input_order() -> None:
    texts = [f"question number {i} about {'billing ' * (i % 7)}" for i in range(40)]
    batch = local_embedder().embed(texts)
    for i in (0, 17, 39):
        np.testing.assert_allclose(batch[i], local_embedder().embed([texts[i]])[0], atol=1e-5)


def test_same_input_same_vector() -> None:
    first = local_embedder().embed(TEXTS)
    again = local_embedder().embed(TEXTS)
    np.testing.assert_array_equal(first, again)


def test_a_fresh_instance_agrees_with_the_shared_one() -> None:
    np.testing.assert_array_equal(LocalEmbedder().embed(TEXTS), local_embedder().embed(TEXTS))


def test_concurrent_callers_share_one_embedder_and_get_the_same_vectors() -> None:
    expected = local_embedder().embed(TEXTS)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: local_embedder().embed(TEXTS), range(8)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-6)


def test_text_past_256_tokens_is_ignored_as_sentence_transformers_does() -> None:
    long = "billing " * 300
    vectors = local_embedder().embed([long, long + "completely different ending about iOS sync"])
    np.testing.assert_array_equal(vectors[0], vectors[1])


def test_fits_says_whether_anything_would_be_cut() -> None:
    embedder = local_embedder()
    assert embedder.window_tokens == 256
    assert embedder.fits("How do I reset my password?")
    assert embedder.fits("")
    # [CLS] + 254 words + [SEP] is exactly the window; one word more is cut.
    assert embedder.fits("billing " * 254)
    assert not embedder.fits("billing " * 255)


def test_no_texts_no_rows() -> None:
    assert local_embedder().embed([]).shape == (0, 384)


def test_embedder_for_local_is_the_shared_instance() -> None:
    assert embedder_for({}) is local_embedder()
    assert embedder_for({"kind": "local"}) is local_embedder()


def test_embedder_for_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown embedder kind"):
        embedder_for({"kind": "word2vec"})


def test_openai_embedder_against_a_compatible_server(upstream: str) -> None:
    embedder = embedder_for(
        {"kind": "openai", "base_url": upstream, "api_key": "sk-test", "model": "text-embedding-3-small"}
    )
    assert isinstance(embedder, OpenAIEmbedder)
    vectors = embedder.embed(["first", "second", "first"])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, embedder.dimensions)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.array_equal(vectors[0], vectors[1])

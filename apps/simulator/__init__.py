"""A simulated OpenAI-compatible upstream: a plain ASGI app, fast and deterministic.

The demo, the tests and the benchmark point the gateway here instead of at
OpenAI. It has no framework and no Django so that it costs as little as
possible per request (it is the baseline of the throughput benchmark).

Endpoints (OpenAI request and response shapes):

- ``GET /health`` -> ``{"status": "ok"}`` (no auth, never delayed: it is polled for readiness).
- ``GET /v1/models`` and ``GET /v1/models/{id}``.
- ``POST /v1/chat/completions`` (``stream``, ``stream_options.include_usage``, ``n``,
  ``max_tokens``/``max_completion_tokens``, ``logprobs``/``top_logprobs``; function ``tools``:
  see ``apps/simulator/chat_tools.py``).
- ``POST /v1/completions`` (legacy; ``prompt`` is a string, a list of strings, a token
  list or a list of token lists; ``stream``, ``n``, ``max_tokens``, ``logprobs`` 0-5).
- ``POST /v1/embeddings`` (``input`` as OpenAI takes it; ``dimensions``;
  ``encoding_format`` ``float`` or ``base64``).
- ``/v1/responses`` (create, JSON or typed SSE events; ``GET``/``DELETE /v1/responses/{id}``,
  ``POST …/cancel``, ``GET …/input_items``): see ``apps/simulator/responses_api.py``.
- ``/v1/files`` and ``/v1/batches``: a small Batch API (see ``apps/simulator/batch_api.py``), for
  chat, completions, embeddings and responses lines.
- ``POST /v1/messages``: Anthropic's Messages API (key as ``x-api-key``; plain and streamed, tool
  use, prompt-cache usage, ``[[sim:429]]`` / ``[[sim:529]]``; see ``apps/simulator/messages_api.py``),
  for the Claude models listed beside the OpenAI ones.

Behaviour:

- Every ``/v1`` request needs an ``Authorization: Bearer <anything>`` header, else 401.
- Chat and legacy completions accept every listed text model (chat or instruct); an
  embedding model there is a 404, as is a text model on ``/v1/embeddings``; an
  unlisted model is a 404 with code ``model_not_found``.
- ``n`` from 1 to 128 is supported; each choice has its own deterministic text.
- The answer depends only on (model, messages) or (model, prompt): a sentence or a few
  of 8 to 60 words. ``max_tokens`` truncates it and sets ``finish_reason`` to ``length``.
- Tokens are word pieces (a word and its leading space, four characters at most per
  token), punctuation marks and whitespace runs. A chat prompt costs its tokens plus 3
  per message plus 3, as OpenAI counts.
- Streams send the role chunk, then content chunks of ``STREAM_TOKENS_PER_CHUNK`` tokens,
  the finish chunk, the usage chunk when ``stream_options.include_usage`` is true, and
  ``data: [DONE]``; each chunk is its own ASGI message, ``stream_chunk_delay_ms`` apart.
- ``latency_ms`` plus a uniform ``0..jitter_ms`` is waited before the first byte of every
  ``/v1`` response; a wait ends early if the client goes away.
- ``error_rate`` is the fraction of ``/v1`` requests answered with a 500 (drawn from a
  generator seeded with ``seed``).

Directives, written anywhere in a message's content, a prompt or an embedding input:

- ``[[sim:429]]``: 429 rate-limit error (type ``requests``, code ``rate_limit_exceeded``)
  with ``Retry-After: 1``.
- ``[[sim:500]]``: 500 server error.  ``[[sim:503]]``: 503 overloaded.
- ``[[sim:timeout]]``: wait 30 s before answering (the client will time out first).
- ``[[sim:latency=MS]]``: wait MS more milliseconds before answering.
- ``[[sim:confidence=P]]`` (0 < P <= 1): with logprobs (chat's ``logprobs``, or Responses'
  ``include: ["message.output_text.logprobs"]``), the first completion token's logprob is exactly
  ``ln(P)``; later tokens have probabilities in [0.9, 0.9999).
- ``[[sim:answer=TEXT]]``: the completion is exactly TEXT (which ends at the first ``]]``).
- ``[[sim:echo_header=NAME]]``: the completion is the value of the request's header NAME (lower case;
  ``none`` when absent): shows what the gateway sent upstream, e.g. ``traceparent``.
- ``[[sim:no_usage]]``: no ``usage`` in the response or stream.
- ``[[sim:nul]]``: the completion is "nul \\u0000 inside", with a NUL character (which Postgres cannot store).
- ``[[sim:fail_after=N]]``: a stream drops the connection after N content chunks.

Hostile directives, for fuzzing what the gateway does with a broken or malicious provider:

- ``[[sim:usage=JSON]]``: the answer's (or stream's, or a Responses answer's) ``usage`` is exactly that JSON value
  (``"x"``, ``-5``, ``[1]``, ``{"prompt_tokens": 1e30}``…); a stream gets a usage chunk even unasked.
- ``[[sim:logprob=X]]``: the first answer token's logprob is exactly X (710 overflows ``exp``).
- ``[[sim:garbage=N]]``: variant N of a 200 answer that is not what OpenAI sends (non-JSON data
  lines, wrong-typed choices and usage, bytes that are not UTF-8, events without ``data``).
- ``[[sim:huge=BYTES]]``: the answer's content is BYTES long (streams: in 64 KiB events).
- ``[[sim:unframed=BYTES]]``: a stream of BYTES that never has a blank line (no event boundary).
- ``[[sim:drip=MS]]``: the response goes out a few bytes at a time, MS milliseconds apart.

Any directive can be scoped to one model as ``[[sim:MODEL/NAME=VALUE]]`` (``[[sim:gpt-4o-mini/500]]``,
``[[sim:gpt-4o/answer=refund]]``): it applies only to requests for MODEL, which lets one prompt
get different answers, confidences or failures from a cheap and a strong model.

An unknown directive or a bad value is a 400, so a typo in a test fails loudly.
"""

"""One handler per endpoint: ``proxy`` for chat, completions and embeddings (one pipeline), ``models``."""

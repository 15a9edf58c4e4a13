from __future__ import annotations

from django.apps import AppConfig


class CacheConfig(AppConfig):
    name = "apps.cache"
    label = "llmcache"
    verbose_name = "Response cache"

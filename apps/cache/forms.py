from __future__ import annotations

from typing import Any

from django import forms

from apps.cache.models import CachePolicy


class CachePolicyForm(forms.ModelForm):
    deny_patterns = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One per line: a prompt prefix (case-insensitive) or re:REGEX",
    )

    class Meta:
        model = CachePolicy
        fields = ["feature", "exact_enabled", "semantic_enabled", "similarity_threshold", "ttl_seconds", "max_entries",
                  "eviction", "share_across_users", "deny_patterns"]  # fmt: skip
        labels = {
            "feature": "Feature (empty: the whole project)",
            "exact_enabled": "Exact cache (same request, same answer)",
            "semantic_enabled": "Semantic cache (similar prompts)",
            "similarity_threshold": "Similarity needed (0.5–1)",
            "ttl_seconds": "Keep answers for (seconds)",
            "max_entries": "Most answers kept",
            "eviction": "When full, drop",
            "share_across_users": "Share answers across end users",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["deny_patterns"] = "\n".join(self.instance.deny_patterns)

    def clean_deny_patterns(self) -> list[str]:
        raw = self.cleaned_data.get("deny_patterns") or ""
        return [line.strip() for line in raw.splitlines() if line.strip()]

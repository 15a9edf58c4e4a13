"""``manage.py calibrate_cache PAIRS.jsonl``: sweep semantic-cache thresholds over labelled pairs."""

from __future__ import annotations

import os
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError

from apps.cache.calibration import DEFAULT_THRESHOLDS, parse_pairs, recommend, sweep
from apps.cache.embedding import embedder_for


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


class Command(BaseCommand):
    help = (
        'Embed labelled pairs (JSON lines {"a": ..., "b": ..., "same": true|false}), print hit rate, precision, '
        "false-hit rate and recall for thresholds 0.70-0.99, and recommend the lowest threshold whose "
        "precision reaches the target."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("pairs", type=Path, help="JSON-lines file of labelled pairs")
        parser.add_argument("--target-precision", type=float, default=0.97)
        parser.add_argument("--embedder", choices=["local", "openai"], default="local")
        parser.add_argument("--base-url", help="openai embedder: the API base URL, e.g. https://host/v1")
        parser.add_argument("--model", help="openai embedder: the embedding model (key from OPENAI_API_KEY)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            pairs = parse_pairs(options["pairs"].read_text().splitlines())
        except OSError as exc:
            raise CommandError(f"cannot read {options['pairs']}: {exc}") from None
        except ValueError as exc:
            raise CommandError(f"{options['pairs']}: {exc}") from None
        if not pairs:
            raise CommandError(f"{options['pairs']} has no pairs")

        config: dict[str, Any] = {"kind": options["embedder"]}
        if options["embedder"] == "openai":
            if not options["base_url"] or not options["model"]:
                raise CommandError("--embedder openai needs --base-url and --model")
            config.update(
                base_url=options["base_url"], model=options["model"], api_key=os.environ.get("OPENAI_API_KEY", "")
            )
        embedder = embedder_for(config)
        texts = sorted({p.a for p in pairs} | {p.b for p in pairs})
        vectors = dict(zip(texts, embedder.embed(texts), strict=True))
        cosines = [float(np.dot(vectors[p.a], vectors[p.b])) for p in pairs]

        positives = sum(p.same for p in pairs)
        self.stdout.write(f"{len(pairs)} pairs: {positives} same, {len(pairs) - positives} different\n")
        self.stdout.write(f"{'threshold':>9}  {'hit rate':>8}  {'precision':>9}  {'false hits':>10}  {'recall':>6}")
        rows = sweep(pairs, cosines, DEFAULT_THRESHOLDS)
        for row in rows:
            self.stdout.write(
                f"{row.threshold:>9.2f}  {_percent(row.hit_rate):>8}  {_percent(row.precision):>9}  "
                f"{_percent(row.false_hit_rate):>10}  {_percent(row.recall):>6}"
            )
        target = options["target_precision"]
        best = recommend(rows, target)
        if best is None:
            self.stdout.write(
                self.style.WARNING(
                    f"\nNo threshold from {DEFAULT_THRESHOLDS[0]:.2f} to {DEFAULT_THRESHOLDS[-1]:.2f} reaches "
                    f"precision {_percent(target)}: do not enable semantic caching on these numbers."
                )
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nRecommended threshold: {best.threshold:.2f} (lowest with precision >= {_percent(target)}: "
                    f"precision {_percent(best.precision)}, hit rate {_percent(best.hit_rate)}, "
                    f"recall {_percent(best.recall)})"
                )
            )

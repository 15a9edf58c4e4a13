"""``manage.py calibrate_cache PAIRS.jsonl``: sweep semantic-cache thresholds over labelled pairs."""

from __future__ import annotations

import os
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

import numpy as np
from django.core.management.base import BaseCommand, CommandError

from apps.cache.calibration import DEFAULT_THRESHOLDS, Pair, Row, parse_pairs, recommend, split_holdout, sweep
from apps.cache.embedding import embedder_for
from apps.cache.guard import agree


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


class Command(BaseCommand):
    help = (
        'Embed labelled pairs (JSON lines {"a": ..., "b": ..., "same": true|false}), print hit rate, precision, '
        "false-hit rate and recall for thresholds 0.70-0.99, by similarity alone and with the gateway's "
        "numbers-and-names guard, and recommend the lowest threshold whose guarded precision reaches the target."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("pairs", type=Path, help="JSON-lines file of labelled pairs")
        parser.add_argument("--target-precision", type=float, default=0.97)
        parser.add_argument(
            "--holdout",
            type=float,
            default=0.0,
            help="fraction of pairs (chosen by hash) to leave out of the choice and measure the chosen threshold on",
        )
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

        def scored(subset: list[Pair]) -> tuple[list[Row], list[Row]]:
            cosines = [float(np.dot(vectors[p.a], vectors[p.b])) for p in subset]
            agreements = [agree(p.a, p.b) for p in subset]
            return sweep(subset, cosines, DEFAULT_THRESHOLDS), sweep(subset, cosines, DEFAULT_THRESHOLDS, agreements)

        calibration, holdout = split_holdout(pairs, options["holdout"])
        if not calibration:
            raise CommandError("--holdout leaves no pairs to calibrate on")
        raw, guarded = scored(calibration)
        positives = sum(p.same for p in calibration)
        held = f" (calibrating on {len(calibration)}, {len(holdout)} held out)" if holdout else ""
        self.stdout.write(f"{len(pairs)} pairs: {sum(p.same for p in pairs)} same, {sum(not p.same for p in pairs)} "
                          f"different{held}\n")  # fmt: skip
        self._table(raw, guarded)
        target = options["target_precision"]
        best = recommend(guarded, target)
        if best is None:
            self.stdout.write(
                self.style.WARNING(
                    f"\nNo threshold from {DEFAULT_THRESHOLDS[0]:.2f} to {DEFAULT_THRESHOLDS[-1]:.2f} reaches "
                    f"precision {_percent(target)}, even with the guard: do not enable semantic caching on these "
                    "numbers."
                )
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nRecommended threshold: {best.threshold:.2f} (lowest with guarded precision >= "
                    f"{_percent(target)}: precision {_percent(best.precision)}, hit rate {_percent(best.hit_rate)}, "
                    f"recall {_percent(best.recall)}; {positives} same-pairs in the calibration part)"
                )
            )
        if holdout:
            raw_held, guarded_held = scored(holdout)
            self.stdout.write(f"\nheld-out pairs: {sum(p.same for p in holdout)} same, "
                              f"{sum(not p.same for p in holdout)} different")  # fmt: skip
            self._table(raw_held, guarded_held)
            if best is not None:
                row = next(r for r in guarded_held if r.threshold == best.threshold)
                self.stdout.write(
                    f"\nAt {best.threshold:.2f} the held-out pairs get guarded precision {_percent(row.precision)}, "
                    f"hit rate {_percent(row.hit_rate)}, recall {_percent(row.recall)}."
                )

    def _table(self, raw: list[Row], guarded: list[Row]) -> None:
        columns = f"{'hit rate':>8}  {'precision':>9}  {'false hits':>10}  {'recall':>6}"
        self.stdout.write(f"{'':>9}  {'similarity alone':<43}  with the numbers-and-names guard")
        self.stdout.write(f"{'threshold':>9}  {columns}  |  {columns}")
        for plain, checked in zip(raw, guarded, strict=True):
            cells = [
                f"{_percent(r.hit_rate):>8}  {_percent(r.precision):>9}  {_percent(r.false_hit_rate):>10}  "
                f"{_percent(r.recall):>6}"
                for r in (plain, checked)
            ]
            self.stdout.write(f"{plain.threshold:>9.2f}  {cells[0]}  |  {cells[1]}")

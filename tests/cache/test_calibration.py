"""Threshold sweep and recommendation, on hand-made pairs with known answers and through the command."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.cache.calibration import DEFAULT_THRESHOLDS, Pair, parse_pairs, recommend, split_holdout, sweep

# Four same-pairs and four different-pairs with cosines chosen so each threshold's counts are easy to read.
PAIRS = [Pair("a", "b", True)] * 4 + [Pair("a", "c", False)] * 4
COSINES = [0.95, 0.90, 0.85, 0.72, 0.93, 0.80, 0.75, 0.60]


def test_sweep_counts_hits_at_or_above_each_threshold() -> None:
    rows = {row.threshold: row for row in sweep(PAIRS, COSINES, [0.70, 0.80, 0.90, 0.94, 0.99])}

    assert rows[0.70].hits == 7
    assert rows[0.70].hit_rate == 7 / 8
    assert rows[0.70].precision == 4 / 7
    assert rows[0.70].false_hit_rate == 3 / 4
    assert rows[0.70].recall == 1.0

    # 0.80 hits the different-pair at exactly 0.80: the comparison is >=.
    assert (rows[0.80].hits, rows[0.80].precision, rows[0.80].false_hit_rate, rows[0.80].recall) == (
        5,
        3 / 5,
        2 / 4,
        3 / 4,
    )
    assert (rows[0.90].hits, rows[0.90].precision, rows[0.90].recall) == (3, 2 / 3, 2 / 4)
    assert (rows[0.94].hits, rows[0.94].precision, rows[0.94].false_hit_rate) == (1, 1.0, 0.0)
    assert (rows[0.99].hits, rows[0.99].precision, rows[0.99].hit_rate) == (0, None, 0.0)


def test_sweep_with_agreements_counts_only_pairs_that_pass_the_guard() -> None:
    # The guard turns the different-pair at 0.93 and the same-pair at 0.95 into misses.
    agreements = [False, True, True, True, False, True, True, True]
    row = sweep(PAIRS, COSINES, [0.90], agreements)[0]
    assert (row.hits, row.precision, row.false_hit_rate, row.recall) == (1, 1.0, 0.0, 1 / 4)
    with pytest.raises(ValueError, match="8 pairs but 2 agreements"):
        sweep(PAIRS, COSINES, [0.9], [True, False])


def test_split_holdout_is_by_pair_not_by_position() -> None:
    pairs = [Pair(f"question {i}", f"other {i}", i % 2 == 0) for i in range(400)]
    calibration, holdout = split_holdout(pairs, 0.3)
    assert len(calibration) + len(holdout) == 400
    assert 0.2 < len(holdout) / 400 < 0.4
    assert not set(calibration) & set(holdout)
    again_calibration, again_holdout = split_holdout(list(reversed(pairs)), 0.3)
    assert set(again_holdout) == set(holdout)
    assert split_holdout(pairs, 0.0) == (pairs, [])


def test_recommend_takes_the_lowest_threshold_that_is_precise_enough() -> None:
    rows = sweep(PAIRS, COSINES, DEFAULT_THRESHOLDS)
    best = recommend(rows, 0.97)
    assert best is not None
    assert best.threshold == 0.94  # 0.93's false hit is the last one below
    chosen = recommend(rows, 0.6)
    assert chosen is not None and chosen.threshold == 0.76  # 3 of 5 hits right at 0.76; 3 of 6 at 0.75


def test_recommend_says_none_when_no_threshold_is_precise_enough() -> None:
    cosines = [0.90, 0.90, 0.90, 0.90, 0.99, 0.99, 0.99, 0.99]  # every different-pair is closer than every same-pair
    assert recommend(sweep(PAIRS, cosines, DEFAULT_THRESHOLDS), 0.97) is None


def test_thresholds_run_from_070_to_099_in_hundredths() -> None:
    assert DEFAULT_THRESHOLDS[0] == 0.70
    assert DEFAULT_THRESHOLDS[-1] == 0.99
    assert len(DEFAULT_THRESHOLDS) == 30
    assert 0.83 in DEFAULT_THRESHOLDS  # exact, not 0.8300000000000001


def test_sweep_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 pairs but 1 cosines"):
        sweep(PAIRS[:2], [0.9], [0.8])


def test_parse_pairs_reads_json_lines_and_names_a_bad_line() -> None:
    lines = ['{"a": "x", "b": "y", "same": true}', "", '{"a": "x", "b": "z", "same": false}']
    assert parse_pairs(lines) == [Pair("x", "y", True), Pair("x", "z", False)]
    with pytest.raises(ValueError, match="line 2"):
        parse_pairs(['{"a": "x", "b": "y", "same": true}', '{"a": "x", "b": "y", "same": "yes"}'])
    with pytest.raises(ValueError, match="line 1"):
        parse_pairs(["not json"])


def test_the_shipped_pairs_file_is_large_and_balanced() -> None:
    path = Path(__file__).resolve().parents[2] / "apps" / "cache" / "data" / "pairs.jsonl"
    pairs = parse_pairs(path.read_text().splitlines())
    same = sum(p.same for p in pairs)
    assert len(pairs) >= 300
    assert 0.4 <= same / len(pairs) <= 0.6


def write_pairs(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_command_prints_the_table_and_recommends(tmp_path: Path) -> None:
    path = write_pairs(
        tmp_path,
        [
            {"a": "How do I reset my password?", "b": "I forgot my password, how can I reset it?", "same": True},
            {"a": "How do I reset my password?", "b": "How can I reset my password?", "same": True},
            {"a": "Sync fails on iOS, any fix?", "b": "What is the capital of France?", "same": False},
        ],
    )
    out = StringIO()
    call_command("calibrate_cache", str(path), "--target-precision", "0.97", stdout=out)
    text = out.getvalue()
    assert "3 pairs: 2 same, 1 different" in text
    assert "threshold" in text and "precision" in text and "false hits" in text and "recall" in text
    assert sum(1 for line in text.splitlines() if line.strip().startswith(("0.7", "0.8", "0.9"))) == 30
    # The unrelated pair is far below 0.70, so every threshold with hits is precise: the lowest wins.
    assert "Recommended threshold: 0.70" in text


def test_command_says_so_when_no_threshold_reaches_the_target(tmp_path: Path) -> None:
    path = write_pairs(
        tmp_path, [{"a": "Sync fails on iOS, any fix?", "b": "Sync fails on iOS - any fix?", "same": False}]
    )
    out = StringIO()
    call_command("calibrate_cache", str(path), stdout=out)
    assert "No threshold from 0.70 to 0.99 reaches precision 97.0%" in out.getvalue()


def test_command_holds_out_pairs_and_measures_the_choice_on_them() -> None:
    path = Path(__file__).resolve().parents[2] / "apps" / "cache" / "data" / "pairs.jsonl"
    out = StringIO()
    call_command("calibrate_cache", str(path), "--holdout", "0.3", stdout=out)
    text = out.getvalue()
    assert "held out)" in text and "held-out pairs:" in text
    assert "with the numbers-and-names guard" in text
    # Two tables of 30 thresholds: the calibration part and the held-out part.
    assert sum(1 for line in text.splitlines() if line.strip().startswith(("0.7", "0.8", "0.9"))) == 60
    # What the closing note and README report for the shipped file.
    assert "Recommended threshold: 0.82" in text
    assert "At 0.82 the held-out pairs get guarded precision 100.0%" in text


def test_command_rejects_a_malformed_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": "x"}\n')
    with pytest.raises(CommandError, match="line 1"):
        call_command("calibrate_cache", str(path))

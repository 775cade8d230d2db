from __future__ import annotations

import csv
import math
import os

import pytest

from multiad_monai.worklist import SCORES_COLUMNS, Ledger, StudyRecord, ranked, write_scores_csv, write_worklist_html

SHA, OTHER = "a" * 64, "b" * 64


def _record(key: str, score: float, normalized: float, sha: str = SHA, **changes) -> StudyRecord:
    values = dict(
        key=key,
        image=f"/archive/{key}.nii.gz",
        series="",
        series_uid="",
        score=score,
        normalized_score=normalized,
        is_anomalous=normalized > 0.5,
        top_slices="3;4;2",
        output=key,
        checkpoint_sha256=sha,
    )
    return StudyRecord(**{**values, **changes})


@pytest.mark.parametrize(
    "records, expected",
    [
        ([_record("a", 1.0, 0.2), _record("b", 3.0, 0.9), _record("c", 2.0, 0.6)], ["b", "c", "a"]),
        # normalised scores clamp at 1 (and 0): the raw score orders what the clamp ties
        ([_record("a", 5.0, 1.0), _record("b", 7.0, 1.0), _record("c", 0.1, 0.0)], ["b", "a", "c"]),
        # exact ties: by key, so every run writes the same order
        ([_record("b", 1.0, 0.5), _record("a", 1.0, 0.5)], ["a", "b"]),
    ],
)
def test_ranked_puts_the_most_anomalous_first(records, expected):
    assert [r.key for r in ranked(records)] == expected


def test_scores_csv_has_one_row_per_study_in_rank_order(tmp_path):
    records = ranked([_record("low", 1.0, 0.25), _record("high", 2.0, 0.75, series="3_AX", series_uid="1.2.3")])
    path = write_scores_csv(str(tmp_path / "scores.csv"), records)
    with open(path, encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == SCORES_COLUMNS
    assert [(r["rank"], r["output"], r["is_anomalous"]) for r in rows] == [("1", "high", "1"), ("2", "low", "0")]
    assert rows[0]["score"] == "2.000000" and rows[0]["normalized_score"] == "0.7500"
    assert rows[0]["series_uid"] == "1.2.3" and rows[0]["checkpoint_sha256"] == SHA
    assert os.listdir(tmp_path) == ["scores.csv"]  # no temporary file left beside it


def test_worklist_html_ranks_studies_links_overlays_and_lists_failures(tmp_path):
    records = ranked([_record("calm", 1.0, 0.1), _record("r&d <1>", 2.0, 0.9, series="7_AX CT", output="7_AX CT")])
    failed = [_record("broken", math.nan, math.nan, error="not a 3D volume: <shape (4, 4)>")]
    text = open(write_worklist_html(str(tmp_path / "worklist.html"), records, failed), encoding="utf-8").read()
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    assert "2 studies, most anomalous first; 1 above the calibrated threshold" in text and SHA in text
    first, second = text.index("/archive/r&amp;d &lt;1&gt;.nii.gz"), text.index("/archive/calm.nii.gz")
    assert first < second  # the table follows the given (ranked) order
    assert '<tr class="anomalous"><td class="num">1</td>' in text and '<tr><td class="num">2</td>' in text
    assert '<a href="7_AX%20CT_overlay.png"><img src="7_AX%20CT_overlay.png"' in text
    assert "<td>yes</td>" in text and "<td>no</td>" in text and '<td class="num">0.9000</td>' in text
    assert "Not scored (1)" in text and "not a 3D volume: &lt;shape (4, 4)&gt;" in text


def test_ledger_reads_every_rank_and_keeps_the_scores_of_one_checkpoint(tmp_path):
    folder = str(tmp_path / "ledger")
    rank0, rank1 = Ledger(folder, 0), Ledger(folder, 1)
    rank0.append(_record("a", 1.0, 0.1))
    rank0.append(_record("b", 2.0, 0.2, sha=OTHER))
    rank1.append(_record("c", math.nan, math.nan, error="unreadable"))
    rank1.append(_record("d", math.nan, math.nan, error="unreadable"))
    Ledger(folder, 0).append(_record("d", 4.0, 0.4))  # a later run with one process scored it
    assert sorted(os.listdir(folder)) == ["rank0.jsonl", "rank1.jsonl"]
    assert sorted(rank0.scored(SHA)) == ["a", "d"] and sorted(rank0.scored(OTHER)) == ["b"]
    assert list(rank1.failed(SHA)) == ["c"]
    assert rank0.scored(SHA)["a"] == _record("a", 1.0, 0.1)  # the JSON line round-trips


def test_ledger_ignores_a_torn_line_and_appends_after_it(tmp_path):
    folder = str(tmp_path / "ledger")
    Ledger(folder, 0).append(_record("a", 1.0, 0.1))
    with open(os.path.join(folder, "rank0.jsonl"), "a", encoding="utf-8") as f:
        f.write(_record("b", 2.0, 0.2).to_json()[:40])  # killed while writing
    assert list(Ledger(folder, 0).scored(SHA)) == ["a"]
    ledger = Ledger(folder, 0)  # a rerun's process: ends the torn line first
    ledger.append(_record("b", 2.0, 0.2))
    assert sorted(ledger.scored(SHA)) == ["a", "b"]

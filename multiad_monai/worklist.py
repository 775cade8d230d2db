"""The triage worklist of an archive: one record per scored study, a resumable ledger, the ranked outputs.

A run that scores an archive (:mod:`multiad_monai.archive_triage`) appends one :class:`StudyRecord` per finished
study to its :class:`Ledger`, one JSON line each in ``<output_dir>/ledger/rank<k>.jsonl``, flushed and fsynced
before the next study starts. A killed run leaves at most one torn line, which is ignored; a rerun skips every
study already scored by the same checkpoint (SHA-256 of the file) and rescores those scored by another one.

The merged results are ``scores.csv`` (:func:`write_scores_csv`) and ``worklist.html`` (:func:`write_worklist_html`),
both ranked most anomalous first (:func:`ranked`) and written atomically. This is the command-line archive
worklist; :mod:`multiad_monai.monailabel.triage` keeps scores in a MONAI Label datastore instead.
"""

from __future__ import annotations

import csv
import glob
import html
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from urllib.parse import quote

from multiad_monai.utils import atomic_write

__all__ = ["SCORES_COLUMNS", "Ledger", "StudyRecord", "ranked", "write_scores_csv", "write_worklist_html"]

logger = logging.getLogger(__name__)

SCORES_COLUMNS = [
    "rank",
    "image",
    "series",
    "series_uid",
    "score",
    "normalized_score",
    "is_anomalous",
    "top_slices",
    "output",
    "checkpoint_sha256",
]


@dataclass(frozen=True)
class StudyRecord:
    """What scoring one input (an image or volume file, or one DICOM series) gave.

    Attributes:
        key: identifies the input across runs: the file's absolute path, or the series UID and where it lies.
        image: the file, or the folder (multi-frame file) of the series, as listed from ``input_path``.
        series: the series' name (``<number>_<description>``); empty for a file.
        series_uid: the SeriesInstanceUID; empty for a file.
        score: raw image score (a volume: its most anomalous slice's).
        normalized_score: the score in ``[0, 1]``, 0.5 at the calibrated threshold.
        is_anomalous: ``normalized_score > 0.5``.
        top_slices: a volume's most anomalous slices, ``;``-separated (see ``AnomalyInferer``); empty for 2D.
        output: the name its results are written under (``<output>_overlay.png``, ``<output>_map.*``).
        checkpoint_sha256: SHA-256 of the checkpoint that scored it.
        error: why it could not be scored (then the scores are NaN); empty when it was.
    """

    key: str
    image: str
    series: str
    series_uid: str
    score: float
    normalized_score: float
    is_anomalous: bool
    top_slices: str
    output: str
    checkpoint_sha256: str
    error: str = ""

    @classmethod
    def from_row(cls, key: str, row: dict, output: str, checkpoint_sha256: str) -> StudyRecord:
        """A record from an ``AnomalyInferer`` ``scores.csv`` row (the values it writes, as it rounds them)."""
        return cls(
            key=key,
            image=row["image"],
            series=row["series"],
            series_uid=row["series_uid"],
            score=float(row["score"]),
            normalized_score=float(row["normalized_score"]),
            is_anomalous=bool(int(row["is_anomalous"])),
            top_slices=row["top_slices"],
            output=output,
            checkpoint_sha256=checkpoint_sha256,
        )

    @classmethod
    def failed(cls, key: str, image: str, series_uid: str, output: str, checkpoint_sha256: str, error: str):
        """A record of an input that could not be scored (retried by the next run)."""
        return cls(key, image, "", series_uid, math.nan, math.nan, False, "", output, checkpoint_sha256, error)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, allow_nan=True)

    @classmethod
    def from_json(cls, line: str) -> StudyRecord:
        values = json.loads(line)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def csv_row(self, rank: int) -> dict:
        return {
            "rank": rank,
            "image": self.image,
            "series": self.series,
            "series_uid": self.series_uid,
            "score": f"{self.score:.6f}",
            "normalized_score": f"{self.normalized_score:.4f}",
            "is_anomalous": int(self.is_anomalous),
            "top_slices": self.top_slices,
            "output": self.output,
            "checkpoint_sha256": self.checkpoint_sha256,
        }


class Ledger:
    """The studies a run has finished, one JSON line each, in ``<folder>/rank<k>.jsonl`` (one file per process).

    Each process appends to its own file only; every file is read, so a rerun with another number of processes
    still skips what any earlier process finished.

    Args:
        folder: where the ledger files are (created when missing).
        rank: the process' rank; it appends to ``rank<rank>.jsonl``.
    """

    def __init__(self, folder: str, rank: int = 0) -> None:
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.path = os.path.join(folder, f"rank{rank}.jsonl")
        if os.path.isfile(self.path) and os.path.getsize(self.path):
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:  # a killed run's half-written last line: end it, so the next record starts on its own line
                self._write("")

    def _write(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append(self, record: StudyRecord) -> None:
        """Add ``record``, on disk (flushed and fsynced) when this returns."""
        self._write(record.to_json())

    def read(self) -> list[StudyRecord]:
        """Every record of every process' file, in file then line order; torn or foreign lines are skipped."""
        records = []
        for path in sorted(glob.glob(os.path.join(glob.escape(self.folder), "rank*.jsonl"))):
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        records.append(StudyRecord.from_json(line))
                    except (ValueError, TypeError) as error:  # a line cut short by a kill
                        logger.warning(f"skipping line {number} of {path} (rescored): {error}")
        return records

    def scored(self, checkpoint_sha256: str) -> dict[str, StudyRecord]:
        """The studies scored by the checkpoint with this SHA-256, by key (the last record of a key wins)."""
        return {r.key: r for r in self.read() if r.checkpoint_sha256 == checkpoint_sha256 and not r.error}

    def failed(self, checkpoint_sha256: str) -> dict[str, StudyRecord]:
        """The studies this checkpoint could not score and has not scored since, by key."""
        scored = self.scored(checkpoint_sha256)
        return {
            r.key: r
            for r in self.read()
            if r.checkpoint_sha256 == checkpoint_sha256 and r.error and r.key not in scored
        }


def ranked(records: Iterable[StudyRecord]) -> list[StudyRecord]:
    """Most anomalous first: normalised score, then raw score, descending; the key breaks exact ties."""
    return sorted(records, key=lambda r: (-r.normalized_score, -r.score, r.key))


def write_scores_csv(path: str, records: Iterable[StudyRecord]) -> str:
    """``scores.csv``: one row per study in the given order, ``rank`` from 1 (columns ``SCORES_COLUMNS``)."""
    records = list(records)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=SCORES_COLUMNS)
            writer.writeheader()
            writer.writerows(r.csv_row(rank) for rank, r in enumerate(records, 1))

    return atomic_write(path, write, fsync=True)


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:middle}"
    "th{background:#eee}tr.anomalous td{background:#fde4e1}td.num{text-align:right;font-family:monospace}"
)


def _overlay_cell(record: StudyRecord) -> str:
    href = html.escape(quote(f"{record.output}_overlay.png"))
    alt = html.escape(f"overlay of {record.output}")
    return f'<a href="{href}"><img src="{href}" alt="{alt}" height="96" loading="lazy"></a>'


def write_worklist_html(
    path: str, records: Iterable[StudyRecord], failed: Iterable[StudyRecord] = (), title: str = "Anomaly worklist"
) -> str:
    """``worklist.html``: one plain table, a row per study in the given order, the overlay linked beside it.

    Overlays are linked by name relative to the page (``<output>_overlay.png`` in the same folder). Studies that
    could not be scored follow in a second table with the reason.
    """
    records, failed = list(records), list(failed)
    checkpoints = sorted({r.checkpoint_sha256 for r in records + failed})
    anomalous = sum(r.is_anomalous for r in records)
    head = ["rank", "study", "series", "score", "normalized score", "anomalous", "top slices", "overlay"]
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>',
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(records)} studies, most anomalous first; {anomalous} above the calibrated threshold "
        f"(normalized score &gt; 0.5). Checkpoint SHA-256: {html.escape(', '.join(checkpoints) or '-')}.</p>",
        "<table>",
        "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    for rank, r in enumerate(records, 1):
        cells = [
            f'<td class="num">{rank}</td>',
            f"<td>{html.escape(r.image)}</td>",
            f"<td>{html.escape(r.series)}</td>",
            f'<td class="num">{r.score:.6f}</td>',
            f'<td class="num">{r.normalized_score:.4f}</td>',
            f"<td>{'yes' if r.is_anomalous else 'no'}</td>",
            f"<td>{html.escape(r.top_slices)}</td>",
            f"<td>{_overlay_cell(r)}</td>",
        ]
        row_class = ' class="anomalous"' if r.is_anomalous else ""
        lines.append(f"<tr{row_class}>" + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table>"]
    if failed:
        lines += [
            f"<h2>Not scored ({len(failed)})</h2>",
            "<table><thead><tr><th>study</th><th>series UID</th><th>error</th></tr></thead><tbody>",
            *(
                f"<tr><td>{html.escape(r.image)}</td><td>{html.escape(r.series_uid)}</td>"
                f"<td>{html.escape(r.error)}</td></tr>"
                for r in failed
            ),
            "</tbody></table>",
        ]
    lines += ["</body>", "</html>", ""]

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))

    return atomic_write(path, write, fsync=True)

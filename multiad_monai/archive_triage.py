"""Score an archive of studies with one or several processes into one ranked, resumable worklist.

Every process lists the same inputs (:func:`multiad_monai.inference.list_inputs`, a deterministic order) and
scores its share, ``inputs[rank::world_size]``, writing each study's maps, overlay (and, for a DICOM series, SEG
and Parametric Map) as :class:`multiad_monai.inference.AnomalyInferer` does, then one ledger line
(:class:`multiad_monai.worklist.Ledger`). Studies the same checkpoint already scored are skipped, so a killed run
continues where it stopped when the same command is run again. After a barrier, rank 0 merges the ledger into
``scores.csv`` and ``worklist.html``, most anomalous first.

``input_path`` may also be a PACS's DICOMweb address (:mod:`multiad_monai.dicomweb`): every process lists its
image series and fetches only those of its share, into ``<output_dir>/cache/``.

Without ``torch.distributed`` initialised (plain ``python -m monai.bundle run``) it is one process doing all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import torch.distributed as dist

from multiad_monai.dicomweb import fetch_series, image_series, is_dicomweb
from multiad_monai.inference import (
    AnomalyInferer,
    Input,
    check_output_dir,
    input_source,
    is_volume,
    list_inputs,
    output_names,
)
from multiad_monai.transforms.dicom import DicomSeries
from multiad_monai.utils import staged_dir
from multiad_monai.worklist import Ledger, StudyRecord, ranked, write_scores_csv, write_worklist_html

__all__ = ["ArchiveTriage", "study_key"]

logger = logging.getLogger(__name__)


def study_key(item: Input) -> str:
    """What identifies an input across runs: a file's absolute path; a series' UID and where its files lie."""
    source = os.path.abspath(input_source(item))
    return f"{item.uid} in {source}" if isinstance(item, DicomSeries) else source


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


class ArchiveTriage:
    """Score every study under ``input_path`` across the processes of a run; rank 0 writes the worklist.

    Outputs in ``output_dir``: each study's results under its name (as ``AnomalyInferer`` writes them),
    ``ledger/rank<k>.jsonl``, and, from rank 0, ``scores.csv`` and ``worklist.html`` ranked most anomalous first.
    A study that cannot be read is logged and listed as not scored; the run then ends with an error naming
    them, after writing the worklist of the others, and the next run retries them.

    Args:
        inferer: scores and writes one study; it must know its checkpoint (``checkpoint=ckpt_path``), whose SHA-256
            tells which studies a rerun may skip.
    """

    def __init__(self, inferer: AnomalyInferer) -> None:
        if inferer.checkpoint_sha256 == "unknown":
            raise ValueError(
                "the inferer has no checkpoint file (AnomalyInferer(..., checkpoint=ckpt_path)): archive triage "
                "needs its SHA-256 to know which studies a rerun may skip"
            )
        self.inferer = inferer
        self.checkpoint_sha256 = inferer.checkpoint_sha256
        self._fetch = None  # set per run: fetches a PACS series before it is scored

    def __call__(self, input_path: str, output_dir: str) -> list[StudyRecord] | None:
        """Score this process' share of ``input_path`` (a file, a folder or a DICOMweb address); on rank 0 return
        the ranked records (else ``None``)."""
        remote = is_dicomweb(input_path)
        inputs = image_series(input_path) if remote else list_inputs(input_path)
        check_output_dir(input_path, output_dir)
        rank, world_size = _rank_and_world()
        names = output_names(inputs)
        keys = {item: f"{item.uid} in {input_path}" if remote else study_key(item) for item in inputs}
        # a PACS series is fetched by the process that scores it, when it scores it
        self._fetch = (lambda s: fetch_series(input_path, s, os.path.join(output_dir, "cache"))) if remote else None
        if len(set(keys.values())) != len(inputs):
            raise ValueError(f"{input_path} lists one study twice (the same file or series): {sorted(keys.values())}")
        ledger = Ledger(os.path.join(output_dir, "ledger"), rank)
        done = ledger.scored(self.checkpoint_sha256)
        _barrier(world_size)  # every rank has read the ledger before any appends to it
        share = inputs[rank::world_size]
        todo = [item for item in share if keys[item] not in done]
        logger.info(
            f"rank {rank}/{world_size}: {len(share)} of {len(inputs)} studies, {len(share) - len(todo)} already "
            f"scored by checkpoint {self.checkpoint_sha256[:12]}, scoring {len(todo)}"
        )
        for chunk in self._chunks(todo):
            self._score(chunk, names, keys, ledger, output_dir)
        _barrier(world_size)  # every rank's ledger is complete
        if rank != 0:
            return None
        return self.merge(inputs, keys, ledger, output_dir)

    def _chunks(self, items: Sequence[Input]) -> Iterator[list[Input]]:
        """Runs of consecutive 2D images up to a batch (they share forward passes); each volume alone."""
        chunk: list[Input] = []
        for item in items:
            if is_volume(item):
                if chunk:
                    yield chunk
                    chunk = []
                yield [item]
            else:
                chunk.append(item)
                if len(chunk) == self.inferer.batch_size:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def _score(
        self, chunk: list[Input], names: dict[Input, str], keys: dict[Input, str], ledger: Ledger, output_dir: str
    ) -> None:
        """Score ``chunk``, move its results into ``output_dir`` and record each study in the ledger."""
        try:
            for item in chunk if self._fetch else []:
                self._fetch(item)
            with staged_dir(output_dir, merge=True) as staging:  # a study's files appear together, or not at all
                rows = self.inferer.write_results(chunk, names, staging)
        except Exception as error:  # one unreadable study must not stop the archive: find it, record it
            if len(chunk) > 1:
                for item in chunk:
                    self._score([item], names, keys, ledger, output_dir)
                return
            (item,) = chunk
            source = keys[item] if isinstance(item, DicomSeries) and not item.files else input_source(item)
            logger.warning(f"could not score {source}: {error}")
            uid = item.uid if isinstance(item, DicomSeries) else ""
            ledger.append(StudyRecord.failed(keys[item], source, uid, names[item], self.checkpoint_sha256, str(error)))
            return
        for item in chunk:
            record = StudyRecord.from_row(keys[item], rows[item], names[item], self.checkpoint_sha256)
            ledger.append(record)
            logger.info(f"{record.output}: normalized score {record.normalized_score:.4f} ({record.image})")

    def merge(
        self, inputs: Sequence[Input], keys: dict[Input, str], ledger: Ledger, output_dir: str
    ) -> list[StudyRecord]:
        """Write ``scores.csv`` and ``worklist.html`` for ``inputs`` from the ledger; returns the ranked records.

        Raises:
            RuntimeError: a study has no record (a process stopped early) or could not be scored; the worklist of
                the others is written first.
        """
        scored, failed = ledger.scored(self.checkpoint_sha256), ledger.failed(self.checkpoint_sha256)
        records = ranked(scored[keys[item]] for item in inputs if keys[item] in scored)
        not_scored = [failed[keys[item]] for item in inputs if keys[item] in failed]
        missing = [keys[item] for item in inputs if keys[item] not in scored and keys[item] not in failed]
        write_scores_csv(os.path.join(output_dir, "scores.csv"), records)
        write_worklist_html(os.path.join(output_dir, "worklist.html"), records, not_scored)
        logger.info(f"{len(records)} studies ranked in {os.path.join(output_dir, 'scores.csv')} and worklist.html")
        if missing:
            raise RuntimeError(f"no result for {len(missing)} studies (did a process stop early?): {missing[:5]}")
        if not_scored:
            listed = "; ".join(f"{r.image}: {r.error}" for r in not_scored[:5])
            raise RuntimeError(
                f"{len(not_scored)} of {len(inputs)} studies could not be scored ({listed}); fix or remove them and "
                f"run the same command again: the {len(records)} scored studies are kept and skipped"
            )
        return records

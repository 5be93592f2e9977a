"""A CSV logger that a resumed run appends to (Lightning's starts a new ``metrics.csv``, deleting the old).

Used with :class:`~icasc.callbacks.RunState`, which records in every checkpoint how many rows the logger had
written and, when a run resumes from that checkpoint, cuts the file back to them (keeping the training epoch's
aggregates, which Lightning logs just after an end-of-epoch checkpoint): the resumed run logs the rest again,
so every step and epoch appears once.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["ResumableCSVLogger"]


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but it keeps an existing ``metrics.csv`` and counts its rows."""

    def _check_log_dir_exists(self) -> None:
        # Called by the base __init__ where Lightning deletes the file; read it instead.
        self.rows_written = 0
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.DictReader(file)
                self.metrics_keys = list(reader.fieldnames or [])
                self.rows_written = sum(1 for _ in reader)

    @property
    def rows(self) -> int:
        """Rows logged so far: written to the file and still buffered."""
        return self.rows_written + len(self.metrics)

    def save(self) -> None:
        pending = len(self.metrics)
        super().save()
        self.rows_written += pending

    def truncate(self, rows: int, keep_epoch: int | None = None) -> None:
        """Keep the first ``rows`` rows of ``metrics.csv``, and of the later ones those of ``keep_epoch``."""
        self.metrics = []
        if not self._fs.isfile(self.metrics_file_path):
            self.rows_written = 0
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            logged = list(csv.DictReader(file))
        later = [r for r in logged[rows:] if keep_epoch is not None and r.get("epoch") == str(keep_epoch)]
        kept = logged[:rows] + later
        self._replace_file(self.metrics_keys, kept)
        self.rows_written = len(kept)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning's version truncates metrics.csv and writes it again in place: a kill in between (the
        # crash a resume exists for) would leave an empty or cut file and lose every row logged before.
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            logged = list(csv.DictReader(file))
        self._replace_file(fieldnames, logged)

    def _replace_file(self, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
        """Write ``metrics.csv`` anew, atomically: a temporary file beside it, then a rename over it."""
        temporary = f"{self.metrics_file_path}.tmp"
        with self._fs.open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        self._fs.mv(temporary, self.metrics_file_path)


class ResumableCSVLogger(CSVLogger):
    """Lightning's :class:`~lightning.pytorch.loggers.CSVLogger` that appends to an existing ``metrics.csv``.

    Takes the same arguments. :attr:`rows` and :meth:`truncate` let :class:`~icasc.callbacks.RunState` keep
    exactly the rows a checkpoint had seen when a run resumes from it.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @property
    def rows(self) -> int:
        """Rows of metrics logged so far (written and buffered)."""
        return self.experiment.rows

    def truncate(self, rows: int, keep_epoch: int | None = None) -> None:
        """Cut ``metrics.csv`` back to what a checkpoint had seen (a resume from that checkpoint).

        Args:
            rows: Rows logged when the checkpoint was saved.
            keep_epoch: Also keep the later rows of this epoch: Lightning logs the training epoch's aggregates
                after an end-of-epoch checkpoint is saved, and a run resumed from it does not log them again.
        """
        self.experiment.truncate(rows, keep_epoch)

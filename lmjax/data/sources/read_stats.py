"""What reading a source left out: bad records under `data.bad_records: skip`, and whole files
(empty, unusable), counted for metrics and named, a few at a time, in the log."""

from __future__ import annotations

import dataclasses

_NAMED_IN_REPORT = 3  # skipped files named in a report; the rest are counted


@dataclasses.dataclass
class ReadStats:
  """What reading left out: bad records under `data.bad_records: skip`, and whole files."""

  skipped: int = 0
  first_problem: str | None = None   # the first skipped record's problem, for the log
  skipped_files: list[str] = dataclasses.field(default_factory=list)  # "name (why)", in order

  def skip(self, problem: str) -> None:
    self.skipped += 1
    self.first_problem = self.first_problem or problem

  def skip_file(self, file: str, why: str) -> None:
    self.skipped_files.append(f"{file} ({why})")

  @property
  def total(self) -> int:
    """Records and files left out: what metrics.jsonl reports as `skipped_records`."""
    return self.skipped + len(self.skipped_files)

  def files_report(self) -> str:
    """One line for the log: how many files were left out, and the first few."""
    return (f"skipped {len(self.skipped_files)} empty or unusable file(s): "
            f"{first_few(self.skipped_files)}")


def first_few(names: list[str]) -> str:
  """The first `_NAMED_IN_REPORT` of `names`, and "…" for the rest: a report stays one line."""
  more = ", …" if len(names) > _NAMED_IN_REPORT else ""
  return ", ".join(names[:_NAMED_IN_REPORT]) + more


__all__ = ["ReadStats", "first_few"]

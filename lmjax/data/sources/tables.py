"""Tables as data: CSV/TSV text and Parquet files read by column, with errors naming the file.

A CSV file's first row names its columns (Python's `csv` dialect, the delimiter a tab for files
ending .tsv or .tab); a Parquet file is read one row group at a time with pyarrow. Callers ask
for the columns they need and get one list of values per column, plus each row's place in the
file for messages.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from lmjax.errors import UserError
from lmjax.extras import require

Columns = dict[str, list]  # column name -> one value per row


def csv_delimiter(file: str) -> str:
  return "\t" if file.lower().endswith((".tsv", ".tab")) else ","


def parse_csv(text: str, *, file: str, columns: Sequence[str], key: str = "data.field"
              ) -> tuple[Columns, list[str]]:
  """The named columns of CSV `text` (file `file`'s content) and each row's "file:line".

  UserError naming the file and the columns present when one is missing, and naming the line
  of a malformed row. `key` is the config key that names the first column, for the message.
  """
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=csv_delimiter(file), strict=True)
  try:
    header = next(reader, None)
  except csv.Error as e:
    raise UserError(f"The CSV file {file!r} is malformed on line 1 ({e}).") from None
  if not header:
    raise UserError(f"The CSV file {file!r} has no header row naming its columns.")
  missing = [c for c in columns if c not in header]
  if missing:
    raise UserError(f"The CSV file {file!r} has no column {missing[0]!r} (columns: "
                    f"{', '.join(map(repr, header))}). Set `{key}` (and the other column keys) "
                    f"to columns of the file; the first row must name them.")
  index = {c: header.index(c) for c in columns}
  values: Columns = {c: [] for c in columns}
  where = []
  try:
    for row in reader:
      if not any(cell.strip() for cell in row):
        continue  # a blank line
      if len(row) != len(header):
        raise UserError(f"Line {file}:{reader.line_num} has {len(row)} fields but the header "
                        f"names {len(header)}; quote fields holding the delimiter.")
      for c, i in index.items():
        values[c].append(row[i])
      where.append(f"{file}:{reader.line_num}")
  except csv.Error as e:
    raise UserError(f"The CSV file {file!r} is malformed on line {reader.line_num} ({e}).") from None
  return values, where


def read_parquet(file: str, *, columns: Sequence[str], text_columns: Sequence[str],
                 key: str = "data.field") -> tuple[Columns, list[str]]:
  """The named columns of a Parquet file (nulls as None) and each row's "file:row N".

  UserError naming the file and the columns present when one is missing or when one of
  `text_columns` does not hold strings.
  """
  pq = require("pyarrow.parquet", extra="data", needed_for="reading Parquet files")
  try:
    parquet = pq.ParquetFile(file)
  except Exception as e:  # pyarrow raises ArrowInvalid / OSError for files that are not Parquet
    raise UserError(f"The data file {file!r} is not a readable Parquet file ({e}).") from None
  names = parquet.schema_arrow.names
  for column in columns:
    if column not in names:
      raise UserError(f"The Parquet file {file!r} has no column {column!r} (columns: "
                      f"{', '.join(map(repr, names)) or 'none'}). Set `{key}` (and the other "
                      f"column keys) to columns of the file.")
  for column in text_columns:
    kind = parquet.schema_arrow.field(column).type
    if str(kind) not in ("string", "large_string", "string_view"):
      raise UserError(f"Column {column!r} of {file!r} holds {kind}, not strings. Set `{key}` "
                      f"to a text column.")
  values: Columns = {c: [] for c in columns}
  for group in range(parquet.num_row_groups):
    table = parquet.read_row_group(group, columns=list(dict.fromkeys(columns)))
    for c in columns:
      values[c].extend(table.column(c).to_pylist())
  where = [f"{file}:row {i}" for i in range(len(values[columns[0]]) if columns else 0)]
  return values, where

"""Parsing: delivered bytes into a table, remembering where each row sat in the file.

Intake calls this on the raw bytes of a batch (CSV, JSONL or Parquet). Parsing never
judges content; it only says what it could not read: a file it cannot read at all
raises `ValueError` with a message naming the problem (for a bad encoding, the offset
of the first bad byte), and a single unreadable row (a CSV row with the wrong number of
fields, a JSONL line that is not a JSON object) is kept in the table as an empty row and
named in `Table.malformed`, so validation can report it with its row number and the
row policy can drop it.

A compressed delivery (`x.csv.gz`, `x.jsonl.bz2`, `x.parquet.xz`: gzip, bzip2, xz) is read
as the file inside it (`decompress`); the bytes kept under raw/ and hashed into the batch
id are still the delivered, compressed ones. Decompressing stops at intake.max_bytes, so
a small file that inflates without end is refused, not read into memory.

Row numbers are what a person sees in an editor: 1-based lines of the file, the CSV
header being line 1 (a quoted field spanning lines counts from its first line); for
Parquet, 1-based row positions.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SUPPORTED = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
COMPRESSED = {".gz": lambda f: gzip.GzipFile(fileobj=f), ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}
UNREAD = {".zst": "zstd", ".zip": "zip", ".7z": "7-Zip", ".tar": "tar", ".tgz": "tar"}
DELIMITERS = ",;\t|"
SNIFF_CHARS = 64 * 1024


@dataclass(frozen=True)
class Table:
    """A parsed batch: the rows, each row's number in the file, and rows that could not
    be read (position -> why)."""

    frame: pd.DataFrame
    rows: list[int]
    malformed: dict[int, str] = field(default_factory=dict)


def decode(raw: bytes, encoding: str = "utf-8") -> str:
    """Bytes to text. UTF-8 accepts a BOM; an undecodable byte is an error naming its
    offset in the file as delivered (BOM included), so it can be found in a hex editor."""
    utf8 = encoding.lower().replace("_", "-") in {"utf-8", "utf8"}
    try:
        return raw.decode("utf-8-sig" if utf8 else encoding)
    except UnicodeDecodeError as exc:
        bad = exc.start + len(raw) - len(exc.object)  # utf-8-sig reports offsets past the BOM
        name = "UTF-8" if utf8 else encoding
        hint = "; set validate.encoding in params.yaml if the file uses another encoding" if utf8 else ""
        raise ValueError(f"file is not {name}: first bad byte at offset {bad} (0x{raw[bad]:02x}){hint}") from exc


def inner_name(name: str) -> str:
    """The name of the file a compressed delivery holds ("b.csv.gz" -> "b.csv")."""
    suffix = Path(name).suffix.lower()
    return name[: -len(suffix)] if suffix in COMPRESSED else name


def is_supported(name: str) -> bool:
    """A file name a table parser reads, compressed or not."""
    return Path(inner_name(name)).suffix.lower() in SUPPORTED


def decompress(raw: bytes, name: str, max_bytes: int = 0) -> tuple[bytes, str]:
    """(the bytes, the name) of the file inside a gzip/bzip2/xz delivery; anything else as
    it is. ValueError when it is corrupt, is another archive format, or holds more than
    `max_bytes` (0 = no limit)."""
    suffix = Path(name).suffix.lower()
    if suffix in UNREAD:
        raise ValueError(f"{UNREAD[suffix]} files are not read; deliver the file itself, or gzip it (.gz)")
    opener = COMPRESSED.get(suffix)
    if opener is None:
        return raw, name
    try:
        with opener(io.BytesIO(raw)) as inner:
            out = inner.read(max_bytes + 1) if max_bytes else inner.read()
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise ValueError(f"the {suffix} file cannot be decompressed: {exc}") from None
    if max_bytes and len(out) > max_bytes:
        raise ValueError(f"the {suffix} file decompresses to over intake.max_bytes ({max_bytes:,} bytes); "
                         "deliver it as smaller batches, or raise intake.max_bytes in params.yaml")
    return out, inner_name(name)


def parse_table(raw: bytes, name: str, encoding: str = "utf-8") -> Table:
    """Parse a batch file's bytes by its extension. Raises ValueError with a clear message."""
    suffix = Path(name).suffix.lower()
    kind = SUPPORTED.get(suffix)
    if kind is None:
        raise ValueError(f"unsupported file type '{suffix}' (use .csv, .jsonl or .parquet)")
    if not raw:
        raise ValueError("file is empty (0 bytes)")
    if kind == "parquet":
        frame = pd.read_parquet(io.BytesIO(raw))
        return Table(frame, list(range(1, len(frame) + 1)))
    text = decode(raw, encoding)
    return _parse_jsonl(text) if kind == "jsonl" else _parse_csv(text)


def sniff_delimiter(text: str) -> str:
    """The delimiter csv.Sniffer finds, trusted only when the header line contains it
    (the sniffer can be fooled by punctuation inside quoted text)."""
    sample = text[:SNIFF_CHARS]
    if len(text) > SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]
    header = sample.split("\n", 1)[0]
    try:
        found = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        found = None
    if found and found in header:
        return found
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _header(record: list[str]) -> list[str]:
    names = [h.strip() for h in record]
    names = [n or f"_column{i + 1}" for i, n in enumerate(names)]
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise ValueError(f"the header names column(s) {', '.join(repr(s)[:40] for s in sorted(seen))} more than once")
    return names


def _parse_csv(text: str) -> Table:
    # A 1 MB field is data to be judged by validation, not a parser crash.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text),
                        quotechar='"', doublequote=True)
    header: list[str] | None = None
    records, rows, malformed = [], [], {}
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record:  # blank line
                continue
            if header is None:
                header = _header(record)
                continue
            if len(record) != len(header):
                malformed[len(records)] = f"has {len(record)} fields, the header has {len(header)}"
                record = [None] * len(header)
            records.append([v if v != "" else None for v in record])
            rows.append(line)
    except csv.Error as exc:
        raise ValueError(f"CSV cannot be read at line {reader.line_num}: {exc}") from exc
    if header is None:
        raise ValueError("file has no header line (expected e.g. 'text,label')")
    return Table(pd.DataFrame(records, columns=header, dtype=object), rows, malformed)


def _parse_jsonl(text: str) -> Table:
    # split on "\n" only: str.splitlines would also split on U+2028 and friends, which
    # JSON allows raw inside strings
    records, rows, malformed = [], [], {}
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            value, why = {}, f"is not valid JSON ({exc.msg} at column {exc.colno})"
        else:
            why = None if isinstance(value, dict) else f"is a JSON {type(value).__name__}, not an object"
        if why:
            malformed[len(records)] = why
            value = {}
        records.append(value)
        rows.append(number)
    if records and len(malformed) == len(records):
        first = min(malformed)
        raise ValueError(f"no line is a JSON object (line {rows[first]} {malformed[first]})")
    return Table(pd.DataFrame.from_records(records) if records else pd.DataFrame(), rows, malformed)

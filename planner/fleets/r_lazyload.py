"""Read character vectors from an installed R package's lazy-load data base, without R.

An R package's ``data/Rdata.rdx`` (gzip) holds a serialized list whose ``variables`` element maps
each data set's name to ``(offset, length)`` in ``data/Rdata.rdb``; there each object is 4 bytes of
big-endian uncompressed size and a zlib stream of the object serialized in R's XDR format ("R
Internals", section 1.8 *Serialization formats*). This module reads that format for the types such
data sets use (NULL, symbols, pairlists, logical/integer/double/character vectors and lists, with
their attributes); any other type is refused as invalid input, never guessed.

Used by :func:`hierfedlora.planner.fleets.data_sources.read_janeausten` (Debian's ``r-cran-janeaustenr``).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

from hierfedlora.planner.errors import InvalidInputError, Issue

__all__ = ["read_lazyload_index", "read_lazyload_object", "unserialize"]

# SEXP types (R Internals 1.1.1) and the serialization's special codes.
_NILSXP, _SYMSXP, _LISTSXP, _CHARSXP, _LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
_REFSXP, _NILVALUE_SXP = 255, 254
_HAS_ATTR, _HAS_TAG = 1 << 9, 1 << 10


class _Reader:
    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source, self.refs = data, 0, source, []  # refs: symbols, in order

    def fail(self, expected: str, got: object) -> InvalidInputError:
        return InvalidInputError([Issue(f"byte {self.pos}", expected, got)], self.source)

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise self.fail(f"{size} more bytes of serialized R data", f"{len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        size = self.int()
        if size == -1:  # a long vector: two 32-bit halves
            upper, lower = struct.unpack(">II", self.take(8))
            size = (upper << 32) + lower
        return size

    def item(self) -> object:
        flags = self.int()
        kind = flags & 0xFF
        if kind == _NILVALUE_SXP:
            return None
        if kind == _REFSXP:
            index = (flags >> 8) or self.int()
            if not 1 <= index <= len(self.refs):
                raise self.fail(f"a reference in 1..{len(self.refs)}", index)
            return self.refs[index - 1]
        if kind == _SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == _LISTSXP:  # a pairlist: (tag, value) pairs until NILVALUE
            return self.pairlist(flags)
        if kind == _CHARSXP:
            size = self.int()
            return None if size == -1 else self.take(size).decode("utf-8", errors="replace")
        if kind in (_LGLSXP, _INTSXP):
            size = self.length()
            value: object = list(struct.unpack(f">{size}i", self.take(4 * size)))
        elif kind == _REALSXP:
            size = self.length()
            value = list(struct.unpack(f">{size}d", self.take(8 * size)))
        elif kind in (_STRSXP, _VECSXP):
            value = [self.item() for _ in range(self.length())]
        else:
            raise self.fail("a NULL, symbol, pairlist, vector or list (the types R data sets use)", f"SEXP type {kind}")
        if flags & _HAS_ATTR:
            attributes = self.item()
            names = attributes.get("names") if isinstance(attributes, dict) else None
            if isinstance(names, list) and isinstance(value, list) and len(names) == len(value):
                return dict(zip(names, value, strict=True))
        return value

    def pairlist(self, flags: int) -> dict[object, object]:
        result: dict[object, object] = {}
        while True:
            if flags & _HAS_ATTR:
                self.item()
            tag = self.item() if flags & _HAS_TAG else len(result)
            result[tag] = self.item()
            flags = self.int()
            if flags & 0xFF == _NILVALUE_SXP:
                return result
            if flags & 0xFF != _LISTSXP:
                raise self.fail("the next pairlist cell or its end", f"SEXP type {flags & 0xFF}")


def unserialize(data: bytes, source: str = "R data") -> object:
    """One object in R's XDR serialization format (``X\\n``, versions 2 and 3) as Python values.

    Vectors become lists (``None`` for a missing string), named vectors and pairlists dicts.

    Examples
    --------
    >>> blob = b"X\\n" + struct.pack(">iii", 2, 0, 0) + struct.pack(">ii", 16, 1) + struct.pack(">ii", 9, 2) + b"hi"
    >>> unserialize(blob)
    ['hi']

    Raises
    ------
    InvalidInputError
        If the bytes are not that format, are cut short, or hold a type outside the supported ones.
    """
    reader = _Reader(data, source)
    if reader.take(2) != b"X\n":
        raise InvalidInputError([Issue("header", "R's XDR serialization ('X\\n')", data[:2])], source)
    version = reader.int()
    reader.int(), reader.int()  # the writer's and the minimal reader's R versions
    if version == 3:
        reader.take(reader.int())  # the native encoding's name
    elif version != 2:
        raise InvalidInputError([Issue("version", "serialization version 2 or 3", version)], source)
    return reader.item()


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInputError([Issue("path", "a readable file", f"{path}: {exc.strerror}")], path.name) from None


def read_lazyload_index(base: str | Path) -> dict[str, tuple[int, int]]:
    """``{name: (offset, length)}`` of a lazy-load data base (``base`` + ``.rdx``, e.g. ``.../data/Rdata``).

    Raises
    ------
    InvalidInputError
        If the index is missing, not gzip, or not a lazy-load index.
    """
    path = Path(f"{base}.rdx")
    try:
        index = unserialize(gzip.decompress(_read_bytes(path)), path.name)
    except (OSError, EOFError) as exc:
        raise InvalidInputError([Issue("path", "a gzip-compressed R lazy-load index", str(exc))], path.name) from None
    variables = index.get("variables") if isinstance(index, dict) else None
    if not isinstance(variables, dict) or not all(isinstance(v, list) and len(v) == 2 for v in variables.values()):
        raise InvalidInputError([Issue("variables", "name -> (offset, length) pairs", type(variables))], path.name)
    return {str(name): (int(v[0]), int(v[1])) for name, v in variables.items()}


def read_lazyload_object(base: str | Path, entry: tuple[int, int]) -> object:
    """The object at ``entry`` = ``(offset, length)`` of ``base`` + ``.rdb`` (zlib-compressed, R's type 1).

    Raises
    ------
    InvalidInputError
        If the data base is missing or the entry is not a zlib-compressed serialized object.
    """
    path = Path(f"{base}.rdb")
    offset, length = entry
    with path.open("rb") if path.is_file() else _missing(path) as handle:
        handle.seek(offset)
        chunk = handle.read(length)
    if len(chunk) != length or length < 4:
        raise InvalidInputError([Issue(f"offset {offset}", f"{length} bytes", f"{len(chunk)} bytes")], path.name)
    try:
        data = zlib.decompress(chunk[4:])
    except zlib.error as exc:
        raise InvalidInputError([Issue(f"offset {offset}", "a zlib stream", str(exc))], path.name) from None
    return unserialize(data, path.name)


def _missing(path: Path):  # type: ignore[no-untyped-def]
    raise InvalidInputError([Issue("path", "an existing file", str(path))], path.name)

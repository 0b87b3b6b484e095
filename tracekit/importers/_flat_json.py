"""The compiled JSONL scans: a reader for the common shape (one flat object per line), and the
key check for the chunks it gives up on. Only the JSONL importer imports this module (and with it
numba, ~0.15 s), in its calling thread.

polars' NDJSON reader costs ~0.65 us of CPU per event on our traces, and the
key check another 0.2; that alone keeps JSONL ingest under its 2 M events/s
target on two cores. Trace lines are a narrow dialect of JSON (a flat object
of known keys, values null, a plain string or a number), so one byte scan can
check the keys and type the values together at a fraction of that cost.

The reader is deliberately partial: it accepts only what it can type exactly
as polars' reader would (no escapes, no duplicate keys, no blank lines, no
``true``/``false``, integers for ``addr size value attr_index`` or ``"0x..."``
strings for the first three) and gives up on anything else, in which case the
chunk takes the general path (polars' reader, then the scenario text rules)
that names the bad line. It never reports an error itself, so it cannot
change a message; a differential test holds it to polars' reader on random
objects.
"""

from __future__ import annotations

import json
import threading
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
from numba import njit

from ..schema import trace_columns

#: Output columns read as text spans (time too: its text is cast to Float64 by
#: polars, the same correctly rounded conversion its NDJSON reader makes).
SPAN_COLUMNS = ("time", "agent", "op", "cmo", "sysreg", "attr", "phase", "detail")
#: Output columns read as unsigned integers.
INT_COLUMNS = ("addr", "size", "value", "attr_index")
#: Keys that may appear and whose (plain) values are ignored, as the importer documents.
IGNORED_KEYS = ("seq", "side", "src", "src_line", "src_offset")

_KIND_SPAN, _KIND_INT, _KIND_IGNORED, _KIND_TIME = 0, 1, 2, 3
#: The keys a line may have (trace-v1's columns), in the order of the compiled name tables.
KEYS = tuple(trace_columns())


def _key_table():
    """(candidates[len, first byte, 2], key bytes, key offsets, kind, output column) per key."""
    keys = KEYS
    assert set(keys) == set(SPAN_COLUMNS) | set(INT_COLUMNS) | set(IGNORED_KEYS), keys
    cand = np.full((32, 128, 2), -1, dtype=np.int8)
    for q, k in enumerate(keys):
        slot = cand[len(k), ord(k[0])]
        slot[0 if slot[0] < 0 else 1] = q  # at most two keys share a length and a first letter
        assert slot[1] < 0 or slot[0] != q
    kind = np.array([_KIND_TIME if k == "time" else _KIND_SPAN if k in SPAN_COLUMNS
                     else _KIND_INT if k in INT_COLUMNS else _KIND_IGNORED for k in keys], dtype=np.int8)
    column = np.array([SPAN_COLUMNS.index(k) if k in SPAN_COLUMNS else INT_COLUMNS.index(k) if k in INT_COLUMNS
                       else -1 for k in keys], dtype=np.int8)
    names = np.frombuffer("".join(keys).encode(), dtype=np.uint8)
    offsets = np.cumsum([0, *(len(k) for k in keys)]).astype(np.int64)
    return cand, names, offsets, kind, column


_CAND, _NAMES, _OFFSETS, _KIND, _COLUMN = _key_table()
_ATTR_INDEX = INT_COLUMNS.index("attr_index")
#: 10^0 .. 10^22: the powers of ten a double holds exactly (Clinger's fast path for timestamps).
_POW10 = np.array([10.0 ** k for k in range(23)], dtype=np.float64)



@njit(cache=True, nogil=True, boundscheck=False)
def _parse(buf, rows, cand, names, offsets, kind, column, spans, ints, present,
           codes, slots, dstart, dend, ndist, times, tslow, pow10):  # pragma: no cover - compiled
    """Fill one row per line of ``buf`` (every line a flat object); the number of rows, or -1 to give up.

    ``spans[c, r]`` = (start, end) of row r's text for span column c (-1 = null);
    ``ints[c, r]`` its integers, ``present[c, r]`` 1 where the integer is not null.
    Text columns are also interned while they have few distinct values:
    ``codes[c, r]`` indexes their distinct texts ``dstart/dend[c, :ndist[c]]``
    (-1 = null); ``ndist[c]`` = -1 once a column has too many to intern.
    ``times[r]``: the timestamp as a double, exact where it could be converted with one
    correctly rounded operation (Clinger's fast path, below); ``tslow[0]`` = 1 where one could not.
    """
    nslots = slots.shape[1]
    most = dstart.shape[1]
    predicted = np.full(32, -1, np.int64)  # the key at each place of the previous line
    n = buf.size
    i = 0
    r = 0
    while i < n:
        if r >= rows:
            return -1
        for c in range(spans.shape[0]):
            spans[c, r, 0] = -1
            spans[c, r, 1] = -1
            codes[c, r] = -1
        for c in range(ints.shape[0]):
            present[c, r] = 0
        while i < n and (buf[i] == 32 or buf[i] == 9 or buf[i] == 13):
            i += 1
        if i >= n or buf[i] != 123:  # '{' (a blank line also gives up: polars skips it)
            return -1
        i += 1
        seen = 0
        first = True
        place = 0
        while True:
            while i < n and (buf[i] == 32 or buf[i] == 9 or buf[i] == 13):
                i += 1
            if i >= n:
                return -1
            if buf[i] == 125:  # '}'
                i += 1
                break
            if not first:
                if buf[i] != 44:  # ','
                    return -1
                i += 1
                while i < n and (buf[i] == 32 or buf[i] == 9 or buf[i] == 13):
                    i += 1
            first = False
            # the key: a known name, without escapes
            if i >= n or buf[i] != 34:
                return -1
            s = i + 1
            # lines of one file name their keys in one order: first try the key the previous
            # line had at this place (its bytes, then the closing quote), which spares the
            # scan for the quote and the table lookup
            q = -1
            if place < 32 and predicted[place] >= 0:
                k = predicted[place]
                a = offsets[k]
                length = offsets[k + 1] - a
                if s + length < n and buf[s + length] == 34:
                    q = k
                    for m in range(length):
                        if buf[s + m] != names[a + m]:
                            q = -1
                            break
                    j = s + length
            if q < 0:
                j = s  # (the string scans are written out: a helper call cost the scan ~25%)
                while j < n and buf[j] != 34 and buf[j] != 92 and buf[j] >= 32:
                    j += 1
                if j >= n or buf[j] != 34:
                    return -1
                length = j - s
                if length == 0 or length >= cand.shape[0] or buf[s] >= 128:
                    return -1
                for t in range(2):
                    k = cand[length, buf[s], t]
                    if k < 0:
                        break
                    a = offsets[k]
                    same = True
                    for m in range(1, length):
                        if buf[s + m] != names[a + m]:
                            same = False
                            break
                    if same:
                        q = k
                        break
                if q < 0:
                    return -1
                if place < 32:
                    predicted[place] = q
            place += 1
            if seen & (1 << q):
                return -1
            seen |= 1 << q
            i = j + 1
            while i < n and (buf[i] == 32 or buf[i] == 9 or buf[i] == 13):
                i += 1
            if i >= n or buf[i] != 58:  # ':'
                return -1
            i += 1
            while i < n and (buf[i] == 32 or buf[i] == 9 or buf[i] == 13):
                i += 1
            if i >= n:
                return -1
            b = buf[i]
            kq = kind[q]
            col = column[q]
            if b == 110:  # null
                if i + 4 > n or buf[i + 1] != 117 or buf[i + 2] != 108 or buf[i + 3] != 108:
                    return -1
                i += 4
            elif b == 34:  # a string without escapes or control characters
                s = i + 1
                j = s
                while j < n and buf[j] != 34 and buf[j] != 92 and buf[j] >= 32:
                    j += 1
                if j >= n or buf[j] != 34:
                    return -1
                if kq == _KIND_SPAN:
                    spans[col, r, 0] = s
                    spans[col, r, 1] = j
                    if ndist[col] >= 0:  # intern: FNV-1a over the bytes, linear probing
                        h = np.uint32(2166136261)
                        for m in range(s, j):
                            h = (h ^ np.uint32(buf[m])) * np.uint32(16777619)
                        slot = int(h) & (nslots - 1)
                        length = j - s
                        while True:
                            code = slots[col, slot] - 1
                            if code < 0:  # a new text
                                if ndist[col] >= most:
                                    ndist[col] = -1
                                    break
                                code = ndist[col]
                                ndist[col] = code + 1
                                dstart[col, code] = s
                                dend[col, code] = j
                                slots[col, slot] = code + 1
                                codes[col, r] = code
                                break
                            a = dstart[col, code]
                            if dend[col, code] - a == length:
                                same = True
                                for m in range(length):
                                    if buf[s + m] != buf[a + m]:
                                        same = False
                                        break
                                if same:
                                    codes[col, r] = code
                                    break
                            slot = (slot + 1) & (nslots - 1)
                elif kq == _KIND_INT:  # "0x" and 1..16 hex digits, not for attr_index
                    if col == _ATTR_INDEX or j - s < 3 or j - s > 18 or buf[s] != 48 or buf[s + 1] != 120:
                        return -1
                    v = np.uint64(0)
                    for m in range(s + 2, j):
                        d = buf[m]
                        if 48 <= d <= 57:
                            h = d - 48
                        elif 97 <= d <= 102:
                            h = d - 87
                        elif 65 <= d <= 70:
                            h = d - 55
                        else:
                            return -1
                        v = (v << np.uint64(4)) | np.uint64(h)
                    ints[col, r] = v
                    present[col, r] = 1
                elif kq == _KIND_TIME:  # a timestamp as text: polars' reader refuses it
                    return -1
                i = j + 1
            elif b == 45 or 48 <= b <= 57:  # a number
                s = i
                if kq == _KIND_INT:  # digits only, no leading zero, below 2^64
                    if b == 45 or (b == 48 and i + 1 < n and 48 <= buf[i + 1] <= 57):
                        return -1
                    v = np.uint64(0)
                    j = i
                    while j < n and 48 <= buf[j] <= 57:
                        if j - i >= 20 or (col == _ATTR_INDEX and j - i >= 18):  # attr_index is read as i64
                            return -1
                        d = np.uint64(buf[j] - 48)
                        if j - i == 19:  # a 20th digit: v * 10 + d must not pass 2^64 - 1
                            if v > np.uint64(1844674407370955161) or \
                                    (v == np.uint64(1844674407370955161) and d > np.uint64(5)):
                                return -1
                        v = v * np.uint64(10) + d
                        j += 1
                    if j < n and (buf[j] == 46 or buf[j] == 101 or buf[j] == 69):  # a fraction or exponent
                        return -1
                    ints[col, r] = v
                    present[col, r] = 1
                    i = j
                elif kq == _KIND_SPAN:  # a number where text is expected: polars decides
                    return -1
                else:  # JSON's number grammar: -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?
                    # with its decimal digits w (at most 15 significant) and exponent e10 on the way
                    j = i
                    negative = buf[j] == 45
                    if negative:
                        j += 1
                    if j >= n or not (48 <= buf[j] <= 57):
                        return -1
                    w = 0
                    digits = 0
                    e10 = 0
                    if buf[j] == 48:
                        j += 1
                    else:
                        while j < n and 48 <= buf[j] <= 57:
                            digits += 1
                            if digits <= 15:
                                w = w * 10 + (buf[j] - 48)
                            j += 1
                    if j < n and buf[j] == 46:
                        j += 1
                        if j >= n or not (48 <= buf[j] <= 57):
                            return -1
                        while j < n and 48 <= buf[j] <= 57:
                            if digits or buf[j] != 48:  # leading zeros are not significant
                                digits += 1
                                if digits <= 15:
                                    w = w * 10 + (buf[j] - 48)
                            e10 -= 1
                            j += 1
                    if j < n and (buf[j] == 101 or buf[j] == 69):
                        j += 1
                        sign = 1
                        if j < n and (buf[j] == 43 or buf[j] == 45):
                            if buf[j] == 45:
                                sign = -1
                            j += 1
                        if j >= n or not (48 <= buf[j] <= 57):
                            return -1
                        ex = 0
                        while j < n and 48 <= buf[j] <= 57:
                            if ex < 100000:
                                ex = ex * 10 + (buf[j] - 48)
                            else:
                                digits = 99  # an exponent this long: left to polars (as > 15 digits)
                            j += 1
                        e10 += sign * ex
                    if kq == _KIND_TIME:
                        spans[col, r, 0] = s
                        spans[col, r, 1] = j
                        # Clinger's fast path: w < 10^15 < 2^53 and 10^|e10| <= 10^22 are exact
                        # doubles, so one multiplication or division rounds correctly, as polars'
                        # conversion of the text does; anything else is left to polars
                        if digits > 15:
                            tslow[0] = 1
                        elif w == 0:
                            times[r] = -0.0 if negative else 0.0
                        elif 0 <= e10 <= 22:
                            times[r] = -(w * pow10[e10]) if negative else w * pow10[e10]
                        elif -22 <= e10 < 0:
                            times[r] = -(w / pow10[-e10]) if negative else w / pow10[-e10]
                        else:
                            tslow[0] = 1
                    i = j
            else:  # true, false, objects, arrays: polars decides
                return -1
        while i < n and (buf[i] == 32 or buf[i] == 9 or buf[i] == 13):
            i += 1
        if i < n:
            if buf[i] != 10:
                return -1
            i += 1
        r += 1
    return r


@njit(cache=True, nogil=True, boundscheck=False)
def _gather(buf, spans, c, rows):  # pragma: no cover - compiled
    """Arrow string buffers (offsets, data, validity bytes, nulls) of span column ``c``."""
    total = 0
    for r in range(rows):
        if spans[c, r, 0] >= 0:
            total += spans[c, r, 1] - spans[c, r, 0]
    offsets = np.empty(rows + 1, dtype=np.int32)
    data = np.empty(total, dtype=np.uint8)
    valid = np.empty(rows, dtype=np.uint8)
    pos = 0
    nulls = 0
    offsets[0] = 0
    for r in range(rows):
        s = spans[c, r, 0]
        if s >= 0:
            e = spans[c, r, 1]
            for m in range(s, e):
                data[pos] = buf[m]
                pos += 1
            valid[r] = 1
        else:
            valid[r] = 0
            nulls += 1
        offsets[r + 1] = pos
    return offsets, data, valid, nulls


def _validity(valid: np.ndarray, nulls: int):
    return None if nulls == 0 else pa.py_buffer(np.packbits(valid, bitorder="little"))


#: Distinct texts interned per column and chunk before the column is gathered as spans instead.
MOST_DISTINCT = 256
_SLOTS = 1024  # hash slots per column (a power of two, four per interned text)


class FlatChunk(NamedTuple):
    """A chunk as typed columns, and the distinct values of its interned text columns."""

    frame: pl.DataFrame
    #: column -> its distinct values (a null among them when some row has none), for the
    #: text columns with few distinct values: what ``unique()`` would give, for free
    distinct: dict[str, pl.Series]
    #: column -> each row's index into ``distinct[column]`` (uint32), for the same columns: a
    #: test of a text against a few names is a lookup by code instead of a string comparison
    codes: dict[str, np.ndarray]


def read_flat(raw: bytes, lines: int) -> FlatChunk | None:
    """The chunk ``raw`` of ``lines`` lines as polars' NDJSON reader types it, or None to give up.

    Columns: ``time`` Float64, ``addr size value`` UInt64, ``attr_index``
    Int64 and the text fields as String, every one present (null where a
    line lacks the key), as ``pl.read_ndjson(raw, schema=JSONL_TYPED)`` gives.
    """
    if lines > (1 << 31) - 1 or len(raw) >= (1 << 31):
        return None
    buf = np.frombuffer(raw, dtype=np.uint8)
    nspan = len(SPAN_COLUMNS)
    spans = np.empty((nspan, lines, 2), dtype=np.int64)
    ints = np.zeros((len(INT_COLUMNS), lines), dtype=np.uint64)
    present = np.empty((len(INT_COLUMNS), lines), dtype=np.uint8)
    codes = np.empty((nspan, lines), dtype=np.int32)
    slots = np.zeros((nspan, _SLOTS), dtype=np.int32)
    dstart = np.empty((nspan, MOST_DISTINCT), dtype=np.int64)
    dend = np.empty((nspan, MOST_DISTINCT), dtype=np.int64)
    ndist = np.zeros(nspan, dtype=np.int64)
    ndist[SPAN_COLUMNS.index("time")] = -1  # a number: never interned
    times = np.empty(lines, dtype=np.float64)
    tslow = np.zeros(1, dtype=np.int64)
    rows = _parse(buf, lines, _CAND, _NAMES, _OFFSETS, _KIND, _COLUMN, spans, ints, present,
                  codes, slots, dstart, dend, ndist, times, tslow, _POW10)
    if rows != lines:
        return None
    out: dict[str, pl.Series] = {}
    distinct: dict[str, pl.Series] = {}
    index: dict[str, np.ndarray] = {}
    for c, name in enumerate(SPAN_COLUMNS):
        nd = int(ndist[c])
        if name == "time" and not tslow[0]:  # every timestamp converted exactly in the scan
            valid = (spans[c, :, 0] >= 0).view(np.uint8)
            nnull = rows - int(np.count_nonzero(valid))
            out[name] = pl.Series(name, pa.Array.from_buffers(
                pa.float64(), rows, [_validity(valid, nnull), pa.py_buffer(times)], null_count=nnull))
            continue
        if nd >= 0:  # interned: the few texts, gathered by code (nulls: the code past them)
            texts = [raw[dstart[c, k]:dend[c, k]].decode() for k in range(nd)]
            code = codes[c]
            nulls = code < 0
            has_null = bool(nulls.any())
            if has_null:
                code = np.where(nulls, nd, code)
            values = pl.Series(name, texts + [None], dtype=pl.String)
            index[name] = code.astype(np.uint32, copy=False)
            out[name] = values.gather(pl.Series(index[name]))
            distinct[name] = values if has_null else values.head(nd)
            continue
        offsets, data, valid, nnull = _gather(buf, spans, c, rows)
        arr = pa.Array.from_buffers(pa.string(), rows, [_validity(valid, nnull), pa.py_buffer(offsets),
                                                        pa.py_buffer(data)], null_count=nnull)
        out[name] = pl.Series(name, arr)
    for c, name in enumerate(INT_COLUMNS):
        valid = present[c]
        nnull = rows - int(np.count_nonzero(valid))
        values = ints[c] if name != "attr_index" else ints[c].view(np.int64)
        arr = pa.Array.from_buffers(pa.uint64() if name != "attr_index" else pa.int64(), rows,
                                    [_validity(valid, nnull), pa.py_buffer(values)], null_count=nnull)
        out[name] = pl.Series(name, arr)
    if out["time"].dtype == pl.String:
        try:  # polars' own string-to-float conversion (correctly rounded; "1e400" becomes inf)
            out["time"] = out["time"].cast(pl.Float64)
        except pl.exceptions.PolarsError:
            return None
    return FlatChunk(pl.DataFrame(out), distinct, index)


def warm_up() -> None:
    """Load (or compile) the reader and the key scan in the calling thread, before worker threads use them."""
    read_flat(b'{"agent": "guest", "op": "barrier"}\n', 1)
    _load_key_scan()


# --------------------------------------------------------------------------
# Every JSONL object's keys, for chunks the reader above gives up on: one compiled pass

_OUTER = np.zeros(256, dtype=np.uint8)  # outside strings: 1 quote, 2 newline, 3 open, 4 close
_OUTER[ord('"')], _OUTER[ord("\n")] = 1, 2
_OUTER[ord("{")] = _OUTER[ord("[")] = 3
_OUTER[ord("}")] = _OUTER[ord("]")] = 4
_INNER = np.zeros(256, dtype=np.uint8)  # inside strings: 1 end (quote, or a newline: bad JSON), 2 escape
_INNER[ord('"')] = _INNER[ord("\n")] = 1
_INNER[ord("\\")] = 2


@njit(cache=True, nogil=True, boundscheck=False)
def _scan_keys(buf, start, depth, names, offsets, outer, inner):  # pragma: no cover - compiled
    """First key of a top-level object (a string followed by ':' at depth 1) that is not in ``names``.

    Returns (newlines before it, line start, key start, key end, kind): kind 0
    none found, 2 an unknown key, 1 a key with an escape (Python decodes it).
    Strings are skipped whole, escapes included, so a value never counts as a key.
    """
    n = buf.size
    lines = 0
    line_start = start
    i = start
    while i < n:
        cl = outer[buf[i]]
        if cl == 0:
            i += 1
            continue
        if cl == 1:
            j = i + 1
            esc = False
            while j < n:
                t = inner[buf[j]]
                if t == 0:
                    j += 1
                elif t == 2:
                    esc = True
                    j += 2
                else:
                    break
            if j >= n or buf[j] == 10:
                i = j
                continue
            k = j + 1
            if depth == 1:
                while k < n and (buf[k] == 32 or buf[k] == 9 or buf[k] == 13):
                    k += 1
                if k < n and buf[k] == 58:
                    s = i + 1
                    if esc:
                        return lines, line_start, s, j, 1
                    length = j - s
                    found = False
                    for q in range(offsets.size - 1):
                        a = offsets[q]
                        if offsets[q + 1] - a == length and length > 0 and buf[s] == names[a]:
                            same = True
                            for m in range(1, length):
                                if buf[s + m] != names[a + m]:
                                    same = False
                                    break
                            if same:
                                found = True
                                break
                    if not found:
                        return lines, line_start, s, j, 2
            i = k
            continue
        if cl == 2:
            lines += 1
            depth = 0
            line_start = i + 1
        elif cl == 3:
            depth += 1
        else:
            depth -= 1
        i += 1
    return lines, line_start, -1, -1, 0


_key_scan_ready = threading.Event()
_key_scan_lock = threading.Lock()


def _load_key_scan() -> None:
    """Import numba and load (or compile) the key scan once, whichever thread asks first."""
    with _key_scan_lock:
        if not _key_scan_ready.is_set():
            _scan_keys(np.frombuffer(b"{}\n", dtype=np.uint8), 0, 0, _NAMES, _OFFSETS, _OUTER, _INNER)
            _key_scan_ready.set()


def unknown_key(raw: bytes) -> tuple[int, int, str] | None:
    """(line index in the chunk, byte offset of that line, key) of the first key that is no trace-v1 column."""
    if not _key_scan_ready.is_set():
        _load_key_scan()
    buf = np.frombuffer(raw, dtype=np.uint8)
    pos, depth, lines, start = 0, 0, 0, 0
    while True:
        n, line_start, s, e, kind = _scan_keys(buf, pos, depth, _NAMES, _OFFSETS, _OUTER, _INNER)
        lines += n
        start = line_start if n else start
        if kind == 0:
            return None
        text = raw[s:e].decode("utf-8", errors="replace")
        if kind == 1:  # a key spelled with escapes: decoded, it may be a column name
            try:
                text = json.loads(f'"{text}"')
            except ValueError:
                pass
            if text in KEYS:
                pos, depth = e + 1, 1  # go on after this key, inside the same object
                continue
        return lines, start, text

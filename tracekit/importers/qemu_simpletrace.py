"""QEMU "simple" trace backend files (binary, format version 4).

Layout (QEMU ``trace/simple.c``, ``scripts/simpletrace.py``; host byte order,
tracekit reads little-endian and recognises a big-endian file by its magic):

* header: ``u64 0xffffffffffffffff``, ``u64 magic 0xf2b177cb0aa429b4``, ``u64 version 4``;
* records, each starting with ``u64 record_type``:
  - 0, mapping: ``u64 event_id, u32 name_len, name`` (runtime ids: always use the mapping);
  - 1, event: ``u64 event_id, u64 timestamp_ns, u32 length, u32 pid`` then the arguments
    (``length`` = 24 + argument bytes): every non-string argument a ``u64``
    (signed values sign-extended), a string ``u32 len`` + bytes;
  - an event record with id ``0xfffffffffffffffe`` counts dropped events (one u64).
* no footer; a record cut short by the end of the file ends the data (QEMU killed).

Argument names and types come from ``trace-events-all`` (``--trace-events``);
events are then mapped exactly like qemu-log lines. ``time`` is the
timestamp in seconds of QEMU's monotonic clock (not wall time). Errors name
the byte offset: wrong magic, unsupported version, unknown record type,
unknown event id, an event not in trace-events, a record whose ``length``
disagrees with its arguments.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Iterator

from .._jit import njit
import numpy as np
import polars as pl
import pyarrow as pa

from .._arrays import distinct
from ..errors import TraceFormatError, at
from ..model import TraceInfo
from .tabular import options_info
from .base import ImportOptions, ImportResult
from ._lines import finish, hex_str
from .qemu_log import EventState, _map_event, _host_agent, _regions, load_mapping
from .trace_events import EventDef, load_table

HEADER_ID = 0xFFFFFFFFFFFFFFFF
MAGIC = 0xF2B177CB0AA429B4
DROPPED_ID = 0xFFFFFFFFFFFFFFFE
_SIGNED = {"int", "long", "short", "char", "signed", "int8_t", "int16_t", "int32_t", "int64_t", "ssize_t",
           "ptrdiff_t", "long long", "signed int", "signed long", "long int"}


@njit(cache=True)
def _walk(buf: np.ndarray, start: int):  # pragma: no cover - compiled
    """Record table: kind (0 mapping, 1 event, 2 bad type, 3 bad length), offset, id, ts, length, pid."""
    n = buf.shape[0]
    cap = max(16, n // 32)
    kind = np.empty(cap, np.int8)
    off = np.empty(cap, np.int64)
    eid = np.empty(cap, np.uint64)
    ts = np.empty(cap, np.uint64)
    length = np.empty(cap, np.int64)
    pid = np.empty(cap, np.uint32)
    k = 0
    pos = start
    end_of_data = n
    while pos + 8 <= n:
        if k == cap:
            cap *= 2
            kind = np.resize(kind, cap)  # noqa
            off = np.resize(off, cap)
            eid = np.resize(eid, cap)
            ts = np.resize(ts, cap)
            length = np.resize(length, cap)
            pid = np.resize(pid, cap)
        rt = np.uint64(0)
        for b in range(8):
            rt |= np.uint64(buf[pos + b]) << np.uint64(8 * b)
        if rt == 0:
            if pos + 20 > n:
                end_of_data = pos
                break
            v = np.uint64(0)
            for b in range(8):
                v |= np.uint64(buf[pos + 8 + b]) << np.uint64(8 * b)
            nl = 0
            for b in range(4):
                nl |= np.int64(buf[pos + 16 + b]) << np.int64(8 * b)
            if pos + 20 + nl > n:
                end_of_data = pos
                break
            kind[k] = 0
            off[k] = pos
            eid[k] = v
            ts[k] = 0
            length[k] = nl
            pid[k] = 0
            k += 1
            pos += 20 + nl
        elif rt == 1:
            if pos + 32 > n:
                end_of_data = pos
                break
            v = np.uint64(0)
            t = np.uint64(0)
            for b in range(8):
                v |= np.uint64(buf[pos + 8 + b]) << np.uint64(8 * b)
                t |= np.uint64(buf[pos + 16 + b]) << np.uint64(8 * b)
            ln = 0
            p = np.uint32(0)
            for b in range(4):
                ln |= np.int64(buf[pos + 24 + b]) << np.int64(8 * b)
                p |= np.uint32(buf[pos + 28 + b]) << np.uint32(8 * b)
            kind[k] = 1
            off[k] = pos
            eid[k] = v
            ts[k] = t
            length[k] = ln
            pid[k] = p
            if ln < 24:
                kind[k] = 3
                k += 1
                end_of_data = pos
                break
            if pos + 8 + ln > n:
                end_of_data = pos
                break
            k += 1
            pos += 8 + ln
        else:
            kind[k] = 2
            off[k] = pos
            eid[k] = rt
            ts[k] = 0
            length[k] = 0
            pid[k] = 0
            k += 1
            end_of_data = pos
            break
    if pos + 8 > n and pos < n:
        end_of_data = pos
    return kind[:k], off[:k], eid[:k], ts[:k], length[:k], pid[:k], end_of_data


@njit(cache=True)
def _arg_offsets(buf: np.ndarray, starts: np.ndarray, is_str: np.ndarray):  # pragma: no cover - compiled
    """Offsets of each argument of each record (strings: of their length word), and total bytes."""
    m = starts.shape[0]
    na = is_str.shape[0]
    offs = np.empty((m, na), np.int64)
    total = np.empty(m, np.int64)
    for i in range(m):
        p = starts[i]
        for j in range(na):
            offs[i, j] = p
            if is_str[j]:
                ln = 0
                if p + 4 <= buf.shape[0]:
                    for b in range(4):
                        ln |= np.int64(buf[p + b]) << np.int64(8 * b)
                p += 4 + ln
            else:
                p += 8
        total[i] = p - starts[i]
    return offs, total


@njit(cache=True)
def _gather_strings(buf: np.ndarray, offs: np.ndarray):  # pragma: no cover - compiled
    m = offs.shape[0]
    lens = np.empty(m, np.int64)
    tot = 0
    for i in range(m):
        ln = 0
        for b in range(4):
            ln |= np.int64(buf[offs[i] + b]) << np.int64(8 * b)
        lens[i] = ln
        tot += ln
    data = np.empty(tot, np.uint8)
    offsets = np.empty(m + 1, np.int64)
    q = 0
    for i in range(m):
        offsets[i] = q
        for b in range(lens[i]):
            data[q] = buf[offs[i] + 4 + b]
            q += 1
    offsets[m] = q
    return data, offsets


def _u64_at(buf: np.ndarray, offs: np.ndarray) -> np.ndarray:
    idx = offs[:, None] + np.arange(8)[None, :]
    return np.ascontiguousarray(buf[idx]).view("<u8").reshape(-1)


def _is_string(ctype: str) -> bool:
    t = ctype.replace("const", "").strip()
    return t.count("*") == 1 and t.replace("*", "").strip() == "char"


def _is_signed(ctype: str) -> bool:
    t = " ".join(ctype.replace("const", "").split())
    return "*" not in t and t in _SIGNED


class QemuSimpletraceImporter:
    """QEMU simple trace backend binary (format v4), decoded with trace-events-all."""

    format = "qemu-simpletrace"
    description = "QEMU simple trace backend binary (trace-<pid>, format v4), decoded with trace-events-all"
    suffixes = (".simpletrace",)

    def detect(self, head: bytes, path: Path) -> bool:
        return len(head) >= 16 and head[:8] == b"\xff" * 8 and head[8:16] in (
            struct.pack("<Q", MAGIC), struct.pack(">Q", MAGIC))

    def read(self, path: Path, options: ImportOptions) -> ImportResult:
        path = Path(path)
        src = str(path)
        table = load_table(options.trace_events)
        mapping = load_mapping(options.mapping)
        summary: dict[str, Any] = {"format": self.format, "trace_events": table.path or "built-in signatures"}
        state = EventState()
        result = ImportResult(batches=iter(()), info=TraceInfo(), summary=summary)

        def batches() -> Iterator[pl.DataFrame]:
            data = np.fromfile(path, dtype=np.uint8)
            if data.shape[0] < 24:
                raise TraceFormatError(f"{at(src, offset=0)}: expected a 24-byte simpletrace header, "
                                       f"found {data.shape[0]} bytes")
            hid, magic, version = struct.unpack("<QQQ", data[:24].tobytes())
            if hid != HEADER_ID or magic != MAGIC:
                if struct.unpack(">QQ", data[:16].tobytes()) == (HEADER_ID, MAGIC):
                    raise TraceFormatError(f"{at(src, offset=8)}: expected a little-endian simpletrace file, "
                                           "found a big-endian one (recorded on a big-endian host)")
                raise TraceFormatError(f"{at(src, offset=0 if hid != HEADER_ID else 8)}: expected simpletrace "
                                       f"header id 0x{HEADER_ID:x} and magic 0x{MAGIC:x}, found 0x{hid:x} 0x{magic:x}")
            if version != 4:
                raise TraceFormatError(f"{at(src, offset=16)}: expected simpletrace format version 4, found {version}"
                                       " (only version 4 is supported, as by QEMU's simpletrace.py)")
            kind, off, eid, ts, length, pid, end = _walk(data, 24)
            bad = np.nonzero(kind >= 2)[0]
            if bad.size:
                i = int(bad[0])
                if kind[i] == 2:
                    raise TraceFormatError(f"{at(src, offset=int(off[i]))}: expected record type 0 (mapping) or "
                                           f"1 (event), found {int(eid[i])}")
                raise TraceFormatError(f"{at(src, offset=int(off[i]))}: expected an event record length of at "
                                       f"least 24, found {int(length[i])}")
            if end < data.shape[0]:
                summary["truncated_tail_bytes"] = int(data.shape[0] - end)
            names: dict[int, str] = {}
            for i in np.nonzero(kind == 0)[0]:
                o = int(off[i])
                names[int(eid[i])] = data[o + 20:o + 20 + int(length[i])].tobytes().decode("ascii", "replace")
            summary["mapping_records"] = len(names)
            ev = np.nonzero(kind == 1)[0]
            e_off, e_id, e_ts, e_len = off[ev], eid[ev], ts[ev], length[ev]
            parts = []
            # dropped-events records
            dr = e_id == np.uint64(DROPPED_ID)
            if dr.any():
                n_dropped = _u64_at(data, e_off[dr] + 32)
                summary["dropped_events"] = int(n_dropped.sum())
                parts.append(pl.DataFrame({
                    "_line": e_off[dr].astype(np.uint64), "time": e_ts[dr] / 1e9,
                    "detail": [None] * int(dr.sum())}).with_columns(
                    pl.lit(0, pl.Int64).alias("_sub"), pl.lit("host.0").alias("agent"), pl.lit("marker").alias("op"),
                    pl.format("dropped {} events (trace buffer full)",
                              pl.Series(n_dropped.astype(np.uint64))).alias("detail")))
            known_ids = set(names)
            for id_ in distinct(e_id[~dr]).tolist():
                sel = (e_id == np.uint64(id_)) & ~dr
                first = int(e_off[sel][0])
                if id_ not in known_ids:
                    raise TraceFormatError(f"{at(src, offset=first)}: expected an event id declared by a mapping "
                                           f"record, found unknown event id {id_}")
                name = names[id_]
                if name not in table.events:
                    raise TraceFormatError(f"{at(src, offset=first)}: expected an event of the trace-events file "
                                           f"({table.path or 'built-in signatures'}), found {name!r} (id {id_}); "
                                           "pass the trace-events-all of the QEMU that wrote the file")
                parts.append(self._decode_event(data, name, table.events[name], e_off[sel], e_ts[sel], e_len[sel],
                                                mapping, state, src))
            summary["events"] = {k[6:]: v for k, v in sorted(state.counts.items()) if k.startswith("event:")}
            if parts:
                out = pl.concat(parts, how="diagonal_relaxed").sort("_line")
                out = out.with_columns(pl.col("_line").alias("src_offset"), pl.lit(None, pl.UInt64).alias("src_line"))
                yield finish(out, src)
            regions, note = _regions(state, options)
            result.info = options_info(options, path, regions)
            summary.update(note)

        result.batches = batches()
        return result

    def _decode_event(self, data: np.ndarray, name: str, ed: EventDef, offs: np.ndarray, ts: np.ndarray,
                      lens: np.ndarray, mapping: dict, state: EventState, src: str) -> pl.DataFrame:
        args = list(ed.args)
        is_str = np.array([_is_string(t) for t, _ in args], dtype=np.bool_)
        starts = offs + 32
        aoffs, total = _arg_offsets(data, starts, is_str)
        bad = np.nonzero(total != lens - 24)[0]
        if bad.size:
            i = int(bad[0])
            raise TraceFormatError(
                f"{at(src, offset=int(offs[i]))}: expected {int(lens[i]) - 24} argument bytes for {name} "
                f"(record length {int(lens[i])}), found arguments of {int(total[i])} bytes (truncated record)")
        cols: dict[str, Any] = {"_line": offs.astype(np.uint64), "time": ts / 1e9}
        shown = []
        for j, (ctype, an) in enumerate(args):
            if is_str[j]:
                sdata, soffs = _gather_strings(data, aoffs[:, j])
                arr = pa.LargeStringArray.from_buffers(len(soffs) - 1, pa.py_buffer(soffs.astype(np.int64)),
                                                       pa.py_buffer(sdata))
                cols[an] = pl.from_arrow(arr)
                shown.append(pl.format(f"{an}=" + "{}", pl.col(an)))
            else:
                v = _u64_at(data, aoffs[:, j])
                if _is_signed(ctype):
                    cols[an] = v.view("<i8")
                    shown.append(pl.format(f"{an}=" + "{}", pl.col(an)))
                else:
                    cols[an] = v
                    shown.append(pl.format(f"{an}=0x" + "{}", hex_str(pl.col(an))))
        df = pl.DataFrame(cols)
        # the argument names as the log regexes name them (the format may rename duplicates)
        rest = pl.concat_str([pl.lit(name), *shown], separator=" ") if shown else pl.lit(name)
        df = df.with_columns(rest.alias("rest"), pl.lit(None, pl.Int64).alias("tid"),
                             pl.lit(None, pl.UInt64).alias("src_line"), pl.lit(None, pl.String).alias("nvme_dir"))
        if name in ("pci_nvme_read", "pci_nvme_write", "pci_nvme_map_addr"):
            state.bump("nvme_direction_from_simpletrace_not_tracked", df.height)
        state.bump(f"event:{name}", df.height)
        fields = {an for _, an in args}
        return _map_event(name, df, fields, mapping, state, _host_agent(), src)


IMPORTER = QemuSimpletraceImporter()

"""QEMU ``trace-events`` files -> one regex per event, to decode the text trace backends.

A trace-events line is ``[PROPS ]NAME(ARGS) "FMT"`` (QEMU
``scripts/tracetool/__init__.py``); ``trace-events-all`` is all of them
concatenated. The log and ftrace backends print ``NAME `` + FMT with the
arguments in declaration order, so each printf conversion of FMT becomes a
named regex group for the matching argument. Decoding is then one
``str.extract_groups`` per event name present in a batch.

QEMU's own file is never copied into tracekit: it is read from
``--trace-events FILE`` or ``/usr/share/qemu/trace-events-all``. Without it, the
few events tracekit maps to accesses are still decoded from
:data:`BUILTIN_SIGNATURES` (written from the signatures in
``docs/readme/real-inputs.md``), and other event lines count as unknown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ..errors import TraceFormatError, at
from ._lines import dec_i64, hex_u64

#: Where Debian/Ubuntu/Fedora install the file (package qemu-system-common / qemu-common).
DEFAULT_PATHS = (
    Path("/usr/share/qemu/trace-events-all"),
    Path("/usr/local/share/qemu/trace-events-all"),
)

#: The events tracekit maps to accesses or regions, as a trace-events excerpt
#: (our own text, from the signatures of QEMU 7.2 and later quoted in the
#: design notes); used when no trace-events-all file is available.
BUILTIN_SIGNATURES = r'''
memory_region_ops_read(int cpu_index, void *mr, uint64_t addr, uint64_t value, unsigned size, const char *name) "cpu %d mr %p addr 0x%"PRIx64" value 0x%"PRIx64" size %u name '%s'"
memory_region_ops_write(int cpu_index, void *mr, uint64_t addr, uint64_t value, unsigned size, const char *name) "cpu %d mr %p addr 0x%"PRIx64" value 0x%"PRIx64" size %u name '%s'"
kvm_set_user_memory(uint32_t slot, uint32_t flags, uint64_t guest_phys_addr, uint64_t memory_size, uint64_t userspace_addr, int ret) "Slot#%d flags=0x%x gpa=0x%"PRIx64 " size=0x%"PRIx64 " ua=0x%"PRIx64 " ret=%d"
kvm_run_exit(int cpu_index, uint32_t reason) "cpu_index %d, reason %d"
address_space_map(void *as, uint64_t addr, uint64_t len, bool is_write, uint32_t attrs) "as:%p addr 0x%"PRIx64":%"PRIx64" write:%d attrs:0x%x"
pci_nvme_map_addr(uint64_t addr, uint64_t len) "addr 0x%"PRIx64" len %"PRIu64""
pci_nvme_map_prp(uint64_t trans_len, uint32_t len, uint64_t prp1, uint64_t prp2, int num_prps) "trans_len %"PRIu64" len %"PRIu32" prp1 0x%"PRIx64" prp2 0x%"PRIx64" num_prps %d"
smmuv3_translate_success(const char *n, uint16_t sid, uint64_t iova, uint64_t translated, int perm) "%s sid=0x%x iova=0x%"PRIx64" translated=0x%"PRIx64" perm=0x%x"
'''

#: Events whose arguments tracekit does not need, only their name (the
#: direction of the NVMe transfer that follows); recognised as whole text.
NAME_ONLY = ("pci_nvme_read", "pci_nvme_write")

# The newer kvm_set_user_memory (AddrSpace#, guest_memfd) is a different
# signature for the same name; tracekit tries both (see VARIANTS).
_KVM_SET_USER_MEMORY_V2 = r'''kvm_set_user_memory(uint16_t as, uint16_t slot, uint32_t flags, uint64_t guest_phys_addr, uint64_t memory_size, uint64_t userspace_addr, uint32_t fd, uint64_t fd_offset, int ret) "AddrSpace#%d Slot#%d flags=0x%x gpa=0x%"PRIx64 " size=0x%"PRIx64 " ua=0x%"PRIx64 " guest_memfd=%d" " guest_memfd_offset=0x%" PRIx64 " ret=%d"'''
_SMMUV3_OLD = r'''smmuv3_translate_success(const char *n, uint16_t sid, uint64_t iova, uint64_t translated, int perm) "%s sid=%d iova=0x%"PRIx64" translated=0x%"PRIx64" perm=0x%x"'''
_KVM_SET_USER_MEMORY_V1B = r'''kvm_set_user_memory(uint16_t as, uint16_t slot, uint32_t flags, uint64_t guest_phys_addr, uint64_t memory_size, uint64_t userspace_addr, int ret) "AddrSpace#%d Slot#%d flags=0x%x gpa=0x%"PRIx64 " size=0x%"PRIx64 " ua=0x%"PRIx64 " ret=%d"'''

_LINE_RE = re.compile(r"^\s*((?:(?:disable|vcpu|tcg-trans|tcg-exec|tcg)\s+)*)([A-Za-z_]\w*)\((.*?)\)\s*(.*)$")
_FMT_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|([A-Za-z_]\w*)')
_CONV = re.compile(r"%(?P<flags>[-+ #0']*)(?P<width>\d+|\*)?(?:\.(?P<prec>\d+|\*))?"
                   r"(?P<len>hh|h|ll|l|j|z|t|L|q)?(?P<conv>[diouxXeEfgGcsp%])")
_PRI = re.compile(r"^PRI([diouxX])(8|16|32|64|PTR|MAX)$")

#: regex text and decoding kind of each printf conversion.
_KIND = {"d": "int", "i": "int", "u": "uint", "x": "hex", "X": "hex", "o": "oct", "p": "ptr",
         "s": "str", "c": "char", "e": "float", "E": "float", "f": "float", "g": "float",
         "G": "float"}


@dataclass(frozen=True)
class EventDef:
    """One trace event: its arguments and the regex that reads its formatted text."""

    name: str
    args: tuple[tuple[str, str], ...]  # (C type, name)
    fmt: str
    regex: str  # anchored; one named group per conversion
    fields: tuple[tuple[str, str], ...]  # (group name, kind: int uint hex oct ptr str char float)
    source: str = ""  # file:line it came from

    def arg_kind(self, name: str) -> str | None:
        return dict(self.fields).get(name)


@dataclass
class EventTable:
    """Events by name; ``variants`` holds alternative definitions tried in order."""

    events: dict[str, EventDef] = field(default_factory=dict)
    variants: dict[str, list[EventDef]] = field(default_factory=dict)
    path: str | None = None

    def names(self) -> list[str]:
        return sorted(self.events)

    def definitions(self, name: str) -> list[EventDef]:
        return [self.events[name], *self.variants.get(name, [])]


def _unescape(s: str) -> str:
    return (s.replace("\\\\", "\x00").replace('\\"', '"').replace("\\n", "\n")
            .replace("\\t", "\t").replace("\x00", "\\"))


def _fmt_text(rest: str, where: str) -> str:
    out = []
    for lit, macro in _FMT_TOKEN.findall(rest):
        if macro:
            m = _PRI.match(macro)
            if not m:
                raise TraceFormatError(f"{where}: expected a string literal or PRI macro in the format, "
                                       f"found {macro!r}")
            conv, bits = m.groups()
            out.append({"64": "ll", "PTR": "l", "MAX": "j"}.get(bits, "") + conv)
        else:
            out.append(_unescape(lit))
    return "".join(out)


def _split_args(args: str) -> tuple[tuple[str, str], ...]:
    args = args.strip()
    if not args or args == "void":
        return ()
    out = []
    for i, a in enumerate(args.split(",")):
        a = a.strip()
        m = re.match(r"^(.*?)([A-Za-z_]\w*)$", a)
        if not m:
            out.append((a, f"arg{i}"))
        else:
            out.append((m.group(1).strip(), m.group(2)))
    return tuple(out)


def fmt_to_regex(fmt: str, argnames: list[str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Turn a printf format into an anchored regex with one named group per argument.

    Conversions take the argument names in order (QEMU's tracetool passes the
    arguments in declaration order); group names are made unique.
    """
    parts = ["^"]
    fields: list[tuple[str, str]] = []
    used: set[str] = set()
    pos = 0
    k = 0
    for m in _CONV.finditer(fmt):
        parts.append(re.escape(fmt[pos:m.start()]))
        pos = m.end()
        conv = m.group("conv")
        if conv == "%":
            parts.append("%")
            continue
        flags = m.group("flags") or ""
        width = m.group("width")
        kind = _KIND[conv]
        base = argnames[k] if k < len(argnames) else f"arg{k}"
        k += 1
        name = re.sub(r"\W", "_", base)
        if not re.match(r"[A-Za-z_]", name):
            name = "a_" + name
        while name in used:
            name += "_"
        used.add(name)
        if kind == "int":
            body = r"[-+]?\d+"
        elif kind == "uint":
            body = r"\d+"
        elif kind == "hex":
            body = r"(?:0[xX])?[0-9a-fA-F]+" if "#" in flags else r"[0-9a-fA-F]+"
        elif kind == "oct":
            body = r"0?[0-7]+"
        elif kind == "ptr":
            body = r"0x[0-9a-fA-F]+|\(nil\)"
        elif kind == "char":
            body = r"(?s:.)"
        elif kind == "float":
            body = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|inf|nan)"
        else:
            body = r".*?"
        pad = ""
        if width and "0" not in flags and kind != "str":
            pad = " *"
        if "-" in flags and pad:
            parts.append(f"(?P<{name}>{body}){pad}")
        else:
            parts.append(f"{pad}(?P<{name}>{body})")
        fields.append((name, kind))
    parts.append(re.escape(fmt[pos:]))
    regex = "".join(parts)
    # a trailing lazy string group must reach the end of the line
    regex += "$"
    return regex, tuple(fields)


def parse_line(line: str, where: str) -> EventDef | None:
    s = line.strip()
    if not s or s.startswith("#"):
        return None
    m = _LINE_RE.match(s)
    if not m:
        raise TraceFormatError(f"{where}: expected 'NAME(ARGS) \"FORMAT\"', found {s[:80]!r}")
    props, name, args, rest = m.groups()
    argdefs = _split_args(args)
    fmt = _fmt_text(rest, where) if rest.strip() else ""
    if "vcpu" in props.split():
        # tracetool (QEMU <= 8.0) gives vcpu events a hidden first argument
        # and prefixes "cpu=%p " to the format.
        argdefs = (("void *", "cpu"), *argdefs)
        fmt = "cpu=%p " + fmt
    regex, fields = fmt_to_regex(fmt, [a[1] for a in argdefs])
    return EventDef(name, argdefs, fmt, regex, fields, where)


def parse_text(text: str, src: str = "<trace-events>") -> EventTable:
    table = EventTable(path=src)
    for i, line in enumerate(text.splitlines(), 1):
        ev = parse_line(line, at(src, i))
        if ev is None:
            continue
        if ev.name in table.events:
            if ev.regex != table.events[ev.name].regex:
                table.variants.setdefault(ev.name, []).append(ev)
        else:
            table.events[ev.name] = ev
    return table


def builtin_table() -> EventTable:
    t = parse_text(BUILTIN_SIGNATURES, "<tracekit built-in signatures>")
    return _add_variants(t)


def _add_variants(t: EventTable) -> EventTable:
    """Accept every known form of events whose signature changed between QEMU releases."""
    for name in NAME_ONLY:
        if name not in t.events:
            t.events[name] = EventDef(name, (), "%s", r"^(?P<text>.*)$", (("text", "str"),), "<name only>")
    for text in (_KVM_SET_USER_MEMORY_V2, _KVM_SET_USER_MEMORY_V1B, _SMMUV3_OLD, BUILTIN_SIGNATURES):
        for ev in parse_text(text, "<tracekit built-in signatures>").events.values():
            if ev.name not in t.events:
                t.events[ev.name] = ev
            elif ev.regex != t.events[ev.name].regex and all(
                    v.regex != ev.regex for v in t.variants.get(ev.name, [])):
                t.variants.setdefault(ev.name, []).append(ev)
    return t


def load_table(path: Path | None) -> EventTable:
    """The event table of ``path``, else of an installed trace-events-all, else the built-ins.

    Signature variants of the events tracekit maps are always added, so a
    7.2 file also decodes a 9.x ``kvm_set_user_memory`` line.
    """
    if path is None:
        path = next((p for p in DEFAULT_PATHS if p.is_file()), None)
        if path is None:
            t = builtin_table()
            t.path = None
            return t
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise TraceFormatError(f"{path}: expected a readable trace-events file, found: {e.strerror}") from None
    return _add_variants(parse_text(text, str(path)))


class LazyEventTable:
    """The :class:`EventTable` of an installed trace-events-all, parsed on first use.

    Its event names are known at once (a cheap pass over the file): classifying lines
    needs only them, and a log without trace events (an execlog) never pays for
    building a regex per event of the ~6000 in QEMU's file.
    """

    def __init__(self, path: Path, names: set[str]):
        self.path = str(path)
        self._path = path
        self._names = names
        self._table: EventTable | None = None

    def table(self) -> EventTable:
        if self._table is None:
            self._table = load_table(self._path)
        return self._table

    @property
    def events(self) -> dict[str, EventDef]:
        return self.table().events

    @property
    def variants(self) -> dict[str, list[EventDef]]:
        return self.table().variants

    def names(self) -> list[str]:
        return sorted(self._names)

    def definitions(self, name: str) -> list[EventDef]:
        return self.table().definitions(name)


def load_table_lazily(path: Path | None) -> "EventTable | LazyEventTable":
    """:func:`load_table`, deferring the parse of an installed file (``path`` None) to first use.

    A file named by the user is read at once (its errors surface at once). An installed
    file whose lines do not all have the ``NAME(ARGS)`` shape is read at once too (it
    then fails as :func:`load_table` does).
    """
    if path is not None:
        return load_table(path)
    found = next((p for p in DEFAULT_PATHS if p.is_file()), None)
    if found is None:
        return load_table(None)
    try:
        text = found.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return load_table(found)  # reports it
    names: set[str] = set()
    for line in text.splitlines():
        st = line.strip()
        if not st or st.startswith("#"):
            continue
        m = _LINE_RE.match(st)
        if m is None:
            return load_table(found)  # reports it
        names.add(m.group(2))
    names.update(NAME_ONLY)
    for extra in (_KVM_SET_USER_MEMORY_V2, _KVM_SET_USER_MEMORY_V1B, _SMMUV3_OLD, BUILTIN_SIGNATURES):
        names.update(parse_text(extra, "<tracekit built-in signatures>").events)
    return LazyEventTable(found, names)


def decode_args(body: pl.Expr, ev: EventDef) -> tuple[pl.Expr, list[pl.Expr]]:
    """``(matched, [typed field expressions])`` reading ``body`` (the text after the name).

    ints -> Int64, uint/hex/ptr/oct -> UInt64, str/char -> String, float -> Float64.
    """
    return body.str.contains(ev.regex), typed_fields(body.str.extract_groups(ev.regex), ev)


def fast_regex(ev: EventDef) -> str | None:
    """A regex that reads the common case of ``ev`` with the same groups, cheaper (or None).

    Each lazy string group ``(?P<s>.*?)`` followed by literal text becomes
    ``(?P<s>[^C\\n]*)``, C the first character of that text: a one-pass regex,
    which the regex engine captures about twice as fast. Where it matches, the
    captures are those of :attr:`EventDef.regex` (the lazy group also stops at the
    first C after which the rest matches, and the rest is the same); a line it
    does not match (a string argument holding C) is read with the exact regex.
    """
    out = _fast_cache.get(ev.regex, 0)
    if out != 0:
        return out
    rx = ev.regex
    parts: list[str] = []
    pos = 0
    for m in _LAZY_STR.finditer(rx):
        nxt = rx[m.end():]
        tok = re.match(r"\\[^\w]|[^\\()\[\].*+?{}|$^]", nxt)  # one literal character
        if tok is None or nxt[tok.end():tok.end() + 1] in ("*", "+", "?", "{"):
            continue  # not followed by a mandatory literal character: keep the lazy group
        head = tok.group(0)[-1]
        parts.append(rx[pos:m.start()] + m.group(1) + "[^" + re.escape(head) + "\\n]*)")
        pos = m.end()
    out = "".join(parts) + rx[pos:] if parts else None
    _fast_cache[ev.regex] = out
    return out


_LAZY_STR = re.compile(r"(\(\?P<\w+>)\.\*\?\)")
_fast_cache: dict[str, str | None] = {}


def unfit_fields(groups: pl.Expr, ev: EventDef, only: list[str] | None = None) -> pl.Expr:
    """True where a number field of ``ev`` (or of those named in ``only``) matched its format but
    does not fit its type (more than 64 bits): the typed value would be a silent null."""
    numbers = [(name, e) for (name, kind), e in zip((f for f in ev.fields if only is None or f[0] in only),
                                                     typed_fields(groups, ev, only))
               if kind in ("int", "uint", "hex", "ptr", "oct")]
    return pl.any_horizontal([groups.struct.field(n).is_not_null() & e.is_null() for n, e in numbers]) \
        if numbers else pl.lit(False)


def typed_fields(groups: pl.Expr, ev: EventDef, only: list[str] | None = None) -> list[pl.Expr]:
    """The fields of an ``extract_groups`` struct of ``ev`` (or those named in ``only``), typed."""
    out = []
    for name, kind in ev.fields:
        if only is not None and name not in only:
            continue
        g = groups.struct.field(name)
        if kind == "int":
            e = dec_i64(g)
        elif kind == "uint":
            e = g.str.to_integer(base=10, dtype=pl.UInt64, strict=False)
        elif kind == "hex" and f"(?P<{name}>[0-9a-fA-F]+)" in ev.regex:  # no 0x to strip (no '#' flag)
            e = g.str.to_integer(base=16, dtype=pl.UInt64, strict=False)
        elif kind == "hex":
            e = hex_u64(g)
        elif kind == "ptr":
            e = pl.when(g == "(nil)").then(pl.lit(0, pl.UInt64)).otherwise(hex_u64(g))
        elif kind == "oct":
            e = g.str.to_integer(base=8, dtype=pl.UInt64, strict=False)
        elif kind == "float":
            e = g.cast(pl.Float64, strict=False)
        else:
            e = g
        out.append(e.alias(name))
    return out

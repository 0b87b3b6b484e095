"""QEMU TCG plugin output: ``contrib/plugins/execlog.c`` and ``tests/tcg/plugins/mem.c``.

execlog prints one line per executed instruction::

    VCPU, 0xPC, 0xOPCODE, "DISASSEMBLY"[, load|store, 0xPADDR, DEVICE]...[, REG -> 0xVALUE]...

(7.2 has no register suffixes; 9.0+ appends ``, reg -> 0x...`` for tracked
registers that the instruction changed, ``reg=PATTERN``). In system mode the
memory suffix carries the *physical* address and the device name (``RAM`` or
the MMIO region). The access size is not printed: tracekit derives it from
the AArch64 disassembly (``size_from_disassembly``). A load/store pair,
``ld1 {v0.16b, v1.16b}`` and similar instructions have several memory
suffixes, or one wide one (QEMU 8.1+ does 16-byte accesses atomically for
LSE2): tracekit divides the instruction's total bytes by the number of
suffixes on its line, so ``stp x29, x30`` gives two 8-byte writes in 7.2 and
one 16-byte write where QEMU reports one access.

System instructions are read from the disassembly:

* ``msr sctlr_el1|mair_el1|tcr_el1|ttbr0_el1|ttbr1_el1, xN`` -> ``sysreg``
  with the value from a ``sysreg -> 0x`` suffix on the same line, else the
  last known value of ``xN`` on that vCPU (execlog ``xN -> 0x`` suffixes,
  ``-d cpu`` register dumps), else a ``marker`` (value unknown, counted).
* ``dc ivac|cvac|civac|cvau|cvap|cvadp|zva, xN`` and ``ic ivau, xN`` -> ``cmo``
  of the line holding the address, when the address is physical: while the
  vCPU's recorded SCTLR_EL1.M is 0 (VA = PA). Otherwise a ``marker`` (the
  physical address is unknown; counted).
* ``dc isw|csw|cisw`` and ``ic iallu|ialluis`` -> ``cmo`` without address.
* ``dsb``/``dmb``/``isb`` -> ``barrier``.

Instruction fetches: execlog gives the virtual PC; an ``ifetch`` (4 bytes)
is emitted only while the vCPU's recorded SCTLR_EL1.M is 0 (then PC is
physical). Instructions executed before the first recorded SCTLR_EL1 write
of a vCPU give no ifetch (the log may not start at reset).

mem.c ``print-accesses=on`` (QEMU 9.1+) prints a CSV whose ``access_size``
is in **bits**; its rows carry no vCPU number: tracekit takes the vCPU of the
nearest preceding execlog or ``-d exec`` line, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .._jit import njit
import numpy as np
import polars as pl

from .guest_map import GuestMap
from .base import ImportOptions, ImportResult
from ._lines import dec_u64, fail_first, hex_str, hex_u64

EXECLOG_RE = r'^(?P<vcpu>\d+), 0x(?P<pc>[0-9a-fA-F]+), 0x(?P<opcode>[0-9a-fA-F]+), "(?P<disas>[^"]*)"(?P<suffix>.*)$'
MEM_SUFFIX = r", (?:load|store), 0x[0-9a-fA-F]+(?:, [^,\s]+)?"
# After ", load, " / ", store, " became "|load " / "|store ", one access is:
MEM_ITEM = r"\|(load|store) 0x([0-9a-fA-F]+)(?:, ([^,|>\s]+)(?:,|$))?"
REG_ITEM = r", ([A-Za-z_][\w.]*) -> 0x([0-9a-fA-F]+)"
#: A suffix that the MEM_SUFFIX / REG_ITEM removal accepts, in its usual shape (a subset).
_USUAL_SUFFIX = r"^(?:, (?:load|store), 0x[0-9a-fA-F]+, [^,\s]+)*(?:, [A-Za-z_][\w.]* -> 0x[0-9a-fA-F]+)*$"

MEMCSV_RE = (r"^0x(?P<insn_vaddr>[0-9a-fA-F]+),(?P<sym>[^,]*),0x(?P<mem_vaddr>[0-9a-fA-F]+),"
             r"0x(?P<mem_hwaddr>[0-9a-fA-F]+),(?P<bits>\d+),(?P<type>load|store),0x(?P<value>[0-9a-fA-F]+)$")

#: system registers that tracekit records (model: SCTLR_EL1 and MAIR_EL1 drive it),
#: by the names QEMU's disassemblers print, including the generic S3_op1_Cn_Cm_op2 form.
SYSREG_NAMES = {
    "sctlr_el1": "SCTLR_EL1", "sctlr_el12": "SCTLR_EL1", "s3_0_c1_c0_0": "SCTLR_EL1",
    "mair_el1": "MAIR_EL1", "mair_el12": "MAIR_EL1", "s3_0_c10_c2_0": "MAIR_EL1",
    "tcr_el1": "TCR_EL1", "tcr_el12": "TCR_EL1", "s3_0_c2_c0_2": "TCR_EL1",
    "ttbr0_el1": "TTBR0_EL1", "ttbr0_el12": "TTBR0_EL1", "s3_0_c2_c0_0": "TTBR0_EL1",
    "ttbr1_el1": "TTBR1_EL1", "ttbr1_el12": "TTBR1_EL1", "s3_0_c2_c0_1": "TTBR1_EL1",
}
DC_BY_VA = {"ivac": "dc.ivac", "cvac": "dc.cvac", "civac": "dc.civac", "cvau": "dc.cvau",
            "cvap": "dc.cvap", "cvadp": "dc.cvap", "zva": "dc.zva"}
DC_SET_WAY = {"isw": "dc.isw", "csw": "dc.csw", "cisw": "dc.cisw"}
IC_OPS = {"ivau": "ic.ivau", "iallu": "ic.iallu", "ialluis": "ic.ialluis"}

_REG_BYTES = {"x": 8, "w": 4, "q": 16, "d": 8, "s": 4, "h": 2, "b": 1}


def _reg_width(reg: pl.Expr) -> pl.Expr:
    """Bytes of an AArch64 register operand (x/w/q/d/s/h/b N, xzr, wzr, sp, wsp)."""
    r = reg.str.to_lowercase()
    first = r.str.slice(0, 1)
    known = r.str.contains(r"^(?:[xwqdshb]\d+|xzr|wzr|sp|wsp)$")
    w = pl.when(r == "sp").then(8).when(r == "wsp").then(4).otherwise(
        first.replace_strict(_REG_BYTES, default=None, return_dtype=pl.Int64))
    return pl.when(known).then(w).otherwise(None).cast(pl.Int64)


def size_from_disassembly(disas: pl.Expr) -> pl.Expr:
    """Total bytes an AArch64 load/store transfers, from its disassembly text (null if unknown).

    Rules (Arm ARM mnemonic families):
    * ``...b`` / ``...h`` forms (ldrb, strh, ldarb, stlxrh, ldaddb, swph, casb, ldrsb...) -> 1 / 2;
      ``ldrsw``/``ldursw``/``ldtrsw``/``ldapursw`` -> 4;
    * pairs (ldp, stp, ldnp, stnp, ldxp, stxp, ldaxp, stlxp, ldpsw, casp*) -> 2 x register;
    * exclusive stores (stxr, stlxr, stxp, stlxp): the data register is the 2nd operand;
    * SIMD structure loads/stores ``ld1..ld4``/``st1..st4`` (and ``ldNr``): registers in
      braces x arrangement (``.16b``/``.8h``/``.4s``/``.2d`` 16 bytes, ``.8b``/``.4h``/``.2s``/
      ``.1d`` 8 bytes, one lane ``.b``/``.h``/``.s``/``.d`` 1/2/4/8);
    * everything else that loads or stores (ldr, str, ldur, ldar, stlr, ldapr, ldxr, swp,
      cas, ld<op> atomics, ldr q/d/s/h/b): the data register's width.
    """
    d = disas.str.strip_chars().str.to_lowercase()
    mn = d.str.extract(r"^(\S+)", 1)
    op1 = d.str.extract(r"^\S+\s+([^,\s]+)", 1)
    op2 = d.str.extract(r"^\S+\s+[^,]+,\s*([^,\s\[]+)", 1)
    is_ldst = mn.str.contains(r"^(?:ld|st|swp|cas)")
    simd = mn.str.contains(r"^(?:ld|st)[1-4]r?$")
    braces = d.str.extract(r"\{([^}]*)\}", 1)
    nregs = braces.str.count_matches(r"v\d+\.")
    arr = braces.str.extract(r"v\d+\.(\d*[bhsd])", 1)
    per_reg = arr.replace_strict(
        {"16b": 16, "8h": 16, "4s": 16, "2d": 16, "8b": 8, "4h": 8, "2s": 8, "1d": 8,
         "b": 1, "h": 2, "s": 4, "d": 8}, default=None, return_dtype=pl.Int64)
    elem = arr.str.slice(-1).replace_strict({"b": 1, "h": 2, "s": 4, "d": 8}, default=None,
                                            return_dtype=pl.Int64)
    per_reg = pl.when(mn.str.contains(r"^ld[1-4]r$")).then(elem).otherwise(per_reg)  # replicate: one element
    excl_store = mn.str.contains(r"^st(?:l)?x[rp][bh]?$")
    data_reg = pl.when(excl_store).then(op2).otherwise(op1)
    pair = mn.str.contains(r"^(?:ldp|stp|ldnp|stnp|ldxp|stxp|ldaxp|stlxp|ldiapp|stilp|casp[a-z]*)$")
    width = _reg_width(data_reg)
    return (
        pl.when(~is_ldst).then(None)
        .when(simd).then(nregs.cast(pl.Int64) * per_reg)
        .when(mn == "ldpsw").then(8)
        .when(mn.str.contains(r"^ld(?:r|ur|tr|apur)sw$")).then(4)
        .when(pair).then(width * 2)
        .when(mn.str.contains(r"^(?:ld|st|swp|cas)[a-z]*b$") & ~mn.str.contains(r"^(?:ld|st)[1-4]")).then(1)
        .when(mn.str.contains(r"^(?:ld|st|swp|cas)[a-z]*h$")).then(2)
        .otherwise(width)
        .cast(pl.Int64)
    )


@dataclass
class PluginState:
    """What carries from one batch of a log to the next (per-vCPU CPU state)."""

    regs: dict[tuple[int, str], int | None] = field(default_factory=dict)  # (vcpu, "x0") -> value
    sctlr: dict[int, int] = field(default_factory=dict)  # vcpu -> last recorded SCTLR_EL1
    current_vcpu: int | None = None
    last_execlog_line: int | None = None  # src line of the last execlog line seen
    mmio_traced: bool = False  # memory_region_ops events with cpu >= 0 are in the log
    counts: dict[str, int] = field(default_factory=dict)
    disassembly: pl.DataFrame | None = None  # decoded disassembly texts (_decoded_disassembly)

    def bump(self, key: str, n: int) -> None:
        if n:
            self.counts[key] = self.counts.get(key, 0) + int(n)


_REG_CODE = {**{f"x{i}": i for i in range(31)}, "sp": 31, "xzr": 32}
_REG_NAME = {c: r for r, c in _REG_CODE.items()}


def _xreg(reg: pl.Expr) -> pl.Expr:
    """General-purpose register operand -> its 64-bit name (``w3`` -> ``x3``); null for others."""
    r = reg.str.to_lowercase()
    return (pl.when(r.str.contains(r"^[xw](?:\d|[12]\d|30)$")).then(pl.format("x{}", r.str.slice(1)))
            .when(r.is_in(["xzr", "wzr"])).then(pl.lit("xzr")))


_IMM = r"#(-?(?:0x[0-9a-f]+|\d+))"


def _imm(text: pl.Expr) -> pl.Expr:
    """``#0x10`` / ``#16`` / ``#-1`` -> u64 (negative values wrap, as the register would)."""
    t = text.str.extract(_IMM, 1)
    neg = t.str.starts_with("-")
    mag = t.str.strip_prefix("-")
    v = pl.when(mag.str.starts_with("0x")).then(hex_u64(mag)).otherwise(
        mag.str.to_integer(base=10, dtype=pl.UInt64, strict=False))
    return pl.when(neg).then((pl.lit(0, pl.UInt64) - v)).otherwise(v)


#: Mnemonics that write no general-purpose register named by their first operand.
_NO_DEST = (r"^(?:st[a-z0-9]*|cmp|cmn|tst|ccmp|ccmn|fcmp\w*|fccmp\w*|msr|dc|ic|tlbi|at|b|b\.\w+|bl|"
            r"blr\w*|br\w*|ret\w*|cbz|cbnz|tbz|tbnz|nop|hint|dsb|dmb|isb|sb|svc|hvc|smc|eret\w*|wfi|wfe|yield|"
            r"sev|sevl|prfm|prfum|brk|hlt|clrex|bti|sys|csdb|esb|psb|tsb|dcps\d|drps|pacia\w*|autia\w*|paci\w*|"
            r"auti\w*|xpac\w*)$")


def instruction_effects(dis: pl.DataFrame) -> pl.DataFrame:
    """Per distinct disassembly (``mn``, ``op1``, ``op2``, ``disas``): what it does to registers.

    ``w_kind``/``w_reg``/``w_val``/``w_lane``: ``set`` (movz, mov #imm, movn, mov xzr) with its
    value, ``lane`` (movk: 16 bits ``w_val`` at lane ``w_lane``) or ``clobber`` (any other write
    of a general-purpose register: a load, an ALU result, ``bl`` into x30); ``w_reg2``: a second
    register written (pairs, atomics); ``wb_reg``: a base register written back.
    """
    mn = pl.col("mn")
    dl = pl.col("disas").str.to_lowercase()
    dis = dis.with_columns(
        _xreg(pl.col("op1")).alias("_d1"), _xreg(pl.col("op2")).alias("_d2"),
        pl.col("op1").str.starts_with("w").alias("_w32"),
        dl.str.extract(r"lsl #(\d+)", 1).cast(pl.Int64, strict=False).fill_null(0).alias("_sh"),
        dl.str.extract(_IMM, 1).alias("_t"),
        pl.col("disas").str.contains(r",\s*#").alias("_isimm"),
        (mn.str.contains(_NO_DEST) & ~mn.str.contains(r"^stl?x[rp][bh]?$")).alias("_nodest"),
        mn.str.contains(r"^(?:ld\w*p\w*|swp\w*|ld(?:add|clr|eor|set|smax|smin|umax|umin)\w*|casp\w*)$").alias("_two"),
        dl.str.extract(r"\[(x\d+)[^\]]*\](?:!|,)", 1).alias("wb_reg"))
    t = pl.col("_t")
    mag = t.str.strip_prefix("-")
    dis = dis.with_columns(
        pl.when(mag.str.starts_with("0x")).then(hex_u64(mag))
        .otherwise(mag.str.to_integer(base=10, dtype=pl.UInt64, strict=False)).alias("_m"))
    imm = pl.when(t.str.starts_with("-")).then(pl.lit(0, pl.UInt64) - pl.col("_m")).otherwise(pl.col("_m"))
    dis = dis.with_columns(imm.alias("_imm"))
    shifted = pl.col("_imm") * pl.lit(2, pl.UInt64).pow(pl.col("_sh")).cast(pl.UInt64)
    setval = (pl.when(mn.is_in(["mov", "movz"]) & pl.col("_isimm")).then(shifted).when(mn == "movn").then(~shifted)
              .when((mn == "mov") & pl.col("op2").is_in(["xzr", "wzr"])).then(pl.lit(0, pl.UInt64)))
    setval = pl.when(pl.col("_w32")).then(setval & pl.lit(0xFFFFFFFF, pl.UInt64)).otherwise(setval)
    adr = mn.is_in(["adr", "adrp"]) & pl.col("_isimm")
    setval = pl.when(adr).then(pl.col("_imm")).otherwise(setval)
    is_set = (mn.is_in(["mov", "movz", "movn"]) & (pl.col("_isimm") | pl.col("op2").is_in(["xzr", "wzr"]))
              & ~(mn == "movn") | (mn == "movn") | adr)
    movk = mn == "movk"
    # xD = xN +/- #imm (add, sub, adds, subs with an immediate) and xD = xN (mov register)
    src = pl.when(pl.col("op2").is_in(["sp", "wsp"])).then(pl.lit("sp")).otherwise(pl.col("_d2"))
    three = pl.col("disas").str.strip_chars().str.contains(
        r"^\S+\s+\w+,\s*\w+,\s*#-?(?:0x[0-9a-fA-F]+|\d+)(?:,\s*lsl #\d+)?$")
    addimm = mn.is_in(["add", "adds", "sub", "subs"]) & pl.col("_isimm") & three & src.is_not_null()
    copy = (mn == "mov") & ~pl.col("_isimm") & src.is_not_null() & (src != "xzr")
    d1 = pl.col("_d1").is_not_null() & (pl.col("_d1") != "xzr")
    kind = (pl.when(~d1).then(None)
            .when(movk).then(pl.when(pl.col("_w32") & (pl.col("_sh") > 16)).then(pl.lit("clobber")).otherwise(pl.lit("lane")))
            .when(is_set).then(pl.lit("set"))
            .when(addimm).then(pl.lit("add"))
            .when(copy).then(pl.lit("copy"))
            .when(~pl.col("_nodest")).then(pl.lit("clobber")))
    bl = mn.is_in(["bl", "blr", "blraa", "blrab", "blraaz", "blrabz"])
    neg = mn.is_in(["sub", "subs"])
    return dis.with_columns(
        pl.when(bl).then(pl.lit("clobber")).otherwise(kind).alias("w_kind"),
        pl.when(bl).then(pl.lit("x30")).otherwise(pl.col("_d1")).alias("w_reg"),
        pl.when(addimm | copy).then(src).alias("w_src"),
        pl.col("_w32").alias("w_32"),
        pl.when(movk).then(pl.col("_imm")).when(is_set).then(setval)
        .when(addimm & neg).then(pl.lit(0, pl.UInt64) - shifted).when(addimm).then(shifted).alias("w_val"),
        pl.when(movk).then(pl.col("_sh") // 16).alias("w_lane"),
        pl.when(pl.col("_two") & pl.col("_d2").is_not_null() & (pl.col("_d2") != "xzr")).then(pl.col("_d2"))
        .alias("w_reg2"),
    ).drop("_d1", "_d2", "_w32", "_sh", "_t", "_isimm", "_nodest", "_two", "_m", "_imm")


#: ``side`` of the rows whose agent is ``guest.<vcpu>`` (given here: finish need not derive it).
_GUEST_SIDE = pl.when(pl.col("vcpu").is_not_null()).then(pl.lit("guest")).alias("side")

_KIND_CODE = {"set": 0, "lane": 1, "clobber": 2, "add": 3, "copy": 4}


@njit(cache=True)
def _regscan(vc, rc, kind, val, has, lane, src, w32, sv, sk):  # pragma: no cover - compiled
    """Replay register writes in order: sv/sk[vcpu, reg] value/known; returns value/known after each row."""
    n = vc.shape[0]
    out_v = np.zeros(n, np.uint64)
    out_k = np.zeros(n, np.bool_)
    m16 = np.uint64(0xFFFF)
    m32 = np.uint64(0xFFFFFFFF)
    for i in range(n):
        v = vc[i]
        r = rc[i]
        k = kind[i]
        if k == 0:
            sv[v, r] = val[i]
            sk[v, r] = has[i]
        elif k == 1:
            sh = np.uint64(16 * lane[i])
            sv[v, r] = (sv[v, r] & ~(m16 << sh)) | ((val[i] & m16) << sh)
        elif k == 2:
            sk[v, r] = False
        elif k == 3 or k == 4:
            s = src[i]
            known = sk[v, s] or s == 32
            x = np.uint64(0) if s == 32 else sv[v, s]
            if k == 3:
                x = x + val[i]
            if w32[i]:
                x = x & m32
            sv[v, r] = x
            sk[v, r] = known
        out_v[i] = sv[v, r]
        out_k[i] = sk[v, r]
    return out_v, out_k


def suffix_register_rows(rows: pl.LazyFrame) -> pl.LazyFrame:
    """The register values of execlog ``reg -> 0xVALUE`` suffixes, as replay rows (register_writes).

    Needs ``vcpu``, ``_line`` and ``suffix`` only: each line on its own, so the importer
    computes it a batch ahead, in its reading thread.
    """
    return (
        rows.filter(pl.col("suffix").str.contains(" -> ", literal=True))
        .select("vcpu", "_line", pl.col("suffix").str.extract_all(REG_ITEM).alias("m")).explode("m").drop_nulls("m")
        # each item matched REG_ITEM (", NAME -> 0xHEX", NAME without spaces): cut at " -> 0x"
        .with_columns(pl.col("m").str.find(" -> 0x", literal=True).alias("_a"))
        .select("vcpu", _xreg(pl.col("m").str.slice(2, pl.col("_a") - 2)).alias("reg"),
                (pl.col("_line").cast(pl.Int64) * 4 + 2).alias("key"),
                pl.col("m").str.slice(pl.col("_a") + 6).str.to_integer(base=16, dtype=pl.UInt64, strict=False)
                .alias("val"))
        .filter(pl.col("reg").is_not_null() & (pl.col("reg") != "xzr"))
        .select("vcpu", pl.col("reg").replace_strict(_REG_CODE, default=32, return_dtype=pl.Int64).alias("r"), "key",
                pl.lit(_KIND_CODE["set"], pl.Int64).alias("k"), pl.col("val").fill_null(0).alias("x"),
                pl.col("val").is_not_null().alias("h"), pl.lit(0, pl.Int64).alias("l"),
                pl.lit(32, pl.Int64).alias("s"), pl.lit(False).alias("w")))


def register_writes(g: pl.DataFrame, dump_obs: pl.DataFrame, state: PluginState,
                    suffix_regs: pl.DataFrame | None = None) -> pl.DataFrame:
    """The value of every general-purpose register after each point of the log, as far as known.

    Sources, in order of a line: what the instruction does (``movz``/``mov #imm``/``movn``/
    ``adr``/``adrp`` set a value, ``movk`` replaces 16 bits, ``add``/``sub #imm`` and ``mov xD,
    xN`` compute from another register, any other write of the register (a load, other
    arithmetic, a base-register writeback, ``bl`` into x30) makes it unknown), then the
    execlog ``reg -> 0x`` suffix of that line, which wins. ``-d cpu`` dumps set every x
    register. The replay is sequential (one register feeds another): one compiled loop.
    Returns ``vcpu, reg, key, rval`` (key = 4 * line + order in the line), rval null if unknown.
    ``suffix_regs``: :func:`suffix_register_rows` of ``g``, when already done.
    """
    key1 = (pl.col("_line").cast(pl.Int64) * 4 + 1).alias("key")
    ints = {"vcpu": pl.Int64, "r": pl.Int64, "key": pl.Int64, "k": pl.Int64, "x": pl.UInt64, "h": pl.Boolean,
            "l": pl.Int64, "s": pl.Int64, "w": pl.Boolean}
    clob = [pl.lit(_KIND_CODE["clobber"], pl.Int64).alias("k"), pl.lit(0, pl.UInt64).alias("x"),
            pl.lit(False).alias("h"), pl.lit(0, pl.Int64).alias("l"), pl.lit(32, pl.Int64).alias("s"),
            pl.lit(False).alias("w")]
    gl = g.lazy()
    # Register names and kinds are coded as integers per distinct disassembly
    # (instruction_codes), so the rows below are all integers.
    parts = [
        # what the instruction itself does (decoded once per distinct text: instruction_effects)
        gl.filter(pl.col("w_k").is_not_null()).select(
            "vcpu", pl.col("w_r").alias("r"), key1, pl.col("w_k").alias("k"),
            pl.col("w_val").fill_null(0).alias("x"), pl.col("w_val").is_not_null().alias("h"),
            pl.col("w_lane").fill_null(0).alias("l"), pl.col("w_s").alias("s"),
            pl.col("w_32").fill_null(False).alias("w")),
        gl.filter(pl.col("w_r2").is_not_null()).select("vcpu", pl.col("w_r2").alias("r"), key1, *clob),
        gl.filter(pl.col("wb_r").is_not_null()).select("vcpu", pl.col("wb_r").alias("r"), key1, *clob),
        # execlog register suffixes (value after the instruction)
        suffix_regs.lazy() if suffix_regs is not None else suffix_register_rows(gl),
        # -d cpu dumps
        _dump_keys(dump_obs, g).lazy().select(
            "vcpu", pl.col("reg").replace_strict(_REG_CODE, default=32, return_dtype=pl.Int64).alias("r"), "key",
            pl.lit(_KIND_CODE["set"], pl.Int64).alias("k"), pl.col("rval").fill_null(0).alias("x"),
            pl.col("rval").is_not_null().alias("h"), pl.lit(0, pl.Int64).alias("l"), pl.lit(32, pl.Int64).alias("s"),
            pl.lit(False).alias("w")),
    ]
    # the state carried from earlier batches, as rows at key 0 (so that look-ups find it)
    carried = [(v, r, val) for (v, r), val in state.regs.items()]
    parts.insert(0, pl.LazyFrame(
        {"vcpu": [c[0] for c in carried], "r": [_REG_CODE.get(c[1], 32) for c in carried],
         "key": [0] * len(carried), "k": [_KIND_CODE["set"]] * len(carried),
         "x": [c[2] or 0 for c in carried], "h": [c[2] is not None for c in carried],
         "l": [0] * len(carried), "s": [32] * len(carried), "w": [False] * len(carried)}, schema=ints))
    obs = pl.concat([p.cast(ints) for p in parts]).sort("key", maintain_order=True).collect()
    vcpus = sorted(set(obs["vcpu"].unique().to_list()) | {v for v, _ in state.regs})
    if obs.height and obs.select(pl.col("k").is_in([_KIND_CODE["set"], _KIND_CODE["clobber"]]).all()).item():
        # Only whole-register writes (no movk lane, no add/mov from another register): no
        # value depends on an earlier one, so each row's value is its own and the replay
        # is not needed. Same results as _regscan.
        obs = obs.with_columns(pl.when((pl.col("k") == _KIND_CODE["set"]) & pl.col("h")).then(pl.col("x"))
                               .cast(pl.UInt64).alias("rval"))
        last = {(v, r): x for v, r, x in obs.unique(["vcpu", "r"], keep="last", maintain_order=True)
                .select("vcpu", "r", "rval").iter_rows()}
        obs = obs.with_columns(pl.col("r").replace_strict(_REG_NAME, default="xzr", return_dtype=pl.String)
                               .alias("reg"))
        state.regs = {(v, r): last.get((v, c)) for v in vcpus for r, c in _REG_CODE.items() if c < 32}
        return obs.select("vcpu", "reg", "key", "rval")
    vidx = {v: i for i, v in enumerate(vcpus)}
    sv = np.zeros((max(1, len(vcpus)), 33), np.uint64)
    sk = np.zeros((max(1, len(vcpus)), 33), np.bool_)
    for (v, r), val in state.regs.items():
        if val is not None and r in _REG_CODE:
            sv[vidx[v], _REG_CODE[r]] = val
            sk[vidx[v], _REG_CODE[r]] = True
    if obs.height:
        v = obs["vcpu"].replace_strict(vidx, return_dtype=pl.Int64) if len(vidx) > 1 or vcpus[0] != 0 else obs["vcpu"]
        out_v, out_k = _regscan(v.to_numpy(), *(obs[c].to_numpy() for c in ("r", "k", "x", "h", "l", "s", "w")), sv, sk)
        obs = obs.with_columns(pl.when(pl.Series(out_k)).then(pl.Series(out_v, dtype=pl.UInt64)).alias("rval"))
    else:
        obs = obs.with_columns(pl.lit(None, pl.UInt64).alias("rval"))
    obs = obs.with_columns(pl.col("r").replace_strict(_REG_NAME, default="xzr", return_dtype=pl.String).alias("reg"))
    # carry: every register's state after this batch
    state.regs = {(v, r): (int(sv[i, c]) if sk[i, c] else None)
                  for v, i in vidx.items() for r, c in _REG_CODE.items() if c < 32}
    return obs.select("vcpu", "reg", "key", "rval")


def current_vcpu_column(df: pl.DataFrame, state: PluginState) -> pl.Series:
    """The vCPU of the nearest preceding execlog / ``Trace N:`` line, for lines that name none."""
    # (the regex reads only the exec lines: the text is null on the others)
    v = (pl.when(pl.col("kind") == "execlog").then(pl.col("rest").str.slice(0, pl.col("rest").str.find(",", literal=True)))
         .when(pl.col("kind") == "exec").then(
             pl.when(pl.col("kind") == "exec").then(pl.col("rest")).str.extract(r"^(?:Trace|Chain) (\d+):", 1))
         .cast(pl.Int64, strict=False))
    s = df.select(v.forward_fill().alias("v"))["v"]
    if state.current_vcpu is not None:
        s = s.fill_null(state.current_vcpu)
    last = s.drop_nulls()
    if last.len():
        state.current_vcpu = int(last[-1])
    return s


def register_observations(dumps: pl.DataFrame, regs: list[str]) -> pl.DataFrame:
    """``-d cpu`` dump lines -> (_line, vcpu, dpc, reg, rval) for ``regs`` ('x0'..'x30', 'sp').

    Every register of the last dump of each vCPU is also returned (it is the state
    carried to the next batch). ``dpc`` is the PC the dump was taken at.
    """
    schema = {"_line": pl.UInt64, "vcpu": pl.Int64, "dpc": pl.UInt64, "reg": pl.String, "rval": pl.UInt64}
    if dumps.height == 0:
        return pl.DataFrame(schema=schema)
    pc_line = pl.col("rest").str.contains(r"^\s*PC=")
    dumps = dumps.sort("_line").with_columns(
        pl.when(pc_line).then(hex_u64(pl.col("rest").str.extract(r"^\s*PC=([0-9a-fA-F]+)", 1)))
        .forward_fill().alias("dpc"),
        pc_line.cast(pl.Int64).cum_sum().alias("_blk"))
    parts = []
    for r in sorted(set(regs)):
        tag = "SP" if r == "sp" else f"X{int(r[1:]):02d}"
        parts.append(dumps.filter(pl.col("rest").str.contains(tag + "=", literal=True)).select(
            "_line", "vcpu", "dpc", pl.lit(r).alias("reg"),
            hex_u64(pl.col("rest").str.extract(tag + r"=([0-9a-fA-F]{16})", 1)).alias("rval")))
    last = dumps.filter(pl.col("_blk") == pl.col("_blk").max().over("vcpu"))
    obs = (last.select("_line", "vcpu", "dpc",
                       pl.col("rest").str.extract_all(r"(?:X\d\d|SP)=[0-9a-fA-F]{16}").alias("m"))
           .explode("m").drop_nulls("m"))
    parts.append(obs.select(
        "_line", "vcpu", "dpc",
        pl.col("m").str.extract(r"^(X\d\d|SP)", 1).str.to_lowercase()
        .str.replace(r"^x0(\d)$", "x$1").alias("reg"),
        hex_u64(pl.col("m").str.extract(r"=([0-9a-fA-F]+)$", 1)).alias("rval")))
    return pl.concat([p.cast(schema) for p in parts]).unique(["_line", "reg"], keep="first")


def _dump_keys(dump_obs: pl.DataFrame, g: pl.DataFrame) -> pl.DataFrame:
    """Place each ``-d cpu`` dump in the order of the execlog lines it describes.

    execlog prints an instruction when the *next* one starts, so a dump taken at
    the start of a block comes before the line of the instruction that ran just
    before it: the dump is the state after that next line, unless that line is the
    instruction at the dump's own PC (the first instruction of the log), in which
    case it is the state before it.
    """
    if dump_obs.height == 0:
        return dump_obs.with_columns(pl.lit(0, pl.Int64).alias("key"))
    nxt = g.select(pl.col("_line").alias("_nline"), "vcpu", pl.col("pc").alias("_npc")).sort("_nline")
    d = dump_obs.sort("_line").join_asof(nxt, left_on="_line", right_on="_nline", by="vcpu", strategy="forward",
                                         check_sortedness=False)
    nl = pl.col("_nline").cast(pl.Int64)
    key = (pl.when(nl.is_null()).then(pl.col("_line").cast(pl.Int64) * 4 + 1)
           .when(pl.col("_npc") == pl.col("dpc")).then(nl * 4 - 1)
           .otherwise(nl * 4 + 3))
    return d.with_columns(key.alias("key")).drop("_nline", "_npc")


def _split_execlog(df: pl.DataFrame) -> pl.DataFrame:
    """``V, 0xPC, 0xOP, "DISAS"SUFFIX`` -> vcpu, pc, disas, suffix (split kernels).

    The classifier already matched the head (``^\\d+, 0x[0-9a-fA-F]+, 0x[0-9a-fA-F]+, "``):
    the fields are cut at the separators (``"`` around the disassembly, ``, `` between
    the head's fields); capture groups over millions of lines would cost more than the
    rest of the decoding.
    """
    rest = pl.col("rest")
    df = df.with_columns(rest.str.splitn('"', 3).alias("_q"))
    df = df.with_columns(  # the part before the quote: "V, 0xPC, 0xOP, "
        pl.col("_q").struct.field("field_0").str.split_exact(", ", 2).alias("_h"),
        pl.col("_q").struct.field("field_1").alias("disas"),
        pl.col("_q").struct.field("field_2").alias("suffix"))
    df = df.with_columns(
        pl.col("_h").struct.field("field_0").cast(pl.Int64, strict=False).alias("vcpu"),
        pl.col("_h").struct.field("field_1").str.slice(2).str.to_integer(base=16, dtype=pl.UInt64, strict=False)
        .alias("pc"))
    # (no closing quote: null suffix, which the caller reports)
    fields = ("vcpu", "pc", "disas", "suffix")
    return df.select(*[c for c in df.columns if c not in ("_q", "_h", *fields)], *fields)


def _operands(df: pl.DataFrame) -> pl.DataFrame:
    """Add mn, op1, op2 of the disassembly ``mn op1, op2, ...`` (split kernels, in stages)."""
    df = df.with_columns(pl.col("disas").str.strip_chars().str.splitn(" ", 2).alias("_s"))
    df = df.with_columns(pl.col("_s").struct.field("field_0").alias("mn"),
                         pl.col("_s").struct.field("field_1").str.strip_chars().str.splitn(",", 3).alias("_o"))
    return df.with_columns(
        pl.col("_o").struct.field("field_0").str.strip_chars().alias("op1"),
        pl.col("_o").struct.field("field_1").str.strip_chars().alias("op2")).drop("_s", "_o").with_columns(
        pl.when(pl.col("op1") == "").then(None).otherwise(pl.col("op1")).alias("op1"))


def split_execlog_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """execlog lines (``_line``, ``src_line``, ``time``, ``rest``) cut into their fields.

    Adds ``vcpu``, ``pc``, ``disas``, ``suffix`` and ``_usual`` (the suffix has the usual
    shape). Each line on its own: the importer does this a batch ahead, in its reading
    thread, and hands the result to :func:`decode_execlog`.
    """
    g = _split_execlog(rows.select("_line", "src_line", "time", "rest"))
    # A suffix is memory items then register items. The usual shape (system mode: every
    # memory item names its device) is one DFA test; the others get the exact check
    # (decode_execlog): nothing may be left once the memory items, then the register
    # items, are removed.
    return g.with_columns(pl.col("suffix").str.contains(_USUAL_SUFFIX).alias("_usual"))


_HAS_MEM = (pl.col("suffix").str.contains(", load, ", literal=True)
            | pl.col("suffix").str.contains(", store, ", literal=True))
#: Columns of an instruction that its memory items carry.
_ITEM_COLS = ["_line", "_oline", "src_line", "time", "vcpu", "disas", "total"]


def execlog_mem_items(split: pl.DataFrame) -> pl.DataFrame:
    """The memory items of the usual-shape suffixes of :func:`split_execlog_rows` rows.

    One row per item, as :func:`_mem_items` gives them, without the instruction's
    ``_oline`` and ``total`` (decode_execlog adds them). Each line on its own, so the
    importer does this a batch ahead, in its reading thread.
    """
    return _mem_items(split.filter(_HAS_MEM & pl.col("_usual")).select(
        *[c for c in _ITEM_COLS if c in split.columns], "suffix"))


#: Distinct disassembly texts whose decoding is kept from one batch to the next.
DISASSEMBLY_CACHE = 1 << 16


def _decoded_disassembly(texts: pl.DataFrame, state: "PluginState") -> pl.DataFrame:
    """What each distinct disassembly text (``texts``: one ``disas`` column) means, for the join.

    Texts decoded in earlier batches are taken from ``state.disassembly`` (a function of
    the text alone); the cache starts again from this batch's texts when it would pass
    DISASSEMBLY_CACHE rows, so memory stays bounded.
    """
    cache = state.disassembly
    new = texts if cache is None else texts.filter(~pl.col("disas").is_in(cache["disas"].implode()))
    if new.height == 0 and cache is not None:
        return cache
    if cache is not None and cache.height + new.height > DISASSEMBLY_CACHE:
        cache, new = None, texts
    dis = _decode_disassembly(new)
    state.disassembly = dis if cache is None else pl.concat([cache, dis], how="vertical_relaxed")
    return state.disassembly


def _decode_disassembly(texts: pl.DataFrame) -> pl.DataFrame:
    """Mnemonic, access size, system register, maintenance op and register effects of each text."""
    dis = _operands(texts)
    dis = instruction_effects(dis.with_columns(size_from_disassembly(pl.col("disas")).alias("total")))
    is_msr = (pl.col("mn") == "msr") & pl.col("op1").is_in(list(SYSREG_NAMES))
    is_dc = pl.col("mn") == "dc"
    is_ic = pl.col("mn") == "ic"
    dis = dis.with_columns(
        pl.when(is_msr).then(pl.col("op1").replace_strict(SYSREG_NAMES, default=None)).alias("sysreg"),
        pl.when(is_dc).then(pl.col("op1").replace_strict({**DC_BY_VA, **DC_SET_WAY}, default=None))
        .when(is_ic).then(pl.col("op1").replace_strict(IC_OPS, default=None)).alias("cmo"),
        # the register whose value the instruction uses
        pl.when(is_msr | is_dc | is_ic).then(_xreg(pl.col("op2"))).alias("use_reg"),
        pl.col("mn").is_in(["dsb", "dmb", "isb", "sb", "ssbb", "pssbb"]).alias("is_bar"),
        # register effects as integer codes for the replay (register_writes)
        pl.col("w_kind").replace_strict(_KIND_CODE, default=None, return_dtype=pl.Int64).alias("w_k"),
        pl.col("w_reg").replace_strict(_REG_CODE, default=32, return_dtype=pl.Int64).alias("w_r"),
        pl.col("w_src").replace_strict(_REG_CODE, default=32, return_dtype=pl.Int64).alias("w_s"),
        pl.when(pl.col("w_reg2").is_not_null())
        .then(pl.col("w_reg2").replace_strict(_REG_CODE, default=32, return_dtype=pl.Int64)).alias("w_r2"),
        pl.when(pl.col("wb_reg").is_not_null())
        .then(pl.col("wb_reg").replace_strict(_REG_CODE, default=32, return_dtype=pl.Int64)).alias("wb_r"),
        # a barrier's detail: its text, words joined by dots ("dsb.sy")
        pl.when(pl.col("mn").is_in(["dsb", "dmb", "isb", "sb", "ssbb", "pssbb"]))
        .then(pl.col("disas").str.strip_chars().str.replace_all(r"\s+", ".")).alias("bar_detail"),
    ).select("disas", "total", "sysreg", "cmo", "use_reg", "is_bar", "w_k", "w_r", "w_s", "w_val", "w_lane",
             "w_32", "w_r2", "wb_r", "bar_detail")
    return dis


def decode_execlog(rows: pl.DataFrame, dumps: pl.DataFrame, state: PluginState, src: str,
                   line_size: int, gmap: "GuestMap | None" = None,
                   split: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame] | None = None) -> pl.DataFrame:
    """execlog lines (``_line``, ``src_line``, ``rest``, ``time``) -> event rows with ``_line``/``_sub``.

    ``split``: :func:`split_execlog_rows` of ``rows``, and :func:`execlog_mem_items` and
    :func:`suffix_register_rows` of that, when already done.
    """
    if split is not None and split[0].height == rows.height:
        g, items, suffix_regs = split
    else:
        g, items, suffix_regs = split_execlog_rows(rows), None, None
    leftover = (pl.col("suffix").str.replace_all(MEM_SUFFIX, "").str.replace_all(REG_ITEM, ""))
    bad = g.filter(pl.col("vcpu").is_null() | pl.col("pc").is_null() | pl.col("disas").is_null()
                   | ~pl.col("_usual"))
    if bad.height:
        bad = bad.filter(pl.col("vcpu").is_null() | pl.col("pc").is_null() | pl.col("disas").is_null()
                         | (leftover != ""))
        fail_first(bad.with_columns(pl.col("rest").alias("line")), src,
                   "an execlog line 'VCPU, 0xPC, 0xOPCODE, \"DISAS\"[, load|store, 0xADDR[, DEVICE]]..."
                   "[, REG -> 0xVAL]...'")
    g = g.drop("rest")

    # --- disassembly: mnemonic and operands (QEMU's disassemblers print lower case)
    # execlog prints an instruction when the next one starts, so trace events the
    # instruction caused (an MMIO dispatch, a DMA it kicked) come before its line: it ran
    # after the previous execlog line (of any vCPU: with several vCPUs that bounds how far
    # it moves) and before its own line. ``_oline`` is that previous line.
    prev0 = state.last_execlog_line
    g = g.with_columns(pl.col("_line").shift(1).alias("_oline"))
    g = g.with_columns(pl.col("_oline").fill_null(
        pl.lit(prev0, pl.UInt64) if prev0 is not None else pl.col("_line") - 1))
    if g.height:
        state.last_execlog_line = int(g["_line"].max())
    # instruction texts repeat (loops): decode each distinct disassembly once, and keep the
    # decoded texts for the next batches (up to DISASSEMBLY_CACHE of them)
    dis = _decoded_disassembly(g.select(pl.col("disas").unique()), state)
    g = g.join(dis, on="disas", how="left", maintain_order="left")
    # value written by msr: a suffix naming the sysreg itself wins
    own = pl.col("suffix").str.extract(r", (?:sctlr|mair|tcr|ttbr0|ttbr1)_el12? -> 0x([0-9a-fA-F]+)", 1)
    needed = g["use_reg"].drop_nulls().unique().to_list()
    dump_obs = register_observations(dumps, [r for r in needed if r != "xzr"])
    obs = register_writes(g, dump_obs, state, suffix_regs)
    needs = g.filter(pl.col("use_reg").is_not_null()).select(
        "_line", "vcpu", pl.col("use_reg").alias("reg"), hex_u64(own).alias("own"),
        (pl.col("_line").cast(pl.Int64) * 4).alias("key"))
    if needs.height:
        needs = needs.sort("key").join_asof(obs.select("vcpu", "reg", "key", "rval").sort("key"), on="key",
                                            by=["vcpu", "reg"], strategy="backward", check_sortedness=False)
        needs = needs.with_columns(
            pl.when(pl.col("reg") == "xzr").then(pl.lit(0, pl.UInt64))
            .otherwise(pl.coalesce("own", "rval")).alias("regval")).select("_line", "regval")
        g = g.join(needs, on="_line", how="left")
    else:
        g = g.with_columns(pl.lit(None, pl.UInt64).alias("regval"))

    # --- SCTLR_EL1 timeline per vCPU (recorded writes with known value). A vCPU first
    # seen in the log is at reset (SCTLR_EL1 = 0, MMU off), as the resolver assumes.
    sctlr_w = g.filter((pl.col("sysreg") == "SCTLR_EL1") & pl.col("regval").is_not_null()).select(
        "_line", "vcpu", pl.col("regval").alias("sctlr"))
    for v in g["vcpu"].unique().to_list():
        if v not in state.sctlr:
            state.sctlr[v] = 0
            state.bump("vcpus_assumed_at_reset", 1)
    carried = pl.DataFrame({"_line": [0] * len(state.sctlr), "vcpu": list(state.sctlr),
                            "sctlr": list(state.sctlr.values())},
                           schema={"_line": pl.UInt64, "vcpu": pl.Int64, "sctlr": pl.UInt64})
    if not g["_line"].is_sorted():
        g = g.sort("_line")
    if sctlr_w.height:
        timeline = pl.concat([carried, sctlr_w]).sort("_line")
        g = g.join_asof(timeline, on="_line", by="vcpu", strategy="backward",
                        allow_exact_matches=False, check_sortedness=False)
    else:  # no write in this batch: every vCPU's value is the carried one
        g = g.with_columns(pl.col("vcpu").replace_strict(dict(state.sctlr), default=None, return_dtype=pl.UInt64)
                           .alias("sctlr"))
    mmu_off = (pl.col("sctlr") & 1) == 0
    # physical PC and physical address of a by-VA maintenance operation
    from .guest_map import translate_va
    on = ~mmu_off
    va_on = ~mmu_off & pl.col("regval").is_not_null() & pl.col("cmo").is_not_null()
    if gmap is not None and g.select(on.any()).item():
        g = g.with_row_index("_i")
        pc_pa = translate_va(g.filter(on).select("_i", pl.col("pc").alias("va")), gmap).select(
            "_i", pl.col("pa").alias("pc_pa"))
        va_pa = translate_va(g.filter(va_on).select("_i", pl.col("regval").alias("va")), gmap).select(
            "_i", pl.col("pa").alias("va_pa"))
        g = g.join(pc_pa, on="_i", how="left").join(va_pa, on="_i", how="left").sort("_line").drop("_i")
    else:  # no guest map (or the MMU is off throughout): no virtual address is translated
        g = g.with_columns(pl.lit(None, pl.UInt64).alias("pc_pa"), pl.lit(None, pl.UInt64).alias("va_pa"))
    g = g.with_columns(
        pl.when(mmu_off).then(pl.col("pc")).otherwise(pl.col("pc_pa")).alias("pc_pa"),
        pl.when(mmu_off).then(pl.col("regval")).otherwise(pl.col("va_pa")).alias("va_pa"))
    # A physical address has at most 52 bits: a "physical" PC like 0xffff8000... means
    # the log did not start at reset (or filtered out the SCTLR_EL1 write): not physical.
    too_big = pl.lit(1 << 52, pl.UInt64)
    state.bump("addresses_not_physical_with_mmu_off", _count(
        g, mmu_off & ((pl.col("pc") >= too_big) | (pl.col("cmo").is_not_null() & (pl.col("regval") >= too_big)))))
    g = g.with_columns(pl.when(pl.col("pc_pa") < too_big).then(pl.col("pc_pa")).alias("pc_pa"),
                       pl.when(pl.col("va_pa") < too_big).then(pl.col("va_pa")).alias("va_pa"))
    gl = g.lazy()
    # the agent of every row, "guest.<vcpu>": one text per vCPU, looked up (not formatted per row)
    vcpus = g["vcpu"].drop_nulls().unique().to_list()
    agent = pl.col("vcpu").replace_strict({v: f"guest.{v}" for v in vcpus}, default=None,
                                          return_dtype=pl.String).alias("agent")

    # --- memory accesses
    has_mem = _HAS_MEM
    cols = _ITEM_COLS
    if items is not None:  # items cut ahead: add the instruction's _oline and total (g is in line order)
        at = g["_line"].search_sorted(items["_line"], side="left")
        acc = items.with_columns(g.select("_oline", "total")[at]).select(
            *cols, *[c for c in items.columns if c not in cols])
    else:
        acc = _mem_items(gl.filter(has_mem & pl.col("_usual")).select(*cols, "suffix").collect())
    if not g["_usual"].all():
        acc = pl.concat([acc, _mem_items_exact(gl.filter(has_mem & ~pl.col("_usual")).select(*cols, "suffix")
                                                .collect())])
    per = pl.col("total") // pl.col("n_acc")
    size_ok = pl.col("total").is_not_null() & (pl.col("total") >= pl.col("n_acc")) & \
        (pl.col("total") % pl.col("n_acc") == 0)
    acc = acc.with_columns(pl.when(size_ok).then(per).otherwise(1).cast(pl.UInt64).alias("size"),
                           size_ok.alias("size_known"))
    mmio = pl.col("device").is_not_null() & (pl.col("device") != "RAM")
    dup = mmio & pl.lit(state.mmio_traced)
    n = acc.select((~pl.col("size_known")).sum().alias("a"), mmio.sum().alias("b"), dup.sum().alias("c")).row(0)
    state.bump("execlog_accesses", acc.height)
    state.bump("execlog_accesses_size_unknown", n[0])
    state.bump("execlog_accesses_mmio", n[1])
    state.bump("execlog_mmio_also_traced", n[2])
    accesses = acc.select(
        "_line", "_oline", (pl.col("k") + 1).cast(pl.Int64).alias("_sub"),
        (pl.col("k") + 1001).cast(pl.Int64).alias("_osub"), "src_line", "time",
        agent, _GUEST_SIDE,
        pl.when(dup).then(pl.lit("marker"))
        .when(pl.col("dir") == "store").then(pl.lit("write")).otherwise(pl.lit("read")).alias("op"),
        pl.when(~dup).then(pl.col("addr")).alias("addr"), pl.when(~dup).then(pl.col("size")).alias("size"),
        pl.when(dup).then(pl.format("{} ({}: {} 0x{}, recorded by memory_region_ops)", "disas", "device", "dir",
                                    hex_str(pl.col("addr"))))
        .when(mmio).then(pl.format("{} ({})", "disas", "device"))
        .when(~pl.col("size_known")).then(pl.format("{} (size unknown, 1 byte recorded)", "disas"))
        .alias("detail"),
    )

    # --- instruction fetches where the PC's physical address is known
    ifetch = gl.filter(pl.col("pc_pa").is_not_null()).select(
        "_line", "_oline", pl.lit(0, pl.Int64).alias("_sub"), pl.lit(1000, pl.Int64).alias("_osub"), "src_line", "time",
        agent, _GUEST_SIDE, pl.lit("ifetch").alias("op"),
        pl.col("pc_pa").alias("addr"), pl.lit(4, pl.UInt64).alias("size")).collect()
    state.bump("execlog_instructions", g.height)
    state.bump("execlog_ifetch_emitted", ifetch.height)
    state.bump("execlog_ifetch_virtual_only", g.height - ifetch.height)

    # --- sysreg writes
    sysw = gl.filter(pl.col("sysreg").is_not_null()).select(
        "_line", "_oline", "src_line", "time", "vcpu", "sysreg", "regval", "disas").collect()
    known = pl.col("regval").is_not_null()
    sysreg = sysw.select(
        "_line", "_oline", pl.lit(100, pl.Int64).alias("_sub"), pl.lit(1100, pl.Int64).alias("_osub"), "src_line",
        "time",
        agent, _GUEST_SIDE,
        pl.when(known).then(pl.lit("sysreg")).otherwise(pl.lit("marker")).alias("op"),
        pl.when(known).then(pl.col("sysreg")).alias("sysreg"),
        pl.col("regval").alias("value"),
        pl.when(known).then(None).otherwise(pl.format("{} (value unknown)", "disas")).alias("detail"))
    state.bump("sysreg_writes", sysw.height)
    state.bump("sysreg_writes_value_unknown", _count(sysw, ~known))

    # --- maintenance
    cm = gl.filter(pl.col("cmo").is_not_null()).select(
        "_line", "_oline", "src_line", "time", "vcpu", "cmo", "va_pa", "regval", "disas").collect()
    by_va = pl.col("cmo").is_in(list(DC_BY_VA.values()) + ["ic.ivau"])
    pa_known = by_va & pl.col("va_pa").is_not_null()
    mask = ~pl.lit(line_size - 1, pl.UInt64)
    cmo = cm.select(
        "_line", "_oline", pl.lit(100, pl.Int64).alias("_sub"), pl.lit(1100, pl.Int64).alias("_osub"), "src_line",
        "time",
        agent, _GUEST_SIDE,
        pl.when(~by_va | pa_known).then(pl.lit("cmo")).otherwise(pl.lit("marker")).alias("op"),
        pl.when(~by_va | pa_known).then(pl.col("cmo")).alias("cmo"),
        pl.when(pa_known).then(pl.col("va_pa") & mask).alias("addr"),
        pl.when(pa_known).then(pl.lit(line_size, pl.UInt64)).alias("size"),
        pl.when(~by_va | pa_known).then(None)
        .when(pl.col("regval").is_null()).then(pl.format("{} (address register unknown)", "disas"))
        .otherwise(pl.format("{} va=0x{} (MMU on: physical address unknown; give va= in a guest map)", "disas",
                             hex_str(pl.col("regval"))))
        .alias("detail"))
    state.bump("cmo", cm.height)
    state.bump("cmo_address_unknown", _count(cm, by_va & ~pa_known))

    # --- barriers
    bar = gl.filter(pl.col("is_bar")).select(
        "_line", "_oline", pl.lit(100, pl.Int64).alias("_sub"), pl.lit(1100, pl.Int64).alias("_osub"), "src_line",
        "time",
        agent, _GUEST_SIDE, pl.lit("barrier").alias("op"),
        pl.col("bar_detail").alias("detail")).collect()

    # --- carry state to the next batch
    if sctlr_w.height:
        for v, val in sctlr_w.group_by("vcpu").agg(pl.col("sctlr").last()).iter_rows():
            state.sctlr[int(v)] = int(val)
    # ``_osub`` (= ``_sub`` + 1000: after the events placed at ``_oline`` itself) is set in each part.
    # The parts get one schema, so concatenating them only appends (no relaxed, diagonal concat).
    return pl.concat(_same_schema([ifetch, accesses, sysreg, cmo, bar]), how="vertical")


def _same_schema(frames: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """``frames`` with the union of their columns (first-seen order), missing ones null, types unified."""
    schema: dict[str, pl.DataType] = {}
    for f in frames:
        for name, dtype in f.schema.items():
            if name not in schema or schema[name] == pl.Null:
                schema[name] = dtype
            elif dtype != schema[name] and dtype != pl.Null:
                return [pl.concat(frames, how="diagonal_relaxed")]
    return [f.select([pl.col(n).cast(t) if n in f.columns else pl.lit(None, t).alias(n) for n, t in schema.items()])
            for f in frames]


def _count(df: pl.DataFrame, cond: pl.Expr) -> int:
    """Rows of ``df`` where ``cond`` holds (without materialising them)."""
    return int(df.select(cond.sum()).item() or 0)


def _mem_items(acc: pl.DataFrame) -> pl.DataFrame:
    """One row per memory item of suffixes in the usual shape (``, load|store, 0xADDR, DEVICE``...).

    There ``, load, `` / ``, store, `` occur only where an item starts (devices and
    register items hold no ``, ``). A suffix with one item (most) is cut where it is;
    the others are split at the items first (literal replaces mark them), each item
    being ``load 0xADDR, DEVICE[, REG -> 0xVAL...]``, cut with find/slice.
    The rows come single items first (callers order the accesses by line).
    """
    sfx = pl.col("suffix")
    one = acc.select((sfx.str.count_matches(", load, ", literal=True)
                      + sfx.str.count_matches(", store, ", literal=True)) == 1).to_series()
    if one.all():
        return _single_items(acc)
    if not one.any():
        return _split_items(acc)
    return pl.concat([_single_items(acc.filter(one)), _split_items(acc.filter(~one))], how="vertical")


def _single_items(acc: pl.DataFrame) -> pl.DataFrame:
    """:func:`_mem_items` of suffixes holding one memory item: ``, load|store, 0xADDR, DEVICE...``."""
    sfx = pl.col("suffix")
    acc = acc.with_columns(sfx.str.starts_with(", store, ").alias("_st"))
    at = pl.when(pl.col("_st")).then(pl.lit(11)).otherwise(pl.lit(10))  # after ", store, 0x" / ", load, 0x"
    acc = acc.with_columns(sfx.str.slice(at).alias("_t")).drop("suffix")
    acc = acc.with_columns(pl.col("_t").str.find(", ", literal=True).alias("_c"))
    acc = acc.with_columns(
        pl.lit(1, pl.UInt32).alias("n_acc"), pl.lit(0, pl.Int64).alias("k"),
        pl.when(pl.col("_st")).then(pl.lit("store")).otherwise(pl.lit("load")).alias("dir"),
        pl.col("_t").str.slice(0, pl.col("_c")).str.to_integer(base=16, dtype=pl.UInt64, strict=False).alias("addr"),
        pl.col("_t").str.slice(pl.col("_c") + 2).alias("_d"))
    acc = acc.with_columns(pl.col("_d").str.find(", ", literal=True).alias("_e"))
    return acc.with_columns(
        pl.when(pl.col("_e").is_null()).then(pl.col("_d")).otherwise(pl.col("_d").str.slice(0, pl.col("_e")))
        .alias("device")).drop("_t", "_st", "_c", "_d", "_e")


def _split_items(acc: pl.DataFrame) -> pl.DataFrame:
    """:func:`_mem_items` of any usual-shape suffixes (several items: one row each)."""
    acc = acc.with_columns(
        pl.col("suffix").str.replace_all(", load, ", "|load ", literal=True)
        .str.replace_all(", store, ", "|store ", literal=True).str.split("|").list.slice(1).alias("m")).drop("suffix")
    acc = acc.with_columns(pl.col("m").list.len().alias("n_acc"))
    acc = acc.with_columns(pl.int_ranges(0, pl.col("n_acc")).alias("k")).explode("m", "k")
    m = pl.col("m")
    store = m.str.starts_with("store ")
    acc = acc.with_columns(store.alias("_st"), m.str.find(", ", literal=True).alias("_c"))
    at = pl.when(pl.col("_st")).then(pl.lit(8)).otherwise(pl.lit(7))  # after "store 0x" / "load 0x"
    acc = acc.with_columns(
        pl.when(pl.col("_st")).then(pl.lit("store")).otherwise(pl.lit("load")).alias("dir"),
        m.str.slice(at, pl.col("_c") - at).str.to_integer(base=16, dtype=pl.UInt64, strict=False).alias("addr"),
        m.str.slice(pl.col("_c") + 2).alias("_d"))
    acc = acc.with_columns(pl.col("_d").str.find(", ", literal=True).alias("_e"))
    return acc.with_columns(
        pl.when(pl.col("_e").is_null()).then(pl.col("_d")).otherwise(pl.col("_d").str.slice(0, pl.col("_e")))
        .alias("device")).drop("m", "_st", "_c", "_d", "_e")


def _mem_items_exact(acc: pl.DataFrame) -> pl.DataFrame:
    """:func:`_mem_items` for any accepted suffix (user mode: items without a device, ...)."""
    acc = acc.with_columns(
        pl.col("suffix").str.replace_all(r", (load|store), ", "|$1 ").str.split("|").list.slice(1).alias("m")
    ).drop("suffix")
    acc = acc.with_columns(pl.col("m").list.len().alias("n_acc"))
    acc = acc.with_columns(pl.int_ranges(0, pl.col("n_acc")).alias("k")).explode("m", "k")
    # one item: "load 0x4123a008, RAM[, x0 -> 0x...]" (system mode) or "load 0x4123a008" (user mode)
    acc = acc.with_columns(pl.col("m").str.splitn(" ", 2).alias("_a"))
    acc = acc.with_columns(pl.col("_a").struct.field("field_0").alias("dir"),
                           pl.col("_a").struct.field("field_1").str.splitn(", ", 3).alias("_b"))
    dev = pl.col("_b").struct.field("field_1")
    return acc.with_columns(
        hex_u64(pl.col("_b").struct.field("field_0")).alias("addr"),
        pl.when(dev.str.contains(" -> ", literal=True)).then(None).otherwise(dev).alias("device"),
    ).drop("_a", "_b", "m")


def decode_memcsv(rows: pl.DataFrame, state: PluginState, src: str) -> pl.DataFrame:
    """mem.c print-accesses rows (``_line``, ``src_line``, ``rest``, ``time``, ``vcpu``) -> accesses."""
    g = rows.with_columns(pl.col("rest").str.extract_groups(MEMCSV_RE).alias("_g")).unnest("_g")
    bad = g.filter(pl.col("type").is_null())
    fail_first(bad.with_columns(pl.col("rest").alias("line")), src,
               "a mem plugin row 'insn_vaddr,insn_symbol,mem_vaddr,mem_hwaddr,access_size,load|store,mem_value'")
    bits = dec_u64(pl.col("bits"))
    bad = g.filter((bits % 8 != 0) | (bits == 0))
    fail_first(bad.with_columns(pl.col("rest").alias("line")), src, "an access_size in bits (8, 16, 32, 64, 128)")
    hw = hex_u64(pl.col("mem_hwaddr"))
    va = hex_u64(pl.col("mem_vaddr"))
    user = (hw == 0) & (va != 0)
    state.bump("memcsv_accesses", g.height)
    state.bump("memcsv_virtual_addresses", g.filter(user).height)
    val = pl.col("value")
    return g.select(
        "_line", pl.lit(1, pl.Int64).alias("_sub"), "src_line", "time",
        pl.format("guest.{}", pl.col("vcpu").fill_null(0)).alias("agent"), pl.lit("guest").alias("side"),
        pl.when(pl.col("type") == "store").then(pl.lit("write")).otherwise(pl.lit("read")).alias("op"),
        pl.when(user).then(va).otherwise(hw).alias("addr"),
        (bits // 8).alias("size"),
        # low 64 bits of a (possibly 128-bit) value: its last 16 hex digits
        hex_u64(pl.when(val.str.len_chars() > 16).then(val.str.slice(-16)).otherwise(val)).alias("value"),
        pl.when(user).then(pl.lit("user-mode: virtual address")).alias("detail"))


class QemuPluginImporter:
    """A file holding only TCG plugin output (execlog or mem CSV); same decoding as qemu-log."""

    format = "qemu-plugin"
    description = "QEMU TCG plugin output: execlog (7.2, 9.0+ reg=) or mem plugin print-accesses CSV"
    suffixes = (".execlog", ".execlog.txt")

    def detect(self, head: bytes, path: Path) -> bool:
        import re
        text = head.decode("utf-8", errors="replace")
        first = [ln for ln in text.splitlines()[:5] if ln.strip()]
        if not first:
            return False
        return bool(re.match(r'^\d+, 0x[0-9a-fA-F]+, 0x[0-9a-fA-F]+, "', first[0])
                    or first[0].startswith("insn_vaddr,insn_symbol,mem_vaddr,mem_hwaddr"))

    def read(self, path: Path, options: ImportOptions) -> ImportResult:
        from .qemu_log import QemuLogImporter
        return QemuLogImporter().read(path, options)


__all__ = ["QemuPluginImporter", "IMPORTER", "size_from_disassembly", "decode_execlog", "decode_memcsv",
           "split_execlog_rows", "execlog_mem_items", "suffix_register_rows"]


IMPORTER = QemuPluginImporter()

"""The compiled JSONL reader (tracekit.importers._flat_json) against polars' NDJSON reader.

Rule: the compiled reader is only a faster way to get what the importer's typed reads give:
``pl.read_ndjson`` with the numbers typed, else with ``addr size value`` as text converted by
the scenario's number rules ("0x..." strings). Whenever it accepts a chunk, every column must
equal that (same values, same nulls, same dtypes), and its distinct values must be the columns'
``unique()``; anything it is unsure of it must refuse (None), never type differently. It must
also accept the common shapes of real traces, or it would not be a speed path at all.
"""

from __future__ import annotations

import json

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracekit.errors import TracekitError
from tracekit.importers import _flat_json, tabular, tkt
from tracekit.importers.tabular import JSONL_SOME_TEXT, JSONL_TYPED
from tracekit.trace import load

TEXT_KEYS = ("agent", "op", "cmo", "sysreg", "attr", "phase", "detail")
U64 = (1 << 64) - 1


def polars_frame(raw: bytes) -> pl.DataFrame | None:
    """The typed reads of the importer, in its order (tabular.JsonlImporter)."""
    for schema in (JSONL_TYPED, JSONL_SOME_TEXT):
        try:
            df = pl.read_ndjson(raw, schema=schema)
        except pl.exceptions.PolarsError:
            continue
        return tabular._numbers_from_text(df)
    return None


def check_against_polars(raw: bytes) -> bool:
    """Assert the compiled reader agrees with polars on ``raw``; True when it accepted the chunk."""
    lines = raw.count(b"\n") + (not raw.endswith(b"\n"))
    flat = _flat_json.read_flat(raw, lines)
    if flat is None:
        return False
    ref = polars_frame(raw)
    assert ref is not None, f"accepted what polars refuses: {raw!r}"
    assert flat.frame.height == ref.height == lines
    got = flat.frame.select(ref.columns)
    assert got.schema == ref.schema
    assert got.equals(ref), (raw, got, ref)
    for c, values in flat.distinct.items():
        assert sorted(values.to_list(), key=repr) == sorted(ref[c].unique().to_list(), key=repr), c
        assert values.len() == values.n_unique()
        # each row's code picks its own value out of the distinct ones
        assert values.gather(pl.Series(flat.codes[c])).equals(flat.frame[c]), c
    assert set(flat.codes) == set(flat.distinct)
    return True


# Values of each kind, including the ones the reader must refuse (polars or the text path decide).
texts = st.one_of(st.sampled_from(["guest.0", "host.vnc", "dev.gpu", "write", "dc.civac", "MAIR_EL1", "nc", "",
                                   "ü-non-ascii", "with space"]),
                  st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=6))
uints = st.one_of(st.integers(0, 2**20), st.integers(0, U64), st.integers(U64 - 3, U64 + 3),
                  st.integers(-5, -1), st.just(10**30))
numbers = st.one_of(uints, st.floats(allow_nan=False, allow_infinity=False, width=64),
                    st.sampled_from([0.5, 1e-06, 123456.000001, -0.0, 1e300]))
any_value = st.one_of(st.none(), texts, numbers, st.booleans(),
                      st.integers(0, U64).map(lambda v: f"0x{v:x}"),
                      st.integers(0, 2**40).map(lambda v: f"0x{v:X}"),
                      st.sampled_from(["0x", "0x1g", "4K", "12", "0x" + "0" * 17 + "1"]))


def value_for(key: str) -> st.SearchStrategy:
    if key in TEXT_KEYS:
        return st.one_of(st.none(), texts, texts, any_value)
    if key in ("addr", "size", "value", "attr_index"):
        return st.one_of(st.none(), uints, uints, st.integers(0, U64).map(lambda v: f"0x{v:x}"), any_value)
    if key == "time":
        return st.one_of(st.none(), numbers, numbers, any_value)
    return any_value  # seq side src src_line src_offset: read and ignored


keys = st.sampled_from(list(JSONL_TYPED) + ["seq", "side", "src", "src_line", "src_offset"])
objects = st.lists(keys, min_size=1, max_size=8, unique=True).flatmap(
    lambda ks: st.fixed_dictionaries({k: value_for(k) for k in ks}))
spacing = st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : "), ("\t,", ":\t")])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(objects, spacing), min_size=1, max_size=12), st.booleans())
def test_compiled_reader_types_exactly_as_polars(objs, final_newline):
    text = "\n".join(json.dumps(o, separators=sep, ensure_ascii=False) for o, sep in objs)
    check_against_polars((text + ("\n" if final_newline else "")).encode())


clean_texts = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters='"\\'),
                      max_size=8)
clean_values = {"time": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64),
                                  st.integers(-(10**20), 10**20)),
                **{k: st.one_of(st.none(), st.integers(0, U64), st.integers(0, U64).map(lambda v: f"0x{v:x}"))
                   for k in ("addr", "size", "value")},
                "attr_index": st.one_of(st.none(), st.integers(0, 2**40)),
                **{k: st.one_of(st.none(), clean_texts) for k in TEXT_KEYS}}
clean_objects = st.lists(st.sampled_from(list(clean_values)), min_size=1, max_size=12, unique=True).flatmap(
    lambda ks: st.fixed_dictionaries({k: clean_values[k] for k in ks}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(clean_objects, spacing), min_size=1, max_size=12))
def test_plain_objects_are_accepted_and_typed_as_polars(objs):
    # the accepting side of the rule: plain values of the right kinds never fall back
    text = "\n".join(json.dumps(o, separators=sep, ensure_ascii=False) for o, sep in objs) + "\n"
    assert check_against_polars(text.encode())


COMMON = [
    {"time": 0.000123, "agent": "guest.0", "op": "write", "addr": 1073741824, "size": 8, "attr": "nc"},
    {"time": 1e-06, "agent": "host.vnc", "op": "read", "addr": "0x40000040", "size": 64},
    {"agent": "guest.1", "op": "sysreg", "sysreg": "SCTLR_EL1", "value": 4101, "cmo": None},
    {"agent": "guest.0", "op": "cmo", "cmo": "dc.civac", "addr": 2**64 - 64, "attr_index": 7},
    {"agent": "dev.gpu", "op": "read", "addr": 0, "size": 4096, "phase": "boot", "detail": "ring ü",
     "seq": 12, "side": "dev", "src": "x.jsonl", "src_line": 4, "src_offset": None},
]


@pytest.mark.parametrize("sep", [(",", ":"), (", ", ": ")])
def test_common_trace_shapes_are_accepted(sep):
    raw = ("\n".join(json.dumps(o, separators=sep, ensure_ascii=False) for o in COMMON) + "\r\n").encode()
    assert check_against_polars(raw)


@pytest.mark.parametrize("line", [
    '{"agent": "guest", "op": "write", "agent": "host"}',  # a key twice
    '{"agent": "gu\\u0065st", "op": "write"}',  # an escape
    '{"agent": "guest", "op": "write", "bogus": 1}',  # a key that is no column
    '{"agent": "guest", "op": "write", "addr": 1.0}',  # a fraction where an integer is due
    '{"agent": "guest", "op": "write", "addr": 01}',  # a leading zero
    '{"agent": "guest", "op": "write", "size": "4K"}',  # a suffix (the text rules read it)
    '{"agent": "guest", "op": "write", "time": "0.5"}',  # a timestamp as text
    '{"agent": "guest", "op": "write", "phase": 3}',  # a number where text is due
    '{"agent": "guest", "op": "write", "attr_index": "0x1"}',
    '{"agent": "guest", "op": "write", "addr": 18446744073709551616}',  # 2^64
    '{"agent": "guest", "op": "write", "src": true}',
    '{"agent": "guest", "op": "write"} trailing',
    '[1, 2]',
    '',
])
def test_unusual_lines_are_left_to_the_general_path(line):
    raw = f'{{"agent": "guest", "op": "barrier"}}\n{line}\n'.encode()
    assert _flat_json.read_flat(raw, raw.count(b"\n")) is None


def test_many_distinct_texts_are_gathered_not_interned():
    objs = [{"agent": "guest", "op": "write", "detail": f"d{i}"} for i in range(_flat_json.MOST_DISTINCT + 50)]
    raw = ("\n".join(json.dumps(o) for o in objs) + "\n").encode()
    assert check_against_polars(raw)
    flat = _flat_json.read_flat(raw, len(objs))
    assert "detail" not in flat.distinct and "agent" in flat.distinct


def test_clean_jsonl_never_reaches_polars_reader(tmp_path, monkeypatch):
    """The speed target rests on the compiled reader: a clean file must not fall back."""
    def refuse(*a, **k):
        raise AssertionError("polars' NDJSON reader was used")

    monkeypatch.setattr(tabular.pl, "read_ndjson", refuse)
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(o) for o in [
        {"agent": "guest", "op": "sysreg", "sysreg": "MAIR_EL1", "value": 17663},
        {"agent": "guest", "op": "write", "addr": "0x40000000", "size": 8, "attr_index": 1, "time": 0.5},
        {"agent": "dev.gpu", "op": "read", "addr": 1073741824, "size": 64, "time": 1}]) + "\n")
    (tmp_path / "t.jsonl.settings.tkt").write_text("@region ram 0x40000000 1G ram\n@device gpu noncoherent\n")
    ev = load(p).events
    assert ev["addr"].to_list() == [None, 0x40000000, 0x40000000]
    assert ev["agent"].to_list() == ["guest.0", "guest.0", "dev.gpu"] and ev["src_line"].to_list() == [1, 2, 3]


def test_a_bad_line_after_a_clean_chunk_is_still_named(tmp_path, monkeypatch):
    """Giving up on a chunk keeps the general path's message (the reader never reports errors)."""
    monkeypatch.setattr(tkt, "CHUNK_BYTES", 64)  # several chunks
    p = tmp_path / "t.jsonl"
    good = json.dumps({"agent": "guest", "op": "write", "addr": 1073741824, "size": 8, "attr": "wb"})
    p.write_text("\n".join([good] * 5 + ['{"agent": "guest", "op": "write", "addr": 1073741824, "size": 0, '
                                          '"attr": "wb"}']) + "\n")
    (tmp_path / "t.jsonl.settings.tkt").write_text("@region ram 0x40000000 1G ram\n")
    with pytest.raises(TracekitError, match=r"t\.jsonl:6: expected a size of at least 1"):
        load(p)


# Timestamps: the reader converts the common ones itself (Clinger's fast path: at most 15
# significant digits, a power of ten up to 10^22) and leaves the rest to polars; either way the
# double must be polars' own, bit for bit (-0.0 included).
decimal_times = st.builds(
    lambda sign, whole, frac, exp: f"{sign}{whole}{'.' + frac if frac else ''}{exp}",
    st.sampled_from(["", "-"]),
    st.one_of(st.just("0"), st.integers(1, 999).map(str), st.integers(1, 10**20).map(str)),
    st.one_of(st.just(""), st.text(alphabet="0123456789", min_size=1, max_size=7),
              st.text(alphabet="0123456789", min_size=1, max_size=22)),
    st.one_of(st.just(""), st.builds(lambda e, s, v: f"{e}{s}{v}", st.sampled_from(["e", "E"]),
                                     st.sampled_from(["", "+", "-"]), st.integers(0, 400))))


@settings(max_examples=500, deadline=None)
@given(st.lists(decimal_times, min_size=1, max_size=20))
def test_timestamps_are_polars_doubles_bit_for_bit(times):
    raw = "".join(f'{{"time":{t},"agent":"guest.0","op":"barrier"}}\n' for t in times).encode()
    flat = _flat_json.read_flat(raw, len(times))
    assert flat is not None
    ref = pl.Series([t for t in times], dtype=pl.String).cast(pl.Float64)
    got = flat.frame["time"]
    assert got.dtype == pl.Float64
    assert got.to_numpy().view("u8").tolist() == ref.to_numpy().view("u8").tolist(), (times, got, ref)


@pytest.mark.parametrize("text,fast", [("0.000123", True), ("1e-06", True), ("-0.0", True), ("123456.000001", True),
                                       ("1234567890.1234567", False), ("1e23", False), ("5e-324", False)])
def test_timestamp_fast_path_and_its_limits(text, fast, monkeypatch):
    calls = []
    real_cast = pl.Series.cast

    def cast(self, dtype, *a, **k):
        if self.name == "time":
            calls.append(dtype)
        return real_cast(self, dtype, *a, **k)

    monkeypatch.setattr(pl.Series, "cast", cast)
    flat = _flat_json.read_flat(f'{{"time":{text},"agent":"guest.0","op":"barrier"}}\n'.encode(), 1)
    assert flat is not None
    assert (calls == []) == fast  # the slow ones go through polars' conversion of the text
    want = real_cast(pl.Series([text]), pl.Float64)
    assert flat.frame["time"].to_numpy().view("u8")[0] == want.to_numpy().view("u8")[0]


def test_a_key_predicted_from_the_line_before_must_match_whole():
    """The reader first tries the key the previous line had at the same place; a key that the
    other begins with (src / src_line, size / sysreg) must not be taken for it."""
    lines = [{"agent": "guest.0", "op": "barrier", "src": "a"},
             {"agent": "guest.0", "op": "barrier", "src_line": 3},
             {"agent": "guest.0", "op": "barrier", "src": "b"},
             {"agent": "guest.0", "op": "read", "size": 8, "addr": 64},
             {"agent": "guest.0", "op": "sysreg", "sysreg": "SCTLR_EL1", "value": 1},
             {"agent": "guest.0", "op": "read", "size": 8, "addr": 64}]
    raw = "".join(json.dumps(o, separators=(",", ":")) + "\n" for o in lines).encode()
    assert check_against_polars(raw)

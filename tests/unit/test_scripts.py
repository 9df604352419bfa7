"""Each Lua script against its spec (proxy/storage/scripts.py) and the data model
(proxy/storage/model.py): the header names the spec's KEYS and ARGV in order, every word the
script spells — a field, a state, a code, a reply field — is declared, and every declared
reply field is written. Pure: reads the files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.core.admission import FULL_FIELDS, LEAN_FIELDS
from proxy.storage.model import Ledger, Op, vocabulary
from proxy.storage.scripts import ADMIT, FAILURE_FIELDS, SPECS, ScriptSpec

LUA = Path(__file__).parents[2] / "lua"
# words of Lua and Redis, not of the data model
LUA_WORDS = frozenset(
    {"LIMIT", "-inf", "*", "|", ";", ","}  # ZRANGEBYSCORE ... LIMIT; XADD's id; separators
)


def code_and_strings(src: str) -> tuple[str, list[str]]:
    """The code without its comments, and its string literals."""
    code: list[str] = []
    strings: list[str] = []
    i, n = 0, len(src)
    while i < n:
        if src.startswith("--", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        c = src[i]
        if c in "'\"":
            j, buf = i + 1, []
            while j < n and src[j] != c:
                if src[j] == "\\":
                    buf.append(src[j : j + 2])
                    j += 2
                    continue
                buf.append(src[j])
                j += 1
            strings.append("".join(buf))
            code.append(" '' ")
            i = j + 1
            continue
        code.append(c)
        i += 1
    return "".join(code), strings


def words(src: str) -> set[str]:
    """What the script spells that the data model must declare: identifier-shaped literals
    that are not Redis commands, JSON keys written out, keys of the tables it builds, and the
    fields of records it reads."""
    code, strings = code_and_strings(src)
    out = {s for s in strings if re.fullmatch(r"[a-z_][\w:.|-]*", s)}
    out |= {k for s in strings if '"' in s for k in re.findall(r'"(\w+)":', s)}
    for table in re.findall(r"\{([^{}]*)\}", code):  # keys of every table constructor
        out |= set(re.findall(r"(\w+)\s*=(?!=)", table))
    out |= set(re.findall(r"\brec\.(\w+)", code))
    return out


def header(src: str) -> tuple[list[str], list[str], bool]:
    """(KEYS names, ARGV names, whether it takes field/value pairs) from the header."""
    keys = re.findall(r"^-- KEYS\[(\d+)\]\s+(\w+)", src, re.M)
    argv = re.findall(r"^-- ARGV\[(\d+)\]\s+(\w+)", src, re.M)
    assert [int(i) for i, _ in keys] == list(range(1, len(keys) + 1))
    assert [int(i) for i, _ in argv] == list(range(1, len(argv) + 1))
    pairs = re.search(r"^-- ARGV\[(\d+)\.\.\]", src, re.M)
    if pairs:
        assert int(pairs.group(1)) == len(argv) + 1
    return [k for _, k in keys], [a for _, a in argv], bool(pairs)


def packed_parts(src: str) -> list[str]:
    """The values of a packed tail, as the header names them: "-- ARGV[n].i name"."""
    parts = re.findall(r"^-- ARGV\[(\d+)\]\.(\d+)\s+(\w+)", src, re.M)
    assert [int(i) for _, i, _ in parts] == list(range(1, len(parts) + 1))
    return [name for _, _, name in parts]


@pytest.mark.parametrize("spec", SPECS.values(), ids=lambda s: s.name)
def test_the_header_states_the_spec(spec: ScriptSpec) -> None:
    src = (LUA / f"{spec.name}.lua").read_text()
    keys, argv, pairs = header(src)
    assert keys == list(spec.keys)
    assert argv == [a.name for a in spec.argv]
    assert pairs == bool(spec.pairs)
    assert packed_parts(src) == ([a.name for a in spec.tail] if spec.packed else [])


def test_a_packed_tail_is_one_argument_in_the_specs_order() -> None:
    spec = SPECS["settle"]
    tail = spec.tail_of(
        pinned_now=0,
        window_s=60,
        source="proxy",
        estimated="0",
        period="2026-12",
        period_start=1,
        period_end=2,
    )
    assert tail == ("0|60|proxy|0|2026-12|1|2",)
    assert spec.argv[-1].name == "tail" and len(spec.argv) == len(spec.args) + 1


@pytest.mark.parametrize("name", sorted(p.stem for p in LUA.glob("*.lua")))
def test_every_word_of_a_script_is_declared(name: str) -> None:
    spelled = words((LUA / f"{name}.lua").read_text())
    spelled = {w for w in spelled if not w.isupper()}  # Redis commands: HGET, XADD …
    spec = SPECS.get(name)
    replies = set(spec.reply) | set(spec.optional) if spec else set()
    undeclared = spelled - vocabulary() - replies - LUA_WORDS - set(FAILURE_FIELDS)
    assert not undeclared, f"{name}.lua spells words the data model does not declare"


# admit and settle answer their values "|"-joined (FULL_FIELDS, Op.SETTLED_FIELDS), without
# names: each value in its place is checked on a real Redis by test_metering's
# test_every_value_of_the_answer_is_in_its_place and
# test_every_value_of_a_settlement_is_in_its_place
POSITIONAL = ("admit", "settle")


@pytest.mark.parametrize(
    "spec", [s for s in SPECS.values() if s.name not in POSITIONAL], ids=lambda s: s.name
)
def test_every_reply_field_is_written(spec: ScriptSpec) -> None:
    spelled = words((LUA / f"{spec.name}.lua").read_text())
    assert set(spec.reply) <= spelled
    for field in spec.reply:
        assert field in vocabulary() or field in FULL_FIELDS or field in spelled


def test_the_scan_finds_what_it_checks() -> None:
    """The checks above can fail: the scanner sees literals, JSON keys, encoded tables and
    record fields, and not comments."""
    src = (
        "-- 'in_a_comment'\nlocal x = redis.call('HGET', k, 'typo_field')\n"
        'local j = \'{"made_up":"\' .. v\nreturn cjson.encode({ ok = 1, bogus = 2 })\n'
        "if rec.nonsense then end"
    )
    found = words(src)
    assert {"typo_field", "made_up", "ok", "bogus", "nonsense"} <= found
    assert "in_a_comment" not in found
    assert not {"typo_field", "made_up", "bogus", "nonsense"} & vocabulary()


def test_the_lean_answer_is_part_of_the_full_one() -> None:
    assert set(LEAN_FIELDS) < set(FULL_FIELDS)
    assert set(SPECS["admit"].reply) == set(FULL_FIELDS)
    assert {"s", "m", "t", "mode", "a"} <= set(Op.FIELDS)


def test_the_spec_builds_argv_by_name() -> None:
    spec = SPECS["renew"]
    assert spec.args_of(request_id="r1") == ("r1",)
    # in ARGV order
    assert spec.tail_of(window_s=60, pinned_now=0, reservation_ttl_s=9) == (9, 0, 60)
    with pytest.raises(TypeError, match="window_s"):
        spec.tail_of(pinned_now=0, reservation_ttl_s=9)
    with pytest.raises(TypeError, match="other"):
        spec.tail_of(pinned_now=0, window_s=60, reservation_ttl_s=9, other=1)
    assert SPECS["admit"].args_of.__code__.co_varnames == tuple(a.name for a in ADMIT.args)


def test_a_packed_ledger_entry_reads_as_the_fields_it_packs() -> None:
    """settle.lua packs a charge in "u"; read, it is the entry an earlier version wrote field
    by field, which is itself read unchanged (a rolling upgrade mixes both)."""
    fields = {
        "op": "req_1",
        "kind": "usage",
        "ts": "1796600000",
        "period": "2026-12",
        "member": "ann",
        "tier": "premium",
        "mode": "extra_usage",
        "model": "claude-x|y",
        "cost": "774000",
        "balance_delta": "-774000",
        "usage": '{"input_tokens":1}',
        "source": "proxy",
    }
    packed = {
        "id": "1-0",
        "op": "req_1",
        "u": "1796600000|2026-12|extra_usage|774000|-774000|proxy|0|premium|ann",
        "model": "claude-x|y",
        "usage": '{"input_tokens":1}',
    }
    assert Ledger.unpack(dict(packed)) == {"id": "1-0", **fields}
    assert Ledger.unpack({"id": "1-0", **fields}) == {"id": "1-0", **fields}
    estimated = {**packed, "u": packed["u"].replace("|proxy|0|", "|proxy|1|")}
    assert Ledger.unpack(estimated) == {"id": "1-0", **fields, "estimated": "1"}
    assert set(Ledger.PACKED_FIELDS) | {"op", "kind", "model", "usage"} == set(Ledger.FIELDS)


def function_lengths(src: str) -> dict[str, int]:
    """Lines of each top-level ``local function`` of a script (to its closing ``end``)."""
    lengths: dict[str, int] = {}
    name, start = "", 0
    for i, line in enumerate(src.splitlines()):
        m = re.match(r"local function (\w+)", line)
        if m:
            name, start = m.group(1), i
        elif line == "end" and name:
            lengths[name], name = i - start + 1, ""
    return lengths


@pytest.mark.parametrize("name", sorted(p.stem for p in LUA.glob("*.lua")))
def test_no_script_function_is_over_80_lines(name: str) -> None:
    lengths = function_lengths((LUA / f"{name}.lua").read_text())
    assert lengths, "the scan finds the script's functions"
    long = {f: n for f, n in lengths.items() if n > 80}
    assert not long, f"{name}.lua: split {long} into named steps"


def test_the_length_scan_counts_what_it_checks() -> None:
    src = "local function a(x)\n" + "  x = 1\n" * 80 + "end\nlocal function b()\nend\n"
    assert function_lengths(src) == {"a": 82, "b": 2}

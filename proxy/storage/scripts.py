"""One spec per Lua script: its KEYS, its ARGV by name with units, its reply fields.

The spec is the contract, stated once: ``Store`` builds every call from it (``args_of``,
``tail_of``, ``keys_of``), the header of each ``lua/<name>.lua`` is checked against it, and so
is the cluster-slot test (every key of a call in one slot) — ``tests/unit/test_scripts.py``.
A script's arguments come in two parts: ``args``, per call, then ``tail``, whose values come
from a small set (flags, the process's settings) so that the pipeliner packs them once. The
request path's two scripts take their tail as one argument, its values joined by "|"
(``packed``): Redis spends about 1,400 instructions on each argument of a script call (its
parsing, an object, a Lua string, freeing them), and one ``string.match`` reads them back for
a fraction of that.
"""

from __future__ import annotations

import hashlib
import keyword
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from proxy.core.admission import FULL_FIELDS, OPTIONAL_FIELDS
from proxy.storage.keys import OrgKeys
from proxy.storage.model import REPLY_STATUS, Op, lua_prelude


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    meaning: str  # with its unit: "nano-USD", "seconds", "epoch seconds", a flag "1"/"0"


def _builder(
    script: str, names: tuple[str, ...], packed: bool = False
) -> Callable[..., tuple[Any, ...]]:
    """A function taking the arguments by name, in any order, and answering them in ARGV
    order: ``lambda request_id, who, ...: (request_id, who, ...)``; ``packed``: as one
    argument, joined by "|" (``lambda a, b: (f"{a}|{b}",)``). Generated from the spec's
    names (identifiers, checked) because a call by keywords to a plain function costs next to
    nothing, where a ``**kwargs`` dict per call cost ~30,000 instructions an admission; a
    missing or unknown name is a TypeError at the call."""
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"{script}.lua: argument {name!r} is not an identifier")
    params = ", ".join(names)
    body = f"({params}{',' if names else ''})"
    if packed:
        body = "(f'" + "|".join("{" + n + "}" for n in names) + "',)"
    fn: Callable[..., tuple[Any, ...]] = eval(f"lambda {params}: {body}")
    fn.__qualname__ = f"{script}_argv"
    return fn


@dataclass(frozen=True)
class ScriptSpec:
    name: str
    # OrgKeys attributes ("target": the hash a write changes; "op", always last: the key of
    # the operation the call is about, ``keys.op_key``)
    keys: tuple[str, ...]
    args: tuple[Arg, ...]
    tail: tuple[Arg, ...] = ()
    reply: tuple[str, ...] = ()  # the fields of a successful reply
    optional: tuple[str, ...] = OPTIONAL_FIELDS  # fields a reply may carry
    pairs: str = ""  # the meaning of field/value pairs after the named arguments
    packed: bool = False  # the tail is one argument, its values joined by "|" (in order)
    # args_of(name=value, ...) / tail_of(...): the two parts of ARGV, in order
    args_of: Callable[..., tuple[Any, ...]] = field(init=False, repr=False)
    tail_of: Callable[..., tuple[Any, ...]] = field(init=False, repr=False)
    _keys_of: Callable[[OrgKeys], tuple[str, ...]] = field(init=False, repr=False)
    _op: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "args_of", _builder(self.name, tuple(a.name for a in self.args)))
        tail_names = tuple(a.name for a in self.tail)
        object.__setattr__(self, "tail_of", _builder(self.name, tail_names, self.packed))
        names = self.keys[:-1] if self.keys[-1:] == ("op",) else self.keys
        if "op" in names:
            raise ValueError(f"{self.name}.lua: the operation's key comes last")
        getter = operator.attrgetter(*names)
        # attrgetter of one name answers the value, not a 1-tuple
        keys_of = getter if len(names) > 1 else (lambda k: (getter(k),))
        object.__setattr__(self, "_keys_of", keys_of)
        object.__setattr__(self, "_op", len(names) < len(self.keys))

    @property
    def argv(self) -> tuple[Arg, ...]:
        """Every named argument in ARGV order (ARGV[1] first); a packed tail is one, "tail"."""
        if self.packed:
            return (*self.args, TAIL)
        return self.args + self.tail

    @property
    def own_keys(self) -> int:
        """How many of its keys are a call's own (the last ones), not the org's."""
        return 1 if self._op else 0

    def keys_of(self, org_keys: OrgKeys, op_id: str = "") -> tuple[str, ...]:
        """KEYS, in order, for one org (a write names its target hash itself), the key of
        operation ``op_id`` last for a script about one."""
        if self._op:
            return (*self._keys_of(org_keys), org_keys.ops + op_id)
        return self._keys_of(org_keys)


# a script's decoded reply: read with [] (a field it lacks is a KeyError, never a silent "");
# admit's is read through ``Admission``, whose misses say which field
Reply = dict[str, Any]


TAIL = Arg("tail", 'the tail\'s values joined by "|", in the order of the spec')
# the calendar month of the caller's clock, which a script takes instead of computing it when
# its own time falls inside (model: lib.lua's month_of)
PERIOD = (
    Arg("period", '"YYYY-MM": the month of the caller\'s clock'),
    Arg("period_start", "epoch seconds: its first second"),
    Arg("period_end", "epoch seconds: the first second of the next"),
)
PINNED = Arg("pinned_now", "epoch seconds to use instead of Redis TIME (tests only; 0 = TIME)")
WINDOW = Arg("window_s", "seconds a finished operation's record is kept, for replays")
REQUEST_ID = Arg("request_id", "the operation id (the proxy's request id, or chk:<id>)")

ADMIT = ScriptSpec(
    "admit",
    keys=("org", "members", "creds", "due", "op"),
    args=(
        REQUEST_ID,
        Arg("who", '"k": credential is a proxy key hash; "m": a member id (check API)'),
        Arg("credential", "the sha256 of the proxy key, or the member id"),
        Arg("max_cost", "nano-USD: the request's strict upper bound"),
        Arg("est_cost", "nano-USD: the estimate policy's reservation"),
    ),
    tail=(
        Arg("policy", "the default reservation policy: strict | estimate | none"),
        Arg("reservation_ttl_s", "seconds a reservation holds before it is reclaimed"),
        Arg("accept", '"1" when the member accepts extra usage for this request'),
        Arg("reserve", '"1" to reserve; "0" to answer without writing (status reads)'),
        PINNED,
        WINDOW,
        Arg("force", '"1" to admit a journaled request that already ran'),
        Arg("lean", '"1" for the lean answer when allowed (LEAN_FIELDS)'),
        Arg("unbounded", '"1" when a server tool has no bound (web search without max_uses)'),
        *PERIOD,
        Arg("tiers", '";name,session,weekly,session_s,weekly_s" per tier (nano-USD, seconds)'),
    ),
    reply=FULL_FIELDS,
    packed=True,
)
SETTLE = ScriptSpec(
    "settle",
    keys=("org", "members", "due", "ledger", "op"),
    args=(
        REQUEST_ID,
        Arg("cost", "nano-USD: the actual cost"),
        Arg("model", "the model id as requested"),
        Arg("usage", "JSON: token counts by kind, copied into the ledger entry"),
    ),
    tail=(
        PINNED,
        WINDOW,
        Arg("source", "who charges: proxy | check | journal"),
        Arg("estimated", '"1" when the usage is the estimate rule\'s (the answer was cut)'),
        *PERIOD,
    ),
    reply=("ok", *Op.SETTLED_FIELDS),  # its answer is the settled record (Op.settled)
    packed=True,
)
RELEASE = ScriptSpec(
    "release",
    keys=("org", "members", "due", "op"),
    args=(REQUEST_ID,),
    tail=(WINDOW,),
    reply=("ok", "released"),
)
RENEW = ScriptSpec(
    "renew",
    keys=("org", "due", "op"),
    args=(REQUEST_ID,),
    tail=(Arg("reservation_ttl_s", "seconds from now the reservation holds"), PINNED, WINDOW),
    reply=("ok", "exp"),
)
PURCHASE = ScriptSpec(
    "purchase",
    keys=("org", "ledger", "audit", "op"),
    args=(
        Arg("kind", "purchase | reload"),
        Arg("op_id", "purchase:<idempotency key> | reload:<reload id>"),
        Arg("amount", "nano-USD (a purchase; a reload's amount is the one it was asked for)"),
        Arg("actor", "who: recorded in the ledger and the audit log"),
    ),
    tail=(PINNED, WINDOW),
    reply=("ok", "amount", "balance", "entry"),
)
WRITE = ScriptSpec(
    "write",
    keys=("target", "audit"),
    args=(
        Arg("actor", "who changes it"),
        Arg("action", "what, as the audit log names it"),
        PINNED,
        Arg("guards", '"=field=value", "+field", "-field", one a line'),
    ),
    pairs='field, value pairs; the value "\\0" deletes the field',
    reply=("ok", "before", "after"),
)
DECIDE = ScriptSpec(
    "decide",
    keys=("org", "members", "requests", "audit"),
    args=(
        Arg("actor", "who decides"),
        Arg("action", "what, as the audit log names it"),
        PINNED,
        Arg("request_id", "the request decided"),
        Arg("expected", "the request's record as the decider read it (pending)"),
        Arg("record", "the request's record once decided"),
        Arg("member", 'the member whose own limit is raised ("" for none)'),
        Arg("org_pairs", "how many field, value pairs of the org come first"),
    ),
    pairs="the org's field, value pairs, then the member's",
    reply=("ok", "before", "after"),
)
CREDENTIAL = ScriptSpec(
    "credential",
    keys=("creds", "members", "audit"),
    args=(
        Arg("op", "add | revoke"),
        Arg("kind", '"k" proxy key | "t" admin token'),
        Arg("secret_hash", "sha256 of the secret (add)"),
        Arg("member", "the member id"),
        Arg("cred_id", "the credential id"),
        Arg("actor", "who, for the audit log"),
        PINNED,
    ),
    reply=("ok",),
)
WHOIS = ScriptSpec(
    "whois",
    keys=("org", "members", "creds"),
    args=(
        Arg("kind", '"k" proxy key | "t" admin token'),
        Arg("secret_hash", "sha256 of the secret"),
    ),
    reply=("ok", "member", "id", "tier", "role", "enabled", "plan", "upstream"),
    optional=(),
)

SPECS: dict[str, ScriptSpec] = {
    s.name: s for s in (ADMIT, SETTLE, RELEASE, RENEW, PURCHASE, WRITE, DECIDE, CREDENTIAL, WHOIS)
}
FAILURE_FIELDS = REPLY_STATUS  # {"ok": 0, "err": <a code of model.REFUSALS>, "detail": ...}
# the hashes write.lua may change
WRITE_TARGETS = ("org", "members", "requests")


# the name of every library of the product begins with it (a digest of the code follows)
LIBRARY_PREFIX = "eup_"
# the scripts that only read: registered as such, so that Redis runs them where it refuses
# writes (a replica, a server out of memory)
READ_ONLY = frozenset({"whois"})


def _sources() -> tuple[str, str, dict[str, str]]:
    pkg = resources.files("proxy.lua")
    scripts = {name: pkg.joinpath(f"{name}.lua").read_text("utf-8") for name in SPECS}
    return pkg.joinpath("lib.lua").read_text("utf-8"), lua_prelude(), scripts


def script_source(name: str) -> str:
    """A script as EVAL runs it: the parts of lib.lua it uses, the data model's defaults, the
    script's function, and its call. Each ``lua/<name>.lua`` defines ``local function
    <name>(KEYS, ARGV)``."""
    lib, defaults, scripts = _sources()
    script = scripts[name]
    return prelude_for(lib, script) + defaults + script + f"return {name}(KEYS, ARGV)\n"


def library_source() -> tuple[str, str]:
    """Every script as one Redis Functions library: (its name, its code for FUNCTION LOAD).
    lib.lua's definitions and each script's function are made once, when the library is
    loaded, where a script made every one of its closures again on each call (about 20,000
    instructions an admission). The name carries a digest of the code, so that two versions
    of the proxy (a rolling upgrade) each call their own; each function is
    "<library>_<script>"."""
    lib, defaults, scripts = _sources()
    body = prelude_for(lib, "\n".join(scripts.values())) + defaults + "".join(scripts.values())
    name = LIBRARY_PREFIX + hashlib.sha1(body.encode()).hexdigest()[:12]
    registrations = "".join(
        f"redis.register_function{{function_name='{name}_{s}', callback={s}"
        + (", flags={'no-writes'}" if s in READ_ONLY else "")
        + "}\n"
        for s in scripts
    )
    return name, f"#!lua name={name}\n" + body + registrations


# a function of lib.lua (to its "end" at the start of a line), or a one-line constant
_DEFINITION = re.compile(r"^local function (\w+).*?^end$|^local (\w+) = [^\n]*$", re.M | re.S)


def prelude_for(lib: str, script: str) -> str:
    """lib.lua's definitions that ``script`` uses, directly or through another one, in lib's
    order (without lib's comments: the file is the documented copy). A script (EVAL) runs its
    whole text on every call, and each function it defines costs a closure there, so only
    what is used is defined."""
    blocks = {m.group(1) or m.group(2): m.group(0) for m in _DEFINITION.finditer(lib)}
    used: set[str] = set()
    pending = [script]
    while pending:
        text = pending.pop()
        for name, block in blocks.items():
            if name not in used and re.search(rf"\b{name}\b", text):
                used.add(name)
                pending.append(block)
    return "".join(block + "\n" for name, block in blocks.items() if name in used)

"""The product's words are declared once (``proxy.core.vocabulary``): no Python module spells
one as a literal where it means the word (a plan, a role, a reason, a refusal code...), as
``test_scripts.py`` checks that no Lua script spells a word that is not declared; and the
pages read them from the served table, holding no copy."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import orjson
import pytest

from proxy.core.vocabulary import REASON_WORDS, Reason, page_table, words

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "proxy"
DECLARED = PACKAGE / "core" / "vocabulary.py"

# words that are also the names of other things, where Python spells those things: a field
# (the member a record names, the API's "extra_usage" figures, release's "released"), a
# metrics or log label ("none", "admin", a reload's or a stream's "pending")
HOMONYMS = frozenset({"member", "extra_usage", "none", "admin", "pending", "released"})


def _not_words(tree: ast.AST) -> set[int]:
    """The literals that are never a word of the vocabulary: docstrings, dict keys and
    subscripts (field names), a mapping's ``get``/``pop`` key, and text inside f-strings."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            skip |= {id(k) for k in node.keys if k is not None}
        elif isinstance(node, ast.Subscript):
            skip.add(id(node.slice))
        elif isinstance(node, ast.JoinedStr):
            skip |= {id(n) for n in ast.walk(node)}
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault")
            and node.args
        ):
            skip.add(id(node.args[0]))
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            skip.add(id(body[0].value))
    return skip


def spelled(source: str, vocabulary: frozenset[str]) -> list[tuple[int, str]]:
    """(line, word) of every literal in ``source`` that spells a word of ``vocabulary``."""
    tree = ast.parse(source)
    skip = _not_words(tree)
    return sorted(
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in vocabulary
        and id(node) not in skip
    )


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != DECLARED)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_spells_a_word_of_the_vocabulary(path: Path) -> None:
    found = spelled(path.read_text(), words() - HOMONYMS)
    assert not found, f"{path}: use proxy.core.vocabulary instead of the literals {found}"


def test_the_scan_finds_what_it_checks() -> None:
    """The check above can fail: a comparison, an argument, a tuple and a default are found;
    a docstring, a dict key, a subscript and an f-string's text are not."""
    source = '''
"""team, in a docstring"""
def f(plan="enterprise"):
    if plan == "team" or plan in ("owner", "x"):
        return g("out_of_credits", {"seat_tier_spend_limit": 1}, r["five_hour"], f"{'allow'}")
'''
    assert spelled(source, words()) == [
        (3, "enterprise"),
        (4, "owner"),
        (4, "team"),
        (5, "out_of_credits"),
    ]


def test_the_pages_hold_no_copy_of_the_words() -> None:
    """The pages take plans, roles and reasons from /admin/vocabulary.js: none of their
    scripts spells a reason code or a reason's wording."""
    static = PACKAGE / "static"
    for script in sorted(static.rglob("*.js")):
        text = script.read_text()
        for reason in Reason.ALL:
            assert not re.search(rf"\b{reason}\b", text), f"{script.name} spells {reason}"
        for wording in REASON_WORDS.values():
            for said in wording.values():
                longest = max(re.split(r"\{\w+\}", said), key=len)
                if len(longest) >= 25:  # shorter pieces are everyday phrases, not a copy
                    assert longest not in text, f"{script.name} copies {said!r}"


def test_the_page_table_is_json_with_every_kind() -> None:
    table = orjson.loads(orjson.dumps(page_table()))
    assert set(table) >= {"Plan", "Role", "Reason", "Mode", "Claim", "REASON_WORDS"}
    assert table["Reason"]["ALL"] == list(Reason.ALL)
    assert table["REASON_WORDS"][Reason.BALANCE]["member"].startswith("Your organization")


def test_the_admin_page_builds_every_url_in_one_place() -> None:
    """Every admin API path of the admin page comes from ``admin/api.js`` (``adminPath``,
    ``orgPath``: each part encoded); no other module spells one, and every module's
    listeners are installed by its ``init()``, not at its top level."""
    admin = PACKAGE / "static" / "admin"
    modules = sorted(admin.glob("*.js"))
    assert len(modules) >= 8
    for module in [*modules, PACKAGE / "static" / "admin.js"]:
        text = module.read_text()
        if module.name != "api.js":
            assert "/admin/v1" not in text, f"{module.name} builds an admin URL itself"
        if module.parent == admin:
            top = [line for line in text.splitlines() if line.startswith("$(")]
            assert not top, f"{module.name} installs listeners at its top level: {top}"
    api = (admin / "api.js").read_text()
    assert "encodeURIComponent" in api

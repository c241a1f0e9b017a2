"""serfd.base.goregexp: Go's regexp syntax and MatchString, in linear time.

The table's expectations were checked against Go 1.19.8's regexp (the Go that built Debian
12's serf) with a small Go program: True/False is MatchString's answer, ERR is Compile's error.
"""

from __future__ import annotations

import re
import unicodedata
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.base import goregexp
from serfd.base.goregexp import GoRegexpError, RegexCache, TooLargeError, UnsupportedError
from serfd.core.member import Member, MemberStatus
from serfd.core.query import QueryParam, encode_filters, filters_match
from serfd.core.serf import QueryRecordEvent
from serfd.rpc.protocol import filter_members

ERR = "error"

# (pattern, text, MatchString or ERR), as Go 1.19.8 answers.
CASES: list[tuple[str, str, bool | str]] = [
    # Anchors: "$" is the end of the text only (Python's "$" also matches before a final \n).
    ("a$", "a\n", False),
    ("a$", "a", True),
    ("a\\z", "a", True),
    ("a\\z", "a\n", False),
    ("\\Aa", "ba", False),
    ("^b", "ab", False),
    ("(?m)^b$", "a\nb\nc", True),
    ("(?m)$", "a\n", True),
    ("(?m)^$", "a\n\nb", True),
    ("^$", "", True),
    ("$^", "", True),
    ("\\b", "", False),
    ("\\B", "", True),
    ("x\\By", "xy", True),
    ("\\bé", "é", False),  # \b is ASCII-only
    ("\\Z", "a", ERR),
    # Dot, classes, escapes.
    (".", "\n", False),
    ("(?s).", "\n", True),
    ("(?s:a.)b", "a\nb", True),
    ("[^a]", "\n", True),
    ("\\s", "\v", False),  # Go's \s has no \v
    ("[[:space:]]", "\v", True),
    ("[[:^alpha:]]", "1", True),
    ("[[:word:][:^word:]]", "!", True),
    ("[[:foo:]]", "a", ERR),
    ("[[:a]", "a", True),
    ("[]a]", "]", True),
    ("[]", "a", ERR),
    ("[a", "a", ERR),
    ("[z-a]", "a", ERR),
    ("[\\d-z]", "-", True),
    ("[a-\\d]", "a", ERR),
    ("[\\b]", "\b", ERR),
    ("[^\\x00-\\x{10FFFF}]", "a", False),
    ("\\x41", "A", True),
    ("\\x{41}", "A", True),
    ("\\x{110000}", "a", ERR),
    ("\\x{}", "a", ERR),
    ("\\xg", "a", ERR),
    ("\\101", "A", True),  # octal
    ("\\12", "\n", True),
    ("\\0", "\0", True),
    ("\\8", "8", ERR),
    ("\\1", "a", ERR),  # a backreference
    ("\\a\\f\\t\\n\\r\\v", "\a\f\t\n\r\v", True),
    ("[\\a-\\x{1F}]", "\x10", True),
    ("\\_", "_", True),
    ("\\<", "<", True),
    ("\\é", "é", ERR),
    ("\\C", "a", ERR),
    ("\\", "a", ERR),
    ("\\Qa.b", "a.b", True),
    ("\\Qa.b", "axb", False),
    ("\\Qa.b\\E+", "a.bb", True),
    ("\\Q\\E*", "a", ERR),
    ("a\\Q\\E*", "aa", True),
    ("\\x{D800}", "a", False),
    # Unicode classes.
    ("\\pN", "5", True),
    ("\\pLu", "Au", True),
    ("\\p{Zs}", " ", True),
    ("\\pZ", "\u2028", True),
    ("\\p{^L}", "1", True),
    ("\\P{^L}", "a", True),
    ("\\p{Any}", "\n", True),
    ("\\p{Co}", "\ue000", True),
    ("\\pC", "\u0378", False),  # unassigned: in no category
    ("\\p{Cn}", "a", ERR),
    ("\\p{L&}", "a", ERR),
    ("\\p{LC}", "a", ERR),
    ("\\p", "a", ERR),
    ("\\p{", "a", ERR),
    ("[\\p{Lu}\\d]", "5", True),
    ("[^\\PL]", "a", True),
    # Case folding: simple folding orbits, folded before negation.
    ("(?i)k", "\u212a", True),
    ("(?i)[^k]", "\u212a", False),
    ("(?i)\\W", "\u212a", False),
    ("(?i)ſ", "S", True),  # noqa: RUF001 - long s folds to S, the point of the case
    ("(?i)Σ", "ς", True),
    ("(?i)ǅ", "ǆ", True),
    ("(?i)ß", "ẞ", True),
    ("(?i)[a-z]+$", "ABC", True),
    ("(?i)\\p{Lu}", "a", True),
    ("(?i)\\P{Lu}", "A", False),
    ("(?i)[[:upper:]]", "a", True),
    ("(?i:A)a", "aA", False),
    ("(?i)(?-i)a", "A", False),
    ("(a(?i)b)B", "aBB", True),
    ("(a(?i)b)B", "aBb", False),
    ("(?:a(?i)|B)", "b", True),
    # Flags and groups.
    ("(?)", "", True),
    ("(?i-)a", "a", ERR),
    ("(?-)a", "a", ERR),
    ("(?U)a+", "a", True),
    ("(?P<a>x)(?P<a>y)", "xy", True),
    ("(?P<n>a)(?P=n)", "aa", ERR),
    ("(?P<é>x)", "x", ERR),
    ("(?<a>x)", "x", ERR),  # only from Go 1.22
    ("(?#c)", "a", ERR),
    ("(?=a)", "a", ERR),
    ("(?!a)", "a", ERR),
    ("(?<=a)", "a", ERR),
    ("(?<!a)", "a", ERR),
    ("(?>a)", "a", ERR),
    ("(", "a", ERR),
    (")", "a", ERR),
    ("a)", "a", ERR),
    ("a|", "b", True),
    ("|a", "", True),
    ("()", "", True),
    # Repetition.
    ("x*?", "x", True),
    ("x*??", "x", ERR),
    ("x**", "x", ERR),
    ("a++", "a", ERR),
    ("a{1,2}{3}", "a", ERR),
    ("{2}", "x", ERR),
    ("a{01}", "a{01}", True),  # leading zero: not a count, literal text
    ("a{,3}", "a{,3}", True),
    ("a{3", "a{3", True),
    ("x{1001}", "x", ERR),
    ("x{2,1}", "x", ERR),
    ("x{99999999}", "x", ERR),
    ("(a{2}){501}", "a", ERR),  # nested counts multiply
    ("(a{2}){500}", "a", False),
    ("x{0}", "y", True),
    ("^*", "a", True),
    ("\\b*x", "x", True),
    ("(?:)*", "x", True),
    ("a(?i)*", "aaa", True),
    ("a*(?i)*", "a", True),
    ("(a*)*b", "aaaab", True),
    ("(a*)*b", "aaaa", False),
    ("^(.|.)*X$", "a" * 40, False),
    ("(x{0,}){500}y", "y", True),
    # Repeated assertions are one condition on one position.
    ("\\B{999}x", "ax", True),
    ("\\B{999}x", "x", False),
    ("(?:\\b$){0,5}q", "q", True),
    ("(?:\\b$)+", "a", True),
    ("(?:\\b$)+", "a ", False),
]


def _go(pattern: str, text: str) -> bool | str:
    try:
        return goregexp.match_string(pattern, text)
    except GoRegexpError:
        return ERR


@pytest.mark.parametrize(("pattern", "text", "want"), CASES)
def test_go_semantics_table(pattern: str, text: str, want: bool | str) -> None:
    assert _go(pattern, text) == want


def test_table_covers_where_python_re_differs() -> None:
    # The table is worth having only if Python's re disagrees with Go on a good part of it.
    differ = 0
    for pattern, text, want in CASES:
        if len(text) > 20:
            continue  # Python's re would backtrack for ages on "^(.|.)*X$"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                got: bool | str = re.search(pattern, text) is not None
        except (re.error, OverflowError):
            got = ERR
        differ += got != want
    assert differ >= 30


REJECTED = [
    "(a)\\1", "(?=x)", "(?<=x)y", "x++", "a**", "(?>a)", "x{1001}", "\\Z", "(", "[a", "[[:nope:]]",
    "\\p{Greek}", "(?:a?){1000}a{1000}", "a\\b" * (goregexp.MAX_ASSERTS + 1),
    "a" * (goregexp.MAX_PATTERN + 1),
    "(" * (goregexp.MAX_DEPTH + 1) + ")" * (goregexp.MAX_DEPTH + 1),
]


@pytest.mark.parametrize("pattern", REJECTED)
def test_rejected_patterns_never_match_and_never_raise(pattern: str) -> None:
    cache = RegexCache()
    for text in ("", "a", "x" * 40, "(a)a", pattern):
        f = encode_filters(QueryParam(filter_tags={"role": pattern}))
        assert not filters_match(f, "n", {"role": text}, regexes=cache, now=1.0)
    assert sum(cache.counters.values()) == 5


def test_rejections_are_counted_by_kind() -> None:
    cache = RegexCache()
    for pattern in ("(?=x)", "\\p{Greek}", "x{1000}x{1000}x{1000}"):
        with pytest.raises(GoRegexpError):
            cache.get(pattern, now=0.0)
    assert cache.counters == {"regex_invalid": 1, "regex_unsupported": 1, "regex_too_large": 1}
    with pytest.raises(UnsupportedError):
        goregexp.compile("\\pL\\p{Han}")
    with pytest.raises(TooLargeError):
        goregexp.compile("x{1000}" * 3)


def test_filters_match_follows_go_not_python() -> None:
    # Each of these differs between Python's re and Go's regexp.
    def passes(expr: str, value: str) -> bool:
        return filters_match(encode_filters(QueryParam(filter_tags={"r": expr})), "n", {"r": value})

    assert not passes("web$", "web\n")
    assert passes("web\\z", "web")
    assert passes("\\Qa.b\\E$", "xa.b")
    assert passes("(?U)x+", "x")
    assert passes("^\\pL+$", "héllo")
    assert passes("\\141", "a")
    assert not passes("(?i)[^k]", "\u212a")
    assert not passes("\\s", "\v")
    assert not passes("(?P<x>a)(?P=x)", "aa")
    # A missing tag matches as "".
    assert filters_match(encode_filters(QueryParam(filter_tags={"r": "^$"})), "n", {})


def test_members_filtered_anchors_as_serf() -> None:
    def member(name: str, role: str) -> Member:
        return Member(name=name, addr="10.0.0.1", port=7946, tags={"role": role},
                      status=MemberStatus.ALIVE)

    ms = [member("a", "web"), member("b", "xweb"), member("c", "web\n")]
    # Serf compiles "^" + expr + "$": "web|x" is "^web|x$", not "^(web|x)$".
    assert [m.name for m in filter_members(ms, {"role": "web"}, "", "")] == ["a"]
    assert [m.name for m in filter_members(ms, {"role": "web|x"}, "", "")] == ["a", "c"]
    assert [m.name for m in filter_members(ms, {"role": "x|web"}, "", "")] == ["a", "b"]
    with pytest.raises(GoRegexpError):
        filter_members(ms, {"role": "(?=w)"}, "", "")


def test_cache_compiles_once_and_is_bounded() -> None:
    cache = RegexCache(size=4)
    first = cache.get("^(.|.)*X$")
    assert cache.get("^(.|.)*X$") is first
    for i in range(10):
        cache.get(f"p{i}")
    assert len(cache._lru) == 4
    assert cache.get("^(.|.)*X$") is not first


def test_fold_blocks_cover_unicode() -> None:
    # Every character with a case partner lies in one of the blocks orbit() scans.
    seen: dict[str, set[int]] = {}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        seen.setdefault(goregexp.fold_key(chr(cp)), set()).add(cp)
    partnered = {cp for group in seen.values() if len(group) > 1 for cp in group}
    assert {cp >> 8 for cp in partnered} <= set(goregexp._FOLD_BLOCKS)
    assert set(goregexp.orbit(ord("k"))) == {ord("k"), ord("K"), 0x212A}


def test_categories_agree_with_unicodedata() -> None:
    for cp in (0x41, 0x61, 0x1C5, 0x2B0, 0x5D0, 0x300, 0x903, 0x20DD, 0x30, 0x2160, 0xB2,
               0x5F, 0x2D, 0x28, 0x29, 0xAB, 0xBB, 0x21, 0x2B, 0x24, 0x5E, 0xA9, 0x20,
               0x2028, 0x2029, 0x0, 0xAD, 0xE000):
        cat = unicodedata.category(chr(cp))
        assert goregexp.match_string(f"^\\p{{{cat}}}$", chr(cp))
        assert goregexp.match_string(f"^\\p{cat[0]}$", chr(cp))
        assert not goregexp.match_string(f"^\\P{{{cat}}}$", chr(cp))


# ---------------------------------------------------------------------------- differential

# A grammar where Go's regexp and Python's re agree: ASCII literals, classes, ".", groups,
# alternation, * + ? {n,m}, ^, \A and \z (Python spells it \Z); texts without "\n" at the
# end issues ("$" is left out: there the two differ).
_ATOMS = st.sampled_from(["a", "b", "c", ".", "[ab]", "[^a]", "[a-c]", "\\d", "\\w", "x", "^",
                          "\\A", "\\z", "[b-c]", "\\.", "1"])
_QUANTS = st.sampled_from(["", "", "*", "+", "?", "*?", "+?", "{2}", "{1,3}", "{0,2}", "{2,}"])


def _regex() -> st.SearchStrategy[str]:
    atom = st.builds(lambda a, q: a + q if a not in ("^", "\\A", "\\z") else a, _ATOMS, _QUANTS)

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        group = st.builds(lambda r, opener, q: f"{opener}{r}){q}", inner,
                          st.sampled_from(["(", "(?:"]), _QUANTS)
        alt = st.builds(lambda a, b: f"{a}|{b}", inner, inner)
        cat = st.builds(lambda a, b: a + b, inner, inner)
        return group | alt | cat

    return st.recursive(atom, extend, max_leaves=8)


@settings(max_examples=400, deadline=None)
@given(_regex(), st.text(alphabet="abcx1.\n", max_size=12))
def test_differential_against_python_re(pattern: str, text: str) -> None:
    py = re.search(pattern.replace("\\z", "\\Z"), text) is not None
    assert goregexp.match_string(pattern, text) == py, (pattern, text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from([*"ab()[]{}|*+?^$.\\-:,0123PpQEiLdxz<>=!#", "\u212a"]),
               max_size=24),
       st.text(alphabet="ab(){}\n", max_size=8))
def test_any_pattern_compiles_or_raises_our_error(pattern: str, text: str) -> None:
    try:
        r = goregexp.compile(pattern)
    except GoRegexpError:
        return
    r.search(text)  # anything but a bool or GoRegexpError is a bug


# ---------------------------------------------------------------------------- linear time

PATHOLOGICAL = [
    ("^(.|.)*X$", "a"),
    ("(a*)*b", "a"),
    ("(a|aa)*c", "a"),
    ("(x+x+)+y", "x"),
    ("(?:a?){40}a{40}", "a"),
    ("((a|b|ab)*)*c", "ab"),
    ("(\\w+\\s?)*$", "word "),
    ("(?i)(?:[a-z]|\\pL|\\d)*!$", "ab1é"),
    ("(?:\\b|\\B|^|(?m:^|$))*(?:a\\b|a\\B)*z", "a"),
]


@pytest.mark.parametrize(("pattern", "unit"), PATHOLOGICAL)
def test_work_is_linear_in_pattern_and_text(pattern: str, unit: str) -> None:
    # The engine counts its elementary steps: at most c x program size x text length, and
    # growing no faster than the text (a backtracking engine doubles per character here).
    works = {}
    for n in (30, 60, 125, 250, 500):
        r = goregexp.compile(pattern)
        text = (unit * n)[:n]
        r.search(text)
        works[n] = r.work
        assert r.work <= 4 * r.size * (n + 1), (n, r.work, r.size)
    assert works[500] <= 2 * works[30] * (501 / 31), works


def test_work_bound_holds_for_the_largest_programs() -> None:
    text = "ab" * 256
    for pattern in ("(?:[ab]?){999}Z", "[ab]*a[ab]{999}Z", "(?s)(.*.*.*.*.*.*.*.*){80}x",
                    "(?:(?:a?|b?)*(?:a|b)?){140}Z"):
        r = goregexp.compile(pattern)
        assert r.size <= goregexp.MAX_PROGRAM
        r.search(text)
        assert r.work <= 4 * r.size * (len(text) + 1), (pattern, r.work, r.size)


def test_serf_counts_refused_filters_and_nobody_answers() -> None:
    from serfd.testing.serf_sim import build_cluster

    sim = build_cluster(3, seed=4)
    for expr, reason in (("(?=db)", "regex_invalid"), ("\\p{Greek}", "regex_unsupported"),
                         ("x{1000}" * 3, "regex_too_large")):
        qid = sim.serf("n0").query("q", b"", QueryParam(filter_tags={"role": expr}), sim.now)
        sim.service("n0")
        records: list[str] = []

        def step(qid: int = qid, records: list[str] = records) -> bool:
            for n in sim.nodes:
                records.extend(e.record.type for e in sim.serf(n).drain_events()
                               if isinstance(e, QueryRecordEvent) and e.query_id == qid)
            return "done" in records

        assert sim.run_until(sim.now + 10.0, step, every=0.01)
        assert records == ["done"]  # no node answered
        for n in ("n0", "n1", "n2"):
            assert sim.serf(n).counters.get(reason, 0) >= 1, (n, reason, sim.serf(n).counters)


def test_caches_stay_within_their_bounds() -> None:
    text = "".join(chr(0x41 + (i * 7919) % 0x2000) for i in range(512))
    r = goregexp.compile("(?:[^a]?){900}(?:\\pL|\\d)*Z")
    r.search(text)
    assert len(r._dfa) <= r._dfa_max and len(r._chunks) <= goregexp.CHUNKS_MAX
    assert len(r._char_masks) <= goregexp.CHAR_CACHE
    cache = RegexCache()
    for i in range(20):
        cache.get(f"(?:a?){{{900 + i}}}")
    assert cache._kept <= goregexp.CACHE_INSTRUCTIONS and len(cache._lru) <= 3


def test_work_budget_refuses_a_flood_of_costly_patterns_and_refills() -> None:
    cache = RegexCache(work_per_second=1000, burst=20_000)
    text = "a" * 500
    refused = 0
    costs: list[int] = []
    for k in range(100, 160):  # distinct costly programs: none is cached
        before = cache.work
        try:
            cache.search(f"(?:a?){{{k}}}b", text, now=0.0)
        except goregexp.BudgetError:
            refused += 1
        costs.append(cache.work - before)
    # Work stops once the bucket is empty: at most the burst plus the one that emptied it.
    assert refused > 0 and cache.counters["regex_budget"] == refused
    assert cache.work <= 20_000 + max(costs)
    # A verdict already known costs nothing, budget or not.
    spent = cache.work
    assert cache.search("(?:a?){100}b", text, now=0.0) is False
    assert cache.work == spent
    # The budget refills with time: 30 s at 1000/s is room for more.
    assert cache.search("(?:a?){170}b", text, now=30.0) is False
    assert cache.work > spent


def test_filters_from_peers_are_budgeted_but_rpc_filters_are_not() -> None:
    from serfd.testing.serf_sim import build_cluster

    sim = build_cluster(2, seed=5)
    me = sim.serf("n1")
    now = sim.now
    text = "x" * 300
    me.tags["role"] = text
    costs = [0]
    for k in range(400):  # a flood of distinct costly filters, all in one instant
        f = encode_filters(QueryParam(filter_tags={"role": f"(?:x?){{{200 + k}}}y"}))
        before = me.regexes.work
        assert not filters_match(f, "n1", me.tags, me.regexes, now)
        costs.append(me.regexes.work - before)
    assert me.counters.get("regex_budget", 0) > 0
    assert me.regexes.work <= goregexp.WORK_BURST + max(costs)
    # The process-wide cache (RPC members-filtered, local callers) has no budget.
    unbudgeted = RegexCache()
    for k in range(60):
        unbudgeted.search(f"(?:x?){{{200 + k}}}y", text)
    assert "regex_budget" not in unbudgeted.counters

"""Go's regexp syntax and ``MatchString``, matched in linear time: filters peers and clients choose.

Theory of operation
-------------------
Serf evaluates query tag filters and the RPC ``members-filtered`` expressions with Go's
``regexp`` (RE2): its cost is linear in pattern and text for every pattern. Python's ``re``
backtracks, so one hostile filter could pin serfd's event loop for minutes. This module is
the replacement: a parser for the syntax Go 1.19 accepts (the Go version that built Debian
12's ``serf``) and an automaton search that never backtracks.

* :func:`compile` parses a pattern into a small tree, then compiles it into an NFA program
  (Thompson's construction: ``CHAR`` consumes one character of a class, ``SPLIT``/``JMP``
  are free moves, ``ASSERT`` is a free move only where its condition holds, such as
  "start of text", ``MATCH`` ends). A pattern Go rejects raises :class:`GoRegexpError`; so does
  one we choose not to run (:class:`UnsupportedError` for Unicode script classes,
  :class:`TooLargeError` for a pattern, a nesting or a program beyond our bounds).
* :meth:`Regexp.search` is Go's ``MatchString``: an unanchored search. It runs the NFA as a
  set of states, one bit per instruction in a Python int; a step is "threads whose class
  holds the character" followed by the free moves. The SPLIT/JMP closure of every
  instruction is computed once (strongly connected components, so loops of empty moves
  such as ``(a*)*`` are fine); the ASSERTs reached are then followed, each at most once,
  where the position satisfies them. Each step costs at most one pass over the program,
  so a search is O(len(program) x len(text)) whatever the pattern; the steps
  actually taken are memoised (a lazy DFA), with a bounded cache, so the common case is one
  dict lookup per character. ``Regexp.work`` counts the engine's elementary steps so tests
  can check the bound without timing anything.
* :class:`RegexCache` is a small LRU of compiled patterns (a flood of identical queries
  compiles once); it also remembers a bounded number of rejected patterns.

Semantics follow Go: ``$`` without ``(?m)`` is the end of the text only; ``.`` excludes
``\\n`` unless ``(?s)``; ``\\b`` and ``\\w`` are ASCII; ``(?i)`` folds case by Unicode simple
case folding orbits; a negated class matches ``\\n``. Unicode categories (``\\pL``,
``\\p{Lu}``) come from :mod:`unicodedata` (Python's Unicode version, Go 1.19 has 13.0).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import logging
import unicodedata
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass

from serfd.base.ratelog import DropLog

__all__ = [
    "BudgetError",
    "GoRegexpError",
    "RegexCache",
    "Regexp",
    "TooLargeError",
    "UnsupportedError",
    "compile",
    "match_string",
]

_log = logging.getLogger(__name__)

MAX_REPEAT = 1000  # Go's regexp/syntax limit on a {n,m} count (and on nested counts' product)
MAX_PATTERN = 1024  # characters; a query (filters included) is at most 1024 bytes in Serf
MAX_DEPTH = 100  # group nesting (Go allows 1000; ours keeps the recursive parser shallow)
MAX_PROGRAM = 2048  # NFA instructions; bounds a search at MAX_PROGRAM x len(text) steps
DFA_BITS_BUDGET = 1 << 20  # cached transitions per program x program bits (memory bound)
DFA_MAX = 4096  # cached transitions per program, whatever its size
CHUNKS_MAX = 4096  # memoised successor sets of eight instructions, per program
CACHE_INSTRUCTIONS = 5000  # RegexCache: total program size it keeps compiled
RESULT_CACHE = 256  # RegexCache: (pattern, text) verdicts it remembers
# RegexCache with a budget (the peers' query filters): engine work, in the units of
# Regexp.work plus a compiled program's size, allowed per second and at once. One work
# unit is 0.3-1.6 us here, so the rate is at most about 8 % of a core and the burst about
# 0.3 s; an ordinary tag filter costs tens of units.
WORK_PER_SECOND = 50_000
WORK_BURST = 200_000
MAX_ASSERTS = 64  # ^ $ \A \z \b \B instructions (each may be resolved at every position)
MAX_CLASS_ITEMS = 24  # parts of the distinct multi-character classes (tested per new character)
CHAR_CACHE = 512  # characters whose class mask a program remembers


class GoRegexpError(ValueError):
    """A pattern Go's regexp would reject (or that we refuse to run: see subclasses)."""


class UnsupportedError(GoRegexpError):
    """Valid Go syntax we do not implement (Unicode script classes such as ``\\p{Greek}``)."""


class TooLargeError(GoRegexpError):
    """A pattern beyond our bounds: too long, nested too deep, or compiling to too big a program."""


class BudgetError(GoRegexpError):
    """Not run now: the cache's work budget is spent (a flood of costly distinct patterns)."""


# ---------------------------------------------------------------------------- classes

_FOLD, _MULTILINE, _DOTNL = 1, 2, 4  # parser flags (Go: FoldCase, !OneLine, DotNL); U ignored

# Blocks (code point >> 8) holding every character with a case-folding partner; a unit test
# checks this against a scan of all of Unicode.
_FOLD_BLOCKS = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x10, 0x13, 0x1C, 0x1D, 0x1E, 0x1F, 0x21,
                0x24, 0x2C, 0x2D, 0xA6, 0xA7, 0xAB, 0xFF, 0x104, 0x105, 0x10C, 0x118, 0x16E,
                0x1E9)
_orbits: dict[int, tuple[int, ...]] | None = None


def fold_key(ch: str) -> str:
    """The representative of ``ch``'s simple case folding orbit (Go's unicode.SimpleFold)."""
    cf = ch.casefold()
    if len(cf) == 1:
        return cf
    lo = ch.lower()
    return lo if len(lo) == 1 else ch


def orbit(cp: int) -> tuple[int, ...]:
    """Every code point that folds together with ``cp`` (itself included)."""
    global _orbits
    if _orbits is None:
        groups: dict[str, list[int]] = {}
        for block in _FOLD_BLOCKS:
            for c in range(block << 8, (block + 1) << 8):
                groups.setdefault(fold_key(chr(c)), []).append(c)
        _orbits = {c: tuple(g) for g in groups.values() if len(g) > 1 for c in g}
    return _orbits.get(cp, (cp,))


_GO_CATEGORIES = frozenset({
    "C", "Cc", "Cf", "Co", "Cs", "L", "Ll", "Lm", "Lo", "Lt", "Lu", "M", "Mc", "Me", "Mn",
    "N", "Nd", "Nl", "No", "P", "Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "S", "Sc", "Sk",
    "Sm", "So", "Z", "Zl", "Zp", "Zs",
})  # Go's unicode.Categories (no Cn: unassigned code points are in no category)

# Go's unicode.Scripts (Unicode 13): accepted by Go, refused by us (unicodedata has no scripts).
_SCRIPT_NAMES = """
Adlam Ahom Anatolian_Hieroglyphs Arabic Armenian Avestan Balinese Bamum Bassa_Vah Batak Bengali
Bhaiksuki Bopomofo Brahmi Braille Buginese Buhid Canadian_Aboriginal Carian Caucasian_Albanian
Chakma Cham Cherokee Chorasmian Common Coptic Cuneiform Cypriot Cyrillic Deseret Devanagari
Dives_Akuru Dogra Duployan Egyptian_Hieroglyphs Elbasan Elymaic Ethiopic Georgian Glagolitic
Gothic Grantha Greek Gujarati Gunjala_Gondi Gurmukhi Han Hangul Hanifi_Rohingya Hanunoo Hatran
Hebrew Hiragana Imperial_Aramaic Inherited Inscriptional_Pahlavi Inscriptional_Parthian Javanese
Kaithi Kannada Katakana Kayah_Li Kharoshthi Khitan_Small_Script Khmer Khojki Khudawadi Lao Latin
Lepcha Limbu Linear_A Linear_B Lisu Lycian Lydian Mahajani Makasar Malayalam Mandaic Manichaean
Marchen Masaram_Gondi Medefaidrin Meetei_Mayek Mende_Kikakui Meroitic_Cursive
Meroitic_Hieroglyphs Miao Modi Mongolian Mro Multani Myanmar Nabataean Nandinagari New_Tai_Lue
Newa Nko Nushu Nyiakeng_Puachue_Hmong Ogham Ol_Chiki Old_Hungarian Old_Italic Old_North_Arabian
Old_Permic Old_Persian Old_Sogdian Old_South_Arabian Old_Turkic Oriya Osage Osmanya
Pahawh_Hmong Palmyrene Pau_Cin_Hau Phags_Pa Phoenician Psalter_Pahlavi Rejang Runic Samaritan
Saurashtra Sharada Shavian Siddham SignWriting Sinhala Sogdian Sora_Sompeng Soyombo Sundanese
Syloti_Nagri Syriac Tagalog Tagbanwa Tai_Le Tai_Tham Tai_Viet Takri Tamil Tangut Telugu Thaana
Thai Tibetan Tifinagh Tirhuta Ugaritic Vai Wancho Warang_Citi Yezidi Yi Zanabazar_Square
"""
_GO_SCRIPTS = frozenset(_SCRIPT_NAMES.split())

_Ranges = tuple[tuple[int, int], ...]

_DIGIT: _Ranges = ((0x30, 0x39),)
_SPACE: _Ranges = ((0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20))  # Go's \s: no \v
_WORD: _Ranges = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_PERL: dict[str, tuple[_Ranges, bool]] = {
    "d": (_DIGIT, False), "D": (_DIGIT, True),
    "s": (_SPACE, False), "S": (_SPACE, True),
    "w": (_WORD, False), "W": (_WORD, True),
}
_POSIX: dict[str, _Ranges] = {
    "alnum": ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)),
    "alpha": ((0x41, 0x5A), (0x61, 0x7A)),
    "ascii": ((0x00, 0x7F),),
    "blank": ((0x09, 0x09), (0x20, 0x20)),
    "cntrl": ((0x00, 0x1F), (0x7F, 0x7F)),
    "digit": _DIGIT,
    "graph": ((0x21, 0x7E),),
    "lower": ((0x61, 0x7A),),
    "print": ((0x20, 0x7E),),
    "punct": ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)),
    "space": ((0x09, 0x0D), (0x20, 0x20)),
    "upper": ((0x41, 0x5A),),
    "word": _WORD,
    "xdigit": ((0x30, 0x39), (0x41, 0x46), (0x61, 0x66)),
}


@dataclass(frozen=True, slots=True)
class _Item:
    """One member of a class: ranges or Unicode categories, maybe case-folded, maybe negated.

    Go folds an item before negating it: ``(?i)\\W`` excludes the Kelvin sign, which folds
    with ``k``.
    """

    ranges: _Ranges = ()
    cats: frozenset[str] = frozenset()  # general categories: "L" covers "Lu", "Ll", ...
    any: bool = False
    fold: bool = False
    neg: bool = False

    def has(self, cp: int) -> bool:
        if self.any:
            return not self.neg
        for c in orbit(cp) if self.fold else (cp,):
            if self.cats:
                cat = unicodedata.category(chr(c))
                if cat != "Cn" and (cat in self.cats or cat[0] in self.cats):
                    return not self.neg
            r = self.ranges
            if r:
                i = bisect_right(r, (c, 0x110000)) - 1
                if i >= 0 and c <= r[i][1]:
                    return not self.neg
        return self.neg


@dataclass(frozen=True, slots=True)
class CharClass:
    """A set of characters: the union of its items, negated as a whole if ``neg``."""

    items: tuple[_Item, ...]
    neg: bool = False

    def has(self, cp: int) -> bool:
        """True if code point ``cp`` is in the class."""
        for it in self.items:
            if it.has(cp):
                return not self.neg
        return self.neg

    def literal(self) -> tuple[int, ...] | None:
        """The characters of a one-character class (with its case partners), else None."""
        if self.neg or len(self.items) != 1:
            return None
        it = self.items[0]
        if it.neg or it.any or it.cats or len(it.ranges) != 1 or it.ranges[0][0] != it.ranges[0][1]:
            return None
        cp = it.ranges[0][0]
        return orbit(cp) if it.fold else (cp,)


def _merge(ranges: list[tuple[int, int]]) -> _Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return tuple(out)


_NOT_NL = CharClass((_Item(ranges=((0x0A, 0x0A),), neg=True),))
_ANY = CharClass((_Item(any=True),))


# ---------------------------------------------------------------------------- syntax tree

# Nodes are tuples: ("cls", CharClass) ("cat", [nodes]) ("alt", [nodes])
# ("rep", node, min, max) with max -1 = unbounded; ("assert", kind); ("empty",).
_Node = tuple[object, ...]

# Assertion kinds, as bits of a position's context.
_BOT, _EOT, _BOL, _EOL, _WB = 1, 2, 4, 8, 16
_NWB = 32  # "not a word boundary": holds when the _WB bit is clear


def _repeat_is_valid(node: _Node, n: int) -> bool:
    # Go rejects nested {n,m} counts whose product exceeds 1000 (regexp/syntax repeatIsValid).
    if node[0] == "rep" and node[4]:
        m = node[3]
        assert isinstance(m, int)
        if m == 0:
            return True
        if m < 0:
            m = node[2]
            assert isinstance(m, int)
        if m > n:
            return False
        if m > 0:
            n //= m
    if node[0] == "rep":
        sub = node[1]
        assert isinstance(sub, tuple)
        return _repeat_is_valid(sub, n)
    if node[0] in ("cat", "alt"):
        subs = node[1]
        assert isinstance(subs, list)
        return all(_repeat_is_valid(s, n) for s in subs)
    return True


class _Parser:
    """A recursive-descent parser for Go's (Perl-flavoured) regexp syntax."""

    def __init__(self, pattern: str) -> None:
        self.s = pattern
        self.i = 0
        self.flags = 0
        self.depth = 0

    def error(self, what: str) -> GoRegexpError:
        return GoRegexpError(f"{what} at offset {self.i} in {self.s!r}")

    def parse(self) -> _Node:
        node = self.alternation()
        if self.i < len(self.s):  # only a ")" stops an alternation early
            raise self.error("unexpected )")
        return node

    def alternation(self) -> _Node:
        branches = [self.concat()]
        while self.i < len(self.s) and self.s[self.i] == "|":
            self.i += 1
            branches.append(self.concat())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def concat(self) -> _Node:
        items: list[_Node] = []
        last_repeat = False  # the previous token was a repetition operator
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c in "|)":
                break
            if c in "*+?{":
                rep = self.repetition(items, last_repeat)
                if rep is not None:
                    last_repeat = True
                    continue
                # "{" that does not start a valid count is a literal
            last_repeat = False
            if c == "(":
                self.group(items)
            elif c == "[":
                items.append(("cls", self.bracket()))
            elif c == ".":
                self.i += 1
                items.append(("cls", _ANY if self.flags & _DOTNL else _NOT_NL))
            elif c == "^":
                self.i += 1
                items.append(("assert", _BOL if self.flags & _MULTILINE else _BOT))
            elif c == "$":
                self.i += 1
                items.append(("assert", _EOL if self.flags & _MULTILINE else _EOT))
            elif c == "\\":
                self.escape(items)
            else:
                self.i += 1
                items.append(self.literal(ord(c)))
        if not items:
            return ("empty",)
        return items[0] if len(items) == 1 else ("cat", items)

    def literal(self, cp: int, escaped: bool = False) -> _Node:
        if 0xD800 <= cp <= 0xDFFF and not escaped:
            raise self.error("invalid UTF-8")
        return ("cls", CharClass((_Item(ranges=((cp, cp),), fold=bool(self.flags & _FOLD)),)))

    def repetition(self, items: list[_Node], last_repeat: bool) -> bool | None:
        s, start = self.s, self.i
        c = s[start]
        if c == "{":
            parsed = self.count(start + 1)
            if parsed is None:
                return None
            lo, hi, end = parsed
            self.i = end
            if lo < 0 or lo > MAX_REPEAT or hi > MAX_REPEAT or (hi >= 0 and lo > hi):
                raise self.error("invalid repeat count")
        else:
            self.i += 1
            lo, hi = {"*": (0, -1), "+": (1, -1), "?": (0, 1)}[c]
        if self.i < len(s) and s[self.i] == "?":  # lazy: the same language
            self.i += 1
        if last_repeat:
            raise self.error("invalid nested repetition operator")
        if not items:
            raise self.error("missing argument to repetition operator")
        node: _Node = ("rep", items[-1], lo, hi, c == "{")
        if c == "{" and (lo >= 2 or hi >= 2) and not _repeat_is_valid(node, MAX_REPEAT):
            raise self.error("invalid repeat count")
        items[-1] = node
        return True

    def count(self, i: int) -> tuple[int, int, int] | None:
        # "{n}", "{n,}", "{n,m}"; None if not a count (then "{" is a literal).
        s = self.s

        def number(j: int) -> tuple[int, int] | None:
            k = j
            while k < len(s) and "0" <= s[k] <= "9":
                k += 1
            if k == j or (k - j >= 2 and s[j] == "0"):  # Go: no leading zeros
                return None
            return (int(s[j:k]) if k - j < 8 else -1), k  # Go: 8+ digits overflow to -1

        first = number(i)
        if first is None:
            return None
        lo, j = first
        if j >= len(s):
            return None
        if s[j] == "}":
            return lo, lo, j + 1
        if s[j] != ",":
            return None
        j += 1
        if j < len(s) and s[j] == "}":
            return lo, -1, j + 1
        second = number(j)
        if second is None:
            return None
        hi, j = second
        if j >= len(s) or s[j] != "}":
            return None
        if hi == -1:  # an overflowed upper bound is invalid too
            hi = MAX_REPEAT + 1
        return lo, hi, j + 1

    def group(self, items: list[_Node]) -> None:
        s = self.s
        saved = self.flags
        if s.startswith("(?", self.i):
            if s.startswith("(?P<", self.i) and len(s) - self.i > 4:
                end = s.find(">", self.i)
                if end < 0:
                    raise self.error("invalid named capture")
                name = s[self.i + 4:end]
                if not name or not all(ch == "_" or (ch.isascii() and ch.isalnum()) for ch in name):
                    raise self.error("invalid named capture")
                self.i = end + 1
            else:
                if self.flags_group():
                    return  # "(?flags)": applies to the rest of the enclosing group
        else:
            self.i += 1
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooLargeError(f"groups nested deeper than {MAX_DEPTH} in {s!r}")
        node = self.alternation()
        if self.i >= len(s):
            raise self.error("missing closing )")
        self.i += 1  # ")"
        self.depth -= 1
        self.flags = saved
        items.append(node)

    def flags_group(self) -> bool:
        # "(?flags)" or "(?flags:"; True if it was "(?flags)" (no group opened).
        s = self.s
        j = self.i + 2
        flags = self.flags
        neg = False
        saw = False
        while j < len(s):
            c = s[j]
            j += 1
            if c in "imsU":
                bit = {"i": _FOLD, "m": _MULTILINE, "s": _DOTNL, "U": 0}[c]
                flags = flags & ~bit if neg else flags | bit
                saw = True
            elif c == "-":
                if neg:
                    break
                neg, saw = True, False
            elif c in ":)":
                if neg and not saw:
                    break
                self.i = j
                self.flags = flags
                return c == ")"
            else:
                break
        self.i = j
        raise self.error("invalid or unsupported Perl syntax")

    def escape(self, items: list[_Node]) -> None:
        s, i = self.s, self.i
        nxt = s[i + 1] if i + 1 < len(s) else ""
        simple = {"A": _BOT, "z": _EOT, "b": _WB, "B": _NWB}
        if nxt in simple:
            self.i += 2
            items.append(("assert", simple[nxt]))
            return
        if nxt == "C":
            raise self.error("invalid escape sequence \\C")
        if nxt == "Q":
            end = s.find("\\E", i + 2)
            lit = s[i + 2:] if end < 0 else s[i + 2:end]
            self.i = len(s) if end < 0 else end + 2
            items.extend(self.literal(ord(ch)) for ch in lit)
            return
        item = self.class_escape()
        if item is not None:
            items.append(("cls", CharClass((item,))))
            return
        items.append(self.literal(self.char_escape(), escaped=True))

    def class_escape(self) -> _Item | None:
        # \d \s \w (and negations), \pX, \p{Name}, \PX: an item, or None if not one of them.
        s, i = self.s, self.i
        fold = bool(self.flags & _FOLD)
        nxt = s[i + 1] if i + 1 < len(s) else ""
        if nxt in _PERL:
            self.i += 2
            ranges, neg = _PERL[nxt]
            return _Item(ranges=ranges, fold=fold, neg=neg)
        if nxt not in ("p", "P"):
            return None
        neg = nxt == "P"
        if i + 2 >= len(s):
            raise self.error("invalid character class range")
        if s[i + 2] == "{":
            end = s.find("}", i + 2)
            if end < 0:
                raise self.error("invalid character class range")
            name = s[i + 3:end]
            self.i = end + 1
        else:
            name = s[i + 2]
            self.i = i + 3
        if name.startswith("^"):
            neg, name = not neg, name[1:]
        if name == "Any":
            return _Item(any=True, neg=neg)
        if name in _GO_CATEGORIES:
            return _Item(cats=frozenset((name,)), fold=fold, neg=neg)
        if name in _GO_SCRIPTS:
            raise UnsupportedError(f"Unicode script class \\p{{{name}}} is not supported")
        raise self.error("invalid character class range")

    def char_escape(self) -> int:
        # One escaped character (outside or inside a class); self.i is at the backslash.
        s = self.s
        i = self.i + 1
        if i >= len(s):
            raise self.error("trailing backslash at end of expression")
        c = s[i]
        i += 1
        if c in "01234567":
            if c != "0" and (i >= len(s) or s[i] not in "01234567"):
                raise self.error("invalid escape sequence (backreference?)")
            v = int(c)
            for _ in range(2):
                if i < len(s) and s[i] in "01234567":
                    v = v * 8 + int(s[i])
                    i += 1
            self.i = i
            return v
        if c == "x":
            if i < len(s) and s[i] == "{":
                end = s.find("}", i)
                digits = s[i + 1:end] if end >= 0 else ""
                if not digits or not all(ch in "0123456789abcdefABCDEF" for ch in digits):
                    raise self.error("invalid escape sequence \\x")
                v = int(digits, 16)
                if v > 0x10FFFF:
                    raise self.error("invalid escape sequence \\x")
                self.i = end + 1
                return v
            h = s[i:i + 2]
            if len(h) != 2 or not all(ch in "0123456789abcdefABCDEF" for ch in h):
                raise self.error("invalid escape sequence \\x")
            self.i = i + 2
            return int(h, 16)
        simple = {"a": 7, "f": 12, "t": 9, "n": 10, "r": 13, "v": 11}
        if c in simple:
            self.i = i
            return simple[c]
        if c.isascii() and not c.isalnum():
            self.i = i
            return ord(c)
        raise self.error(f"invalid escape sequence \\{c}")

    def bracket(self) -> CharClass:
        s = self.s
        start = self.i
        i = self.i + 1
        neg = False
        if i < len(s) and s[i] == "^":
            neg = True
            i += 1
        fold = bool(self.flags & _FOLD)
        items: list[_Item] = []
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            if i >= len(s):
                self.i = start
                raise self.error("missing closing ]")
            if s[i] == "]" and not first:
                i += 1
                break
            first = False
            if s.startswith("[:", i):
                end = s.find(":]", i + 2)
                if end >= 0:
                    name = s[i + 2:end]
                    pneg = name.startswith("^")
                    if pneg:
                        name = name[1:]
                    if name not in _POSIX:
                        self.i = i
                        raise self.error("invalid character class range")
                    items.append(_Item(ranges=_POSIX[name], fold=fold, neg=pneg))
                    i = end + 2
                    continue
            if s[i] == "\\":
                self.i = i
                item = self.class_escape()
                if item is not None:
                    items.append(item)
                    i = self.i
                    continue
            lo, i = self.class_char(i)
            hi = lo
            if i + 1 < len(s) and s[i] == "-" and s[i + 1] != "]":
                hi, i = self.class_char(i + 1)
                if hi < lo:
                    self.i = i
                    raise self.error("invalid character class range")
            ranges.append((lo, hi))
        self.i = i
        # Merge the positive items: one for categories, one for ranges (all share ``fold``).
        cats: set[str] = set()
        merged: list[_Item] = []
        for it in items:
            if it.neg or it.any:
                merged.append(it)
            else:
                cats.update(it.cats)
                ranges.extend(it.ranges)
        if cats:
            merged.append(_Item(cats=frozenset(cats), fold=fold))
        if ranges:
            merged.append(_Item(ranges=_merge(ranges), fold=fold))
        return CharClass(tuple(merged), neg)

    def class_char(self, i: int) -> tuple[int, int]:
        s = self.s
        if i >= len(s):
            raise self.error("missing closing ]")
        if s[i] == "\\":
            self.i = i
            cp = self.char_escape()
            return cp, self.i
        cp = ord(s[i])
        if 0xD800 <= cp <= 0xDFFF:
            raise self.error("invalid UTF-8")
        return cp, i + 1


# ---------------------------------------------------------------------------- program

_CHAR, _MATCH, _SPLIT, _JMP, _ASSERT = range(5)


class _Compiler:
    def __init__(self) -> None:
        self.op: list[int] = []
        self.a: list[int] = []  # SPLIT/JMP target, ASSERT kind, CHAR class index
        self.b: list[int] = []  # SPLIT second target
        self.asserts = 0
        self.classes: list[CharClass] = []
        self.class_index: dict[CharClass, int] = {}

    def emit(self, op: int, a: int = 0, b: int = 0) -> int:
        if len(self.op) >= MAX_PROGRAM:
            raise TooLargeError(f"pattern compiles to more than {MAX_PROGRAM} instructions")
        if op == _ASSERT:
            self.asserts += 1
            if self.asserts > MAX_ASSERTS:
                raise TooLargeError(f"pattern has more than {MAX_ASSERTS} assertions")
        self.op.append(op)
        self.a.append(a)
        self.b.append(b)
        return len(self.op) - 1

    def gen(self, node: _Node) -> None:
        kind = node[0]
        if kind == "cls":
            cls = node[1]
            assert isinstance(cls, CharClass)
            idx = self.class_index.setdefault(cls, len(self.classes))
            if idx == len(self.classes):
                self.classes.append(cls)
            self.emit(_CHAR, idx)
        elif kind == "cat":
            for sub in node[1]:  # type: ignore[attr-defined]
                self.gen(sub)
        elif kind == "alt":
            subs = node[1]
            assert isinstance(subs, list)
            jumps = []
            for sub in subs[:-1]:
                split = self.emit(_SPLIT)
                self.a[split] = split + 1
                self.gen(sub)
                jumps.append(self.emit(_JMP))
                self.b[split] = len(self.op)
            self.gen(subs[-1])
            for j in jumps:
                self.a[j] = len(self.op)
        elif kind == "assert":
            k = node[1]
            assert isinstance(k, int)
            self.emit(_ASSERT, k)
        elif kind == "rep":
            sub, lo, hi = node[1], node[2], node[3]
            assert isinstance(sub, tuple) and isinstance(lo, int) and isinstance(hi, int)
            if _empty_width(sub):
                # Conditions on one position: x{n,m} is x when n >= 1, else always true.
                if lo:
                    self.gen(sub)
                return
            for _ in range(lo):
                self.gen(sub)
            if hi == -1:  # star: L: SPLIT(body, out); body; JMP L
                split = self.emit(_SPLIT)
                self.a[split] = split + 1
                self.gen(sub)
                self.emit(_JMP, split)
                self.b[split] = len(self.op)
            else:  # (sub(sub(...)?)?)?: every SPLIT may leave to the common end
                splits = []
                for _ in range(hi - lo):
                    split = self.emit(_SPLIT)
                    self.a[split] = split + 1
                    splits.append(split)
                    self.gen(sub)
                for split in splits:
                    self.b[split] = len(self.op)
        # "empty" emits nothing


def _empty_width(node: _Node) -> bool:
    # Matches only the empty string (anchors, boundaries, empty groups and their repeats).
    kind = node[0]
    if kind in ("assert", "empty"):
        return True
    if kind == "rep":
        sub = node[1]
        assert isinstance(sub, tuple)
        return _empty_width(sub)
    if kind in ("cat", "alt"):
        subs = node[1]
        assert isinstance(subs, list)
        return all(_empty_width(x) for x in subs)
    return False


def _closure_table(op: list[int], a: list[int], b: list[int]) -> tuple[list[int], int]:
    """For each pc, the CHAR, MATCH and ASSERT instructions reachable by SPLIT and JMP moves.

    An ASSERT is a leaf here: whether its move is free depends on the position, so the
    search resolves it there (:meth:`Regexp._resolve`). Tarjan's strongly connected
    components, iteratively: members of a cycle of free moves share one closure. Returns
    the table and the number of edges walked (work).
    """
    n = len(op)
    index = [-1] * (n + 1)
    low = [0] * (n + 1)
    value = [0] * (n + 1)  # n is the virtual "end of program": nothing
    scc = [-1] * (n + 1)  # the root of each finished component
    on_stack = [False] * (n + 1)
    stack: list[int] = []
    counter = 0
    work = 0

    def succ(pc: int) -> tuple[int, ...]:
        o = op[pc]
        if o == _SPLIT:
            return (a[pc], b[pc])
        if o == _JMP:
            return (a[pc],)
        return ()

    for root in range(n):
        if index[root] != -1:
            continue
        work_stack: list[tuple[int, tuple[int, ...], int]] = [(root, succ(root), 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        while work_stack:
            pc, ss, k = work_stack[-1]
            if k < len(ss):
                work_stack[-1] = (pc, ss, k + 1)
                w = ss[k]
                work += 1
                if w == n:
                    continue
                if index[w] == -1:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work_stack.append((w, succ(w), 0))
                elif on_stack[w]:
                    low[pc] = min(low[pc], index[w])
                continue
            work_stack.pop()
            if work_stack:
                parent = work_stack[-1][0]
                low[parent] = min(low[parent], low[pc])
            if low[pc] == index[pc]:
                members = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    scc[w] = pc
                    members.append(w)
                    if w == pc:
                        break
                v = 0
                for w in members:
                    if op[w] in (_CHAR, _MATCH, _ASSERT):
                        v |= 1 << w
                    for x in succ(w):
                        if x != n and scc[x] != pc:
                            v |= value[x]
                for w in members:
                    value[w] = v
                work += len(members)
    return value[:n], work


class Regexp:
    """A compiled pattern; :meth:`search` is Go's ``MatchString``."""

    def __init__(self, pattern: str, comp: _Compiler) -> None:
        self.pattern = pattern
        self._op, self._a, self._b = comp.op, comp.a, comp.b
        self._classes = comp.classes
        self.size = len(comp.op)
        self.work = 0  # elementary steps taken by every search so far (for tests)
        self._match_bit = 1 << (self.size - 1)  # the final MATCH
        self._ctx_mask = 0
        for o, k in zip(self._op, self._a, strict=True):
            if o == _ASSERT:
                self._ctx_mask |= _WB if k == _NWB else k
        # Consuming instructions by class; "chain" = followed by another consuming one, so its
        # successor set is just the next bit (a shift does the step for all of them at once).
        # One-character classes go in a dict (code point -> instructions), the others are
        # tested one by one for each new character (their size is bounded by MAX_CLASS_ITEMS).
        by_class: dict[int, int] = {}
        literals: dict[int, int] = {}
        chain = 0
        for pc, o in enumerate(self._op):
            if o == _CHAR:
                lit = self._classes[self._a[pc]].literal()
                if lit is None:
                    by_class[self._a[pc]] = by_class.get(self._a[pc], 0) | (1 << pc)
                else:
                    for cp in lit:
                        literals[cp] = literals.get(cp, 0) | (1 << pc)
                if self._op[pc + 1] in (_CHAR, _MATCH):
                    chain |= 1 << pc
        if sum(len(self._classes[idx].items) for idx in by_class) > MAX_CLASS_ITEMS:
            raise TooLargeError(f"character classes with more than {MAX_CLASS_ITEMS} parts")
        self._by_class = [(self._classes[idx], bits) for idx, bits in by_class.items()]
        self._literals = literals
        self._chain = chain
        self._table: list[int] | None = None  # free-move closures, computed at first use
        self._asserts = sum(1 << pc for pc, o in enumerate(self._op) if o == _ASSERT)
        self._char_masks: dict[int, int] = {}
        self._dfa: dict[tuple[int, int, int], int] = {}
        self._chunks: dict[int, int] = {}  # (byte index << 8 | byte) -> successors
        self._dfa_max = max(256, min(DFA_MAX, DFA_BITS_BUDGET // self.size))

    def _closure(self) -> list[int]:
        if self._table is None:
            self._table, work = _closure_table(self._op, self._a, self._b)
            self.work += work
        return self._table

    def _resolve(self, state: int, ctx: int) -> int:
        # Follow the ASSERT instructions in ``state`` that hold at this position (each at
        # most once), then drop them: what is left can consume a character, or is MATCH.
        pending = state & self._asserts
        if not pending:
            return state
        table = self._closure()
        seen = 0
        while pending:
            low = pending & -pending
            pending ^= low
            seen |= low
            pc = low.bit_length() - 1
            k = self._a[pc]
            if (not ctx & _WB) if k == _NWB else ctx & k:
                more = table[pc + 1]
                state |= more
                pending |= more & self._asserts & ~seen
            self.work += 1
        return state & ~self._asserts

    def _char_mask(self, cp: int) -> int:
        mask = self._char_masks.get(cp)
        if mask is None:
            mask = self._literals.get(cp, 0)
            for cls, bits in self._by_class:
                if cls.has(cp):
                    mask |= bits
            self.work += len(self._by_class)
            if len(self._char_masks) >= CHAR_CACHE:
                self._char_masks.clear()
            self._char_masks[cp] = mask
        return mask

    def _ctx(self, text: str, i: int) -> int:
        m = self._ctx_mask
        if not m:
            return 0
        n = len(text)
        ctx = 0
        if i == 0:
            ctx |= _BOT | _BOL
        elif text[i - 1] == "\n":
            ctx |= _BOL
        if i == n:
            ctx |= _EOT | _EOL
        elif text[i] == "\n":
            ctx |= _EOL
        if m & _WB:
            before = i > 0 and _is_word(text[i - 1])
            after = i < n and _is_word(text[i])
            if before != after:
                ctx |= _WB
        return ctx & m

    def _step(self, state: int, cp: int, ctx: int) -> int:
        live = state & self._char_mask(cp)
        nxt = (live & self._chain) << 1
        live &= ~self._chain
        table = self._closure()
        work = 1
        if live.bit_count() <= 8:
            while live:
                low = live & -live
                nxt |= table[low.bit_length()]  # the instruction after the one that consumed
                live ^= low
                work += 1
        else:
            # Many threads: take them eight instructions at a time, the union of each
            # byte's successors memoised (bounded), so a step costs size/8 lookups.
            chunks = self._chunks
            data = live.to_bytes((live.bit_length() + 7) // 8, "little")
            for i, byte in enumerate(data):
                if byte:
                    key = (i << 8) | byte
                    v = chunks.get(key)
                    if v is None:
                        v = 0
                        base = i * 8
                        while byte:
                            low = byte & -byte
                            v |= table[base + low.bit_length()]
                            byte ^= low
                            work += 1
                        if len(chunks) >= CHUNKS_MAX:
                            chunks.clear()
                        chunks[key] = v
                    nxt |= v
            work += len(data)
        self.work += work
        # Unanchored: a match may start at every position.
        return self._resolve(nxt | table[0], ctx)

    def search(self, text: str) -> bool:
        """Go's ``MatchString``: does the pattern match anywhere in ``text``?"""
        mb = self._match_bit
        state = self._resolve(self._closure()[0], self._ctx(text, 0))
        dfa = self._dfa
        ctx_mask = self._ctx_mask
        for i, ch in enumerate(text):
            if state & mb:
                return True
            cp = ord(ch)
            if 0xD800 <= cp <= 0xDFFF:
                cp = 0xFFFD  # an invalid UTF-8 byte (surrogateescape) is Go's RuneError
            ctx = self._ctx(text, i + 1) if ctx_mask else 0
            key = (state, cp, ctx)
            nxt = dfa.get(key)
            if nxt is None:
                nxt = self._step(state, cp, ctx)
                if len(dfa) >= self._dfa_max:
                    dfa.clear()  # bounded: start again rather than grow
                dfa[key] = nxt
            else:
                self.work += 1
            state = nxt
        return bool(state & mb)


def _is_word(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def compile(pattern: str) -> Regexp:
    """Parse and compile a Go regexp; GoRegexpError (or a subclass) if it cannot be run."""
    if len(pattern) > MAX_PATTERN:
        raise TooLargeError(f"pattern longer than {MAX_PATTERN} characters")
    tree = _Parser(pattern).parse()
    comp = _Compiler()
    comp.gen(tree)
    comp.emit(_MATCH)
    return Regexp(pattern, comp)


def match_string(pattern: str, text: str) -> bool:
    """Go's ``regexp.MatchString`` (raises GoRegexpError for a pattern it cannot run)."""
    return compile(pattern).search(text)


class RegexCache:
    """A bounded LRU of compiled patterns; rejected ones are remembered (bounded) too.

    A pattern that cannot run is counted in ``drops`` under ``regex_invalid`` (Go would
    reject it), ``regex_unsupported`` (valid Go we do not run) or ``regex_too_large``
    (beyond our bounds), once per lookup, with a rate-limited log line.
    """

    def __init__(self, size: int = 64, drops: DropLog | None = None,
                 work_per_second: float | None = None, burst: float = WORK_BURST) -> None:
        self.size = size
        self.drops = drops if drops is not None else DropLog(_log, level=logging.INFO)
        self._lru: OrderedDict[str, Regexp | GoRegexpError] = OrderedDict()
        self._kept = 0  # instructions of the programs in _lru (bounded by CACHE_INSTRUCTIONS)
        self._results: OrderedDict[tuple[str, str], bool] = OrderedDict()
        # A token bucket of engine work (None: unlimited, for trusted callers).
        self._rate = work_per_second
        self._burst = burst
        self._tokens = burst
        self._refilled: float | None = None
        self.work = 0  # work charged so far (compiles and searches that missed the caches)

    @property
    def counters(self) -> dict[str, int]:
        """The drop counters (shared with ``drops``)."""
        return self.drops.counters

    def get(self, pattern: str, now: float = 0.0) -> Regexp:
        """The compiled pattern; raises its GoRegexpError (counted) if it cannot be run."""
        hit = self._lru.get(pattern)
        if hit is None:
            self._spend(pattern, now)
            try:
                hit = compile(pattern)
            except GoRegexpError as e:
                hit = e
            self._charge(hit.size if isinstance(hit, Regexp) else len(pattern))
            if len(pattern) <= MAX_PATTERN:  # never keep an oversized key
                self._lru[pattern] = hit
                self._kept += hit.size if isinstance(hit, Regexp) else 0
                while len(self._lru) > self.size or self._kept > CACHE_INSTRUCTIONS:
                    _, old = self._lru.popitem(last=False)
                    self._kept -= old.size if isinstance(old, Regexp) else 0
        else:
            self._lru.move_to_end(pattern)
        if isinstance(hit, GoRegexpError):
            reason = ("regex_too_large" if isinstance(hit, TooLargeError)
                      else "regex_unsupported" if isinstance(hit, UnsupportedError)
                      else "regex_invalid")
            self.drops.drop(reason, now, "regex %.80r never matches: %s", pattern, hit)
            raise hit
        return hit

    def search(self, pattern: str, text: str, now: float = 0.0) -> bool:
        """MatchString through the caches; GoRegexpError (counted) if the pattern cannot run.

        With a budget, a search or compile that misses the caches while the budget is
        spent raises BudgetError (counted as ``regex_budget``; nothing is remembered).
        """
        key = (pattern, text)
        verdict = self._results.get(key)
        if verdict is not None:
            self._results.move_to_end(key)
            return verdict
        regexp = self.get(pattern, now)
        self._spend(pattern, now)
        before = regexp.work
        verdict = regexp.search(text)
        self._charge(regexp.work - before)
        if len(text) <= 4 * MAX_PATTERN:  # keys stay small: the table is bounded in bytes
            self._results[key] = verdict
            if len(self._results) > RESULT_CACHE:
                self._results.popitem(last=False)
        return verdict

    def _spend(self, pattern: str, now: float) -> None:
        # Refill the bucket for the time since the last refill; refuse if it is empty.
        if self._rate is None:
            return
        if self._refilled is not None and now > self._refilled:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        if self._refilled is None or now > self._refilled:
            self._refilled = now
        if self._tokens <= 0:
            self.drops.drop("regex_budget", now,
                            "regex work budget spent (%d units/s): not running %.80r",
                            int(self._rate), pattern)
            raise BudgetError("regex work budget spent")

    def _charge(self, work: int) -> None:
        self.work += work
        if self._rate is not None:
            self._tokens -= work

"""Keep the generated parts of the docs in step with their sources.

    python docs/sync_includes.py            # rewrite every include block from its file
    python docs/sync_includes.py --check    # only report stale includes and code quotes (exit 1)
    python docs/sync_includes.py --code     # also replace stale `file::symbol` quotes

Three kinds of marker in docs/*.md and README.md (paths relative to the
repository root):

* ``<!-- include: docs/results/kernels.md -->`` ... ``<!-- end include -->``:
  the text between the two marker lines is exactly the file's content. Run
  this script after regenerating a results file.
* ``<!-- code: kernels/conv.py::conv2d_forward_direct -->`` followed by a
  fenced code block: the block is a contiguous run of lines of that symbol's
  source (function, class, ``Class.method`` or a module-level assignment, as
  ``ast`` finds it, decorators included), common indentation ignored.
  ``<!-- code: kernels/conv.py:12-30 -->``: the block is exactly those lines.
  Nothing rewrites these (a quote is usually a chosen excerpt); ``--code``
  replaces a stale symbol quote by the symbol's whole current source and says
  so, so that the prose around it can be reread.
* a fenced block whose info string is ``python runnable`` or ``bash runnable``:
  tests/test_docs.py runs it (bash from the repository root, with the
  interpreter's folder first on PATH).

tests/test_docs.py uses the functions below to check all of it.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

INCLUDE_RE = re.compile(
    r"^<!-- include: (?P<path>\S+) -->\n(?P<body>.*?)^<!-- end include -->$", re.S | re.M)
CODE_RE = re.compile(
    r"^[ \t]*<!-- code: (?P<ref>\S+) -->\n(?:[ \t]*\n)*[ \t]*(?P<fence>```+)(?P<info>[^\n]*)\n"
    r"(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$", re.S | re.M)
FENCE_RE = re.compile(
    r"^[ \t]*(?P<fence>```+)(?P<info>[^\n]*)\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
    re.S | re.M)
LINK_RE = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")


def doc_files(root: Path = ROOT) -> list[Path]:
    """The Markdown files whose markers and links are maintained: docs/*.md, README.md."""
    return sorted((root / "docs").glob("*.md")) + [root / "README.md"]


# -- includes --------------------------------------------------------------------------


def includes(text: str) -> list[re.Match]:
    return list(INCLUDE_RE.finditer(text))


def synced(text: str, root: Path = ROOT) -> str:
    """``text`` with every include block replaced by its file's current content."""

    def repl(m: re.Match) -> str:
        content = (root / m["path"]).read_text()
        if content and not content.endswith("\n"):
            content += "\n"
        return f"<!-- include: {m['path']} -->\n{content}<!-- end include -->"

    return INCLUDE_RE.sub(repl, text)


# -- code references -------------------------------------------------------------------


@dataclass
class CodeRef:
    ref: str
    info: str
    body: str
    start: int  # offsets of the fenced block's body in the document
    end: int


def code_refs(text: str) -> list[CodeRef]:
    return [CodeRef(m["ref"], m["info"].strip(), m["body"], m.start("body"), m.end("body"))
            for m in CODE_RE.finditer(text)]


def _find_symbol(tree: ast.Module, qualname: str) -> ast.AST | None:
    nodes: list[ast.AST] = list(tree.body)
    found = None
    for part in qualname.split("."):
        found = None
        for node in nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if node.name == part:
                    found = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    found = node
        if found is None:
            return None
        nodes = list(getattr(found, "body", []))
    return found


def referenced_lines(ref: str, root: Path = ROOT) -> tuple[list[str], bool]:
    """(source lines, is_symbol) of ``file::symbol`` or ``file:A-B``; ValueError if absent."""
    if "::" in ref:
        path, symbol = ref.split("::", 1)
    else:
        m = re.fullmatch(r"(?P<path>[^:]+):(?P<a>\d+)-(?P<b>\d+)", ref)
        if not m:
            raise ValueError(f"bad code reference {ref!r}: use file::symbol or file:A-B")
        path, symbol = m["path"], None
    file = root / path
    if not file.is_file():
        raise ValueError(f"{ref}: no file {path}")
    lines = file.read_text().splitlines()
    if symbol is None:
        a, b = int(m["a"]), int(m["b"])
        if not 1 <= a <= b <= len(lines):
            raise ValueError(f"{ref}: {path} has {len(lines)} lines")
        return lines[a - 1:b], False
    node = _find_symbol(ast.parse("\n".join(lines)), symbol)
    if node is None:
        raise ValueError(f"{ref}: no symbol {symbol} in {path}")
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return lines[first - 1:node.end_lineno], True


def _norm(lines: list[str]) -> list[str]:
    return textwrap.dedent("\n".join(line.rstrip() for line in lines)).split("\n")


def check_code_ref(c: CodeRef, root: Path = ROOT) -> str | None:
    """None if the quote matches its reference, else what is wrong."""
    try:
        source, is_symbol = referenced_lines(c.ref, root)
    except ValueError as e:
        return str(e)
    block = c.body.split("\n")[:-1] if c.body.endswith("\n") else c.body.split("\n")
    if not block:
        return f"{c.ref}: empty code block"
    if not is_symbol:
        if [s.rstrip() for s in block] == [s.rstrip() for s in source]:
            return None
        return f"{c.ref}: the quoted block differs from those lines"
    want = _norm(block)
    for i in range(len(source) - len(block) + 1):
        if _norm(source[i:i + len(block)]) == want:
            return None
    return (f"{c.ref}: the quoted block is not a contiguous run of the symbol's current "
            f"source (first quoted line: {block[0].strip()!r})")


def refreshed_code(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """Replace stale ``file::symbol`` quotes by the whole current symbol; (text, refs)."""
    changed = []
    for c in reversed(code_refs(text)):
        if "::" not in c.ref or check_code_ref(c, root) is None:
            continue
        try:
            source, _ = referenced_lines(c.ref, root)
        except ValueError:
            continue
        text = text[:c.start] + "\n".join(_norm(source)) + "\n" + text[c.end:]
        changed.append(c.ref)
    return text, changed[::-1]


# -- runnable snippets and links ---------------------------------------------------------


@dataclass
class Snippet:
    lang: str  # "python" or "bash"
    code: str
    line: int  # line of the opening fence in the document


def runnable_snippets(text: str) -> list[Snippet]:
    out = []
    for m in FENCE_RE.finditer(text):
        words = m["info"].split()
        if len(words) >= 2 and words[0] in ("python", "bash") and "runnable" in words[1:]:
            out.append(Snippet(words[0], m["body"], text.count("\n", 0, m.start()) + 1))
    return out


def relative_links(text: str) -> list[str]:
    """Targets of Markdown links and images that are not URLs or in-page anchors.

    Fenced blocks and inline code are skipped; ``#anchor`` suffixes are dropped.
    """
    text = FENCE_RE.sub("", text)
    text = re.sub(r"`[^`\n]*`", "", text)
    out = []
    for m in LINK_RE.finditer(text):
        t = m["target"]
        if re.match(r"[a-z][a-z0-9+.-]*:", t, re.I) or t.startswith("#"):
            continue
        out.append(t.split("#", 1)[0])
    return out


# -- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/sync_includes.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if an include or a code quote is stale")
    p.add_argument("--code", action="store_true",
                   help="also replace stale file::symbol code quotes by the whole symbol")
    args = p.parse_args(argv)
    stale = 0
    for doc in doc_files():
        rel = doc.relative_to(ROOT)
        text = doc.read_text()
        for m in includes(text):
            if not (ROOT / m["path"]).is_file():
                print(f"{rel}: include of a missing file {m['path']}")
                stale += 1
        try:
            new = synced(text)
        except OSError:
            continue
        for c in code_refs(new):
            err = check_code_ref(c)
            if err and not args.code:
                print(f"{rel}: stale code quote: {err}")
                stale += 1
        if args.code and not args.check:
            new, changed = refreshed_code(new)
            for ref in changed:
                print(f"{rel}: replaced the quote of {ref} by its whole current source: "
                      f"reread the prose around it")
        if new != text:
            if args.check:
                print(f"{rel}: include blocks differ from their files")
                stale += 1
            else:
                doc.write_text(new)
                print(f"{rel}: updated")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

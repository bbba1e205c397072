"""Every reference to the contract names a section that docs/contract.md has, in one format.

Code cites ``contract §N.M``; markdown cites ``[contract §N.M](contract.md#anchor)`` with the
anchor of that very heading. Older phrasings are refused so they cannot come back.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dvt_cli import errors_doc

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTRACT_PATH = REPO_ROOT / "docs" / "contract.md"
SKIP_DIRS = frozenset({
    ".git", ".venv", ".nox", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    "node_modules", "build", "dist",
})

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[ \t]*$", re.MULTILINE | re.DOTALL)
_NUMBERED = re.compile(r"^(\d+(?:\.\d+)?)\.?\s")
# Any section sign followed by a number is a contract reference: the repository uses § for
# nothing else.
_SECTION_REF = re.compile(r"§(\d+(?:\.\d+)*)")
_CONTRACT_REF = re.compile(r"\bcontract §(\d+(?:\.\d+)*)", re.IGNORECASE)
_MD_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]*)\)")
_OLD_PHRASES = (
    re.compile(r"CONTRACTS\.md", re.IGNORECASE),
    re.compile(r"\bcontracts?\s+sections?\b", re.IGNORECASE),
    re.compile(r"\bsections?\s+\d+(?:\.\d+)*\s+of\s+the\s+contract\b", re.IGNORECASE),
    re.compile(r"\bcontract\s+\d", re.IGNORECASE),
)
_CODE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")

REQUIRED_SECTIONS = frozenset(
    [str(n) for n in range(1, 14)]
    + ["2.1", "2.2", "3.1", "3.2", "3.3", "3.4", "4.1", "4.2", "4.3",
       "5.1", "5.2", "5.3", "5.4", "5.5", "6.1", "6.2", "6.3", "6.4", "8.1", "8.2", "8.3"]
)


def github_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = _MD_LINK.sub(r"\1", title).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@dataclass(frozen=True)
class Contract:
    """The headings of docs/contract.md: numbered sections and every anchor."""

    path: Path
    sections: dict[str, str]
    anchors: frozenset[str]
    text: str

    @classmethod
    def load(cls, path: Path) -> Contract:
        """Read the contract and index its headings."""
        text = path.read_text(encoding="utf-8")
        sections: dict[str, str] = {}
        anchors: list[str] = []
        for match in _HEADING.finditer(_FENCE.sub("", text)):
            title = match.group(2)
            anchor = github_anchor(title)
            # GitHub numbers repeated anchors: x, x-1, x-2, ...
            seen = sum(1 for a in anchors if a == anchor or re.fullmatch(
                re.escape(anchor) + r"-\d+", a))
            anchors.append(anchor if seen == 0 else f"{anchor}-{seen}")
            number = _NUMBERED.match(title)
            if number and len(match.group(1)) in (2, 3):
                sections.setdefault(number.group(1), anchors[-1])
        return cls(path=path, sections=sections, anchors=frozenset(anchors), text=text)

    def section_text(self, number: str) -> str:
        """The body of a top-level section, up to the next level-2 heading."""
        start = re.search(rf"^## {re.escape(number)}\. .*$", self.text, re.MULTILINE)
        assert start is not None, f"no section {number}"
        end = re.search(r"^## ", self.text[start.end():], re.MULTILINE)
        return self.text[start.end(): start.end() + end.start() if end else None]


def repository_files(root: Path) -> list[Path]:
    """Files git tracks (or would track), else every file outside tool directories."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True,
        ).stdout.decode("utf-8")
        return sorted({root / name for name in listed.split("\0") if name})
    except (OSError, subprocess.CalledProcessError):
        return sorted(
            p for p in root.rglob("*")
            if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(root).parts)
        )


def _read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:  # listed by git but deleted in the working tree
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _link_target(path: Path, target: str, contract: Contract) -> tuple[bool, str]:
    """(does the link point at the contract?, its anchor)."""
    file_part, _, anchor = target.partition("#")
    if not file_part:
        return path.resolve() == contract.path.resolve(), anchor
    if "://" in file_part:
        return False, anchor
    return (path.parent / file_part).resolve() == contract.path.resolve(), anchor


def scan_text(path: Path, text: str, contract: Contract, *, root: Path) -> list[str]:
    """Every broken or old-style contract reference in one file, as 'file:line: problem'."""
    name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    problems: list[str] = []

    def report(pos: int, message: str) -> None:
        problems.append(f"{name}:{_line(text, pos)}: {message}")

    for pattern in _OLD_PHRASES:
        for m in pattern.finditer(text):
            report(m.start(), f"old reference format {m.group(0)!r}; write 'contract §N.M'")
    for m in _SECTION_REF.finditer(text):
        if m.group(1) not in contract.sections:
            report(m.start(), f"§{m.group(1)} is not a section of docs/contract.md")
    if path.suffix != ".md":
        return problems

    links = [(m, *_link_target(path, m.group(2), contract)) for m in _MD_LINK.finditer(text)]
    for m, to_contract, anchor in links:
        if to_contract and anchor and anchor not in contract.anchors:
            report(m.start(), f"link anchor #{anchor} is not a heading of docs/contract.md")
        elif not to_contract and Path(m.group(2).partition("#")[0]).name == "contract.md":
            report(m.start(), f"link {m.group(2)!r} does not lead to docs/contract.md")
    for ref in _CONTRACT_REF.finditer(text):
        number = ref.group(1)
        link = next((x for x in links if x[0].start(1) <= ref.start() < x[0].end(1)), None)
        if link is None or not link[1]:
            report(ref.start(), f"'{ref.group(0)}' must be a link to docs/contract.md")
        elif number in contract.sections and link[2] != contract.sections[number]:
            report(ref.start(), f"'{ref.group(0)}' links to #{link[2]}, "
                                f"not #{contract.sections[number]}")
    return problems


def scan(files: Iterable[Path], contract: Contract, *, root: Path) -> list[str]:
    """Problems of every readable text file among ``files``."""
    problems: list[str] = []
    for path in files:
        text = _read_text(path)
        if text is not None:
            problems.extend(scan_text(path, text, contract, root=root))
    return problems


def contract_error_codes(contract: Contract) -> set[str]:
    """The codes section 11 names: its paragraph made only of comma-separated codes."""
    for paragraph in re.split(r"\n\s*\n", contract.section_text("11")):
        words = [w.strip(" .,\n") for w in paragraph.split(",")]
        if len(words) > 1 and all(_CODE.match(w) for w in words):
            return set(words)
    raise AssertionError("section 11 lists no error codes")


# --- the repository --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract.load(CONTRACT_PATH)


def test_contract_keeps_its_numbering(contract: Contract) -> None:
    missing = REQUIRED_SECTIONS - contract.sections.keys()
    assert not missing, f"docs/contract.md lost sections {sorted(missing)}"
    assert contract.sections["6.2"] == "62-rules-in-this-order"
    assert contract.sections["13"] == "13-machine-readable-cli-output"


def test_every_contract_reference_resolves(contract: Contract) -> None:
    files = repository_files(REPO_ROOT)
    assert CONTRACT_PATH in files
    assert len(files) > 100, "the repository listing looks wrong"
    problems = scan(files, contract, root=REPO_ROOT)
    assert not problems, "broken contract references:\n" + "\n".join(problems)


def test_contract_codes_are_the_errors_doc_codes(contract: Contract) -> None:
    assert contract_error_codes(contract) == set(errors_doc.CONTRACT_CODES)


# --- the scanner itself ----------------------------------------------------------------------

# Built by concatenation so this file does not carry the phrasings it forbids.
SECTION = "§"


def _tree(tmp_path: Path, files: dict[str, str]) -> tuple[Contract, list[Path]]:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "contract.md").write_text(
        CONTRACT_PATH.read_text(encoding="utf-8"), encoding="utf-8")
    paths = []
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return Contract.load(tmp_path / "docs" / "contract.md"), paths


def test_github_anchor() -> None:
    assert github_anchor("6.2 Rules, in this order") == "62-rules-in-this-order"
    assert github_anchor("2.1 PlanRef: how a plan reaches an engine") == (
        "21-planref-how-a-plan-reaches-an-engine")
    assert github_anchor("JSON output (`--json`; [x](y))") == "json-output---json-x"


def test_scanner_names_file_and_line_of_a_dangling_reference(tmp_path: Path) -> None:
    contract, paths = _tree(tmp_path, {
        "pkg/mod.py": f"x = 1\n\n# ok: contract {SECTION}6.2\n# gone: contract {SECTION}99.1\n",
    })
    problems = scan(paths, contract, root=tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("pkg/mod.py:4: ")
    assert "99.1" in problems[0]


@pytest.mark.parametrize("phrase", [
    "contract " + "section 4",
    "Contract " + "sections 7 to 9",
    "CONTRACTS" + ".md section 13",
    "section 3.4 of the " + "contract",
    "(contract " + "6.2 rule 3)",
])
def test_scanner_refuses_old_phrasings(tmp_path: Path, phrase: str) -> None:
    contract, paths = _tree(tmp_path, {"m.py": f"x = 1\n# see {phrase}\n"})
    problems = scan(paths, contract, root=tmp_path)
    assert problems
    assert all(p.startswith("m.py:2: old reference format") for p in problems)


def test_scanner_checks_markdown_links(tmp_path: Path) -> None:
    good = f"[contract {SECTION}6.2](contract.md#62-rules-in-this-order)"
    contract, paths = _tree(tmp_path, {
        "docs/page.md": (
            f"ok {good}\n"
            f"bare contract {SECTION}6.2\n"
            f"[contract {SECTION}6.2](contract.md#61-catalog)\n"
            "[nowhere](contract.md#no-such-heading)\n"
            f"[contract {SECTION}6.2](../contract.md#62-rules-in-this-order)\n"
        ),
        "README.md": f"[contract {SECTION}13](docs/contract.md#13-machine-readable-cli-output)\n",
    })
    problems = sorted(scan(paths, contract, root=tmp_path))
    lines = [p.split(": ", 1)[0] for p in problems]
    assert lines == ["docs/page.md:2", "docs/page.md:3", "docs/page.md:4", "docs/page.md:5",
                     "docs/page.md:5"], problems


def test_scanner_reads_section_11(tmp_path: Path) -> None:
    contract, _ = _tree(tmp_path, {})
    assert {"RUN_TERMINAL", "ENGINE_UNAVAILABLE"} <= contract_error_codes(contract)

"""Every relative link and image in the README and the docs points to a file that exists (a report copied
into docs/ without its files, or a plot that was never written, fails here)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(md: Path) -> list[str]:
    """The relative targets of ``[text](target)`` / ``![alt](target)`` in a Markdown file (no URLs, no anchors)."""
    out = []
    for m in LINK.finditer(md.read_text(encoding="utf-8")):
        target = m.group(1).split("#")[0]
        if target and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            out.append(target)
    return out


def missing_links(md: Path) -> list[str]:
    return [t for t in relative_links(md) if not (md.parent / t).exists()]


def test_the_link_checker_finds_a_missing_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    md = tmp_path / "r.md"
    md.write_text("![a](a.png) ![b](b.png) [site](https://x.org/y) [top](#top) [j](report.json)\n")
    assert missing_links(md) == ["b.png", "report.json"]


def test_readme_and_docs_link_only_to_files_that_exist():
    files = [ROOT / "README.md", ROOT / "eval" / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted((ROOT / "bench").glob("*.md")), *sorted((ROOT / "rlhf_demo" / "data").glob("*.md"))]
    broken = {str(f.relative_to(ROOT)): missing_links(f) for f in files if f.is_file()}
    assert not {k: v for k, v in broken.items() if v}

"""The README fits on a screen and every relative link in it and in docs/ reaches a file (and heading)."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _read(page: str) -> str:
  with open(os.path.join(ROOT, page), encoding="utf-8") as f:
    return f.read()


def _anchors(page: str) -> set[str]:
  """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
  headings = re.findall(r"^#+\s+(.*)$", FENCE.sub("", _read(page)), re.M)
  return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_fits_in_200_lines():
  assert len(_read("README.md").splitlines()) <= 200


def test_docs_pages_exist():
  for topic in ("flags", "reliability", "extending", "likelihood", "study", "compression",
                "performance"):
    assert f"docs/{topic}.md" in PAGES


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
  broken = []
  for target in LINK.findall(FENCE.sub("", _read(page))):
    if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: are not checked offline
      continue
    path, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not os.path.exists(os.path.join(ROOT, resolved)):
      broken.append(target)
    elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
      broken.append(target)
  assert not broken, f"{page}: broken links {broken}"

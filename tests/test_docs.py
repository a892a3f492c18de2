"""The README and the docs/ pages (issue 34): every relative link resolves, to a file and, with #anchor, to one of
its headings; the README stays a page a newcomer finishes; every section the README used to hold has a home."""
import re

from conftest import REPO

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250  # nanoGPT's README is about 230 lines
# the sections the README held before issue 34 moved them, each a heading somewhere in docs/
MOVED = ["Preparing data", "The token-shard format", "What a run does", "Resuming and extending a run",
         "Stopping, crashes and bad steps", "Older GPUs and Macs", "The modern recipe", "Which recipe",
         "Bigger models: 350M and 760M on a 12 GB or 24 GB card", "Multi-GPU and multi-node (torchrun)",
         "Settings and errors", "Reliability", "Sampling", "OpenAI GPT-2 weights",
         "Export: transformers, llama.cpp, Ollama, LM Studio, lm-eval", "Evaluating", "Measuring and planning"]


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path):
    return [m.group(2).strip() for m in re.finditer(r"(?m)^(#+) (.*)$", path.read_text())]


def test_every_relative_link_resolves_to_a_file_and_heading():
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.name}: link to {target} (no {dest})"
            if anchor:
                assert anchor in [slug(h) for h in headings(dest)], f"{page.name}: no heading #{anchor} in {dest.name}"
            checked += 1
    assert checked >= 20  # the README links every page, and the pages link back


def test_the_readme_is_short_and_links_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for page in PAGES[1:]:
        assert f"(docs/{page.name}" in readme, f"the README does not link docs/{page.name}"


def test_every_section_the_readme_held_has_a_home_in_docs():
    found = {h for page in PAGES[1:] for h in headings(page)}
    assert [h for h in MOVED if h not in found] == []

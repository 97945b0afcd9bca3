"""The README is a front page and docs/ is a site that holds the rest: a reader who follows any link
lands on a page and a heading that exist, and finds every setting facepipe reads."""

import ast
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

# The two commands a newcomer runs first, exactly as they have always read.
FIRST_COMMANDS = [
    'make demo   # set up .venv, then digest ../shared/faces/images into the group "sample"',
    "make test   # set up .venv, then lint, type-check, validate the definitions and run every test",
]


class _Anchors(HTMLParser):
    """The ids (heading anchors) and hrefs of a rendered page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if tag == "a" and name == "href" and value:
                self.hrefs.append(value)


def rendered(page: Path) -> _Anchors:
    """The page rendered as mkdocs renders it (its markdown extensions, the same heading ids), so that
    links and anchors are read as a reader meets them, and nothing inside code counts."""
    html = markdown.markdown(page.read_text(), extensions=["toc", "tables", "admonition"])
    anchors = _Anchors()
    anchors.feed(html)
    return anchors


def pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_the_readme_is_a_front_page_of_at_most_300_lines_that_opens_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 300, f"README.md has {len(text.splitlines())} lines: move detail into docs/"
    first_block = re.search(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
    assert first_block, "README.md has no command block"
    assert first_block.group(1).splitlines() == FIRST_COMMANDS
    # and the commands do what their comments say
    makefile = (ROOT / "Makefile").read_text()
    demo = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert demo and "digest ../shared/faces/images --group sample" in demo.group(1)
    test = re.search(r"^test:(.*)\n", makefile, re.M)
    assert test and {"lint", "typecheck", "validate", "docs"} <= set(test.group(1).split())


def variables_settings_reads() -> set[str]:
    """Every environment variable facepipe/settings.py reads: os.environ.get(NAME), os.environ[NAME],
    os.getenv(NAME)."""
    tree = ast.parse((ROOT / "facepipe" / "settings.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = ast.unparse(node.func)
            if called in ("os.environ.get", "os.getenv"):
                names.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            if isinstance(node.slice, ast.Constant):
                names.add(node.slice.value)
    return names


def test_every_variable_settings_reads_is_on_the_configuration_page():
    read = variables_settings_reads()
    assert any(name.startswith("FACEPIPE_") for name in read), "found no FACEPIPE_ variable in settings.py"
    configuration = (DOCS / "configuration.md").read_text()
    # a variable is documented where it names a row of one of the page's tables
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", "\n".join(re.findall(r"^\| [^|]*", configuration, re.M))))
    missing = sorted(read - documented)
    assert not missing, f"docs/configuration.md has no row for {missing}, which facepipe/settings.py reads"


def test_every_relative_link_in_the_readme_and_the_docs_resolves():
    ids = {page: rendered(page).ids for page in pages()}
    broken = []
    for page in pages():
        for href in rendered(page).hrefs:
            if re.match(r"^[a-z][a-z0-9+.-]*:", href):  # http:, https:, mailto:
                continue
            path, _, anchor = href.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.is_relative_to(ROOT):
                broken.append(f"{page.relative_to(ROOT)}: {href} (outside the repository)")
            elif not target.exists():
                broken.append(f"{page.relative_to(ROOT)}: {href} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in ids.get(target, rendered(target).ids):
                broken.append(f"{page.relative_to(ROOT)}: {href} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    # strict: a page left out of the nav, or a link to a missing page or heading, fails the build
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    assert (tmp_path / "site" / "glossary" / "index.html").exists()

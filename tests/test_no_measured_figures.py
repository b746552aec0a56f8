"""Keeps dated run figures out of code and configuration: they belong in docs/performance.md.

A config comment or a docstring says in one line *why* a value was chosen and points to
`docs/performance.md`; the figures behind the choice (dates, machines, requests per second,
latencies, A/B outcomes) live only there and in what `make bench` writes to `results/`.

The scan looks only at prose, outside `tests/`: comments and docstrings of `*.py` files
(through `tokenize` and `ast`, so string literals and constants in code, such as
``timeout_ms = 50`` or a report's "req/s" column title, are never looked at), `#` comments of
`*.yaml`/`*.yml` files and of `config.properties`, and `<!-- -->` comments of `*.xml` files.
Each finding is printed as ``path:line: [rule] text``.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent

# Not scanned: the virtual environment, generated gRPC stubs, notebooks (their outputs hold
# run figures by design) and the tests, whose comments describe made-up figures of fixtures
# ("40 ms against 2 ms") and, in this file, examples of what the rules catch.
EXCLUDED_PREFIXES = (".venv/", "serving/grpc_stubs/", "notebooks/", "tests/")

_NUMBER = r"\d[\d,]*(?:\.\d+)?"

# Each rule matches one line of a comment or docstring.
RULES: dict[str, re.Pattern[str]] = {
    # A run's date: 2026-12-01.
    "date": re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b"),
    # A run's clock time: "18:14 UTC", "the 22:35 run".
    "clock time": re.compile(r"\b[0-2]?\d:[0-5]\d(?::[0-5]\d)?\s*(?:UTC|runs?)\b"),
    # Throughput: "606 req/s", "4,679 images/s", "1,230 requests per second".
    "throughput": re.compile(
        rf"{_NUMBER}\s*(?:req/s|requests?/s|images?/s|(?:requests|images) per second)"
    ),
    # A measured latency: decimals ("7.39 ms"), comparisons ("40 vs 52 ms"), statistics
    # ("median 8 ms", "p99 68 ms"). A plain setting such as "waits 1 ms" is not a finding.
    "latency": re.compile(
        rf"\b\d+\.\d+\s*ms\b"
        rf"|{_NUMBER}\s*(?:ms\s*)?(?:vs\.?|against)\s*{_NUMBER}\s*ms\b"
        rf"|\b(?:median|mean|p50|p9\d)\b[^.;]{{0,20}}?{_NUMBER}\s*ms\b"
    ),
    # An accuracy or share from a run: "99.11 %", "96.4-96.8 %".
    "percentage": re.compile(r"\b\d+\.\d+\s*%"),
    # A speed-up: "4x slower", "1.7 times faster", "1.4-1.6 times the throughput".
    "speed-up": re.compile(
        r"\b\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?\s*(?:x|×|times)\s+"
        r"(?:faster|slower|as fast|the throughput|the requests)"
    ),
    # "measured: 60-110 s", "measured with `make bench`, 2026-...": a figure after 'measured'.
    "measured figure": re.compile(r"\bmeasur(?:ed|ing)\b[^.;]*?\d", re.IGNORECASE),
    # The outcome of an experiment: "interleaved A/B runs".
    "A/B result": re.compile(r"\bA/B\b"),
}


class Finding(NamedTuple):
    path: str
    line: int
    rule: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.text.strip()}"


def scan_lines(path: str, lines: Iterable[tuple[int, str]]) -> Iterator[Finding]:
    """Every rule that matches one of `lines` (line number, prose text)."""
    for number, text in lines:
        for rule, pattern in RULES.items():
            if pattern.search(text):
                yield Finding(path, number, rule, text)


def python_prose(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment and every docstring-like string statement."""
    docstring_starts: set[tuple[int, int]] = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docstring_starts.add((node.lineno, node.col_offset))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
        elif token.type == tokenize.STRING and token.start in docstring_starts:
            for offset, text in enumerate(token.string.splitlines()):
                yield token.start[0] + offset, text


def _strip_quoted(line: str) -> str:
    """The line with quoted YAML scalars blanked, so a '#' inside quotes is no comment."""
    return re.sub(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"", lambda m: " " * len(m.group()), line)


def yaml_prose(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every `#` comment, whole-line or trailing."""
    for number, line in enumerate(source.splitlines(), start=1):
        match = re.search(r"(?:^|\s)(#.*)$", _strip_quoted(line))
        if match:
            yield number, line[match.start(1) :]


def properties_prose(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every comment line (`#` or `!` first); properties have no trailing ones."""
    for number, line in enumerate(source.splitlines(), start=1):
        if line.lstrip().startswith(("#", "!")):
            yield number, line


def xml_prose(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every line inside an `<!-- -->` comment."""
    for match in re.finditer(r"<!--(.*?)-->", source, re.DOTALL):
        first = source.count("\n", 0, match.start(1)) + 1
        for offset, text in enumerate(match.group(1).splitlines()):
            yield first + offset, text


def prose_of(path: Path, source: str) -> Iterator[tuple[int, str]]:
    if path.suffix == ".py":
        return python_prose(source)
    if path.suffix in (".yaml", ".yml"):
        return yaml_prose(source)
    if path.suffix == ".xml":
        return xml_prose(source)
    return properties_prose(source)


def _is_scanned(relative: str) -> bool:
    if relative.startswith(EXCLUDED_PREFIXES):
        return False
    name = relative.rsplit("/", 1)[-1]
    return name == "config.properties" or name.endswith((".py", ".yaml", ".yml", ".xml"))


def project_files() -> list[str]:
    """The repository's files (tracked, or new and not ignored) that the scan covers."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: walk the tree
        listing = [path.relative_to(ROOT).as_posix() for path in ROOT.rglob("*") if path.is_file()]
    return sorted(
        relative
        for relative in set(listing)
        if _is_scanned(relative) and (ROOT / relative).is_file()
    )


def scan_file(relative: str) -> list[Finding]:
    path = ROOT / relative
    return list(scan_lines(relative, prose_of(path, path.read_text(encoding="utf-8"))))


def test_no_dated_run_figures_in_code_or_configuration() -> None:
    files = project_files()
    assert "config.properties" in files and "handler/model-config.yaml" in files
    findings = [finding for relative in files for finding in scan_file(relative)]
    report = "\n".join(map(str, findings))
    if findings:
        print(report)
    assert not findings, (
        f"{len(findings)} measured figure(s) in comments or docstrings; give the one-line "
        f"reason and point to docs/performance.md, where the figures go:\n{report}"
    )


# --- The scanner itself: what it flags, and what it leaves alone. ---


def _rules(path: str, source: str) -> list[str]:
    return [finding.rule for finding in scan_lines(path, prose_of(Path(path), source))]


def test_python_code_is_not_scanned_only_its_comments_and_docstrings() -> None:
    source = (
        '"""Module docstring."""\n'
        "timeout_ms = 50\n"
        'LABEL = "req/s at 2026-12-01 18:14 UTC, 7.39 ms, measured A/B"\n'
        "stamp = now.strftime('%Y-%m-%d %H:%M:%S UTC')\n"
        "def f():\n"
        '    """Waits 1 ms; TorchServe treats 0 as 100 ms. Reaches 99 % in a few epochs."""\n'
        "    return f'{rate:.0f} req/s'  # the rate, as the report prints it\n"
    )
    assert _rules("x.py", source) == []


def test_python_comments_and_docstrings_with_run_figures_are_found() -> None:
    source = (
        "# Figures: 2026-12-01 run\n"
        "x = 1  # 606 req/s against 373 with one worker\n"
        "def f():\n"
        '    """Fast.\n'
        "\n"
        "    0.63 against 1.10 ms, measured with make bench.\n"
        '    """\n'
    )
    findings = list(scan_lines("x.py", python_prose(source)))
    assert [(f.line, f.rule) for f in findings] == [
        (1, "date"),
        (2, "throughput"),
        (6, "latency"),
    ]


def test_each_rule_catches_its_kind_of_figure() -> None:
    examples = {
        "date": "# run on 2026-11-24",
        "clock time": "# the 22:35 run agrees",
        "throughput": "# 4,679 images/s",
        "latency": "# p99 40 vs 52 ms",
        "percentage": "# 99.11 % test accuracy",
        "speed-up": "# made it 4x slower",
        "measured figure": "# 5-10x (measured: 60-110 s)",
        "A/B result": "# lost when interleaved A/B",
    }
    for rule, comment in examples.items():
        assert rule in _rules("x.py", comment + "\n"), (rule, comment)


def test_yaml_and_properties_are_scanned_in_comments_only() -> None:
    yaml_source = (
        "batchSize: 8  # 636 req/s against 315\n"
        'name: "2026-12-01 # not a comment"\n'
        "maxBatchDelay: 1\n"
    )
    assert [f.line for f in scan_lines("m.yaml", yaml_prose(yaml_source))] == [1]
    properties = "# --- JVM (2026-11-23) ---\nvmargs=-Dstamp=2026-11-23\n"
    assert [f.line for f in scan_lines("config.properties", properties_prose(properties))] == [1]

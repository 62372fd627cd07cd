"""README.md and docs/ speak of the project, not of the people and machines that wrote them (issue 29.6):
no "session N" names (a result says what was run, where and when, by command or commit), no absolute
paths of a development machine (a reader's checkout has none of them)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SESSION = re.compile(r"\bsessions?\b", re.IGNORECASE)  # InferenceSession has no word boundary before it
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|Users|root)/[\w.-]+")


def _documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _hits(pattern: re.Pattern, text: str) -> list[tuple[int, str]]:
    return [(no, m.group(0)) for no, line in enumerate(text.splitlines(), 1) for m in pattern.finditer(line)]


def _problems(pattern: re.Pattern) -> list[str]:
    return [f"{p.relative_to(REPO)}:{no}: {word!r}" for p in _documents()
            for no, word in _hits(pattern, p.read_text())]


def test_the_documents_were_found():
    names = {p.name for p in _documents()}
    assert {"README.md", "ARCHITECTURE.md", "RESULTS.md", "localizer.md"} <= names, names


def test_no_session_names():
    problems = _problems(SESSION)
    assert not problems, "name the commit, date and command instead:\n" + "\n".join(problems)


def test_no_absolute_paths_of_a_machine():
    problems = _problems(MACHINE_PATH)
    assert not problems, "use a path relative to the checkout or a placeholder:\n" + "\n".join(problems)


def test_the_patterns_catch_what_they_are_for():
    assert _hits(SESSION, "as measured in session 21's run") == [(1, "session")]
    assert _hits(SESSION, "Sessions 19 and 20") == [(1, "Sessions")]
    assert not _hits(SESSION, "an onnxruntime.InferenceSession per engine")
    assert _hits(MACHINE_PATH, "bundle `/work/ev/calib2/bundle` and /home/me/x") == [(1, "/work/ev"), (1, "/home/me")]
    assert not _hits(MACHINE_PATH, "--jsonl /var/log/geoloc/fixes.jsonl --data /data/SUES-200 ~/geoloc/bin")

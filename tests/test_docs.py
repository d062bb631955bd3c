"""The Python snippets of README.md, docs/ and the chart READMEs run as they are written.

Each file's ```python blocks run in order, in one namespace (a later block builds on an
earlier one, as a reader's session would), in a fresh interpreter whose current folder
is an empty temporary one, so a snippet that drifts from the library fails here.

Annotations, an HTML comment on the line before a block (invisible on GitHub):

* ``<!-- docs-test: skip REASON -->``: the block is not run (it needs a cluster, a
  registry or credentials); the reason is reported, and the block is still compiled, so
  a syntax error fails;
* ``<!-- docs-test: setup CODE -->`` (CODE may span lines): run CODE first, unseen by the
  reader (e.g. to define what "your" serializer is).

A file whose blocks are all skipped is reported as skipped with the reasons; nothing
skipped counts as passing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")),
        *sorted(str(p.relative_to(REPO)) for p in (REPO / "charts").glob("*/README.md"))]

_FENCE = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```", re.S | re.M)
_NOTE = re.compile(r"<!--\s*docs-test:\s*(skip|setup)\b(.*)-->\Z", re.S)


@dataclass
class Block:
    line: int
    code: str
    skip: str | None
    setup: str


def blocks(path: str) -> list[Block]:
    text = (REPO / path).read_text()
    out = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()]
        tail = before.rstrip()
        note = _NOTE.match(tail[tail.rfind("<!--"):]) if tail.endswith("-->") else None
        skip = setup = None
        if note:
            kind, body = note.group(1), note.group(2)
            if kind == "skip":
                skip = body.strip() or "no reason given"
            else:
                setup = textwrap.dedent(body).strip("\n")
        out.append(Block(before.count("\n") + 2, textwrap.dedent(m.group(2)), skip, setup or ""))
    return out


RUNNER = r'''
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
for b in blocks:
    where = f"{b['file']}:{b['line']}"
    code = compile(b["code"], where, "exec")  # even a skipped block must compile
    if b["skip"]:
        continue
    try:
        if b["setup"]:
            exec(compile(b["setup"], where + " (setup)", "exec"), ns)
        exec(code, ns)
    except BaseException:
        print(f"DOCS-TEST FAILED at the block of {where}:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
print("DOCS-TEST OK")
'''


def test_every_doc_with_snippets_is_found():
    with_code = [p for p in DOCS if blocks(p)]
    assert "README.md" in with_code and len(with_code) >= 5, with_code


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p)])
def test_snippets_run(path, tmp_path):
    found = blocks(path)
    runnable = [b for b in found if not b.skip]
    if not runnable:
        pytest.skip("every block needs a cluster: " + "; ".join(f"line {b.line}: {b.skip}" for b in found))
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([{"file": path, "line": b.line, "code": b.code, "skip": b.skip, "setup": b.setup}
                                for b in found]))
    runner = tmp_path / "run_blocks.py"
    runner.write_text(RUNNER)
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a local Ray stays on 127.0.0.1
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "AWS_EC2_METADATA_DISABLED": "true",
        "MPLBACKEND": "Agg",
    }
    env.pop("FUNCTIONFUSE_STORAGE_KEY", None)
    proc = subprocess.run([sys.executable, str(runner), str(spec)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and "DOCS-TEST OK" in proc.stdout, proc.stderr[-6000:]

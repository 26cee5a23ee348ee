"""The corpus of bad inputs: what a careless user or an attacker feeds mmgraph, and its answer.

Each `tests/bad_inputs/<area>.toml` holds `[[case]]` tables run through `mmgraph.cli.main`
in a fresh folder (the working directory), with an alarm against hangs:

    [[case]]
    name   = "import_absolute_path"           # unique in the corpus
    files  = { "m.mmg" = "import \\"/etc/passwd\\"\\n" }   # written first (UTF-8 text)
    setup  = [["copy_run", "runs/tiny"]]       # then these actions, in order (see ACTIONS)
    argv   = ["check", "m.mmg"]                # {root} is the repository's root
    exit   = 1                                 # the exit code, exactly
    expect = ["m.mmg:1:8", "E103"]             # each must appear in stdout + stderr
    absent = ["root:"]                         # none may appear (no echo of a refused file)
    after  = [["missing", "PWNED"]]            # checks of the folder afterwards (see CHECKS)

Whatever the case, the output never holds a Python traceback nor "internal error", and
exit 3 is never expected: it is for bugs.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sys
from pathlib import Path

import pytest

from mmgraph.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from conftest import ROOT

CORPUS = ROOT / "tests" / "bad_inputs"
TINY = CORPUS / "tiny.mmg"
TIME_LIMIT_S = 120  # no case may hang; a training case takes a few seconds


def load_cases() -> list[tuple[str, dict]]:
    cases = []
    for path in sorted(CORPUS.glob("*.toml")):
        for case in tomllib.loads(path.read_text())["case"]:
            cases.append((f"{path.stem}/{case['name']}", case))
    return cases


CASES = load_cases()


# ------------------------------------------------------------------ shared artefacts

@pytest.fixture(scope="session")
def artefacts(tmp_path_factory) -> dict[str, Path]:
    """One trained run and one export of it, made once and copied into the cases that ask."""
    base = tmp_path_factory.mktemp("bad_inputs_artefacts")
    spec = base / "tiny.mmg"
    shutil.copy(TINY, spec)
    run, dist = base / "run", base / "dist"
    cwd = os.getcwd()
    os.chdir(base)
    try:
        assert main(["train", str(spec), "--out", str(run), "--max-steps", "2", "--quiet"]) == 0
        assert main(["export", str(spec), "--checkpoint", str(run), "-o", str(dist)]) == 0
    finally:
        os.chdir(cwd)
    return {"run": run, "dist": dist}


# ------------------------------------------------------------------ setup actions

def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True)


def _flip(path: Path, offset: str) -> None:
    data = bytearray(path.read_bytes())
    i = int(offset)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _nan(path: Path) -> None:
    """Write NaN into every float tensor of a safetensors file, keeping it well-formed."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    for name, t in tensors.items():
        if t.is_floating_point():
            tensors[name] = t.fill_(float("nan"))
    save_file(tensors, path)


def _edit_json(path: Path, key: str, value: str) -> None:
    """Set `key` (dotted; integers index lists) to the JSON `value`; `value` "DELETE" drops it."""
    doc = json.loads(path.read_text())
    *parents, last = key.split(".")
    node = doc
    for k in parents:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if isinstance(node, list):
        last = int(last)
    if value == "DELETE":
        del node[last]
    else:
        node[last] = json.loads(value)
    path.write_text(json.dumps(doc))


ACTIONS = {
    # name: (number of arguments, function(tmp, artefacts, *args))
    "copy_spec": lambda tmp, art, dest: shutil.copy(TINY, tmp / dest),
    "copy_run": lambda tmp, art, dest: _copy_tree(art["run"], tmp / dest),
    "copy_dist": lambda tmp, art, dest: _copy_tree(art["dist"], tmp / dest),
    "mkdir": lambda tmp, art, path: (tmp / path).mkdir(parents=True, exist_ok=True),
    "symlink": lambda tmp, art, target, link: os.symlink(target, tmp / link),
    "mkfifo": lambda tmp, art, path: os.mkfifo(tmp / path),
    "remove": lambda tmp, art, path: (shutil.rmtree if (tmp / path).is_dir() and not
                                      (tmp / path).is_symlink() else os.remove)(tmp / path),
    "truncate": lambda tmp, art, path, size: os.truncate(tmp / path, int(size)),
    "flip": lambda tmp, art, path, offset: _flip(tmp / path, offset),
    "nan": lambda tmp, art, path: _nan(tmp / path),
    "write": lambda tmp, art, path, text: (tmp / path).write_text(text),
    "write_hex": lambda tmp, art, path, hexdata: (tmp / path).write_bytes(bytes.fromhex(hexdata)),
    # head + unit * count + tail: a huge literal without a huge corpus file
    "write_repeat": lambda tmp, art, path, head, unit, count, tail:
        (tmp / path).write_text(head + unit * int(count) + tail),
    "edit_json": lambda tmp, art, path, key, value: _edit_json(tmp / path, key, value),
    "chmod": lambda tmp, art, path, mode: os.chmod(tmp / path, int(mode, 8)),
}


# ------------------------------------------------------------------ checks afterwards

CHECKS = {
    "missing": lambda tmp, path: not (tmp / path).exists(),
    "exists": lambda tmp, path: (tmp / path).exists(),
    "unchanged": None,  # handled in the test: the file's bytes are as before the command
}


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"no answer within {TIME_LIMIT_S} s")


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[i for i, _ in CASES])
def test_bad_input(case, tmp_path, monkeypatch, capsys, request):
    assert case["exit"] != 3, "exit 3 is for bugs in mmgraph, never a user's mistake"
    needs = {a[0] for a in case.get("setup", [])}
    art = request.getfixturevalue("artefacts") if needs & {"copy_run", "copy_dist"} else {}
    capsys.readouterr()  # what making the artefacts printed is not this case's answer
    root = str(ROOT)
    for rel, text in case.get("files", {}).items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("{root}", root), encoding="utf-8")
    for name, *args in case.get("setup", []):
        ACTIONS[name](tmp_path, art, *args)
    watched = {p: (tmp_path / p).read_bytes() for kind, p in case.get("after", [])
               if kind == "unchanged"}
    monkeypatch.chdir(tmp_path)
    limit = case.get("fsize_limit")
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_alarm = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    try:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), old_limit[1]))
        try:
            code = main([a.replace("{root}", root) for a in case["argv"]])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGXFSZ, old_xfsz)
    out, err = capsys.readouterr()
    text = out + err
    assert "Traceback" not in text and "internal error" not in text, text
    assert code == case["exit"], f"exit {code}, expected {case['exit']}:\n{text}"
    for needle in case.get("expect", []):
        assert needle.replace("{root}", root) in text, f"{needle!r} not in:\n{text}"
    for needle in case.get("absent", []):
        assert needle not in text, f"{needle!r} must not appear:\n{text}"
    for kind, path in case.get("after", []):
        if kind == "unchanged":
            assert (tmp_path / path).read_bytes() == watched[path], f"{path} changed"
        else:
            assert CHECKS[kind](tmp_path, path), f"after: {kind} {path} does not hold"


def test_corpus_size_and_names():
    names = [i for i, _ in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    assert len(CASES) >= 150, f"only {len(CASES)} bad-input cases"
    areas = {i.split("/")[0] for i in names}
    assert {"spec", "data", "checkpoint", "runfolder", "runtime", "manifest", "cli"} <= areas

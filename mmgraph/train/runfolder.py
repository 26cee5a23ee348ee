"""A run folder belongs to one run.

`claim` takes the folder's lock (`.lock`, an OS file lock that dies with its process), so a
second run into the same folder at the same time fails at once; removes what a killed write
left behind (`*.tmp`); and refuses to mix runs: a folder that already holds a run's
checkpoints, metrics or plots is continued only with `resume`, or cleared first with
`overwrite`. Without those rules two runs interleave their checkpoints and metrics, and
rotation or `--resume` then picks up the other run's steps.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from mmgraph.backends.torch import weights
from mmgraph.errors import UserError
from mmgraph.train import checkpoint as ckpt
from mmgraph.train.plots import PLOT_TEMP

LOCK = ".lock"
# What a run writes into its folder: all of it is the run's, and --overwrite removes it.
ARTEFACTS = ("checkpoints", "metrics.jsonl", "loss.png", "tensorboard")


class RunFolderError(UserError):
    """A run folder that is in use, holds another run, or has nothing to resume."""


def used(out: Path) -> list[str]:
    """The artefacts of an earlier run present in `out`."""
    return [name for name in ARTEFACTS if (out / name).exists()]


def _describe(out: Path) -> str:
    done = weights.checkpoints(out / "checkpoints")
    if done:
        return f"checkpoints up to step {done[-1][0]}"
    return "the files " + ", ".join(used(out))


def _clean_plot_temp(out: Path) -> list[Path]:
    tmp = out / PLOT_TEMP
    if tmp.is_file():
        tmp.unlink()
        return [tmp]
    return []


@contextmanager
def claim(out: str | Path, *, resume: bool, overwrite: bool,
          say=lambda text: None) -> Iterator[Path]:
    """Hold `out` for one run: locked, cleaned of stale temporaries, and either fresh,
    cleared (`overwrite`) or holding a checkpoint to continue (`resume`)."""
    out = Path(out)
    if resume and not out.is_dir():
        raise RunFolderError(f"nothing to resume: {out} does not exist; train without --resume "
                             "to start a run")
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderError(f"{out} is in use by another training run (it holds "
                             f"{out / LOCK}); wait for that run to end, or train into "
                             "another --out") from None
    try:
        for stale in ckpt.clean_stale(out / "checkpoints") + _clean_plot_temp(out):
            say(f"removed {stale}, left by an interrupted write")
        if overwrite:
            for name in used(out):
                path = out / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                say(f"removed {path} (--overwrite)")
        elif resume and weights.latest(out / "checkpoints") is None:
            extra = f" (it holds {_describe(out)}; start over with --overwrite)" if used(out) \
                else ""
            raise RunFolderError(f"nothing to resume in {out}: no checkpoint in "
                                 f"{out / 'checkpoints'}{extra}; train without --resume to "
                                 "start a run")
        elif not resume and used(out):
            raise RunFolderError(f"{out} already holds a run ({_describe(out)}); continue "
                                 "it with --resume, start over with --overwrite (deletes its "
                                 "checkpoints, metrics and plots), or use another --out")
        yield out
    finally:
        lock.release()

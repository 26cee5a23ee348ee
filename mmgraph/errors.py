"""The one base class for mistakes that are the user's to fix, and how the CLI words them.

Every error a person can cause (a spec, a data file, a checkpoint, a run folder, an export
folder, a device that is not there) derives from `UserError`; the CLI prints it without a
traceback and exits 1 (2 for usage). Anything else that escapes is a bug in mmgraph: exit 3.
OS errors (missing file, permission, disk full) and decode errors are users' errors too:
`describe_os_error` words them with the file and what to do.
"""

from __future__ import annotations

import errno


class UserError(Exception):
    """A mistake in an input the user controls. `exit_code` is what the CLI returns."""

    exit_code = 1


class UsageError(UserError):
    """A wrong command line: flags, values, combinations."""

    exit_code = 2


class InputError(UserError, ValueError):
    """A tensor given to a model, an export part or a session that its declared input does
    not accept; the message names the input, what was expected and what came."""


_OS_HINTS = {
    errno.ENOENT: "no such file or folder",
    errno.EACCES: "permission denied: check the file's and folder's permissions",
    errno.EPERM: "operation not permitted: check the file's and folder's permissions",
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded: free some space or write elsewhere",
    errno.EFBIG: "file too large for this file system or its limits",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ELOOP: "too many levels of symbolic links (a link loop?)",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EEXIST: "already exists (as a file where a folder is needed?)",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OS error: the file(s) it concerns and what to do."""
    what = _OS_HINTS.get(exc.errno or -1, exc.strerror or type(exc).__name__)
    files = [f for f in (exc.filename, exc.filename2) if f is not None]
    where = " -> ".join(str(f) for f in files)
    return f"{where}: {what}" if where else what

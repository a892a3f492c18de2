"""What a path the user gave is, in words: one place for the problems every command meets with them (issue 28).

    problem(path, want)   None when path is a readable `want` ('file' or 'dir'), else (kind, phrase)
    inside(path, folder)  True when path is folder or lies under it, links resolved: a command whose output is
                          folder would delete or replace path, its own input (issue 28)

kinds: 'missing', 'dangling' (a symbolic link to nothing), 'loop' (links that lead back to themselves),
'notdir' (a part of the path is a file), 'denied', 'dir' (a directory where a file is wanted), 'file' (a file
where a directory is wanted), 'other' (any other errno, named). The phrase starts with the path.
"""
import errno
import os
import stat

DENIED = (errno.EACCES, errno.EPERM)


def _stat_problem(path, e):
    if e.errno == errno.ELOOP:
        return "loop", f"{path} is a symbolic link that loops back on itself"
    if e.errno == errno.ENOENT and os.path.islink(path):
        return "dangling", f"{path} is a symbolic link to {os.readlink(path)!r}, which does not exist"
    if e.errno == errno.ENOENT:
        return "missing", f"{path} does not exist"
    if e.errno == errno.ENOTDIR:
        return "notdir", f"{path}: a part of the path is a file, not a directory"
    if e.errno in DENIED:
        return "denied", f"{path} cannot be reached (permission denied)"
    return "other", f"{path}: {e.strerror} ({errno.errorcode.get(e.errno, 'an OS error')})"


def problem(path, want):
    """None when path is a `want` ('file' or 'dir') this process can read, else (kind, phrase)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return _stat_problem(path, e)
    if want == "file" and stat.S_ISDIR(mode):
        return "dir", f"{path} is a directory, not a file"
    if want == "dir" and not stat.S_ISDIR(mode):
        return "file", f"{path} is a file, not a directory"
    if not os.access(path, os.R_OK | (os.X_OK if want == "dir" else 0)):
        return "denied", f"{path} cannot be read (permission denied)"
    return None


def inside(path, folder):
    """True when path is folder itself or anything under it, symbolic links resolved."""
    p, f = os.path.realpath(path), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def can_create(path):
    """Whether path could be made: its nearest existing folder is one this process may write into (access(2) also
    says no for a read-only mount). For advice that names another destination (issue 37)."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    return os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)


def elsewhere(path, alternative, what):
    """'e.g. --{what}={alternative}' where that could be made, else where to look for one."""
    if can_create(alternative):
        return f"e.g. --{what}={alternative}"
    return f"on a writable disk ({os.path.dirname(os.path.abspath(alternative))} is not one)"

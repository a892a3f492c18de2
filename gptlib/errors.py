"""One error policy for every command.

A UserError is a mistake the user can fix: a bad setting, missing or corrupt data, a checkpoint that
does not fit, a destination that cannot be written. A command reports it as one line on stderr,
`error: <what is wrong and how to fix it>`, and exits with the error's code; it never shows a
traceback for one. Any other exception is a bug and keeps its traceback.

    2    usage: a bad setting, option or config file (ConfigError)
    1    bad data or files: datasets, checkpoints, downloads, destinations (every other UserError)
    3    training diverged (train.py)
    130  interrupted (Ctrl-C); 128 + the signal for a run stopped by a signal after its checkpoint
"""
import errno
import os
import re
import sys

EXIT_USAGE, EXIT_DATA, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 1, 3, 130


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and what to do."""
    exit_code = EXIT_DATA


class ConfigError(UserError):
    """A bad setting: unknown key, wrong type, out of range, unparsable file, absent device."""
    exit_code = EXIT_USAGE


class DataError(UserError):
    """A dataset directory, shard or input file that cannot be used as it is."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, foreign, incompatible, or cannot be written."""


class OutOfMemory(UserError):
    """A batch that does not fit in device memory."""


class Diverged(UserError):
    """Too many skipped (NaN/inf or spiking) updates in a row."""
    exit_code = EXIT_DIVERGED


class Interrupted(UserError):
    """Ctrl-C (a second one, in train.py) or a signal: the command stopped before it finished."""
    exit_code = EXIT_INTERRUPTED


def one_line(text):
    """A message as one line: newlines and runs of white space folded into single spaces."""
    return re.sub(r"\s+", " ", str(text)).strip()


def short(text, limit=200):
    """The first line of a library's (often long) message, cut at a word boundary within `limit`."""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    first = one_line(lines[0]) if lines else ""
    if len(first) <= limit:
        return first
    cut = first[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " ..."


OOM_WORDS = ("out of memory", "can't allocate memory")  # CUDA/MPS; the CPU allocator's (DefaultCPUAllocator, ENOMEM)


def is_out_of_memory(e):
    """torch.cuda.OutOfMemoryError, or the plain RuntimeError that MPS, some CUDA paths and the CPU allocator raise."""
    return type(e).__name__ == "OutOfMemoryError" or (isinstance(e, RuntimeError)
                                                      and any(w in str(e).lower() for w in OOM_WORDS))


def _rank():
    return int(os.environ.get("RANK", "0") or 0)


def report(e):
    """Print a UserError's one line. Under torchrun every rank runs the same checks, so a settings
    mistake is printed by rank 0 alone; other errors name the rank that hit them."""
    rank = _rank()
    if rank and isinstance(e, ConfigError):
        return
    where = f" (rank {rank})" if rank else ""
    print(f"error{where}: {one_line(e)}", file=sys.stderr, flush=True)


FILE_ERRNOS = {  # errno -> what to do, for an OSError on a path a command writes (issue 18: one line, not a traceback)
    errno.EROFS: "choose a destination on a writable disk",
    errno.ENOSPC: "free space there or choose a destination on another disk",
    errno.EDQUOT: "free space there or choose a destination on another disk",
    errno.EACCES: "choose a path you have permission to use",
    errno.EPERM: "choose a path you have permission to use",
    errno.ENOTDIR: "a part of the path is a file, not a directory: fix the path",
    errno.EISDIR: "it is a directory where a file is needed: give a file path",
    errno.ENOENT: "it does not exist, or is a symbolic link to nothing: fix the path or the link",
    errno.ELOOP: "a symbolic link on the path loops back on itself: fix or remove the link",
    errno.EBUSY: "it is in use (a mount point?): choose a path inside it or another one",
    errno.ENAMETOOLONG: "shorten the path",
    errno.EXDEV: "choose a destination on the same disk",
    errno.EIO: "the disk reported an input/output error: check the disk, or choose another",
}
OTHER_FILE_ERRNO = "check the path and the disk it is on"  # any errno not above, named in the line (issue 28)


def file_error(e):
    """An OSError on a path as a one-line UserError naming the path and what is wrong (the errno's name when it
    is not in FILE_ERRNOS), or None when it names no path (not a file problem: a bug keeps its traceback)."""
    if not isinstance(e, OSError) or not (e.filename or e.errno in FILE_ERRNOS):
        return None
    name = errno.errorcode.get(e.errno, "an OS error")
    advice = FILE_ERRNOS.get(e.errno, f"{OTHER_FILE_ERRNO} ({name})")
    where = f"{e.filename} -> {e.filename2}" if e.filename and e.filename2 else str(e.filename or "a file")
    return UserError(f"{where}: {e.strerror or e}; {advice}")


def run_command(main, argv=None, oom_hint="lower --batch_size"):
    """Run a command's main(argv) under the error policy; returns its exit code (scripts sys.exit it).
    main returns None or an int exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return main(argv) or 0
    except UserError as e:
        report(e)
        return e.exit_code
    except KeyboardInterrupt:
        report(Interrupted("interrupted; what was written before is intact"))
        return EXIT_INTERRUPTED
    except OSError as e:
        err = file_error(e)
        if err is None:
            raise
        report(err)
        return err.exit_code
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        report(OutOfMemory(f"out of memory ({short(e, 120)}); {oom_hint}"))
        return EXIT_DATA

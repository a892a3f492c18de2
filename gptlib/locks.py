"""One writer at a time: locks on run directories and datasets.

    train.py    exclusive lock on its out_dir; shared lock on each dataset it reads
    prepare     exclusive lock on the dataset it writes
So a second train.py on the same out_dir, a second prepare into the same dataset, a prepare (even with
--overwrite) under a running train.py, and a train.py on a dataset being prepared are each refused with
one line naming the process that holds the lock.

The lock is fcntl.flock on the file `.lock` in the directory, removed again by the last holder. The kernel
releases such a lock when its process dies (kill -9, a crash), so a lock file left behind is simply free
and the next process takes it over safely. The holder writes its pid and command into the file; readers
holding shared locks are found in /proc/locks (Linux). Without fcntl (Windows) there is no locking.
"""
import contextlib
import os
import socket
import sys
import time

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from .errors import UserError

LOCK_NAME = ".lock"


class LockError(UserError):
    """A directory another process is using."""


def _lock_holders(path):
    """Pids holding flock locks on `path`, from /proc/locks (Linux; [] elsewhere)."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a process waiting for the lock, not holding it
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want and parts[4].isdigit():
            pids.append(int(parts[4]))
    return sorted(set(pids) - {os.getpid()})


class DirLock:
    """An exclusive (or shared) lock on a directory, held until release() or the process's end.

    what: the holder's description written into the lock file, e.g. 'train.py' (exclusive locks only).
    """

    def __init__(self, directory, what, shared=False):
        self.directory, self.what, self.shared = directory, what, shared
        self.path = os.path.join(directory, LOCK_NAME)
        self.fd = None
        self.created = False

    def acquire(self):
        if fcntl is None:
            return self
        if not self.shared:
            self.created = not os.path.isdir(self.directory)  # made for the lock: removed with it if left empty
            os.makedirs(self.directory, exist_ok=True)
        try:
            return self._acquire()
        except BaseException:  # a full disk or a refusal: the lock file and a folder made for it go (issue 28)
            self.release()
            if self.created:
                with contextlib.suppress(OSError):
                    os.rmdir(self.directory)
            raise

    def _acquire(self):
        while self.fd is None:
            fd = self._open()
            if fd is None:  # a reader that cannot write a read-only dataset: no writer can change it either
                return self
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder()
                os.close(fd)
                raise LockError(f"{self.directory} is in use by {holder}; wait for it to finish or stop it "
                                f"(a lock left by a killed process is freed by the system)") from None
            try:  # the file may have been removed by the holder we waited on: lock the file that is there now
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
            else:
                os.close(fd)
        if not self.shared:
            try:
                os.ftruncate(self.fd, 0)
                os.write(self.fd, f"pid {os.getpid()} {self.what} on {socket.gethostname()} since "
                                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            except OSError as e:  # os.write names no file: name the lock's, so the error line says where
                raise OSError(e.errno, e.strerror, self.path) from None
        return self

    def _open(self):
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            if not self.shared:
                raise
        try:
            return os.open(self.path, os.O_RDONLY)
        except OSError:
            return None

    def _holder(self):
        """'prepare_fineweb.py (pid 1234)' or 'train.py (pid 99)', as well as can be known."""
        try:
            with open(self.path) as f:
                text = f.read().split()
        except OSError:
            text = []
        writer = (text[2], int(text[1])) if len(text) >= 3 and text[0] == "pid" and text[1].isdigit() else None
        pids = _lock_holders(self.path)
        if writer and (not pids or writer[1] in pids):
            return f"{writer[0]} (pid {writer[1]})"
        if pids:
            return "a process reading it (pid " + ", ".join(map(str, pids)) + ")"
        return "another process"

    def release(self):
        """Unlock, and remove the lock file when no other process holds it (a reader checks by taking it
        exclusively), so a finished run leaves its directory as it found it."""
        if self.fd is None:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.remove(self.path)
        except OSError:  # other readers still hold it, or it cannot be removed: leave it
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        if self.created:  # a refused or empty run leaves no folder behind
            with contextlib.suppress(OSError):
                os.rmdir(self.directory)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def command_name():
    return os.path.basename(sys.argv[0]) or "python"

"""Atomic file writes and the lock of a folder that one process owns.

Every file the package writes (checkpoints, configs, caches, splits, curves, submissions, tables)
goes through a temp file in the same folder and ``os.replace``. A reader never sees a partial
file: on any failure (disk full, a pickling error, an interrupt) the temp file is removed and the
target keeps its old content, if any. Temp files are named ``.<name>.<pid>.<random>.tmp``
(several writers of one folder never collide) and created with the usual permissions (not
``mkstemp``'s 0600). A writer killed outright (SIGKILL, power loss) leaves its temp file behind:
``orphan_temp_files`` finds them for the folder's owner to remove.

``FolderLock`` is an exclusive lock of one process on a folder (a training run's output folder):
a lock file holding the holder's pid, host and start time, locked with ``flock`` while held.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import re
import socket
import sys
import uuid
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from maskrcnn.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: FolderLock falls back to the pid check
    fcntl = None

PathLike = Union[str, "os.PathLike[str]"]
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", fsync: bool = False, **kwargs: Any) -> Iterator[IO]:
    """``open()`` for writing that lands on ``path`` only when the ``with`` block succeeds.

    Args:
        mode: ``"w"`` or ``"wb"`` (the file is always new).
        fsync: flush the data to disk before the rename (checkpoints: survive a power loss).
        kwargs: passed to ``open`` (``newline=""`` for csv, ``encoding``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{_temp_stem(os.path.basename(path))}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # see _TEMP
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, mode.replace("w", "x"), **kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        failure = write_failure(e, path)
        if failure is not None:
            raise failure from e
        raise


# A temp file's name adds 1 + ~20 characters to its target's; file systems allow 255 bytes a name.
_MAX_TEMP_STEM = 200


def _temp_stem(name: str) -> str:
    """``name``, or for a name too long to take the temp suffix, its start and a hash (such temp
    files are not recognised by ``orphan_temp_files``: their target cannot be read back)."""
    if len(name.encode()) <= _MAX_TEMP_STEM:
        return name
    return name.encode()[:100].decode(errors="ignore") + "~" + hashlib.sha1(name.encode()).hexdigest()[:12]


class WriteError(UserError, OSError):
    """A write that the disk refused (full, read-only, over quota); the message names the file."""


_WRITE_CAUSES = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
                 errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                 errno.ENAMETOOLONG: "file name too long"}


def write_failure(exc: BaseException, path: PathLike) -> Optional[WriteError]:
    """A one-line WriteError ``<cause> writing <path>`` for an exception raised while writing
    ``path`` that the disk caused, else None (our bug, or an interrupt: re-raised as it is).

    ``torch.save`` reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc]
    ... unexpected pos`` (its zip writer got fewer bytes written than it asked for); that counts
    as a full disk too.
    """
    if isinstance(exc, WriteError):
        return None
    cause = None
    if isinstance(exc, OSError) and exc.errno in _WRITE_CAUSES:
        cause = _WRITE_CAUSES[exc.errno]
    elif isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "No space left" in str(exc)):
        cause = "disk full"
    if cause is None:
        return None
    return WriteError(f"{cause} writing {os.fspath(path)}")


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_json(obj: Any, path: PathLike) -> None:
    """``obj`` as indented JSON with sorted keys (values JSON cannot hold are written as ``str``)."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=str)


class OutputPathError(UserError, ValueError):
    """An output path that cannot be written: a folder, under a file, or in a read-only folder."""


def check_output_path(path: PathLike, what: str = "output") -> None:
    """Raise OutputPathError unless ``path`` can be written as a file by ``atomic_open``.

    Run it before the expensive work, so a run does not end, after hours, on a path that was wrong
    from the start: ``path`` must not be a folder, and its nearest existing ancestor folder must be
    a writable folder (the missing ones below it are created at write time).
    """
    path = os.fspath(path)
    if not path:
        raise OutputPathError(f"{what}: an empty file name")
    if os.path.isdir(path):
        raise OutputPathError(f"{what} is a directory; give a file name inside it ({path})")
    if len(os.path.basename(path).encode()) > 255:
        raise OutputPathError(f"{what}: the file name is {len(os.path.basename(path).encode())} bytes, over the "
                              f"255 a file system allows ({path[:80]}...)")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputPathError(f"{what}: {existing} is a file, not a folder ({path})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what}: the folder {existing} is not writable ({path})")


def _same_or_inside(path: str, other: str) -> Tuple[bool, bool]:
    """(``path`` is ``other``, ``other`` lies inside the folder ``path``), through symlinks and hard links."""
    rp, ro = os.path.realpath(path), os.path.realpath(other)
    same = rp == ro
    if not same and os.path.exists(path) and os.path.exists(other):
        with contextlib.suppress(OSError):
            same = os.path.samefile(path, other)
    return same, ro.startswith(rp.rstrip(os.sep) + os.sep)


def check_not_input(out: PathLike, inputs: Sequence[Optional[PathLike]], what: str = "--out",
                    folder: bool = False) -> None:
    """Raise OutputPathError when the output ``out`` is one of ``inputs`` (files or folders the
    run reads: images, labels, weights, configs), or, for an output ``folder``, contains one.

    Run it with ``check_output_path``, before any work: a run must never replace what it reads.
    Empty or None entries of ``inputs`` are ignored.
    """
    out = os.fspath(out)
    for src in inputs:
        if not src:
            continue
        src = os.fspath(src)
        same, inside = _same_or_inside(out, src)
        if same:
            raise OutputPathError(f"{what} is an input of this run and would be overwritten: give another path ({out})")
        if folder and inside:
            raise OutputPathError(f"{what} is a folder that holds an input of this run ({src}): give another folder ({out})")


def orphan_temp_files(folder: PathLike, owned: Callable[[str], bool]) -> List[str]:
    """Paths of ``atomic_open`` temp files in ``folder`` whose target name satisfies ``owned``.

    Only the folder's owner (the holder of its ``FolderLock``) may call this and remove them: any
    temp file of a name only it writes belongs to a writer that was killed before its rename.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    out = []
    for name in sorted(os.listdir(folder)):
        m = _TEMP.match(name)
        if m and owned(m.group("target")):
            out.append(os.path.join(folder, name))
    return out


# --------------------------------------------------------------------------------- locks
class FolderLocked(UserError, RuntimeError):
    """Another live process holds the lock; ``holder`` is what its lock file says (may be empty)."""

    def __init__(self, message: str, holder: Dict[str, Any]):
        super().__init__(message)
        self.holder = holder


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True
    return True


def describe_holder(holder: Dict[str, Any]) -> str:
    """``pid 123 on host h, started 2026-12-02 15:50:01`` from a lock file's content."""
    if not holder:
        return "an unknown process (the lock file is empty)"
    parts = [f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"]
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    return ", ".join(parts)


class FolderLock:
    """An exclusive lock of this process on ``path`` (a file such as ``<run folder>/run.lock``).

    The lock file holds one JSON line: the holder's ``pid``, ``host``, ``started`` and ``command``.
    While held it is also locked with ``flock``, which the kernel releases when the holder dies,
    however it dies: a lock file left by a killed process is therefore recognised as stale and
    taken over (``acquire`` returns the dead holder's line so the caller can warn). Where the
    file system has no ``flock`` (some network and FUSE mounts), the pid check decides instead: a
    holder on this host whose pid is gone is stale; a holder on another host is never presumed
    dead. ``release`` removes the file (only if it is still ours).

    ``flock`` locks belong to the open file, so forked children (data-loader workers) share the
    lock and never release it early.
    """

    def __init__(self, path: PathLike):
        self.path = os.fspath(path)
        self._fd: Optional[int] = None
        self._token = ""

    @property
    def held(self) -> bool:
        return self._fd is not None or bool(self._token)

    def _read(self) -> Dict[str, Any]:
        try:
            with open(self.path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return {}
        try:
            holder = json.loads(text) if text else {}
        except json.JSONDecodeError:
            return {"unreadable": text[:200]}
        return holder if isinstance(holder, dict) else {}

    def _content(self) -> str:
        self._token = uuid.uuid4().hex
        return json.dumps({
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
            "command": " ".join(sys.argv)[:300],
            "token": self._token,
        }) + "\n"

    def _refuse(self, holder: Dict[str, Any], still_held_by_child: bool = False) -> FolderLocked:
        msg = f"held by {describe_holder(holder)}"
        if still_held_by_child:
            msg += " (that process has ended but a process it started still holds the lock; retry when it exits)"
        return FolderLocked(msg, holder)

    def acquire(self) -> Optional[Dict[str, Any]]:
        """Take the lock; returns the content of a stale lock taken over (else None).

        Raises:
            FolderLocked: a live process holds it.
        """
        if self.held:
            raise RuntimeError(f"{self.path}: this FolderLock is already held")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if fcntl is not None:
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    holder = self._read()
                    same_host = holder.get("host") == socket.gethostname()
                    dead = same_host and isinstance(holder.get("pid"), int) and not pid_alive(holder["pid"])
                    raise self._refuse(holder, still_held_by_child=dead) from None
                except OSError as e:
                    os.close(fd)
                    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        if not self._read():  # the empty file our open just created
                            with contextlib.suppress(FileNotFoundError):
                                os.remove(self.path)
                        break  # no flock on this file system: the pid check below
                    raise
                # The previous holder may have removed the file between our open and flock: then
                # we locked a deleted file and must start again on the current one.
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
                stale = self._read() or None
                content = self._content().encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, content, 0)
                os.fsync(fd)
                self._fd = fd
                return stale
        return self._acquire_by_pid()

    def _acquire_by_pid(self) -> Optional[Dict[str, Any]]:
        """The fallback without ``flock``: exclusive creation, stale = a dead pid on this host."""
        stale = None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._read()
                pid = holder.get("pid")
                if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid_alive(pid):
                    raise self._refuse(holder) from None
                if self._read() == holder:  # still the same dead holder: remove its file and retry
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path)
                    stale = holder
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self._content())
            return stale
        raise self._refuse(self._read())

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and drop the lock; safe to call twice."""
        if self._fd is not None:
            try:
                if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                    os.remove(self.path)
            except FileNotFoundError:
                pass
            finally:
                os.close(self._fd)  # drops the flock (forked children keep theirs on the removed file)
                self._fd = None
        elif self._token:
            if self._read().get("token") == self._token:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
        self._token = ""

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

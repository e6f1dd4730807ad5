"""One training per run directory: a second one started in the same directory refuses instead of resuming from the
first one's checkpoints or replacing its results."""

import json
import os
import socket
import time

from relation_networks.errors import UserError

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on `run_dir` for the lifetime of a training (`with RunLock(run_dir): ...`).

    The lock is an advisory `flock` on `run_dir/.lock`, held by the process: the operating system releases it when
    the process ends in any way (kill -9 included), so a crashed run never leaves its directory locked. The file
    names the holder (host, pid, start time) for the message the second training prints. Where `fcntl` is missing
    (Windows) or `enabled` is False (workers other than the chief), nothing is locked."""

    def __init__(self, run_dir, enabled=True):
        self.run_dir, self.enabled = run_dir, enabled
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.file = None
        self.created_dir = False

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX
            return self
        if not self.enabled:
            return self
        self.created_dir = not os.path.isdir(self.run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip()
            self.file.close()
            self.file = None
            try:
                who = json.loads(holder)
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who["started"]))
                holder = f"process {who['pid']} on {who['host']}, since {since}"
            except (ValueError, KeyError, TypeError):
                holder = "another process"
            raise UserError(
                f"Another training is running in {self.run_dir} ({holder}). Wait for it to finish, stop it (it "
                "saves a checkpoint on SIGTERM and this command then resumes it), or train into another --run_dir."
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}))
        self.file.flush()
        return self

    def __exit__(self, *exc):
        if self.file is None:
            return False
        try:
            os.remove(self.path)  # still held: no other process can have taken it in between
        except OSError:
            pass
        self.file.close()  # releases the lock
        self.file = None
        if self.created_dir:
            try:
                os.rmdir(self.run_dir)  # only if this training left it empty (it failed before writing anything)
            except OSError:
                pass
        return False

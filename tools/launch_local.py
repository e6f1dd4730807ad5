"""Start N synchronous workers on this machine (127.0.0.1, free ports) for testing multi-worker training.

    python tools/launch_local.py --workers 2 -- python tools/train.py --config configs/sort_of_clevr.yaml \\
        --set train.distribute.strategy=multi_worker

Each worker gets its own TF_CONFIG ({"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}});
their output is streamed with a "[worker i]" prefix. If any worker fails, the others are stopped (SIGTERM, then
SIGKILL after --grace_seconds: a worker blocked in a collective operation waiting for the failed one cannot act
on SIGTERM) and the launcher exits with that worker's status. On a real cluster, set one TF_CONFIG per host instead (see README).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import _common  # noqa: F401
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("workers", 2, "Number of workers.")
flags.DEFINE_string("host", "127.0.0.1", "Address the workers listen on.")
flags.DEFINE_float("grace_seconds", 10.0, "How long a stopped worker gets to exit after SIGTERM before SIGKILL.")


def free_ports(count, host):
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(count, host):
    addresses = [f"{host}:{port}" for port in free_ports(count, host)]
    return [json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}}) for i in range(count)]


def _stream(index, pipe, lock):
    for line in iter(pipe.readline, ""):
        with lock:
            sys.stdout.write(f"[worker {index}] {line}")
            sys.stdout.flush()
    pipe.close()


def _signal_group(process, sig):
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:  # already gone
        pass


def stop(processes, grace_seconds):
    """SIGTERM every running worker's process group; SIGKILL those still running `grace_seconds` later."""
    running = [p for p in processes if p.poll() is None]
    for p in running:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


@_common.main_wrapper
def main(argv):
    command = argv[1:]
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise _common.UserError("Give the worker command after --, e.g. -- python tools/train.py --config ...")
    if FLAGS.workers < 1:
        raise _common.UserError("--workers must be at least 1.")
    lock = threading.Lock()
    processes, threads = [], []
    for index, tf_config in enumerate(tf_configs(FLAGS.workers, FLAGS.host)):
        env = dict(os.environ, TF_CONFIG=tf_config, PYTHONUNBUFFERED="1")
        p = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=os.setsid)
        processes.append(p)
        with lock:
            print(f"[launcher] worker {index}: pid {p.pid}", flush=True)
        t = threading.Thread(target=_stream, args=(index, p.stdout, lock), daemon=True)
        t.start()
        threads.append(t)

    status = 0
    remaining = set(range(len(processes)))
    try:
        while remaining:
            for i in list(remaining):
                code = processes[i].poll()
                if code is None:
                    continue
                remaining.discard(i)
                if code != 0 and status == 0:
                    status = code
                    with lock:
                        print(f"[launcher] worker {i} exited with status {code}; stopping the others.", flush=True)
                    stop([processes[j] for j in remaining], FLAGS.grace_seconds)
            if remaining:
                threading.Event().wait(0.2)
    except KeyboardInterrupt:
        stop(processes, FLAGS.grace_seconds)
        status = 130
    for t in threads:
        t.join(timeout=5)
    sys.exit(status)


if __name__ == "__main__":
    app.run(main)

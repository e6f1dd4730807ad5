"""Shared by the command-line tools: quiet TensorFlow start-up, config flags, and user-facing errors."""

import errno
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout, uninstalled

# TensorFlow's native start-up lines ("I0000 ... port.cc:153] oneDNN custom operations are on", "... cuInit ...")
# are written before its logging reads TF_CPP_MIN_LOG_LEVEL (abseil's pre-InitializeLog output), so the level does
# not hide them. While TensorFlow is imported and finds its devices, the process's stderr passes through a filter
# that drops native log lines of the severities the level hides (1: INFO, 2: + WARNING, 3: + ERROR); then stderr
# is restored, so nothing later (a crash, a Python error) is ever filtered.
_NATIVE_LINE = r"^(WARNING: All log messages before absl::InitializeLog\(\)|[{}]\d{{4}} \d+:\d+:\d+\.\d+ +\d+ \S+:\d+\])"


def _import_tensorflow_quietly():
    import re
    import threading

    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    if "tensorflow" in sys.modules or not level.isdigit() or int(level) < 1:
        return
    pattern = re.compile(_NATIVE_LINE.format("IWE"[: int(level)]).encode())
    # The CUDA build's probe for a GPU logs an ERROR on every machine without an NVIDIA driver; it means "no GPU".
    no_gpu = re.compile(rb"^E\d{4} .*failed call to cuInit") if not os.path.exists("/proc/driver/nvidia") else None
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def copy():
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not pattern.match(line) and not (no_gpu and no_gpu.match(line)):
                    os.write(original, line)

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery (the CUDA probe) logs here
    finally:
        os.dup2(original, 2)  # the pipe's last writer closes: the thread copies what is left and ends
        thread.join(timeout=10)
        os.close(original)


_import_tensorflow_quietly()

from absl import flags  # noqa: E402

from relation_networks.errors import UserError  # noqa: E402
from relation_networks.io import atomic_write_text  # noqa: E402


def define_config_flags():
    # Declared for the tool being run, so that its `--help` lists them (absl lists the main module's flags).
    main = {"module_name": sys.argv[0]}
    flags.DEFINE_string("config", None, "YAML experiment config, e.g. configs/sort_of_clevr.yaml.", **main)
    flags.DEFINE_multi_string("set", [], "Override a config value: --set train.epochs=3 (repeatable).", **main)
    flags.DEFINE_string("run_dir", None, "Run directory (default: the config's run_dir, else runs/<config name>).",
                        **main)


def write_output(path, text):
    """Write a tool's output file (a report, a response) atomically: a complete file or none, and an unwritable
    place is one clear error."""
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise UserError(f"Cannot write {path}: {e.strerror or e}. Choose a writable path.") from None


def write_json(path, obj):
    """`write_output` of `obj` as indented JSON."""
    import json

    write_output(path, json.dumps(obj, indent=2) + "\n")


def check_output_file(path, flag):
    """Fail at once, before any work, when the file `path` of `flag` could not be written."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a directory; give a file name.")
    check_writable_directory(directory, flag)


def _check_common_flags():
    """Flags several tools share, checked before any work: output files writable, counts positive."""
    values = flags.FLAGS.flag_values_dict()
    if values.get("json"):
        check_output_file(values["json"], "--json")
    for name in ("batch_size", "parity_examples", "num", "images", "scenes"):
        if name in values and values[name] is not None and values[name] < 1:
            raise UserError(f"--{name} must be a positive number, got {values[name]}.")


def check_writable_directory(path, flag):
    """Fail at once, before any work, when `flag`'s directory `path` cannot be created or written."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create it ({e.strerror}). Choose a writable path.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: not writable. Choose a writable path.")


# Operating-system faults while writing (a full disk, a read-only or foreign directory): one message, exit 2.
_WRITE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}


def _system_fault(e):
    """The user's message for an operating-system fault `e` (OSError or a TensorFlow file error), or None."""
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
        where = f" ({e.filename})" if e.filename else ""
        return f"{_WRITE_ERRNOS[e.errno]}{where}"
    name, text = type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else ""
    if name == "PermissionDeniedError" or (name in ("ResourceExhaustedError", "UnknownError", "InternalError")
                                           and ("No space left" in text or "Read-only file system" in text)):
        return text
    return None


_REPEAT_SECONDS = 5.0


def _interrupt(signum, frame):
    # Raised again every few seconds (SIGALRM) until `main_wrapper` has caught it: a KeyboardInterrupt that lands
    # while the main thread runs a finaliser or a callback from TensorFlow's runtime is swallowed ("Exception
    # ignored in ..."), and a SIGTERM'd training run went on training (seen once in the test suite).
    if hasattr(signal, "setitimer"):  # POSIX
        signal.signal(signal.SIGALRM, _interrupt)
        signal.setitimer(signal.ITIMER_REAL, _REPEAT_SECONDS)
    raise KeyboardInterrupt


def _quiet_python_logs():
    """TensorFlow's Python INFO lines ("Assets written to ...", "Sharding callback duration ...") follow
    TF_CPP_MIN_LOG_LEVEL too: shown at 0 only."""
    import logging

    from absl import logging as absl_logging

    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") not in ("", "0"):
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("tensorflow").setLevel(logging.WARNING)


def main_wrapper(main):
    """Run `main(argv)`; a `UserError` becomes one line on stderr and exit status 2, never a traceback. SIGTERM
    (`kill`, a job scheduler's stop) is handled like Ctrl-C, so temporary files are removed on the way out."""

    def wrapped(argv):
        signal.signal(signal.SIGTERM, _interrupt)
        _quiet_python_logs()
        try:
            _check_common_flags()
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except Exception as e:  # noqa: BLE001  only operating-system faults and damaged data become a message
            if type(e).__name__ == "DataLossError":  # TensorFlow read a damaged record (TFRecord, checkpoint)
                first = str(e).strip().splitlines()[0] if str(e).strip() else "corrupted record"
                print(f"error: a data file is damaged ({first}). Delete the damaged file or its data directory and "
                      "run the same command again: generated data is made again, identically, from its seeds; "
                      "preprocessed data is rebuilt from its sources.", file=sys.stderr)
                sys.exit(2)
            fault = _system_fault(e)
            if fault is None:
                raise
            print(f"error: could not write: {fault}. Free space or choose a writable directory, then re-run the "
                  "same command (a training run resumes from its last checkpoint; files already written are "
                  "complete: every output is written to a temporary name and renamed).", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            if hasattr(signal, "setitimer"):
                signal.setitimer(signal.ITIMER_REAL, 0)  # caught: no repeat
            print("interrupted; re-run the same command to resume from the last checkpoint.", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            # Not sys.exit: stopped in the middle of an epoch, the interpreter's shutdown could block for good in
            # TensorFlow's runtime (input-pipeline threads), leaving the process alive after this message. All
            # cleanup (temporary files, worker pools) already ran while the exception unwound to here.
            os._exit(130)

    return wrapped

"""Shared by the command-line tools: quiet TensorFlow start-up, config flags, and user-facing errors."""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout, uninstalled

from absl import flags  # noqa: E402

from relation_networks.errors import UserError  # noqa: E402


def define_config_flags():
    # Declared for the tool being run, so that its `--help` lists them (absl lists the main module's flags).
    main = {"module_name": sys.argv[0]}
    flags.DEFINE_string("config", None, "YAML experiment config, e.g. configs/sort_of_clevr.yaml.", **main)
    flags.DEFINE_multi_string("set", [], "Override a config value: --set train.epochs=3 (repeatable).", **main)
    flags.DEFINE_string("run_dir", None, "Run directory (default: the config's run_dir, else runs/<config name>).",
                        **main)


_REPEAT_SECONDS = 5.0


def _interrupt(signum, frame):
    # Raised again every few seconds (SIGALRM) until `main_wrapper` has caught it: a KeyboardInterrupt that lands
    # while the main thread runs a finaliser or a callback from TensorFlow's runtime is swallowed ("Exception
    # ignored in ..."), and a SIGTERM'd training run went on training (seen once in the test suite).
    if hasattr(signal, "setitimer"):  # POSIX
        signal.signal(signal.SIGALRM, _interrupt)
        signal.setitimer(signal.ITIMER_REAL, _REPEAT_SECONDS)
    raise KeyboardInterrupt


def main_wrapper(main):
    """Run `main(argv)`; a `UserError` becomes one line on stderr and exit status 2, never a traceback. SIGTERM
    (`kill`, a job scheduler's stop) is handled like Ctrl-C, so temporary files are removed on the way out."""

    def wrapped(argv):
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
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

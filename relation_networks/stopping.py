"""When a training stops early: its time budget (`train.time_limit_minutes`) and stop requests (SIGTERM / SIGINT)."""


class TimeBudget:
    """`train.time_limit_minutes`: the training time used so far (a checkpointed variable, so a resumed run
    continues it) against the limit. `vote(flag)` combines the workers' answers, so all of them stop together."""

    def __init__(self, seconds, minutes, vote=None):
        self.seconds = seconds
        self.limit = minutes * 60 if minutes else None
        self.vote = vote

    def add(self, seconds):
        self.seconds.assign_add(seconds)

    @property
    def used(self):
        return float(self.seconds.numpy())

    def spent(self):
        if self.limit is None:
            return False
        over = self.used >= self.limit
        return bool(self.vote(over)) if self.vote else over


class StopRequest:
    """SIGTERM or SIGINT during training: note it, so the loop finishes the step, saves a checkpoint and stops
    (a pre-empted job loses no step). A second signal interrupts at once. Signal handlers are only installed in
    the main thread; elsewhere `requested` stays False."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self):
        self.signal = None
        self._previous = {}

    @property
    def requested(self):
        return self.signal is not None

    def _handle(self, signum, frame):
        if self.signal is not None:
            self._restore()
            raise KeyboardInterrupt
        import signal

        self.signal = signal.Signals(signum).name

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _restore(self):
        import signal

        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()
        return False

"""Failures a user can act on: each has a type and a message that says what to change."""


class TrainingError(Exception):
    """A job failure whose message is meant for the user (never a stack trace)."""

    def __init__(self, type_: str, message: str):
        super().__init__(message)
        self.type = type_
        self.message = message


class Cancelled(Exception):
    """Training stopped because the job was cancelled."""


class Drained(Exception):
    """Training stopped for a graceful worker shutdown, after saving a checkpoint at `step`."""

    def __init__(self, step: int):
        super().__init__(f"stopped for shutdown at step {step}")
        self.step = step

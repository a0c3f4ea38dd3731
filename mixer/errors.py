"""One exception type for every failure a user can cause.

The CLI prints a `MixerError` as a single line and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class MixerError(Exception):
    """Bad input, bad config or a damaged store: the message is shown to the user as is."""


class InputError(MixerError):
    """A record or file of the corpus cannot be read; the message starts with `file:line:`."""


class StoreError(MixerError):
    """A token store is missing, damaged or inconsistent with its manifest."""


class SpecError(MixerError):
    """A mix spec is invalid; the message names the key and the bad value."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after cleaning up: the message says what was kept and how to resume. Still a
    KeyboardInterrupt, so code that lets Ctrl-C through lets this through too."""


class JobError(MixerError):
    """A `TokenizeJob` field is invalid; `field` names it and the message starts with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

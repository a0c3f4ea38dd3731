"""One exception type for every failure a user can cause.

The CLI prints a `MixerError` as a single line and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class MixerError(Exception):
    """Bad input, bad config or a damaged store: the message is shown to the user as is.

    `params` lists the call's parameters (keyword arguments, also the TOML keys) that the
    message names, each written `name=` (`format='xml' is not one of ...`, `pass format=`,
    `all_splits=True`): a front end that spells them otherwise rewrites exactly those, as the
    CLI does with its flags (`mixer.cli.cli_message`). A library message names no CLI flag; a
    log line that names parameters carries them the same way (`extra={"params": (...)}`).

    `look` is set where the message ends by pointing at the records to look at (`look_hint`):
    the input and the field whose values tell what went wrong, so a front end can say how to
    look in its own terms (the CLI: a `mixer peek` command line).
    """

    def __init__(
        self,
        message: str = "",
        *,
        params: tuple[str, ...] = (),
        look: tuple[str, str | None] | None = None,
    ) -> None:
        super().__init__(message + ("" if look is None else look_hint(*look)))
        self.params = tuple(params)
        self.look = look


def look_hint(input: str, field: str | None) -> str:
    """The end of a message that points at `input`'s records (and `field`'s values) through
    `mixer.ingest.peek.peek`; `MixerError.look` lets a front end replace exactly this text."""
    if field is None:
        return f"; look at the records with peek([{input!r}])"
    return f"; look at its values with peek([{input!r}], field={field!r})"


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
    """A `TokenizeJob` field is invalid; `field` names it and the message starts with it
    (`field: problem`); `params` are the fields the message names, `field` first."""

    def __init__(self, field: str, problem: str, *, params: tuple[str, ...] = ()) -> None:
        super().__init__(f"{field}: {problem}", params=(field, *params))
        self.field = field
        self.problem = problem

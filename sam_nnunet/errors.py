"""Errors a user can act on."""


class UserFacingExit(SystemExit):
    """Ends a command with one clear message and exit status 1, instead of a traceback.

    Raised at the command boundary (trainer start-up, CLI) from errors whose message already names the fix.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"\nsam-nnunet: {message}\n")
        self.message = message

"""One base class for every error caused by the user's input; the CLI turns these into exit code 2."""


class CircuitbookError(Exception):
    """Bad input (a path, a model, a corpus, a book, a spec): the message names the problem."""

class UserError(Exception):
    """Bad input the user can fix: the CLIs print the message on one line and exit non-zero."""

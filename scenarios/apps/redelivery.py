"""The damage a redelivered call can do, turned into failed calls.

Shared by the apps whose calls may run twice (a killed pool process, a broker
restart, a visibility timeout): each raises these from its own checks, so one
signature names the same damage in every scenario.
"""


class DuplicateWrite(Exception):
    """A call found its own row committed more than once."""


class RedeliveryLoop(Exception):
    """A call's body has already run as often as the app allows: its message keeps
    coming back."""

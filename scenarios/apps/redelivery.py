"""The damage a redelivered call can do, turned into failed calls.

Shared by the apps whose calls may run twice (a killed pool process, a broker
restart, a visibility timeout): each writes its call's row with the same statements
into the same ``writes`` table (:data:`scenarios.redelivery_rules.WRITES_TABLE`) and
raises these from its own checks, so one signature names the same damage in every
scenario.
"""

# A plain INSERT writes again when the call runs again; the keyed one does nothing then.
PLAIN_INSERT = "insert into writes (token, pid) values (:t, pg_backend_pid())"
KEYED_INSERT = ("insert into writes (token, idem_key, pid) values (:t, :t, pg_backend_pid()) "
                "on conflict (idem_key) do nothing")
ROWS_OF_CALL = "select count(*) from writes where token = :t"


class DuplicateWrite(Exception):
    """A call found its own row committed more than once."""


class RedeliveryLoop(Exception):
    """A call's body has already run as often as the app allows: its message keeps
    coming back."""

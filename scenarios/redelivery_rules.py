"""The signatures of a redelivered call's damage (see scenarios/apps/redelivery.py)."""

from harness.signatures import Signature

# The table scenarios/apps/redelivery.py writes to (setup_sql of each scenario).
WRITES_TABLE = ("create table writes (id bigserial primary key, token text not null, "
                "idem_key text unique, pid integer not null)")

DUPLICATE_WRITE = Signature(
    "duplicate-write", "scenarios.apps.redelivery.DuplicateWrite",
    description="A call found its row committed twice: its message was delivered again "
                "after its first run had written.")
REDELIVERY_LOOP = Signature(
    "redelivery-loop", "scenarios.apps.redelivery.RedeliveryLoop",
    description="A call's body ran again and again: its message kept coming back.")

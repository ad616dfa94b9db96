"""The signatures of a redelivered call's damage (see scenarios/apps/redelivery.py)."""

from harness.signatures import Signature

DUPLICATE_WRITE = Signature(
    "duplicate-write", "scenarios.apps.redelivery.DuplicateWrite",
    description="A call found its row committed twice: its message was delivered again "
                "after its first run had written.")
REDELIVERY_LOOP = Signature(
    "redelivery-loop", "scenarios.apps.redelivery.RedeliveryLoop",
    description="A call's body ran again and again: its message kept coming back.")

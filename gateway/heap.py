"""Python's cyclic collector kept off the alarm's path.

Now and then the collector makes a full pass over every object it tracks. In the main
process under 10k msg/s such a pass took 76 ms (112 at most), and the event loop, with
any alarm's commit and notification on it, waited for each one. Most of what the passes
walked is what start-up built and keeps for the whole run: modules, device profiles, the
registry, the rules. Set aside once start-up is done, it is no longer walked, and the
passes took 1.4 ms (5 at most) in the same run (bench/notify_latency.py at 10,000 msg/s).

For the programs' entry points only: objects set aside are never collected as cycles,
so something that makes many gateways in one process (a test suite) must not call it.
"""

from __future__ import annotations

import gc

# Objects allocated, less those freed, before the collector walks the young ones (Python
# sets 700). A message makes some thirty (dicts, tuples, records) that live until its
# batch is committed, so at 700 the collector walked the young objects every twenty-odd
# messages and carried the batch in hand through the older generation again and again.
# At 10,000 the telemetry's side took 2-4% less CPU a message and judging 5-12% less
# (bench.handoff, run alternately), and alarms waited no longer (bench.notify_latency);
# a pass over 10,000 young objects takes half a millisecond, and one over the older
# generation, ten times rarer, about five. It costs memory: cyclic garbage waits longer
# for its pass, and the main process peaked at 118 MiB instead of 104 (bench.pipeline).
YOUNG_OBJECTS_PER_PASS = 10_000


def set_aside_startup_objects() -> None:
    """Collect what start-up left as garbage, then exempt the rest from full passes, and
    have the collector walk the young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS_PER_PASS)

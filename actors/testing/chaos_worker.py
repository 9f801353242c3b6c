"""`dramatiq actors.testing.chaos_worker --queues conversation`: a worker that crashes on purpose.

The production worker (`actors.worker`) with one difference: its runtime carries a `RandomExit` crash hook
whose rate comes from `CHAOS_CRASH_RATE` (deliberately not a `DOCENT_` setting, so no production
configuration can turn it on). `docent chaos` starts its workers with this module.
"""

from __future__ import annotations

import os

from actors import runtime
from actors.testing.crash import CRASH_RATE_ENV, RandomExit
from actors.worker import LOADED, broker
from store.settings import get_settings

crash = RandomExit(float(os.environ.get(CRASH_RATE_ENV, "0")))
runtime.configure(runtime.Runtime.from_settings(get_settings(), crash=crash))

__all__ = ["LOADED", "broker", "crash"]

"""Imported by the fork server only, last of its preloaded modules
(longrun_worker.isolation), never elsewhere:

* If the worker's main module was run by name (`python -m pkg.mod`), the fork
  server imported it by that name (it is preloaded); it becomes the server's
  `__main__` too, as multiprocessing does for a main run from a path, so a
  task process does not import it again (multiprocessing re-imports the
  main module in each child otherwise).
* It freezes the garbage collector's view of everything imported so far, so
  that a task process forked from the server does not copy those pages just
  to collect objects it will never free (`gc.freeze`, made for this).
"""

from __future__ import annotations

import gc
import os
import sys

from longrun_worker.isolation import MAIN_VAR

_main = sys.modules.get(os.environ.get(MAIN_VAR, ""))
if _main is not None:
    sys.modules["__main__"] = _main

gc.collect()
gc.freeze()

"""Running the farm's processes on this machine: `modelfarm up` (`farm.py`, one per data
directory: `farm_lock.py`), its supervisor (`procs.py`), embedded PostgreSQL and Redis
(`embedded.py`), Flower's options (`flower.py`) and migrating under a lock (`migrate.py`)."""

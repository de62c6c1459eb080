"""Developer tooling: the local stack, the metadata database, settings and lock management.

Nothing here is imported by DAGs or by Airflow components; shared runtime code lives in plugins/batchkit.
Every Airflow component has plugins/ on sys.path; so does every tool, from this one place.
"""

import sys
from pathlib import Path

_PLUGINS = str(Path(__file__).resolve().parent.parent / "plugins")
if _PLUGINS not in sys.path:
    sys.path.insert(0, _PLUGINS)

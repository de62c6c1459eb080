"""Developer tooling: the local stack, the metadata database, settings and lock management.

Nothing here is imported by DAGs or by Airflow components; shared runtime code lives in plugins/batchkit.
Every Airflow component has plugins/ on sys.path; so does every tool, from this one place.
`REPO_ROOT` is defined here and only here: tools, bench/ and tests/ import it rather than climbing
from their own `__file__` (the runtime library, plugins/batchkit, never uses it: see batchkit.sql_files).
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

_PLUGINS = str(REPO_ROOT / "plugins")
if _PLUGINS not in sys.path:
    sys.path.insert(0, _PLUGINS)

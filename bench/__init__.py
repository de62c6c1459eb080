"""Benchmarks: each script prints its figures and writes a JSON record to bench/results/.

Run them as `python -m bench.<name>` from the repo root. Importing this package imports `tools`, which
puts plugins/ on sys.path and defines REPO_ROOT: no benchmark sets up paths of its own (only the
BENCH_GENERATED_ROOT probes of parse_many and parse_time, which must shadow this repo's include/).
"""

import tools  # noqa: F401  (plugins/ on sys.path, before any benchmark imports batchkit)

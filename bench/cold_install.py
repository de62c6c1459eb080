"""Cold install: a new venv, the locked set installed with no pip cache (what `make run` does first).

    python3 -m bench.cold_install

Runs with the system Python, before any venv exists.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import venv
from pathlib import Path

from tools import REPO_ROOT


def _dir_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cold-install-") as tmp:
        t0 = time.monotonic()
        venv.create(tmp, with_pip=True)
        t_venv = time.monotonic()
        subprocess.run(
            [
                f"{tmp}/bin/python",
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-cache-dir",
                "-r",
                str(REPO_ROOT / "requirements-dev.txt"),
                "-c",
                str(REPO_ROOT / "constraints.txt"),
            ],
            check=True,
        )
        t_done = time.monotonic()
        count = len(
            subprocess.run(
                [f"{tmp}/bin/python", "-m", "pip", "freeze"], capture_output=True, text=True, check=True
            ).stdout.splitlines()
        )
        size = _dir_mib(Path(tmp))
    figures = {
        "command": "python3 -m bench.cold_install",
        "venv_create_s": round(t_venv - t0, 1),
        "pip_install_no_cache_s": round(t_done - t_venv, 1),
        "total_s": round(t_done - t0, 1),
        "packages": count,
        "venv_size_mib": round(size),
    }
    from bench.common import write_result

    write_result("cold_install", figures)


if __name__ == "__main__":
    main()

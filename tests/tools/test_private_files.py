"""Secrets of the local stack are never readable by other users, not even while being written."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tools import stack as stack_module
from tools.private_files import ensure_private_dir, write_secret_file
from tools.stack import AirflowStack


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_private_dir_is_0700_even_when_it_existed_wider(tmp_path: Path) -> None:
    fresh = ensure_private_dir(tmp_path / "fresh" / ".local")
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    ensure_private_dir(existing)
    assert (mode(fresh), mode(existing)) == (0o700, 0o700)


def test_a_secret_file_is_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "generated.env"
    old_umask = os.umask(0)
    try:
        write_secret_file(path, "A=1\n")
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert path.read_text() == "A=1\n"


def test_a_secret_file_is_replaced_never_opened_wider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file the writer creates is 0600 from its creation (os.open with the mode), then renamed."""
    path = tmp_path / "secret"
    path.write_text("old\n")
    path.chmod(0o644)  # as an older version left it
    created_modes = []
    real_open = os.open

    def recording_open(file, flags, mode=0o777, *args, **kwargs):
        if flags & os.O_CREAT:
            created_modes.append(mode)
            assert flags & os.O_EXCL, "a secret file must be created fresh, not reused"
        return real_open(file, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    write_secret_file(path, "new\n")
    assert created_modes == [0o600]
    assert (path.read_text(), mode(path)) == ("new\n", 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"], "temporary file left behind"


def test_generated_secrets_are_0600_and_role_passwords_stay_out_of_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated = tmp_path / ".local" / "generated.env"
    generated.parent.mkdir()
    monkeypatch.setattr(stack_module, "GENERATED_ENV", generated)
    monkeypatch.setattr(stack_module, "REPO_ROOT", tmp_path)  # no .env there
    for key in stack_module.GENERATED_SECRETS:
        monkeypatch.setenv(key, "recorded, so that the teardown removes what the load exports")
        monkeypatch.delenv(key)

    role_passwords = stack_module.load_env_files()

    assert mode(generated) == 0o600
    written = dict(line.split("=", 1) for line in generated.read_text().splitlines())
    assert set(written) == set(stack_module.GENERATED_SECRETS)
    assert role_passwords == {key: written[key] for key in stack_module.PRIVATE_SECRETS}
    assert os.environ["DEMO_API_TOKEN"] == written["DEMO_API_TOKEN"]
    for key in stack_module.PRIVATE_SECRETS:
        assert key not in os.environ, f"{key} would reach every task's environment"
    # Generated once: a second load keeps the same values (and the file's mode).
    monkeypatch.delenv("DEMO_API_TOKEN")
    generated.chmod(0o644)
    assert stack_module.load_env_files() == role_passwords
    assert mode(generated) == 0o600


def test_the_admin_password_file_is_written_0600_before_the_api_server_starts(tmp_path: Path) -> None:
    stack = AirflowStack(airflow_home=tmp_path / "home", sql_alchemy_conn="postgresql://unused@/none")
    assert stack.ensure_admin_password() is True
    assert mode(stack.admin_password_file) == 0o600
    password = stack.admin_password()
    assert len(password) >= 16
    # An existing file (maybe 0644, from an older version) keeps its password and loses the wide mode.
    stack.admin_password_file.chmod(0o644)
    assert stack.ensure_admin_password() is False
    assert (stack.admin_password(), mode(stack.admin_password_file)) == (password, 0o600)
    assert json.loads(stack.admin_password_file.read_text()) == {"admin": password}

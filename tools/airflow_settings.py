"""Apply an `airflow_settings.yaml` (Astro CLI format) to the Airflow metadata database.

    python -m tools.airflow_settings check FILE   # validate only: no database access
    python -m tools.airflow_settings apply FILE   # validate, then upsert everything in one transaction

The file holds connections, pools and variables under a top-level `airflow:` key:

    airflow:
      connections:  [{conn_id, conn_type, conn_host, conn_schema, conn_login, conn_password, conn_port,
                      conn_extra (a mapping)}]
      pools:        [{pool_name, pool_slot, pool_description}]
      variables:    [{variable_name, variable_value}]

Any string value may reference the environment as ${VAR} or ${VAR:-default} (as in a shell, the default
also replaces an empty value); an unset variable without a default is an error. Substituted values are
text: ports and pool slots given as digits become integers, conn_extra values stay strings.
Secrets never sit in the file: conn_password, secret-looking conn_extra keys (…password, …secret, …token,
…api_key, …credentials, authorization) and secret-looking variables must be a bare ${VAR} reference.

`apply` upserts by id and reports each entry as created, updated or unchanged, so applying the same file
twice changes nothing. Connections, pools and variables the file does not mention are left alone: delete
those in the UI or with `airflow connections|pools|variables delete`. Every entry is validated before the
database is touched, and all writes share one transaction: an invalid file or a failed write leaves the
database exactly as it was.

Needs only Airflow, pydantic and PyYAML, so the docker-compose init container can run it too.
Exit codes: 0 ok, 1 database error, 2 invalid input (one line per problem on stderr).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

IDENTIFIER_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
# A secret may only be a reference whose default, if any, is empty: a default would be an inline secret.
SECRET_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-)?\}")
SECRET_NAME = re.compile(r"(password|passwd|secret|token|api[_-]?key|credentials?|authorization)$", re.I)
# Connection types Airflow core registers without a provider (ProvidersManager._init_airflow_core_hooks).
CORE_CONNECTION_TYPES = frozenset({"generic", "email"})
RESULTS = ("created", "updated", "unchanged")


class SettingsError(Exception):
    """The settings file is unusable; `problems` holds one self-contained message per defect."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {problem}" for problem in problems))


@functools.cache
def installed_connection_types() -> frozenset[str]:
    """Connection types of the installed providers, read from their metadata (no provider imports)."""
    from importlib.metadata import entry_points

    types = set(CORE_CONNECTION_TYPES)
    for provider in entry_points(group="apache_airflow_provider"):
        info = provider.load()()
        types.update(entry["connection-type"] for entry in info.get("connection-types", []))
    return frozenset(types)


def _blank_as_none(value: Any) -> Any:
    return None if value == "" else value


def _digits_as_int(value: Any) -> Any:
    """Substituted values are text: "5432" counts as an integer, "5.5" or "yes" does not."""
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return _blank_as_none(value)


def _number_as_text(value: Any) -> Any:
    # YAML reads `0.05` as a float; Airflow stores variable values as text. Booleans stay an error,
    # since True/true/yes would each come back as a different string.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
OptionalText = Annotated[str | None, BeforeValidator(_blank_as_none)]


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ConnectionEntry(Entry):
    conn_id: Identifier
    conn_type: str
    conn_host: OptionalText = None
    conn_schema: OptionalText = None
    conn_login: OptionalText = None
    conn_password: OptionalText = None
    conn_port: Annotated[int | None, BeforeValidator(_digits_as_int), Field(ge=1, le=65535)] = None
    conn_extra: Annotated[dict[str, Any], BeforeValidator(lambda v: {} if v is None else v)] = {}

    @field_validator("conn_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        known = installed_connection_types()
        if value not in known:
            raise ValueError(f"unknown connection type {value!r}; installed: {', '.join(sorted(known))}")
        return value

    def row_values(self) -> dict[str, Any]:
        return {
            "conn_type": self.conn_type,
            "host": self.conn_host,
            "schema": self.conn_schema,
            "login": self.conn_login,
            "password": self.conn_password,
            "port": self.conn_port,
            # Canonical JSON, so an unchanged mapping compares equal to what the last apply stored.
            "extra": json.dumps(self.conn_extra, sort_keys=True) if self.conn_extra else None,
        }


class PoolEntry(Entry):
    pool_name: Identifier
    pool_slot: Annotated[int, BeforeValidator(_digits_as_int), Field(ge=1)]
    pool_description: OptionalText = None

    def row_values(self) -> dict[str, Any]:
        # The Astro format has no field for include_deferred: pools declared here never count deferred tasks.
        return {"slots": self.pool_slot, "description": self.pool_description, "include_deferred": False}


class VariableEntry(Entry):
    variable_name: Identifier
    variable_value: Annotated[str, BeforeValidator(_number_as_text)]

    def row_values(self) -> dict[str, Any]:
        return {"val": self.variable_value}


@dataclass(frozen=True)
class Section:
    """One list under `airflow:` and the Airflow ORM model its entries become."""

    name: str
    entry_model: type[ConnectionEntry | PoolEntry | VariableEntry]
    id_field: str
    orm_model: str
    orm_id_column: str

    @property
    def noun(self) -> str:
        return self.name.removesuffix("s")


SECTIONS = (
    Section("connections", ConnectionEntry, "conn_id", "Connection", "conn_id"),
    Section("pools", PoolEntry, "pool_name", "Pool", "pool"),
    Section("variables", VariableEntry, "variable_name", "Variable", "key"),
)


@dataclass(frozen=True)
class Settings:
    entries: dict[str, list[Any]]  # section name -> validated entries, in file order

    def counts(self) -> str:
        return ", ".join(f"{len(self.entries[s.name])} {s.name}" for s in SECTIONS)


@dataclass(frozen=True)
class Outcome:
    section: Section
    entry_id: str
    result: str  # one of RESULTS


def summarize(outcomes: list[Outcome]) -> str:
    """`connections 1 created, 0 updated, 2 unchanged; pools ...; variables ...`"""
    counts = Counter((o.section.name, o.result) for o in outcomes)
    return "; ".join(
        f"{section.name} " + ", ".join(f"{counts[section.name, result]} {result}" for result in RESULTS)
        for section in SECTIONS
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a repeated field is a typo worth reporting."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_settings(path: Path, env: Mapping[str, str]) -> Settings:
    """Read, substitute and validate the whole file; raise SettingsError listing every problem found."""
    try:
        with path.open() as stream:
            document = yaml.load(stream, Loader=_UniqueKeyLoader)
    except OSError as exc:
        raise SettingsError(path, [f"cannot read the file: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise SettingsError(path, [f"invalid YAML: {' '.join(str(exc).split())}"]) from exc

    problems: list[str] = []
    sections = _sections_of(document, problems)
    entries: dict[str, list[Any]] = {}
    for section in SECTIONS:
        entries[section.name] = []
        first_index_of: dict[str, int] = {}
        for index, raw in enumerate(sections.get(section.name) or []):
            label = _entry_label(section, index, raw)
            if not isinstance(raw, Mapping):
                problems.append(f"{label}: must be a mapping of fields, got {type(raw).__name__}")
                continue
            entry = _validate_entry(section, raw, env, label, problems)
            if entry is None:
                continue
            entry_id = getattr(entry, section.id_field)
            if entry_id in first_index_of:
                problems.append(
                    f"{label}, field {section.id_field}: duplicate of {section.name}[{first_index_of[entry_id]}]"
                )
                continue
            first_index_of[entry_id] = index
            entries[section.name].append(entry)
    if problems:
        raise SettingsError(path, problems)
    return Settings(entries)


def _sections_of(document: Any, problems: list[str]) -> dict[str, Any]:
    if not isinstance(document, Mapping) or "airflow" not in document:
        problems.append("the file must be a mapping with a top-level `airflow:` key")
        return {}
    problems.extend(f"unknown top-level key {key!r} (only `airflow`)" for key in document if key != "airflow")
    sections = document["airflow"] or {}
    if not isinstance(sections, Mapping):
        problems.append("`airflow:` must be a mapping of connections, pools and variables")
        return {}
    names = [s.name for s in SECTIONS]
    problems.extend(
        f"airflow.{key}: unknown section (allowed: {', '.join(names)})"
        for key in sections
        if key not in names
    )
    for name in names:
        if sections.get(name) is not None and not isinstance(sections[name], list):
            problems.append(f"airflow.{name}: must be a list of entries")
    return {name: value for name, value in sections.items() if isinstance(value, list)}


def _entry_label(section: Section, index: int, raw: Any) -> str:
    entry_id = raw.get(section.id_field) if isinstance(raw, Mapping) else None
    return f"{section.name}[{index}]" + (f" ({section.id_field}={entry_id})" if entry_id is not None else "")


def _validate_entry(
    section: Section, raw: Mapping[str, Any], env: Mapping[str, str], label: str, problems: list[str]
) -> Any:
    """The validated entry, or None after appending its problems (secrets, references, fields)."""
    found = len(problems)
    problems.extend(
        f"{label}, field {field_path}: a secret must be a bare ${{VAR}} reference to the environment, "
        "not a value written in the file"
        for field_path in _inline_secrets(section, raw)
    )
    substituted = {key: _substitute(value, str(key), env, label, problems) for key, value in raw.items()}
    if len(problems) > found:
        return None
    try:
        return section.entry_model.model_validate(substituted)
    except ValidationError as exc:
        allowed = ", ".join(section.entry_model.model_fields)
        for error in exc.errors():
            field_path = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                message = f"unknown field (allowed: {allowed})"
            elif error["type"] == "missing":
                message = "required field is missing"
            else:
                message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{label}, field {field_path}: {message}")
        return None


def _inline_secrets(section: Section, raw: Mapping[str, Any]) -> Iterator[str]:
    """Paths of the entry's secret fields whose value is written in the file instead of referenced."""
    candidates: list[tuple[str, Any]] = []
    if section.name == "connections":
        candidates.append(("conn_password", raw.get("conn_password")))
        candidates.extend(_secret_named_values(raw.get("conn_extra"), "conn_extra"))
    elif section.name == "variables" and SECRET_NAME.search(str(raw.get("variable_name", ""))):
        candidates.append(("variable_value", raw.get("variable_value")))
    for field_path, value in candidates:
        if value not in (None, "") and not (isinstance(value, str) and SECRET_REFERENCE.fullmatch(value)):
            yield field_path


def _secret_named_values(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            item_path = f"{path}.{key}"
            if SECRET_NAME.search(str(key)) and not isinstance(item, Mapping):
                yield item_path, item
            else:
                yield from _secret_named_values(item, item_path)


def _substitute(value: Any, path: str, env: Mapping[str, str], label: str, problems: list[str]) -> Any:
    """Replace ${VAR} / ${VAR:-default} in every string of `value`, recording unresolvable references."""
    if isinstance(value, Mapping):
        return {key: _substitute(item, f"{path}.{key}", env, label, problems) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, f"{path}[{i}]", env, label, problems) for i, item in enumerate(value)]
    if not isinstance(value, str):
        return value
    if "${" in ENV_REFERENCE.sub("", value):
        problems.append(f"{label}, field {path}: malformed reference; write ${{VAR}} or ${{VAR:-default}}")
        return value

    def resolve(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if default is not None:
            return env.get(name) or default
        if name not in env:
            problems.append(
                f"{label}, field {path}: environment variable {name} is not set (and has no default)"
            )
            return ""
        return env[name]

    return ENV_REFERENCE.sub(resolve, value)


def apply_settings(settings: Settings) -> list[Outcome]:
    """Upsert every entry in one metadata-DB transaction: all of them are written, or none."""
    import airflow.models
    from airflow.utils.session import create_session

    outcomes = []
    # create_session commits once at the end and rolls everything back if any write fails.
    with create_session() as session:
        for section in SECTIONS:
            model = getattr(airflow.models, section.orm_model)
            for entry in settings.entries[section.name]:
                entry_id = getattr(entry, section.id_field)
                result = _upsert(session, model, section.orm_id_column, entry_id, entry.row_values())
                outcomes.append(Outcome(section, entry_id, result))
    return outcomes


def _upsert(session: Session, model: type, id_column: str, entry_id: str, values: Mapping[str, Any]) -> str:
    from sqlalchemy import select

    row = session.scalar(select(model).where(getattr(model, id_column) == entry_id))
    if row is None:
        session.add(model(**{id_column: entry_id}, **values))
        return "created"
    # Attribute reads decrypt (password, extra, val), so encrypted rows compare by their plain values.
    if all(getattr(row, name) == value for name, value in values.items()):
        return "unchanged"
    for name, value in values.items():
        setattr(row, name, value)
    return "updated"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.airflow_settings", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "command", choices=["check", "apply"], help="check: validate only; apply: write to the DB"
    )
    parser.add_argument("file", type=Path, help="an airflow_settings.yaml")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.file, os.environ)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{args.file}: valid ({settings.counts()})")
        return 0
    try:
        outcomes = apply_settings(settings)
    except Exception as exc:
        # The driver's own message: SQLAlchemy's rendering would add the statement's parameters (secrets).
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        print(f"{args.file}: nothing applied, the transaction was rolled back: {reason}", file=sys.stderr)
        return 1
    for outcome in outcomes:
        print(f"{outcome.section.noun} {outcome.entry_id}: {outcome.result}")
    print(f"applied {args.file}: {summarize(outcomes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

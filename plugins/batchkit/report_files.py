"""Report files, for any automation that writes them: where they go, how they are written, how they
are named by day and linked to. Nothing here knows a particular report (those live in their domain's
package, e.g. include/sales/daily_report.py).

- Where: an ObjectStoragePath (`reports_base`): the Variable `reports_base_path`, else env
  REPORTS_BASE_PATH, else file://$AIRFLOW_HOME/reports; read by the task, never at parse time. Each
  report writes under a folder of its own below it. s3:// (AWS or S3-compatible, through the amazon
  provider and s3fs) authenticates with the connection `reports_conn_id` / REPORTS_CONN_ID.
- How: `write_files` replaces each file whole; on S3 as one PutObject carrying the file's content type
  (CONTENT_TYPES), so a browser opening the link shows an HTML page instead of downloading it.
- Names: `dated_file_name` / `day_of_dated_file`: `<prefix>_<YYYY-MM-DD>.<format>`, the day only, so a
  rerun overwrites the same file, and retention (batchkit.retention.FileRetention) can tell a file's
  day from its name.
- Links: `public_link`, under Variable reports_public_url / env REPORTS_PUBLIC_URL when the base path is
  not browsable itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path

from airflow.sdk import ObjectStoragePath

# Where report files go (any ObjectStoragePath URL): the Airflow Variable, else the environment
# variable, else file://$AIRFLOW_HOME/reports; read at run time only.
REPORTS_BASE_VARIABLE = "reports_base_path"
REPORTS_BASE_ENV = "REPORTS_BASE_PATH"
# The connection an s3:// (or other remote) base path authenticates with; Variable, else environment.
REPORTS_CONN_VARIABLE = "reports_conn_id"
REPORTS_CONN_ENV = "REPORTS_CONN_ID"
# Where people open the files, when the base path is not browsable itself (e.g. an S3 website or a
# reverse proxy in front of the reports volume); Variable, else environment.
REPORTS_PUBLIC_URL_VARIABLE = "reports_public_url"
REPORTS_PUBLIC_URL_ENV = "REPORTS_PUBLIC_URL"
# Stored with each file on S3 (and S3-compatible stores), which serve it back as the file's type: without
# it S3 says binary/octet-stream and a browser opening the link downloads the HTML instead of showing it.
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "html": "text/html; charset=utf-8"}
_S3_PROTOCOLS = frozenset({"s3", "s3a", "s3n"})


def reports_base(
    configured: str | None,
    *,
    conn_id: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> ObjectStoragePath:
    """Where report files go: `configured` (the Variable's URL), else env REPORTS_BASE_PATH, else
    file://$AIRFLOW_HOME/reports. Any ObjectStoragePath URL: file:///srv/reports, or an S3-compatible
    s3://bucket/prefix whose credentials (and endpoint_url for MinIO & co.) come from connection
    `conn_id` (Variable reports_conn_id / env REPORTS_CONN_ID) or from s3://conn_id@bucket/prefix."""
    url = configured or environ.get(REPORTS_BASE_ENV) or None
    if url is None:
        airflow_home = Path(environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
        # Not Path.as_uri(): ObjectStoragePath takes the path verbatim and would not unquote a %20.
        url = f"file://{(airflow_home / 'reports').resolve()}"
    return ObjectStoragePath(url, conn_id=conn_id) if conn_id else ObjectStoragePath(url)


def _setting(variable: str, env: str) -> str | None:
    from airflow.sdk import Variable

    return Variable.get(variable, default=None) or os.environ.get(env) or None


def configured_reports_base() -> ObjectStoragePath:
    """reports_base() from the Variables (else the environment) as they are now. Call it in a task,
    never at parse time: it reads Variables."""
    return reports_base(
        _setting(REPORTS_BASE_VARIABLE, REPORTS_BASE_ENV),
        conn_id=_setting(REPORTS_CONN_VARIABLE, REPORTS_CONN_ENV),
    )


def configured_public_url() -> str | None:
    """The browsable URL of the base path (Variable reports_public_url, else env), or None. In a task."""
    return _setting(REPORTS_PUBLIC_URL_VARIABLE, REPORTS_PUBLIC_URL_ENV)


# -- names -------------------------------------------------------------------------------------------


def dated_file_name(prefix: str, day: date, file_format: str) -> str:
    """`<prefix>_<YYYY-MM-DD>.<format>`: the name depends on the day alone, so a rerun overwrites it."""
    return f"{prefix}_{day.isoformat()}.{file_format}"


def day_of_dated_file(file_name: str, *, prefix: str, formats: Iterable[str]) -> date | None:
    """The day in a `dated_file_name(prefix, day, format)` name with one of `formats`; None for any
    other name (another prefix or format, a suffix after it, an impossible date)."""
    pattern = rf"{re.escape(prefix)}_(\d{{4}}-\d{{2}}-\d{{2}})\.(?:{'|'.join(map(re.escape, formats))})"
    match = re.fullmatch(pattern, file_name)
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


# -- writing and linking -----------------------------------------------------------------------------


def file_url(path: ObjectStoragePath) -> str:
    """The file's URL without a connection id (s3://bucket/key, file:///path, the path not %-quoted)."""
    return path.as_uri()


def write_files(paths: Mapping[str, ObjectStoragePath], contents: Mapping[str, str]) -> dict[str, str]:
    """Write `contents[fmt]` to `paths[fmt]` for each format (replacing a previous run's file whole);
    returns the files' URLs by format. The format names the content type (CONTENT_TYPES) on S3."""
    written = {}
    for file_format, path in paths.items():
        if path.protocol in _S3_PROTOCOLS:
            # No folders on S3, and s3fs's mkdir would create a missing bucket (a mistyped name too): the
            # upload fails on it instead. One PutObject per file, with its ContentType, replaced whole.
            with path.open("w", encoding="utf-8", ContentType=CONTENT_TYPES[file_format]) as out:
                out.write(contents[file_format])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(contents[file_format], encoding="utf-8")
        written[file_format] = file_url(path)
    return written


def public_link(url: str, *, folder: str, public_base: str | None = None) -> str:
    """What a message links to for the file at `url` in `folder` (under the base path): under
    `public_base` (Variable reports_public_url / env REPORTS_PUBLIC_URL, the browsable URL of the base
    path) when set; a file:// file as its path on the machine that wrote it; otherwise the URL itself
    (http(s)://, s3://)."""
    if public_base:
        return f"{public_base.rstrip('/')}/{folder}/{url.rsplit('/', 1)[-1]}"
    if url.startswith("file://"):
        return url.removeprefix("file://")
    return url

"""Pagination styles of REST APIs: what to ask for first, and what to ask for after a response.

Plain logic without I/O (RestApiHook sends the requests). Each style is a pydantic model, so a YAML
config can declare one through the `Pagination` union, e.g.
`{style: cursor, cursor_param: cursor, cursor_field: next_cursor, records_field: data}`.

`records_field` (the dotted path of the record list in the body; null when the body is the list itself)
defaults to `data` for `page_number`, `offset` and `cursor`. `link_header` APIs usually send the bare
array, so its model defaults to null, and a config (a sync file, `parse_pagination`) must state it:
one style's default never silently applies to another's API. Combinations that cannot work fail when
the config is validated, not at run time: a style that reads a field from the body (`cursor_field`,
`total_pages_field`, `total_field`) needs an object body, so its records cannot be the body itself.

A page's request travels between runs as JSON (Page.next_state): `{"page_number": n, "params": {...}}`
holds only the pagination parameters (the caller's own query parameters are merged in at send time, so
a checkpoint never copies them), `{"page_number": n, "url": "..."}` a server-given next link.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, TypeAdapter, model_validator

# A dotted path into a JSON object (`data`, `meta.next_cursor`): no empty step, no whitespace.
FIELD_PATH_PATTERN = r"^[^.\s]+(\.[^.\s]+)*$"
FieldPath = Annotated[str, Field(pattern=FIELD_PATH_PATTERN)]


class PageFormatError(ValueError):
    """A response does not have the shape its pagination config describes."""


@dataclass(frozen=True)
class PageRequest:
    """One page's request: pagination params (merged over the caller's), or an absolute next URL."""

    params: Mapping[str, Any] = field(default_factory=dict)
    url: str | None = None

    def to_state(self, page_number: int) -> dict[str, Any]:
        if self.url is not None:
            return {"page_number": page_number, "url": self.url}
        return {"page_number": page_number, "params": dict(self.params)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> tuple[int, PageRequest]:
        """The page number and request a Page.next_state stands for."""
        try:
            page_number = int(state["page_number"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"resume state {dict(state)!r} has no integer 'page_number'") from None
        if "url" in state:
            return page_number, cls(url=str(state["url"]))
        if isinstance(state.get("params"), Mapping):
            return page_number, cls(params=dict(state["params"]))
        raise ValueError(f"resume state {dict(state)!r} has neither 'params' nor 'url'")


@dataclass(frozen=True)
class PageResponse:
    """What pagination needs from a parsed response: its final URL, JSON body and headers."""

    url: str
    body: Any
    headers: Mapping[str, str]


def field_at(body: Any, path: str) -> Any:
    """The value at a dotted path (`meta.next_cursor`) of a JSON object; None when any step is missing."""
    value = body
    for key in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


class _Style(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Dotted path of the record list in the body; None when the body itself is the list.
    records_field: FieldPath | None = "data"

    def body_fields(self) -> dict[str, str]:
        """The settings (name -> dotted path) this style reads from the response body besides records."""
        return {}

    @model_validator(mode="after")
    def _records_beside_body_fields(self) -> _Style:
        if self.records_field is None and (read := self.body_fields()):
            named = ", ".join(f"{name} {path!r}" for name, path in read.items())
            style = getattr(self, "style", "this")
            raise ValueError(
                f"records_field is null (the body is the record array) but {style} pagination reads "
                f"{named} from the body, which needs a JSON object: set records_field to the path of the "
                "record list in it (e.g. data)"
            )
        return self

    def records(self, body: Any) -> list[dict[str, Any]]:
        records = body if self.records_field is None else field_at(body, self.records_field)
        if not isinstance(records, list):
            where = "the body" if self.records_field is None else f"field {self.records_field!r}"
            raise PageFormatError(
                f"expected a JSON array of records in {where}, got {type(records).__name__}"
            )
        return records

    def remaining_requests(
        self, request: PageRequest, response: PageResponse, records: list[dict[str, Any]]
    ) -> list[PageRequest] | None:
        """The requests of every page after `request`, when this response makes them knowable in
        advance (a stated total); None when each next request depends on the previous response."""
        return None

    @property
    def plans_ahead(self) -> bool:
        """Whether a response can state every request after it, so pages may be fetched concurrently."""
        return False

    def stated_totals(self, response: PageResponse) -> tuple[int | None, int | None]:
        """(total pages, total records) of the whole extraction as this response states them, for
        progress reporting; None where the style reads no such field or the body lacks an integer."""
        return None, None


class PageNumberPagination(_Style):
    """?page=N&page_size=S; ends on an empty page, or on the last page when the body states the total."""

    style: Literal["page_number"] = "page_number"
    page_param: str = "page"
    size_param: str = "page_size"
    page_size: PositiveInt = 100
    first_page: int = 1
    total_pages_field: FieldPath | None = None

    def body_fields(self) -> dict[str, str]:
        return {} if self.total_pages_field is None else {"total_pages_field": self.total_pages_field}

    @property
    def plans_ahead(self) -> bool:
        return self.total_pages_field is not None

    def first_request(self) -> PageRequest:
        return PageRequest({self.page_param: self.first_page, self.size_param: self.page_size})

    def stated_totals(self, response: PageResponse) -> tuple[int | None, int | None]:
        if self.total_pages_field is None:
            return None, None
        return _int_or_none(field_at(response.body, self.total_pages_field)), None

    def next_request(
        self, request: PageRequest, response: PageResponse, records: list[dict[str, Any]]
    ) -> PageRequest | None:
        if not records:
            return None
        page = int(request.params[self.page_param])
        if self.total_pages_field is not None:
            total_pages = field_at(response.body, self.total_pages_field)
            if not isinstance(total_pages, int):
                raise PageFormatError(f"expected an integer in field {self.total_pages_field!r}")
            if page >= total_pages:
                return None
        return PageRequest({**request.params, self.page_param: page + 1})

    def remaining_requests(
        self, request: PageRequest, response: PageResponse, records: list[dict[str, Any]]
    ) -> list[PageRequest] | None:
        """Every request after `request`, when the body states the total pages; else None."""
        if self.total_pages_field is None or request.url is not None:
            return None
        if self.next_request(request, response, records) is None:
            return []
        page, total_pages = (
            int(request.params[self.page_param]),
            field_at(response.body, self.total_pages_field),
        )
        return [PageRequest({**request.params, self.page_param: n}) for n in range(page + 1, total_pages + 1)]


class OffsetPagination(_Style):
    """?offset=O&limit=L; the next offset counts the records received, so a server-side cap on L is safe."""

    style: Literal["offset"] = "offset"
    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: PositiveInt = 100
    total_field: FieldPath | None = None

    def body_fields(self) -> dict[str, str]:
        return {} if self.total_field is None else {"total_field": self.total_field}

    @property
    def plans_ahead(self) -> bool:
        return self.total_field is not None

    def first_request(self) -> PageRequest:
        return PageRequest({self.offset_param: 0, self.limit_param: self.limit})

    def stated_totals(self, response: PageResponse) -> tuple[int | None, int | None]:
        if self.total_field is None:
            return None, None
        return None, _int_or_none(field_at(response.body, self.total_field))

    def next_request(
        self, request: PageRequest, response: PageResponse, records: list[dict[str, Any]]
    ) -> PageRequest | None:
        if not records:
            return None
        offset = int(request.params[self.offset_param]) + len(records)
        if self.total_field is not None:
            total = field_at(response.body, self.total_field)
            if not isinstance(total, int):
                raise PageFormatError(f"expected an integer in field {self.total_field!r}")
            if offset >= total:
                return None
        return PageRequest({**request.params, self.offset_param: offset})

    def remaining_requests(
        self, request: PageRequest, response: PageResponse, records: list[dict[str, Any]]
    ) -> list[PageRequest] | None:
        """Every request after `request` when the body states the total, assuming full pages of `limit`
        records from there on (the consumer checks each page's real next request against this plan)."""
        if self.total_field is None or request.url is not None:
            return None
        following = self.next_request(request, response, records)
        if following is None:
            return []
        total, limit = field_at(response.body, self.total_field), int(request.params[self.limit_param])
        start = int(following.params[self.offset_param])
        return [PageRequest({**request.params, self.offset_param: o}) for o in range(start, total, limit)]


class CursorPagination(_Style):
    """The body names the next page's cursor; a missing, null or empty cursor ends the pages."""

    style: Literal["cursor"] = "cursor"
    cursor_param: str = "cursor"
    cursor_field: FieldPath = "next_cursor"
    size_param: str | None = None
    page_size: PositiveInt | None = None

    def body_fields(self) -> dict[str, str]:
        return {"cursor_field": self.cursor_field}

    def first_request(self) -> PageRequest:
        return PageRequest(_size_params(self.size_param, self.page_size))

    def next_request(
        self, request: PageRequest, response: PageResponse, records: list[dict[str, Any]]
    ) -> PageRequest | None:
        cursor = field_at(response.body, self.cursor_field)
        if cursor is None or cursor == "":
            return None
        if cursor == request.params.get(self.cursor_param):
            # A server that hands back the cursor it was given would page forever.
            raise PageFormatError(f"cursor in field {self.cursor_field!r} did not advance: {cursor!r}")
        return PageRequest({**request.params, self.cursor_param: cursor})


class LinkHeaderPagination(_Style):
    """RFC 8288 `Link: <url>; rel="next"`; the pages end when the response has no such link."""

    style: Literal["link_header"] = "link_header"
    # The usual Link-header API sends the bare array; a config must say so (see the module docstring).
    records_field: FieldPath | None = None
    size_param: str | None = None
    page_size: PositiveInt | None = None
    rel: str = "next"

    def first_request(self) -> PageRequest:
        return PageRequest(_size_params(self.size_param, self.page_size))

    def next_request(
        self, request: PageRequest, response: PageResponse, records: list[dict[str, Any]]
    ) -> PageRequest | None:
        next_url = link_target(response.headers.get("Link"), self.rel, base_url=response.url)
        return None if next_url is None else PageRequest(url=next_url)


def link_target(link_header: str | None, rel: str, *, base_url: str) -> str | None:
    """The absolute URL of the `rel` link, which must stay on the origin of `base_url`.

    The session sends credentials with every request, so a link to another origin is refused rather
    than followed.
    """
    if not link_header:
        return None
    # Imported here: every sync DAG file imports this module at parse time, and requests (with urllib3)
    # is a large share of that import; only a task fetching link-header pages needs it.
    from requests.utils import parse_header_links

    for link in parse_header_links(link_header):
        if rel in link.get("rel", "").split():
            target = urljoin(base_url, link["url"])
            if _origin(target) != _origin(base_url):
                raise PageFormatError(f"Link rel={rel!r} points to another origin: {_origin(target)}")
            return target
    return None


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _size_params(size_param: str | None, page_size: int | None) -> dict[str, Any]:
    return {size_param: page_size} if size_param is not None and page_size is not None else {}


# Styles whose records_field default is not `data`: a config must state records_field for them.
STYLES_WITHOUT_RECORDS_DEFAULT = ("link_header",)


def _records_field_stated(config: Any) -> Any:
    """A config of a style whose default differs from the others' must state records_field."""
    if (
        isinstance(config, Mapping)
        and config.get("style") in STYLES_WITHOUT_RECORDS_DEFAULT
        and "records_field" not in config
    ):
        raise ValueError(
            f"{config['style']} pagination needs records_field stated: the dotted path of the record "
            "list in the body (data, items ...), or null when the body is the array itself"
        )
    return config


Pagination = Annotated[
    PageNumberPagination | OffsetPagination | CursorPagination | LinkHeaderPagination,
    Field(discriminator="style"),
    BeforeValidator(_records_field_stated),
]

_PAGINATION_ADAPTER: TypeAdapter[Pagination] = TypeAdapter(Pagination)


def parse_pagination(config: Mapping[str, Any]) -> Pagination:
    """A pagination style from config (YAML/JSON); pydantic's error names the offending field."""
    return _PAGINATION_ADAPTER.validate_python(dict(config))

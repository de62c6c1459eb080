"""batchkit.extract.pagination without a server: how each style plans its requests, reads its config,
resolves its links and round-trips its resume state. Against the demo upstream, through the hook:
tests/batchkit/hooks/test_rest_api.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from batchkit.extract.pagination import (
    CursorPagination,
    OffsetPagination,
    PageFormatError,
    PageNumberPagination,
    PageRequest,
    PageResponse,
    link_target,
    parse_pagination,
)


def test_styles_with_a_stated_total_plan_every_following_request() -> None:
    pages = PageNumberPagination(page_size=10, total_pages_field="total_pages")
    first = pages.first_request()
    body = {"data": [{}] * 10, "total_pages": 4}
    response = PageResponse("http://api/x", body, {})
    assert pages.plans_ahead
    assert [r.params["page"] for r in pages.remaining_requests(first, response, body["data"])] == [2, 3, 4]
    last = PageRequest({**first.params, "page": 4})
    assert pages.remaining_requests(last, response, body["data"]) == []

    offsets = OffsetPagination(limit=10, total_field="total")
    request = PageRequest({"offset": 10, "limit": 10})
    response = PageResponse("http://api/x", {"data": [{}] * 10, "total": 45}, {})
    planned = offsets.remaining_requests(request, response, [{}] * 10)
    assert [r.params["offset"] for r in planned] == [20, 30, 40]
    assert planned[0] == offsets.next_request(request, response, [{}] * 10)

    assert not PageNumberPagination().plans_ahead
    assert not OffsetPagination().plans_ahead
    assert not CursorPagination().plans_ahead
    assert CursorPagination().remaining_requests(request, response, []) is None


def test_pagination_is_declared_by_config() -> None:
    pagination = parse_pagination(
        {"style": "cursor", "cursor_param": "cursor", "cursor_field": "meta.next", "records_field": "items"}
    )
    assert isinstance(pagination, CursorPagination)
    response = PageResponse("http://api/x", {"items": [{"id": 1}], "meta": {"next": "abc"}}, {})
    assert pagination.records(response.body) == [{"id": 1}]
    assert pagination.next_request(pagination.first_request(), response, [{"id": 1}]) == PageRequest(
        {"cursor": "abc"}
    )

    with pytest.raises(ValidationError, match="page_sise"):
        parse_pagination({"style": "page_number", "page_sise": 10})
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        parse_pagination({"style": "keyset"})


def test_a_cursor_that_does_not_advance_is_refused() -> None:
    pagination = CursorPagination()
    request = PageRequest({"cursor": "same"})
    with pytest.raises(PageFormatError, match="did not advance"):
        pagination.next_request(
            request, PageResponse("http://api/x", {"data": [], "next_cursor": "same"}, {}), []
        )


def test_next_links_resolve_relative_and_stay_on_origin() -> None:
    assert (
        link_target(
            '</v1/x?page=2>; rel="next", </v1/x?page=9>; rel="last"', "next", base_url="http://api:80/v1/x"
        )
        == "http://api:80/v1/x?page=2"
    )
    assert link_target('</v1/x?page=9>; rel="last"', "next", base_url="http://api/v1/x") is None
    with pytest.raises(PageFormatError, match="another origin"):
        link_target('<https://evil.example/steal>; rel="next"', "next", base_url="http://api/v1/x")


def test_page_state_round_trips_and_rejects_garbage() -> None:
    for request in (PageRequest({"page": 3, "page_size": 10}), PageRequest(url="http://api/v1/x?page=3")):
        assert PageRequest.from_state(request.to_state(7)) == (7, request)
    with pytest.raises(ValueError, match="page_number"):
        PageRequest.from_state({"params": {}})
    with pytest.raises(ValueError, match="neither 'params' nor 'url'"):
        PageRequest.from_state({"page_number": 2})

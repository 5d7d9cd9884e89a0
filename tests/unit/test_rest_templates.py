"""google.api.http path templates: the grammar, matching, decoding, and which
template wins when several match."""

from __future__ import annotations

import pytest

from longrun_server.rest_templates import PathTemplate, TemplateError, Variable


def test_parse_the_operations_templates() -> None:
    get = PathTemplate.parse("/v1/{name=operations/**}")
    assert get.segments == ("v1", "operations", "**")
    assert get.variables == (Variable("name", 1, 3),)
    assert get.verb == ""

    cancel = PathTemplate.parse("/v1/{name=operations/**}:cancel")
    assert cancel.segments == ("v1", "operations", "**")
    assert cancel.verb == "cancel"

    listing = PathTemplate.parse("/v1/{name=operations}")
    assert listing.segments == ("v1", "operations")
    assert listing.variables == (Variable("name", 1, 2),)

    jobs = PathTemplate.parse("/v1/jobs")
    assert jobs.segments == ("v1", "jobs")
    assert jobs.variables == ()


def test_parse_short_and_nested_variables() -> None:
    t = PathTemplate.parse("/v1/shelves/{shelf}/books/{book.id=*}:get")
    assert t.segments == ("v1", "shelves", "*", "books", "*")
    assert t.variables == (Variable("shelf", 2, 3), Variable("book.id", 4, 5))
    assert t.verb == "get"


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/{name=operations/**}", "/v1/operations/abc", {"name": "operations/abc"}),
        ("/v1/{name=operations/**}", "/v1/operations/a/b/c", {"name": "operations/a/b/c"}),
        # `**` matches zero or more segments
        ("/v1/{name=operations/**}", "/v1/operations", {"name": "operations"}),
        ("/v1/{name=operations/**}", "/v1/jobs/abc", None),
        ("/v1/{name=operations/**}", "/v2/operations/abc", None),
        ("/v1/{name=operations/**}", "/v1/operations/abc/", None),  # empty segment
        ("/v1/{name=operations/**}", "/v1/operations//abc", None),
        ("/v1/{name=operations/**}", "v1/operations/abc", None),
        (
            "/v1/{name=operations/**}:cancel",
            "/v1/operations/abc:cancel",
            {"name": "operations/abc"},
        ),
        ("/v1/{name=operations/**}:cancel", "/v1/operations/abc:wait", None),
        ("/v1/{name=operations/**}:cancel", "/v1/operations/abc", None),
        # an encoded colon is part of the name, not a verb separator
        ("/v1/{name=operations/**}:cancel", "/v1/operations/abc%3Acancel", None),
        (
            "/v1/{name=operations/**}",
            "/v1/operations/abc%3Acancel",
            {"name": "operations/abc:cancel"},
        ),
        ("/v1/{name=operations}", "/v1/operations", {"name": "operations"}),
        ("/v1/{name=operations}", "/v1/operations/x", None),
        ("/v1/jobs", "/v1/jobs", {}),
        ("/v1/jobs", "/v1/jobs/", None),
        ("/v1/jobs", "/v1/%6Aobs", {}),  # literals compare decoded
        (
            "/v1/shelves/{shelf}/books/{book}",
            "/v1/shelves/s1/books/b2",
            {"shelf": "s1", "book": "b2"},
        ),
        ("/v1/shelves/{shelf}", "/v1/shelves/s1/x", None),
        ("/v1/{name=*/things/*}", "/v1/a/things/b", {"name": "a/things/b"}),
        ("/v1/{name=*/things/*}", "/v1/a/stuff/b", None),
        ("/v1/{name=**}", "/v1/a/b", {"name": "a/b"}),
    ],
)
def test_match(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert PathTemplate.parse(template).match(path) == expected


def test_single_segment_variables_decode_everything() -> None:
    t = PathTemplate.parse("/v1/things/{id}")
    assert t.match("/v1/things/a%20b%2Fc") == {"id": "a b/c"}


def test_multi_segment_variables_keep_encoded_slashes() -> None:
    t = PathTemplate.parse("/v1/{name=operations/**}")
    assert t.match("/v1/operations/a%20b%2Fc") == {"name": "operations/a b%2Fc"}
    assert t.match("/v1/operations/x%2fy") == {"name": "operations/x%2fy"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v1/jobs",
        "/v1/{name",
        "/v1/{1name}",
        "/v1/{name.}",
        "/v1/{a={b}}",
        "/v1/**/x",
        "/v1/{a=**}/x",
        "/v1/x:",
        "/v1/x:a/b",
        "/v1//x",
        "/v1/x/",
        "/v1/a*b",
        "/v1/{a}/{a}",
        "/v1/{name=operations/**}:cancel}",
    ],
)
def test_bad_templates_are_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        PathTemplate.parse(text)


def test_literals_then_a_verb_then_no_double_star_are_more_specific() -> None:
    ordered = sorted(
        [
            PathTemplate.parse("/v1/{name=**}"),
            PathTemplate.parse("/v1/{name=operations/**}"),
            PathTemplate.parse("/v1/{name=operations/**}:cancel"),
            PathTemplate.parse("/v1/{name=operations}"),
        ],
        key=lambda t: t.specificity,
        reverse=True,
    )
    assert [t.text for t in ordered] == [
        "/v1/{name=operations/**}:cancel",
        "/v1/{name=operations}",
        "/v1/{name=operations/**}",
        "/v1/{name=**}",
    ]

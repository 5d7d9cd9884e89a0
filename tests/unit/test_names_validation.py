"""Operation names and request limits: what is accepted, and errors that say what to fix."""

from __future__ import annotations

import uuid

import pytest

from longrun_core.errors import InvalidArgument
from longrun_core.names import (
    OperationName,
    operation_name,
    parse_list_name,
    parse_operation_name,
    parse_parent,
    watch_key,
)
from longrun_core.validation import (
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_PARAMS_BYTES,
    check_labels,
    check_params_size,
    check_request_id,
)

# ---- operation names ----


@pytest.mark.parametrize("op_id", ["a", "0f3e", "abc_DEF-1.2~3", "x" * 128, uuid.uuid4().hex])
@pytest.mark.parametrize("project", ["p", "default", "my-project-1", "0abc", "a" * 63])
def test_full_operation_names_round_trip(project: str, op_id: str) -> None:
    name = operation_name(project, op_id)
    assert name == f"projects/{project}/operations/{op_id}"
    assert parse_operation_name(name) == OperationName(project, op_id)


def test_a_legacy_name_is_accepted_without_a_project() -> None:
    parsed = parse_operation_name("operations/abc123")
    assert parsed == OperationName(None, "abc123")
    assert parsed.watch_key == watch_key("abc123") == "operations/abc123"


def test_an_empty_name_is_missing() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_operation_name("")
    assert info.value.reason == "NAME_MISSING"
    assert "projects/" in info.value.message


@pytest.mark.parametrize(
    "name",
    [
        "abc",
        "operations",
        "operations/",
        "operation/abc",
        "Operations/abc",
        "jobs/abc",
        "/operations/abc",
        "operations/abc/def",
        "operations/-abc",
        "operations/.abc",
        "operations/ab c",
        "operations/ab%2Fc",
        "operations/" + "x" * 129,
        "projects/p/operations",
        "projects/p/operations/",
        "projects/p/jobs/abc",
        "project/p/operations/abc",
        "projects/p/operations/abc/def",
        "projects/p/operations/-abc",
    ],
)
def test_a_malformed_name_is_invalid_and_shows_the_expected_form(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_operation_name(name)
    err = info.value
    assert err.reason == "NAME_MALFORMED"
    assert "projects/{project}/operations/{id}" in err.message
    assert repr(name[:200]) in err.message
    assert err.metadata == {"name": name[:200]}


@pytest.mark.parametrize(
    "project", ["", "P", "my_project", "-abc", "a" * 64, "my.project", "ab%2F", "\u00e9t\u00e9"]
)
def test_an_invalid_project_id_is_invalid_argument_saying_the_rule(project: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_operation_name(f"projects/{project}/operations/abc")
    err = info.value
    assert err.reason == "PROJECT_ID_INVALID"
    assert err.metadata == {"project": project}
    assert "lowercase letters, digits and hyphens" in err.message
    with pytest.raises(InvalidArgument) as listing:
        parse_list_name(f"projects/{project}")
    assert listing.value.reason == "PROJECT_ID_INVALID"
    with pytest.raises(InvalidArgument) as creating:
        parse_parent(f"projects/{project}")
    assert creating.value.reason == "PROJECT_ID_INVALID"
    assert creating.value.metadata == {"parent": project}


@pytest.mark.parametrize(
    ("name", "project"),
    [
        ("", None),
        ("operations", None),
        ("projects/p", "p"),
        ("projects/p/operations", "p"),
        ("projects/a-1", "a-1"),
    ],
)
def test_list_names(name: str, project: str | None) -> None:
    assert parse_list_name(name) == project


@pytest.mark.parametrize(
    "name", ["projects", "projects/", "projects/p/jobs", "operations/x", "projects/p/operations/x"]
)
def test_a_list_name_of_no_collection_is_invalid(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_list_name(name)
    assert info.value.reason in ("COLLECTION_UNKNOWN", "PROJECT_ID_INVALID")
    assert info.value.metadata


@pytest.mark.parametrize("parent", ["p", "projects", "projects/p/x", "operations", "/projects/p"])
def test_a_malformed_parent_is_invalid(parent: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_parent(parent)
    assert info.value.reason == "PARENT_MALFORMED"
    assert info.value.metadata == {"parent": parent}


def test_a_huge_malformed_name_is_truncated_in_the_error() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_operation_name("operations/" + "!" * 100_000)
    assert len(info.value.message) < 700
    assert len(info.value.metadata["name"]) == 200


def test_a_name_with_a_trailing_newline_is_malformed() -> None:
    with pytest.raises(InvalidArgument):
        parse_operation_name("operations/abc\n")
    with pytest.raises(InvalidArgument):
        parse_operation_name("projects/p/operations/abc\n")


# ---- labels ----


def test_acceptable_labels_pass() -> None:
    check_labels({})
    check_labels({"team": "a", "cost-center_2": "", "a": "v" * MAX_LABEL_VALUE})
    check_labels({"k" + "x" * 62: "v"})
    check_labels({f"k{i}": "v" for i in range(MAX_LABELS)})


def test_too_many_labels_are_invalid() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_labels({f"k{i}": "v" for i in range(MAX_LABELS + 1)})
    assert info.value.reason == "TOO_MANY_LABELS"
    assert f"{MAX_LABELS + 1} labels" in info.value.message
    assert str(MAX_LABELS) in info.value.message


@pytest.mark.parametrize(
    "key", ["", "Team", "1team", "_team", "-team", "te.am", "te am", "k" + "x" * 63, "tëam"]
)
def test_an_invalid_label_key_is_named_in_the_error(key: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_labels({"ok": "v", key: "v"})
    err = info.value
    assert err.reason == "LABEL_KEY_INVALID"
    assert repr(key) in err.message
    assert "lowercase" in err.message
    assert err.metadata == {"key": key}


def test_a_label_key_with_a_trailing_newline_is_invalid() -> None:
    with pytest.raises(InvalidArgument):
        check_labels({"team\n": "v"})


def test_a_label_value_that_is_too_long_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_labels({"team": "v" * (MAX_LABEL_VALUE + 1)})
    err = info.value
    assert err.reason == "LABEL_VALUE_TOO_LONG"
    assert f"{MAX_LABEL_VALUE + 1} characters" in err.message
    assert err.metadata == {"key": "team"}


# ---- request_id ----


def test_no_request_id_is_fine() -> None:
    assert check_request_id("") is None


def test_a_canonical_uuid4_is_accepted() -> None:
    request_id = str(uuid.uuid4())
    assert check_request_id(request_id) == request_id


def test_an_upper_case_uuid4_is_accepted_in_canonical_lower_case() -> None:
    request_id = str(uuid.uuid4())
    assert check_request_id(request_id.upper()) == request_id


@pytest.mark.parametrize(
    "request_id",
    [
        "not-a-uuid",
        "abc",
        str(uuid.uuid1()),
        str(uuid.uuid3(uuid.NAMESPACE_DNS, "x")),
        str(uuid.uuid5(uuid.NAMESPACE_DNS, "x")),
        uuid.uuid4().hex,  # no dashes
        "{" + str(uuid.uuid4()) + "}",
        "urn:uuid:" + str(uuid.uuid4()),
        " " + str(uuid.uuid4()),
        str(uuid.uuid4()) + "\n",
        "3f2b8c1e-9a4d-4e6f-0b2a-1c3d5e7f9a0b",  # version 4 digit, but not the RFC variant
        "00000000-0000-0000-0000-000000000000",
    ],
)
def test_anything_but_a_canonical_uuid4_is_invalid(request_id: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_request_id(request_id)
    err = info.value
    assert err.reason == "REQUEST_ID_INVALID"
    assert "UUID4" in err.message
    assert repr(request_id[:80]) in err.message


# ---- params size ----


def test_params_up_to_the_limit_pass() -> None:
    check_params_size(b"")
    check_params_size(b"x" * MAX_PARAMS_BYTES)


def test_params_over_the_limit_are_invalid_with_size_and_limit() -> None:
    with pytest.raises(InvalidArgument) as info:
        check_params_size(b"x" * (MAX_PARAMS_BYTES + 1))
    err = info.value
    assert err.reason == "PARAMS_TOO_LARGE"
    assert f"{MAX_PARAMS_BYTES + 1} bytes" in err.message
    assert err.metadata == {"size": str(MAX_PARAMS_BYTES + 1), "limit": str(MAX_PARAMS_BYTES)}

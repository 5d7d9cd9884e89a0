"""AIP-160 filters for ListOperations.

    flt = parse_filter('metadata.state = RUNNING AND labels.env = "prod"')
    flt.matches(record)   # the full truth, in memory
    flt.to_sql()          # SqlFilter(where, params, exact) for the SQLite store

Grammar (the AIP-160 EBNF without functions; keywords are upper case)::

    filter      := [expression]
    expression  := sequence {"AND" sequence}
    sequence    := factor {factor}            # juxtaposition: a b  ==  a AND b
    factor      := term {"OR" term}           # OR binds tighter than AND:
                                              # a OR b AND c  ==  (a OR b) AND c
    term        := ["NOT" | "-"] simple       # "-" touches what it negates: -a:b, -(..)
    simple      := restriction | "(" expression ")"
    restriction := field comparator value
    comparator  := "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
    value       := word | string

A word is unquoted text ending at whitespace or at any of `( ) " ' < > = ! : ,`
(so `sle*`, `-3`, `my-key`, `1.5` are words). A string is in double or single
quotes with the escapes \\\\ \\" \\' \\* \\n \\t \\r \\uXXXX. A term takes one NOT
(`NOT NOT a` needs parentheses: `NOT (NOT a)`). Bare values (free-text
search) and functions are not supported.

Fields (`.` traversal), their types and comparators:

    name                          string    all      e.g. name = "operations/abc*"
    done                          bool      = != :   done = true, done:false
    metadata.state                enum      = != :   QUEUED RUNNING SUCCEEDED FAILED
                                                     CANCELLED, or the number 1-5
    metadata.task                 string    all
    metadata.progress_message     string    all
    metadata.attempt              number    all
    metadata.max_attempts         number    all
    metadata.progress_percent     number    all
    metadata.cancel_requested     bool      = != :
    metadata.create_time          timestamp all      quoted RFC 3339, nanoseconds and
    metadata.update_time          timestamp all        offsets allowed:
    metadata.start_time           timestamp all        "2026-01-01T00:00:00Z",
    metadata.end_time             timestamp all        "2026-01-01T09:30:00.5+09:00"
    metadata.expire_time          timestamp all
    labels.<key>                  string    all      alias metadata.labels.<key>;
                                                     key: 1-63 of [A-Za-z0-9_-]
    labels                        map       :        labels:<key> (key present), labels:*
    error                         message   :        error:* (ended with an error,
                                                     cancelled included)
    error.code                    number    all      a google.rpc code, or its name
    error.message                 string    all

Values are read according to the field's type, quoted or not (`done = true`,
`metadata.attempt >= 2`, `metadata.task = resize`); numbers may be integers
(64-bit) or decimals.

Semantics:

* Strings compare case-sensitively; `<` etc. compare by code point.
* `*` in a value is a wildcard for `=`, `!=` and `:` on strings
  (`metadata.task = "sle*"`, `"*er"`, `"a*b"`); `\\*` in a quoted string is a
  literal star. A wildcard is an error with `<` etc. and on other types.
* `field:value` means `field = value`. `field:*` means the field is set: a map
  key is present, a timestamp or `error` is present, a string is non-empty, a
  number is non-zero, a bool is true. (`field = "*"` instead matches any value.)
* An absent value (a missing label, `metadata.end_time` of a running operation,
  `error.code` of an operation without an error) makes every comparison on it
  false, `!=` included; `NOT` of such a comparison is true.
* The error of an operation is its `google.rpc.Status` when it is done with an
  error; other operations have none.

Limits (exceeding one is INVALID_ARGUMENT): MAX_LENGTH = 2000 characters,
MAX_DEPTH = 32 nested parentheses, MAX_TERMS = 100 restrictions.

`Filter.text` is a canonical spelling of the filter (for binding page
tokens). `Filter.to_sql()` pushes the filter down to SQLite where it can
(see `longrun_core.filtering.sql`); `Filter.index_terms()` names the
equalities and create_time bounds a list index can walk
(`longrun_core.filtering.index_terms`), and `Filter.to_firestore()` pushes
them into a Firestore query (`longrun_core.filtering.firestore`).
`Filter.matches` is always the full truth; `Filter.matches_values` is the
same on values a store read without building a record (`Filter.attrs`
names them).

Every problem is `longrun_core.errors.InvalidArgument` with reason FILTER_INVALID, a
message `filter: <what> at column <N>[; <hint>]` (N is the 1-based character
position), and metadata {"filter": <text, truncated>, "column": "<N>"}.
"""

from longrun_core.filtering.errors import REASON
from longrun_core.filtering.filter import Filter, parse_filter
from longrun_core.filtering.parser import MAX_DEPTH, MAX_LENGTH, MAX_TERMS
from longrun_core.filtering.sql import SqlFilter

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_TERMS",
    "REASON",
    "Filter",
    "SqlFilter",
    "parse_filter",
]

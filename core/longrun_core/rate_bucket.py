"""A queue's rate limit (Cloud Tasks' `max_dispatches_per_second` and
`max_burst_size`) as a token bucket kept in the store: pure arithmetic here,
the guarded reads and writes in the adapters (the SQLite `rate_buckets`
table, one Firestore bucket document per limited queue).

The bucket is kept in its virtual-scheduling form (GCRA): one time, `tat`
(the theoretical arrival time), instead of a token count and the time it was
counted. Tokens refill at `rate` per second up to `burst`; at time `now` the
bucket holds `burst - max(0, tat - now) * rate` tokens. Taking a token moves
`tat` one interval (1 / rate) on from `max(tat, now)`. The refill is lazy:
nothing runs between takes, elapsed time is the refill.

A claim that finds no token does not spin: it *reserves* the next free one
(moves `tat` on all the same) and learns when that token is due, at most
`horizon` ahead; its operation waits (RATE_LIMITED) until then and starts
without taking another. A reservation is a spent token: it is never given
back (a cancelled or purged job's token goes unused, the rate only drops).
When even the reservation would be due past `horizon`, nothing is taken and
the claim comes back when one could fit (`Refused.retry_at`).

Starts are gated too. A reserved job may reach a worker late (its message
was delivered late), and late reservations would bunch with on-time ones.
So every start also passes a second bucket of the same rate and size kept
beside the first, `start_tat`, moved on only by attempts that actually
start (`gate`): a start it does not admit now waits (briefly: the first
bucket lets only the rate through) until it does, keeping its token. Every
window of starts then holds at most `burst + rate * length` of them, however
late their messages came.

Which clock: the claimer's (`now` is the claim's own time, as for a job's
schedule time and retry backoff). A claimer's `now` is taken before its read,
so the last writer's `now` may be later than it by a whole (slow) round trip:
a bucket a little further ahead than this claimer's `now` allows is normal
and obeyed. Only one further ahead than any take could have put it plus
STALE_CLAIM_SLACK (a clock that jumped back, or a badly skewed writer) is
reset to `now`, so one bad clock cannot stall a queue for longer than the
horizon and the slack. (Without the slack, a claimer whose `now` was a
little older than the writer's reopened a saturated gate: 27 dispatches in
one second at 20/s burst 5 on a loaded emulator.)"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

#: Longest a claim may reserve a token ahead (worker --rate-reserve-max).
DEFAULT_HORIZON = timedelta(seconds=60)
#: A reserved token is honoured this long past its time; later (the worker
#: that was to publish the job at its time died, and the sweeper's backstop
#: published it) it is void and the claim takes a fresh one, so a late
#: reservation never adds to the tokens the bucket gives out meanwhile.
TOKEN_GRACE = timedelta(seconds=1)
#: A reserved job's message is published by the worker that reserved at the
#: token's time; the sweeper publishes it if still queued this long after.
RESERVED_BACKSTOP = timedelta(seconds=5)
#: How much older a claimer's `now` may be than the last writer's before a
#: bucket ahead of it counts as written by a bad clock (and is reset).
STALE_CLAIM_SLACK = timedelta(seconds=60)


def interval(rate: float) -> timedelta:
    """The time one token takes to refill."""
    return timedelta(seconds=1.0 / rate)


def effective_burst(rate: float, burst: int | None) -> int:
    """`burst`, or when unset one second's worth of tokens (at least 1)."""
    if burst is not None:
        return burst
    return max(1, min(500, int(rate + 0.999999)))


@dataclass(frozen=True, slots=True)
class Granted:
    """A token: the attempt may start at `start` (== now: at once; later: a
    reservation), and the bucket's `tat` becomes `tat`."""

    start: datetime
    tat: datetime


@dataclass(frozen=True, slots=True)
class Refused:
    """No token within the horizon: nothing was taken; try again at `retry_at`."""

    retry_at: datetime


def take(
    tat: datetime | None,
    now: datetime,
    *,
    rate: float,
    burst: int,
    horizon: timedelta = DEFAULT_HORIZON,
) -> Granted | Refused:
    """Take one token from a bucket at `tat` (None: never used, full)."""
    step = interval(rate)
    if tat is None or tat > now + horizon + step * burst + STALE_CLAIM_SLACK:
        tat = now  # unused, or ahead of anything a take could write: full
    new_tat = max(tat, now) + step
    start = max(now, new_tat - step * burst)
    if start - now > horizon:
        return Refused(retry_at=start - horizon)
    return Granted(start=start, tat=new_tat)


def tokens(tat: datetime | None, now: datetime, *, rate: float, burst: int) -> float:
    """Tokens the bucket holds at `now` (negative: that many reserved ahead)."""
    if tat is None:
        return float(burst)
    owed = max(timedelta(0), tat - now).total_seconds() * rate
    return burst - owed


def holds_token(token_time: datetime | None, now: datetime) -> bool:
    """Whether a job that reserved a token for `token_time` may start on it
    now (no later than TOKEN_GRACE past it; never before it: the claim's
    run_after check sees to that)."""
    return token_time is not None and now <= token_time + TOKEN_GRACE


def gate(
    start_tat: datetime | None, now: datetime, *, rate: float, burst: int
) -> tuple[bool, datetime]:
    """The start gate: (True, the new start_tat) when an attempt may start
    now; (False, when it may) otherwise, nothing taken."""
    step = interval(rate)
    if start_tat is None or start_tat > now + step * burst + STALE_CLAIM_SLACK:
        start_tat = now  # unused, or ahead of what starts can write: open
    new = max(start_tat, now) + step
    earliest = new - step * burst
    if earliest > now:
        return False, earliest
    return True, new

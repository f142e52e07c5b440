"""Committing plans to the store: the one plan-commit-retry loop and the one chunked commit.

`commit_plan(store, plan)` makes `plan(view) -> ops` from the current view and commits the ops. When
the store refuses the commit, named rules say what happens: on a version conflict (`on_conflict`), on
a missing object (`on_not_found`) and on a duplicate key (`on_already_exists`) the plan is either made
again from the new view (`Lost.RETRY`) or the error goes to the caller (`Lost.RAISE`); any other error
goes to the caller. After `attempts` lost races the last error is raised (`Exhausted.RAISE`) or the
write is given up and None returned (`Exhausted.GIVE_UP`, for writers that try again later anyway).

`commit_chunks(store, ops, what)` commits a long list of writes in transactions of at most `CHUNK`
(as SwarmKit's components batch theirs), one attempt each; the components that write tasks pass
`chunk_size(view)`, more for a large cluster. A refused chunk is logged, handed to
`refused` (so the caller can undo what it decided for those writes: free their ports, try their tasks
again), and then either the rest is left for the next decision (`RefusedChunk.STOP`) or the next chunk
is committed (`RefusedChunk.CONTINUE`). Components decide again `RETRY_S` after a refused chunk.
`commit_steps` does the same for a plan made a step at a time, committing as the chunks fill up; the
orchestrator's chunks may hold more creations (`creation_chunk_size`) than changes of existing objects.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, overload

from treeherd.core.view import View
from treeherd.manager.reactor import HANDLING_SLICE_S
from treeherd.model.errors import AlreadyExists, NotFound, TreeherdError, VersionConflict
from treeherd.model.objects import Machine
from treeherd.model.ops import Create, Op
from treeherd.store.base import Committed, Store

__all__ = [
    "ATTEMPTS",
    "CHUNK",
    "RETRY_S",
    "Exhausted",
    "Lost",
    "RefusedChunk",
    "chunk_size",
    "commit_chunks",
    "commit_plan",
    "commit_steps",
    "creation_chunk_size",
]

log = logging.getLogger(__name__)

ATTEMPTS = 5  # plans made per write before the races count as lost
CHUNK = 5_000  # writes per transaction of a chunked commit, at least
# ... and enough for this many tasks per ready agent: each agent's assignment message, local DB
# transactions, status report and acknowledgement carry this many tasks (see `creation_chunk_size`).
CHUNK_PER_AGENT = 40
# ... up to this many: a transaction holds the manager's loop while it is applied, and the burst of
# messages after it (one per agent) fills the loop; chunks of 50,000 at 5,000 agents made stalls of
# up to 7 s where 25,000 made 3 s.
MAX_CHUNK = 25_000
# Creations stop at a larger bound: a new task is no message to an agent until it is placed, and the
# scheduler places each transaction of new tasks as one batch (see `creation_chunk_size`): forty tasks
# for each of 5,000 agents.
MAX_CREATION_CHUNK = 200_000
RETRY_S = 0.2  # how soon a component decides again after a refused chunk


class Lost(enum.Enum):
    """What to do when a commit is refused because the state moved on under the plan."""

    RETRY = "retry"  # make the plan again from the new view
    RAISE = "raise"  # the caller's to resolve (it pinned what it read, or the refusal is final)


class Exhausted(enum.Enum):
    """What to do when every attempt lost its race."""

    RAISE = "raise"  # the last refusal goes to the caller
    GIVE_UP = "give up"  # log it and return None: the caller writes again later


class RefusedChunk(enum.Enum):
    """What a chunked commit does after one of its chunks is refused."""

    STOP = "stop"  # commit nothing more: the caller decides again from the new state
    CONTINUE = "continue"  # go on with the next chunk


@overload
async def commit_plan(
    store: Store,
    plan: Callable[[View], list[Op]],
    *,
    what: str = ...,
    on_conflict: Lost = ...,
    on_not_found: Lost = ...,
    on_already_exists: Lost = ...,
    exhausted: Literal[Exhausted.RAISE] = ...,
    refused: Callable[[list[Op], TreeherdError], None] | None = ...,
    attempts: int = ...,
    logger: logging.Logger = ...,
) -> Committed: ...


@overload
async def commit_plan(
    store: Store,
    plan: Callable[[View], list[Op]],
    *,
    what: str = ...,
    on_conflict: Lost = ...,
    on_not_found: Lost = ...,
    on_already_exists: Lost = ...,
    exhausted: Exhausted,
    refused: Callable[[list[Op], TreeherdError], None] | None = ...,
    attempts: int = ...,
    logger: logging.Logger = ...,
) -> Committed | None: ...


async def commit_plan(
    store: Store,
    plan: Callable[[View], list[Op]],
    *,
    what: str = "write",
    on_conflict: Lost = Lost.RETRY,
    on_not_found: Lost = Lost.RAISE,
    on_already_exists: Lost = Lost.RAISE,
    exhausted: Exhausted = Exhausted.RAISE,
    refused: Callable[[list[Op], TreeherdError], None] | None = None,
    attempts: int = ATTEMPTS,
    logger: logging.Logger = log,
) -> Committed | None:
    """Make the plan from the current view and commit it, by the rules above.

    An empty plan writes nothing (no trip through the store's writer). Errors raised by the plan
    itself go to the caller untouched. `refused(ops, error)` is called for every refused commit,
    before the plan is made again or the error raised.
    """
    rules: Sequence[tuple[type[TreeherdError], Lost]] = (
        (VersionConflict, on_conflict),
        (NotFound, on_not_found),
        (AlreadyExists, on_already_exists),
    )
    for attempt in range(attempts):
        ops = plan(store.view())
        if not ops:
            return Committed(revision=store.revision, objects=[])
        try:
            return await store.commit(ops)
        except TreeherdError as error:
            if refused is not None:
                refused(ops, error)
            rule = next((r for kind, r in rules if isinstance(error, kind)), Lost.RAISE)
            if rule is Lost.RAISE:
                raise
            if attempt == attempts - 1:
                if exhausted is Exhausted.RAISE:
                    raise
                logger.warning("%s lost %d races in a row; will retry later", what, attempts)
                return None
            logger.debug("%s lost a race, planning again: %s", what, error)
    raise AssertionError("unreachable")


def chunk_size(view: View) -> int:
    """Writes per transaction of a chunked commit of tasks, for the cluster in `view`.

    Spread placement puts one task of a chunk on each of its machines when the chunk is no larger than
    the cluster: at 5,000 agents, chunks of 5,000 sent every agent its tasks one at a time, each with
    its own assignment message, status report and acknowledgement (half the manager's cost per task,
    and most of the agents'). A chunk of several tasks per agent sends them several at a time: 40 per
    agent up to 625 agents, 5 per agent at 5,000 (where `creation_chunk_size` and the scheduler's
    placement machine by machine still give an agent forty at a time)."""
    return min(MAX_CHUNK, _per_ready_agent(view))


def creation_chunk_size(view: View) -> int:
    """Creations per transaction of a service's reconcile, for the cluster in `view`: forty per ready
    agent, like `chunk_size`, but up to `MAX_CREATION_CHUNK`.

    The scheduler places the tasks of one such transaction in one batch, spread over the machines, and
    commits the placements machine by machine. With creations bounded like placements, a batch at
    5,000 agents held five tasks per agent, so every agent got its tasks five at a time whatever the
    placement chunks; a batch of twenty per agent gives each agent's assignment message twenty. At
    5,000 x 300,000: 15,000 status reports instead of about 37,000, and per task 116-122 µs of the
    manager's CPU instead of 131-135, 74-82 µs of the agents' instead of 108-114. Forty instead of
    twenty halves the messages again: at 5,000 x 1,000,000 about 30,000 status reports instead of
    53,000 (benchmarks/README.md has the figures)."""
    return min(MAX_CREATION_CHUNK, _per_ready_agent(view))


def _per_ready_agent(view: View) -> int:
    return max(CHUNK, CHUNK_PER_AGENT * view.tally(Machine, "agent_state", "ready"))


async def commit_chunks(
    store: Store,
    ops: list[Op],
    what: str,
    *,
    on_refused_chunk: RefusedChunk,
    refused: Callable[[list[Op]], None] | None = None,
    size: int | None = None,
    logger: logging.Logger = log,
) -> bool:
    """Commit `ops` in transactions of at most `size` (default `CHUNK`) writes; True if every chunk
    was committed. A refused chunk (any store error) is logged and handed to `refused`."""
    size = size or CHUNK
    return await _commit_in_chunks(
        store, [ops], what, len(ops), on_refused_chunk, refused, size, logger, size
    )


async def commit_steps(
    store: Store,
    steps: Iterable[list[Op]],
    what: str,
    *,
    on_refused_chunk: RefusedChunk,
    refused: Callable[[list[Op]], None] | None = None,
    size: int | None = None,
    creations: int | None = None,
    logger: logging.Logger = log,
) -> bool:
    """`commit_chunks` for a plan made a step at a time (`steps` yields each step's writes, possibly
    none): a chunk is committed as soon as it is full, and the event loop runs between steps (once
    every `HANDLING_SLICE_S` of work), so a plan of a million writes neither holds the loop while it
    is made nor waits for its end to start committing. The chunks are the ones `commit_chunks` makes
    of all the writes at once. After a refused chunk with `RefusedChunk.STOP`, no further step is
    taken.

    With `creations` (larger than `size`), a chunk holds at most `size` writes that are not creations
    and at most `creations` writes in all; the first chunk at most `size` in all, so that the first
    new tasks are placed as soon as they would be without."""
    size = size or CHUNK
    return await _commit_in_chunks(
        store, steps, what, None, on_refused_chunk, refused, size, logger, max(size, creations or size)
    )


async def _commit_in_chunks(
    store: Store,
    steps: Iterable[list[Op]],
    what: str,
    total: int | None,
    on_refused_chunk: RefusedChunk,
    refused: Callable[[list[Op]], None] | None,
    size: int,
    logger: logging.Logger,
    most: int,
) -> bool:
    """The writes of `steps` in chunks of at most `size` writes other than creations and `most` writes
    in all, each committed once full (the last with what is left), the loop let run between steps once
    `HANDLING_SLICE_S` of work went by since it last ran.
    `total`, when known, goes into the chunks' labels."""
    pending: list[Op] = []
    changes = 0  # the writes in `pending` that are not creations
    loop = asyncio.get_running_loop()
    turn_at = loop.time() + HANDLING_SLICE_S
    written = 0
    all_committed = True

    async def commit(chunk: list[Op], *, last: bool) -> bool:
        nonlocal written, all_committed
        alone = total <= most if total is not None else last and not written
        of = f" of {total}" if total is not None else ""
        label = what if alone else f"{what} (writes {written + 1}-{written + len(chunk)}{of})"
        written += len(chunk)
        if await _commit_chunk(store, chunk, label, refused, logger):
            return True
        all_committed = False
        return on_refused_chunk is not RefusedChunk.STOP

    for ops in steps:
        if most == size:  # every write counts alike: whole slices
            pending.extend(ops)
            start = 0
            while len(pending) - start >= size:
                start += size
                if not await commit(pending[start - size : start], last=False):
                    return False
            del pending[:start]
        else:
            for op in ops:
                pending.append(op)
                if type(op) is not Create:
                    changes += 1
                # The first chunk holds no more than `size` in all: the first placements wait for it.
                if changes == size or len(pending) == (most if written else size):
                    chunk, pending, changes = pending, [], 0
                    if not await commit(chunk, last=False):
                        return False
        if loop.time() >= turn_at:  # let the loop run between steps, every slice of work
            await asyncio.sleep(0)
            turn_at = loop.time() + HANDLING_SLICE_S
    if pending:
        await commit(pending, last=True)
    return all_committed


async def _commit_chunk(
    store: Store,
    chunk: list[Op],
    label: str,
    refused: Callable[[list[Op]], None] | None,
    logger: logging.Logger,
) -> bool:
    """One attempt at a chunk; a refusal is logged and handed to `refused`."""
    try:
        await store.commit(chunk)
    except TreeherdError as error:
        logger.info("%s: not applied (%s); will decide again from the new state", label, error.detail)
        if refused is not None:
            refused(chunk)
        return False
    return True

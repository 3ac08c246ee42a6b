"""Admission to a model's bounded line: one inference runs, a few wait, the rest are told when to come back.

Pure bookkeeping (no HTTP; the clock is injected), so the rules are tested without a server.
"""

import asyncio
import math
import secrets
import time
from collections import OrderedDict
from typing import Callable

from autoseg.workflow.serving import ServedModel


class Turns:
    """Admission to one model's bounded line, in the order requests first asked (no clock or network: testable).

    The line has ``capacity`` places (the running inference and the ones waiting). A request is admitted when the
    places taken plus the tickets issued before its own are fewer than ``capacity``, or when the model has nothing
    to do. A request turned away gets a ticket (its place in line: a fresh request queues behind every live ticket,
    so a client that waited its Retry-After is not overtaken by newcomers) and a Retry-After: the inferences that
    must end before a place is free for it, times the moving average of the measured inference time, less what the
    running one has done already. A ticket lapses ``max(2 s, mean inference time)`` after the Retry-After given
    with it, so an absent client holds a place only that long.

    Parameters
    ----------
    capacity
        Places in line: 1 running + the requests that may wait.
    clock
        Seconds, monotonic (``time.monotonic``; a fake one in tests).
    max_tickets
        Live tickets at most; beyond, a 503 carries a Retry-After but no ticket.
    """

    #: Weight of the newest measurement in the moving average of inference time.
    ALPHA = 0.3
    #: Inference time assumed before the first one is measured, seconds.
    UNMEASURED = 10.0

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic, max_tickets: int = 64):
        self.capacity, self.clock, self.max_tickets = capacity, clock, max_tickets
        self.tickets: OrderedDict[str, float] = OrderedDict()  # ticket -> lapse time, in order of issue
        self.mean_seconds: float | None = None
        self.started: float | None = None  # clock time the running inference began

    def grace(self) -> float:
        return max(2.0, self.mean_seconds or 0.0)

    def retry_after(self, ahead: int) -> int:
        """Whole seconds until ``ahead`` inferences (the running one first) are expected to have ended, at least 1."""
        mean = self.mean_seconds if self.mean_seconds is not None else self.UNMEASURED
        done = 0.0 if self.started is None else min(self.clock() - self.started, mean)
        return max(1, math.ceil(ahead * mean - done))

    def admit(self, taken: int, ticket: str | None) -> tuple[bool, int, str | None]:
        """``(True, 0, None)``: the request takes a place now; else ``(False, Retry-After seconds, ticket)``.

        Parameters
        ----------
        taken
            Places taken now (running + waiting).
        ticket
            The ticket the client sent back (``None``, unknown or lapsed: a fresh request).
        """
        now = self.clock()
        for key in [k for k, lapse in self.tickets.items() if lapse < now]:
            del self.tickets[key]
        order = list(self.tickets)
        ahead = order.index(ticket) if ticket in self.tickets else len(order)
        if taken + ahead < self.capacity or taken == 0:
            self.tickets.pop(ticket, None)
            return True, 0, None
        if ticket not in self.tickets:
            if len(self.tickets) >= self.max_tickets:
                return False, self.retry_after(taken + ahead - self.capacity + 1), None
            ticket = secrets.token_urlsafe(16)
        retry = self.retry_after(taken + ahead - self.capacity + 1)
        self.tickets[ticket] = now + retry + self.grace()
        return False, retry, ticket

    def start(self) -> None:
        """An inference begins now."""
        self.started = self.clock()

    def finish(self) -> None:
        """The running inference ended now: its duration enters the moving average."""
        if self.started is None:
            return
        seconds, self.started = self.clock() - self.started, None
        self.mean_seconds = seconds if self.mean_seconds is None else \
            self.mean_seconds + self.ALPHA * (seconds - self.mean_seconds)


class Slot:
    """One model's turn-taking: one inference runs, at most ``queue`` wait, admitted by :class:`Turns`."""

    def __init__(self, model: ServedModel, queue: int):
        self.model, self.queue = model, queue
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.turns = Turns(queue + 1)

    def load(self) -> dict[str, int]:
        return {"running": int(self.lock.locked()), "waiting": self.waiting, "tickets": len(self.turns.tickets)}

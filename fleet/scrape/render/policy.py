"""Auto mode: combine a page's own signals with what the fleet learned about its domain.

Learning is fleet-wide and bounded. A domain is undecided until ``render_samples`` of its
borderline pages were rendered as samples; each sample first claims one of the domain's
``render_samples`` slots in the shared store (at most that many are in flight across the
fleet), and the worker that fills the last slot decides, once (the first decision stored
wins). Meanwhile the domain's other borderline pages wait for the decision, up to
``render_learn_hold_s`` (the *hold*), then follow it; a page whose hold ends undecided is
rendered, so a domain that needs rendering still gets every page rendered. A held page
keeps its worker slot, so a worker holds at most ``max_held`` pages (a quarter of
``worker_concurrency``): a further one, on its first delivery, is *deferred* instead
(``RenderDeferred``: nak'ed for DEFER_S, fetched again then) rather than stall the worker;
redelivered, it is held. Pages whose own markup says JavaScript builds them (verdict
``render``) never wait.

The decisions and claims reach the policy through ``DecisionStore`` (a Protocol); the
shared JetStream implementation is ``fleet.nats.kv.KvDecisionStore``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Final, Protocol

from fleet.errors import RenderDeferred
from fleet.messages import RenderDecision, RenderSample
from fleet.scrape.render.assess import Assessment, domain_of, rendering_helped

log = logging.getLogger(__name__)


HOLD_POLL_S: Final = 0.25  # a held page looks for the decision this often (one read per domain)


CLAIM_RETRY_S: Final = 1.0  # slots all taken: look for a released one this often


# A deferred page comes back after this: learning takes a browser start and a few renders.
DEFER_S: Final = 2.0


class DecisionStore(Protocol):
    """Decisions and sample claims per domain, shared by every worker (``KvDecisionStore``)."""

    async def get(self, domain: str, *, fresh: bool = False) -> RenderDecision | None:
        """The decision for ``domain``, or None when none is known or it cannot be read now;
        ``fresh`` skips any local cache (a held page waiting for the decision)."""

    async def decide(self, decision: RenderDecision) -> RenderDecision:
        """Store ``decision`` unless its domain has one already; returns the one stored
        (the first wins). May raise (the policy logs it)."""

    async def claim_sample(self, domain: str) -> int | None:
        """Claim a free sample slot of ``domain`` (its number), or None when every slot is
        taken or done. Never raises: trouble reads as None."""

    async def release_sample(self, domain: str, slot: int) -> None:
        """Give a claimed slot back (its render failed): another page may sample."""

    async def report_sample(self, sample: RenderSample) -> list[RenderSample]:
        """Fill ``sample``'s slot with its result; returns the domain's finished samples."""


class MemoryDecisionStore:
    """In-process store: unit tests, and workers told not to share (never in production)."""

    def __init__(self, *, slots: int = 3) -> None:
        self._slots = slots
        self.decisions: dict[str, RenderDecision] = {}
        self.samples: dict[tuple[str, int], RenderSample] = {}

    async def get(self, domain: str, *, fresh: bool = False) -> RenderDecision | None:
        """The decision stored for ``domain``, or None."""
        return self.decisions.get(domain)

    async def decide(self, decision: RenderDecision) -> RenderDecision:
        """Keep ``decision`` unless its domain has one; returns the one kept."""
        return self.decisions.setdefault(decision.domain, decision)

    async def claim_sample(self, domain: str) -> int | None:
        """The first free slot of ``domain``, claimed; None when all are taken or done."""
        for slot in range(self._slots):
            if (domain, slot) not in self.samples:
                self.samples[domain, slot] = RenderSample(
                    domain=domain, slot=slot, claimed_at=time.time()
                )
                return slot
        return None

    async def release_sample(self, domain: str, slot: int) -> None:
        """Free the slot."""
        self.samples.pop((domain, slot), None)

    async def report_sample(self, sample: RenderSample) -> list[RenderSample]:
        """Fill the slot; returns the domain's finished samples."""
        self.samples[sample.domain, sample.slot] = sample
        return [s for (d, _), s in self.samples.items() if d == sample.domain and s.done]


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one page: render it or not, and why."""

    render: bool
    reason: str
    sample: bool = False  # a learning sample: report rendered vs HTTP text length
    slot: int = -1  # the sample slot claimed for it


class RenderPlanning(Protocol):
    """What the worker needs from the auto-mode policy (``RenderPolicy``)."""

    async def plan(self, url: str, assessment: Assessment, *, may_defer: bool = False) -> Plan:
        """Whether to render the page at ``url``, given its ``assessment``, and why; a
        borderline page of an undecided domain may wait here (the hold), or, with
        ``may_defer``, raise ``RenderDeferred`` when the hold is full."""

    async def record(self, url: str, plan: Plan, http_chars: int, rendered_chars: int) -> None:
        """Report a sample (a ``Plan`` with ``sample``): the text length by HTTP and rendered."""

    async def abandon(self, url: str, plan: Plan) -> None:
        """A sample's render failed or was not made: give its slot back."""


class RenderPolicy:
    """Auto mode: the page's own signals, and the fleet's decision about its domain."""

    def __init__(
        self,
        store: DecisionStore,
        *,
        samples: int = 3,
        hold_s: float = 10.0,
        max_held: int = 8,
        poll_s: float = HOLD_POLL_S,
    ) -> None:
        self._store = store
        self._samples = samples
        self._hold_s = hold_s
        self._max_held = max_held
        self._holding = 0  # pages waiting in _hold now
        self._poll_s = poll_s
        self._slots_full: dict[str, float] = {}  # domain -> when a claim last found no slot
        self._reads: dict[str, asyncio.Task[RenderDecision | None]] = {}  # one read per domain
        self.held = 0  # pages that waited for a decision (read by tests and the benchmark)

    async def plan(self, url: str, assessment: Assessment, *, may_defer: bool = False) -> Plan:
        """Render when the domain is learned as needing it, or the page's own signals say so.

        A borderline page (verdict ``sample``) of an undecided domain is a learning sample
        if it gets a slot, else it waits for the decision (see the module's docstring).
        """
        domain = domain_of(url)
        decision = await self._store.get(domain)
        if decision is not None and decision.needs_render:
            return Plan(True, "domain_learned")
        if assessment.verdict == "render":
            return Plan(True, assessment.reason)
        if assessment.verdict != "sample":
            return Plan(False, assessment.reason)
        if decision is not None:
            return Plan(False, "domain_static")
        claimed = await self._claim(domain)
        if claimed is not None:
            return claimed
        if may_defer and self._holding >= self._max_held:
            raise RenderDeferred(
                f"{url}: {domain} is still being learned; back in {DEFER_S:g}s",
                retry_after_s=DEFER_S,
            )
        self.held += 1
        self._holding += 1
        try:
            return await self._hold(domain)
        finally:
            self._holding -= 1

    async def _claim(self, domain: str) -> Plan | None:
        full_since = self._slots_full.get(domain)
        if full_since is not None and time.monotonic() - full_since < CLAIM_RETRY_S:
            return None
        slot = await self._store.claim_sample(domain)
        if slot is None:
            self._slots_full[domain] = time.monotonic()
            return None
        self._slots_full.pop(domain, None)
        return Plan(True, "sample", sample=True, slot=slot)

    async def _hold(self, domain: str) -> Plan:
        """Wait for the domain's decision (a released slot makes this page a sample)."""
        deadline = time.monotonic() + self._hold_s
        while True:
            decision = await self._read(domain)
            if decision is not None:
                if decision.needs_render:
                    return Plan(True, "domain_learned")
                return Plan(False, "domain_static")
            claimed = await self._claim(domain)
            if claimed is not None:
                return claimed
            left = deadline - time.monotonic()
            if left <= 0:
                # Undecided still (samples slow or failing): render, so no page that needs
                # it goes unrendered; the pool's render_concurrency bounds the browser.
                return Plan(True, "learn_hold_expired")
            await asyncio.sleep(min(self._poll_s, left))

    async def _read(self, domain: str) -> RenderDecision | None:
        """A fresh read of the decision, shared by the pages held for the same domain."""
        task = self._reads.get(domain)
        if task is None or task.done():
            task = asyncio.ensure_future(self._store.get(domain, fresh=True))
            self._reads[domain] = task
            task.add_done_callback(
                lambda t: self._reads.pop(domain, None) if self._reads.get(domain) is t else None
            )
        return await asyncio.shield(task)

    async def record(self, url: str, plan: Plan, http_chars: int, rendered_chars: int) -> None:
        """Fill the sample's slot; the sample that fills the last one decides for the domain."""
        domain = domain_of(url)
        sample = RenderSample(
            domain=domain,
            slot=plan.slot,
            claimed_at=time.time(),
            done=True,
            helped=rendering_helped(http_chars, rendered_chars),
            http_chars=http_chars,
            rendered_chars=rendered_chars,
        )
        try:
            done = await self._store.report_sample(sample)
        except Exception as exc:  # not fatal: the slot's claim goes stale and is taken over
            log.warning("could not report a render sample of %s: %s", domain, exc)
            return
        if len(done) < self._samples:
            return
        helped = sum(s.helped for s in done)
        decision = RenderDecision(
            domain=domain,
            needs_render=helped * 2 > len(done),
            samples=len(done),
            http_chars=sum(s.http_chars for s in done) // len(done),
            rendered_chars=sum(s.rendered_chars for s in done) // len(done),
            decided_at=time.time(),
        )
        try:
            stored = await self._store.decide(decision)
        except Exception as exc:  # held pages render when their hold ends; the next sample retries
            log.warning("could not store the render decision for %s: %s", domain, exc)
            return
        if stored == decision:  # this worker's decision is the one the fleet uses
            log.info(
                "learned %s: %s (%d samples, text %d -> %d chars)",
                domain,
                "render" if decision.needs_render else "http",
                decision.samples,
                decision.http_chars,
                decision.rendered_chars,
            )

    async def abandon(self, url: str, plan: Plan) -> None:
        """Give the sample's slot back, for another page of the domain."""
        domain = domain_of(url)
        try:
            await self._store.release_sample(domain, plan.slot)
        except Exception as exc:  # the claim goes stale and is taken over
            log.warning("could not release a render sample slot of %s: %s", domain, exc)
        self._slots_full.pop(domain, None)

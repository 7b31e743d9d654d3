"""Auto mode: combine a page's own signals with what the fleet learned about its domain.

The learned decisions reach the policy through ``DecisionStore`` (a Protocol); the shared
JetStream implementation is ``fleet.nats.kv.KvDecisionStore``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fleet.messages import RenderDecision

if TYPE_CHECKING:
    pass
from fleet.scrape.render.assess import Assessment, domain_of, rendering_helped

log = logging.getLogger(__name__)


class DecisionStore(Protocol):
    """Where the per-domain render decisions live, shared by every worker (``KvDecisionStore``)."""

    async def get(self, domain: str) -> RenderDecision | None:
        """The decision for ``domain``, or None when none is known or it cannot be read now."""

    async def put(self, decision: RenderDecision) -> None:
        """Store ``decision`` under its domain, replacing any; may raise (the policy logs it)."""


class MemoryDecisionStore:
    """In-process store: unit tests, and workers told not to share (never in production)."""

    def __init__(self) -> None:
        self.decisions: dict[str, RenderDecision] = {}

    async def get(self, domain: str) -> RenderDecision | None:
        """The decision stored for ``domain``, or None."""
        return self.decisions.get(domain)

    async def put(self, decision: RenderDecision) -> None:
        """Keep ``decision`` under its domain, replacing any."""
        self.decisions[decision.domain] = decision


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one page: render it or not, and why."""

    render: bool
    reason: str
    sample: bool = False  # a learning sample: record rendered vs HTTP text length


class RenderPlanning(Protocol):
    """What the worker needs from the auto-mode policy (``RenderPolicy``)."""

    async def plan(self, url: str, assessment: Assessment) -> Plan:
        """Whether to render the page at ``url``, given its ``assessment``, and why."""

    async def record(self, url: str, http_chars: int, rendered_chars: int) -> None:
        """Report a sample (a ``Plan`` with ``sample``): the text length by HTTP and rendered."""


@dataclass
class _Samples:
    helped: int = 0
    total: int = 0
    http_chars: int = 0
    rendered_chars: int = 0


class RenderPolicy:
    """Auto mode: combine the page's own signals with what is known about its domain."""

    def __init__(self, store: DecisionStore, *, samples_needed: int = 3) -> None:
        self._store = store
        self._needed = samples_needed
        self._samples: dict[str, _Samples] = {}

    async def plan(self, url: str, assessment: Assessment) -> Plan:
        """Render when the domain is learned as needing it, or the page's own signals say so.

        A borderline page (verdict ``sample``) is rendered as a learning sample until its domain
        has a decision; a domain learned as static is not rendered.
        """
        domain = domain_of(url)
        decision = await self._store.get(domain)
        if decision is not None and decision.needs_render:
            return Plan(True, "domain_learned")
        if assessment.verdict == "render":
            return Plan(True, assessment.reason)
        if assessment.verdict == "sample":
            if decision is not None:
                return Plan(False, "domain_static")
            return Plan(True, "sample", sample=True)
        return Plan(False, assessment.reason)

    async def record(self, url: str, http_chars: int, rendered_chars: int) -> None:
        """Count one sample; with enough of them, decide for the domain and share it."""
        domain = domain_of(url)
        s = self._samples.setdefault(domain, _Samples())
        s.total += 1
        s.helped += rendering_helped(http_chars, rendered_chars)
        s.http_chars += http_chars
        s.rendered_chars += rendered_chars
        if s.total < self._needed:
            return
        decision = RenderDecision(
            domain=domain,
            needs_render=s.helped * 2 > s.total,
            samples=s.total,
            http_chars=s.http_chars // s.total,
            rendered_chars=s.rendered_chars // s.total,
            decided_at=time.time(),
        )
        del self._samples[domain]
        try:
            await self._store.put(decision)
        except Exception as exc:  # not fatal: another sample round will try again
            log.warning("could not store the render decision for %s: %s", domain, exc)
            return
        log.info(
            "learned %s: %s (%d samples, text %d -> %d chars)",
            domain,
            "render" if decision.needs_render else "http",
            decision.samples,
            decision.http_chars,
            decision.rendered_chars,
        )

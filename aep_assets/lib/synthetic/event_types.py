"""The reference's experience event types and the integer tables the process and the oracle share.

Each type has a weekly rate, a propensity delta, a mean lag after its parent event and its parent
types (`base` for the independent ones). Types are coded by their position in `EVENT_TYPES`; the
propensity is kept in integer units of 0.001 (every delta is a multiple), so its walk is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TARGET_EVENT = "web.formFilledOut"
BASE = "base"


@dataclass(frozen=True)
class EventType:
    """One experience event type of the reference generator."""

    name: str
    rate_per_week: float
    delta: float
    lag_hours: float
    parents: tuple[str, ...]

    @property
    def draws(self) -> bool:
        """Whether a Bernoulli(p) conversion draw follows an event of this type."""
        return self.name != TARGET_EVENT and not self.name.startswith(("directMarketing.", "advertising."))


EVENT_TYPES: dict[str, EventType] = {
    e.name: e
    for e in (
        EventType("advertising.impressions", 0.1, 0.001, 0.0, (BASE,)),
        EventType("advertising.clicks", 0.01, 0.002, 0.5, ("advertising.impressions",)),
        EventType("web.webpagedetails.pageViews", 0.1, 0.005, 0.1, (BASE, "directMarketing.emailClicked")),
        EventType("web.webinteraction.linkClicks", 0.05, 0.005, 0.1, ("web.webpagedetails.pageViews",)),
        EventType("commerce.productViews", 0.05, 0.005, 0.2, ("web.webpagedetails.pageViews",)),
        EventType("commerce.purchases", 0.01, 0.1, 1.0, ("commerce.productViews",)),
        EventType("decisioning.propositionDisplay", 0.05, 0.005, 0.1, ("web.webpagedetails.pageViews",)),
        EventType("decisioning.propositionInteract", 0.01, 0.1, 0.05, ("decisioning.propositionDisplay",)),
        EventType("decisioning.propositionDismiss", 0.01, -0.2, 0.05, ("decisioning.propositionDisplay",)),
        EventType("directMarketing.emailSent", 0.5, 0.005, 0.0, (BASE,)),
        EventType("directMarketing.emailOpened", 0.2, 0.02, 24.0, ("directMarketing.emailSent",)),
        EventType("directMarketing.emailClicked", 0.05, 0.1, 0.5, ("directMarketing.emailOpened",)),
        EventType(TARGET_EVENT, 0.0, 0.0, 60.0 / 3600.0, ("conversion",)),
    )
}

NAMES = tuple(EVENT_TYPES)
CODE = {name: i for i, name in enumerate(NAMES)}
IMP, ACL, PV, LC, PRV, PUR, DSP, INT, DIS, SENT, OPEN, ECL, FORM = (
    CODE[n] for n in (
        "advertising.impressions", "advertising.clicks", "web.webpagedetails.pageViews",
        "web.webinteraction.linkClicks", "commerce.productViews", "commerce.purchases",
        "decisioning.propositionDisplay", "decisioning.propositionInteract", "decisioning.propositionDismiss",
        "directMarketing.emailSent", "directMarketing.emailOpened", "directMarketing.emailClicked", TARGET_EVENT,
    )
)
P0 = 1                  # starting propensity, in units of 0.001
P1 = 1000               # propensity 1
DELTA = np.array([round(EVENT_TYPES[n].delta * P1) for n in NAMES], dtype=np.int64)
DRAWING = np.array([EVENT_TYPES[n].draws for n in NAMES])  # a conversion draw follows the type
RATE = np.array([EVENT_TYPES[n].rate_per_week for n in NAMES])
LAG = np.array([EVENT_TYPES[n].lag_hours for n in NAMES])
# children of each parent, in the reference's processing order (siblings share the anchor)
KIDS = {IMP: (ACL,), SENT: (OPEN,), OPEN: (ECL,), ECL: (PV,), PV: (LC, PRV, DSP), PRV: (PUR,), DSP: (INT, DIS)}
PARENT = {kid: parent for parent, kids in KIDS.items() for kid in kids}

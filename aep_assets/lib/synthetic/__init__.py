"""Synthetic customers and their experience events: the outside source of the CMLE propensity workflow.

The workflow predicts which customers will fill out the subscription form (`web.formFilledOut`)
within two weeks. This package plays the customer base: profiles and ten weeks of advertising, email,
web, commerce and decisioning events, generated the way Adobe's CMLE reference does, plus what no real
system knows: each customer's true probability of converting in the label window given what was
observable at the cutoff, the ceiling a model is measured against.

The process (`process`, its types in `event_types`) is the reference's generator (Adobe's CMLE
Databricks notebooks, `SimulationHelpers.create_data_for_n_users`) with its effective semantics,
which are what give its 1.06M events per 100k users:

- Base types (`advertising.impressions`, `directMarketing.emailSent`, `web.webpagedetails.pageViews`):
  Poisson(rate x weeks) events per user, uniform over the timeline.
- Every other type has one parent type. If a user has parent events, ONE of them, uniformly at
  random, anchors all child types of that parent (the reference overwrites the child list in its
  loop over parent events and its lists are in random order, so the last parent event's children
  survive); each child type gets Poisson(rate x weeks) events at anchor + Exponential(mean lag).
  Anchors are chosen among all parent events, including those that land after the end.
- Page views are both: a user with any `directMarketing.emailClicked` has the base page views
  replaced by Poisson(rate x weeks) page views after an anchor click (the reference's
  `emailClicked -> pageViews` dependency overwrites the base list). So a user who clicked an email
  has all page views right after that click, and rarely converts later: a quirk of the reference
  that the ground truth knows and a model can learn.
- Events after the end of the timeline are dropped (the reference keeps them: they are not data yet).
- p starts at 0.001; events in time order add their delta, clipped to [0, 1]; after every event
  that is not `directMarketing.*` or `advertising.*` a Bernoulli(p) draw; the first success adds
  `web.formFilledOut` 60 s later (dropped if after the end) and ends the draws; other events go on.
  The "churn after 10 impressions or 5 emails" in the reference's text is not in its code, nor here.

The ground truth (`oracle`): for each user without a form before the cutoff and among the held-out
profiles (`holdout.is_held_out` of the userid at `oracle_fraction`, by default training's
HOLDOUT_FRACTION: the only users the oracle is ever compared with a model on; 1.0: every user without
a form), `oracle_probability` is P(form in [cutoff, cutoff + horizon] | the user's events strictly
before the cutoff), the features' point in time (a form at the cutoff is a label, an event at it is
not seen); null for the others and when `oracle_draws` is 0. It is a Monte Carlo expectation over
this same process, `oracle_draws` draws per user, exact in expectation:

- Each draw is conditioned on the events seen (`posterior`): per parent type, the anchor of its
  children comes from its posterior given the children seen, and the draw is weighted by their
  likelihood; page views are weighed between "base" and "children of a click".
- Plain draws from the prior are mostly indicator noise (most have no event that can convert in the
  window, a few carry much of the mean), so a draw splits into weighted branches at the binary
  events that decide whether anything can convert, and every other choice is stratified over the
  user's draws (`chunk`). A user's value is the ratio of the weighted sums over its draws.
- A draw's conversion probability is exact given its events, 1 - prod(1 - p) over its Bernoulli
  draws in the window; draws whose form would land after min(cutoff + horizon, end) do not count,
  draws in the last 60 s before the cutoff (form still to come) do.

Identities (`identities`): a `userid` is 38 digits, the FNV-1a 64 hash of the email and a keyed
bijection of the user's number (batch, index in the batch), unique across every batch of a seed
whatever the batch sizes; event ids are keyed from (user, sequence among its events). Profiles
(`profiles`) sample Faker pools made once with a fixed seed. Every batch draws from numpy streams
spawned from (seed, batch) (`generator`), so any batch, including new ones past the initial K, is
generated alone and identically; its events come sorted by (userid, time) (`events`).

Measured event rates, the oracle's accuracy and the generator's cost: docs/performance.md.
"""

from aep_assets.lib.synthetic.config import SyntheticConfig, SyntheticData
from aep_assets.lib.synthetic.event_types import BASE, EVENT_TYPES, TARGET_EVENT, EventType
from aep_assets.lib.synthetic.events import PRODUCED_BY
from aep_assets.lib.synthetic.generator import generate, generate_batch

__all__ = [
    "BASE", "EVENT_TYPES", "PRODUCED_BY", "TARGET_EVENT", "EventType", "SyntheticConfig", "SyntheticData",
    "generate", "generate_batch",
]

"""A customer's consent to personalisation, as stored for every replica (SetConsent).

Stored per customer in the live state (:meth:`recsvc.store.KeyScheme.consent`) and
read with the customer's state on every call, so it holds whatever a request's
``non_personalized`` flag says:

- ``FULL``: personalised from history, sessions and the trained model (the default,
  when nothing is stored);
- ``SESSION_ONLY``: the current visit only: the session's events are used as an
  anonymous visitor's would be; no history, no vector, no event-log row is kept, and a
  login does not merge the session into the customer;
- ``OFF``: answered as ``non_personalized``; nothing of the customer is kept.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Consent"]


class Consent(StrEnum):
    """What a customer consents to (the stored value is the member's value)."""

    FULL = "full"
    SESSION_ONLY = "session"
    OFF = "off"

    @property
    def keeps_history(self) -> bool:
        """Whether history, vectors and event-log rows may be kept."""
        return self is Consent.FULL

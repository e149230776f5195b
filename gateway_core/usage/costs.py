"""What tokens cost, from the price table: integer micro-dollars, or None for a model the table does not price."""

from __future__ import annotations

import logging

from .prices import PriceTable

log = logging.getLogger("aigw")


class Costs:
    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        self._warned: set[str] = set()

    def micro_usd(self, model: str | None, prompt: int, completion: int, cached_prompt: int = 0) -> int | None:
        """The cost of these tokens on ``model``: 0 for no tokens at all (nothing was billed), None when there
        are tokens and no price (unknown, never 0; warned once per model)."""
        if prompt <= 0 and completion <= 0:
            return 0
        price = self.prices.price_of(model)
        if price is None:
            name = model or "(none)"
            if name not in self._warned:
                self._warned.add(name)
                log.warning("usage: model %r has no price; its usage is recorded with cost null", name)
            return None
        return price.cost_micro_usd(prompt, completion, cached_prompt)

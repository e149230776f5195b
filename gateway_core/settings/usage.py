"""The usage section: records, price overrides (parsed once, here), the batched writer and the summariser."""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..usage.prices import PriceError, PriceTable, load_prices
from .base import Section


class UsageSettings(Section):
    """Usage records and costs (``stores.usage`` says where they go)."""

    enabled: bool = True  # one record per request (not /healthz); off: nothing is recorded
    # Price overrides, model -> {input, cached_input, output: USD per 1M tokens as strings, aliases: [...]};
    # laid over the built-in table (gateway_core/usage/prices.json), an entry replacing the model's whole entry.
    prices: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # The batched writer (aigw serve): a batch is written when it has flush_max_records or its oldest record is
    # flush_interval_s old; a failed write is retried (retry_initial_s, doubling) and, after spill_after_failures
    # failures or spill_after_s, spilled to a local file (spill_dir, at most spill_max_bytes) and replayed later.
    flush_max_records: int = Field(default=100, ge=1, le=10_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=300)
    max_buffered_records: int = Field(default=10_000, ge=1)  # beyond it (store down), records spill at once
    retry_initial_s: float = Field(default=0.5, gt=0, le=60)
    spill_after_failures: int = Field(default=3, ge=1)
    spill_after_s: float = Field(default=30.0, gt=0)
    spill_dir: str = ".aigw/usage-spill"
    spill_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # The summariser (the queue consumer): a message whose batch is still missing after max_dequeues deliveries
    # goes to the poison queue; pending batches older than sweep_older_than_s are re-summarised every
    # sweep_interval_s (and at start), so a lost message never loses a batch.
    max_dequeues: int = Field(default=5, ge=1, le=100)
    visibility_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    sweep_interval_s: float = Field(default=300.0, gt=0)
    sweep_older_than_s: float = Field(default=60.0, ge=0)

    _price_table: PriceTable = PrivateAttr()

    @model_validator(mode="after")
    def _parse_prices(self) -> UsageSettings:
        # Parsed once, kept for whoever needs the table (the budget check of GatewayConfig); a bad price is
        # reported at usage.prices, with its line, as a validator of that field would.
        try:
            self._price_table = load_prices(self.prices)
        except PriceError as exc:
            error = PydanticCustomError("value_error", "{reason}", {"reason": str(exc)})
            raise ValidationError.from_exception_data(
                type(self).__name__, [InitErrorDetails(type=error, loc=("prices",), input=self.prices)]
            ) from None
        return self

    @property
    def price_table(self) -> PriceTable:
        """The built-in prices with ``prices`` laid over them, as parsed when this section was validated."""
        return self._price_table

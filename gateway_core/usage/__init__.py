"""Usage records, prices and cost summaries: what every request cost, recorded once, summed by a queue consumer
(on SQLite, by the writer in the transaction that stores each batch)."""

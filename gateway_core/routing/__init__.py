"""Where a request goes: pools per deployment, ordering strategies, the failover loop, health state."""

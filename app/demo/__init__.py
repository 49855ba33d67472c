"""``lithowatch demo``: the whole system on one machine, from nothing, in minutes."""

"""Memory: the reservation and its regions, leases over committed spans, and the pool."""

"""Values: configuration, identifiers, errors and units. Pure: no system calls."""

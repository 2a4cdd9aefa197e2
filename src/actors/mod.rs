//! Session actors and the supervised inference pool.

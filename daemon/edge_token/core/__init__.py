"""The pure core: no I/O; imports only core/ and the standard library."""

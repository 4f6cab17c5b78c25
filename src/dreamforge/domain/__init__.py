"""The pure core: job specs, states, progress and error codes. No I/O lives here."""

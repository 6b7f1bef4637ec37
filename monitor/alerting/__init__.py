"""From scores to alert events: the state machine and event clips."""

"""Tasks, streams, sources, scenarios and readers."""

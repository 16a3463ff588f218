"""Dashboard and chat widgets, grouped by screen area."""

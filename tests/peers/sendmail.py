"""Real Sendmail 8.17 in a private namespace (filled in by the kit work)."""

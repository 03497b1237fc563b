"""A real Mailman 3.3.10 LMTP runner (filled in by the Mailman 3 work)."""

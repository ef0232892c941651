"""HTTP plumbing shared by every client: sessions, bounded exchanges, egress, TLS, failure text."""

"""Everything that touches Ray lives here; modules import Ray lazily so the CLI stays fast."""

"""rewards layer (see README for what lives here)."""

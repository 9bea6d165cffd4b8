"""search layer (see README for what lives here)."""

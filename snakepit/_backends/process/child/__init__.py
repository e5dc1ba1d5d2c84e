"""What runs inside a worker process (never imported by the owner's pool)."""

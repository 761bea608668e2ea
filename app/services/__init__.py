"""Domain operations on a session. They flush, never commit: the caller owns the transaction."""

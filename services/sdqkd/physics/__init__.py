"""QKD link physics: analytical models and the protocol-level key generation pipeline (no Django)."""

"""State behind small async ports (``ports.py``), one adapter module per backend, chosen by URL."""

"""The pipeline's policies, each ``async __call__(ctx, call_next)``; the order lives in ``app.py``."""

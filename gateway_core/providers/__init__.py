"""Backends' wire formats (one translator each), their credentials, and the HTTP client that calls them."""

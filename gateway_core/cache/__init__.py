"""Response caching: keys and scopes, what may be cached, and turning stored answers back into streams."""

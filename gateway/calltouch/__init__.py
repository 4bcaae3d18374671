"""The HTTP client for every Calltouch endpoint, and what its answers mean."""

"""The Calltouch simulator: demo and test code, never on a production path."""

"""What SREs see and what keeps the store tidy: metrics, logs, retention, the ops listener."""

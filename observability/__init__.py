"""What an operator sees: structured logs with ids to follow one message (logs.py) and
Prometheus metrics (metrics.py), for the HTTP service and the workers alike."""

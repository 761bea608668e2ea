"""The broker: the one part of `app` that knows Celery, kombu and the broker's own keys.
`dispatch.py` publishes and answers what the broker holds; `messages.py` builds plan
messages in Celery's own form; `scan.py` reads the Redis broker's keys behind `dispatch.py`."""

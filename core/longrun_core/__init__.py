"""Domain of longrun: the operation model, its state machine, the two seams
(operation store, task queue), their adapters, and settings.

`server/` and `worker/` import from here; nothing here imports them.
"""

"""Example: a typed user API (convert.v1.Converter) served by longrun.

`examples.convert.tasks` declares the `convert` task (load it in the server and
the workers with LONGRUN_TASK_MODULES); `examples.convert.service` mounts the
Converter service on the longrun server. See examples/README.md.
"""

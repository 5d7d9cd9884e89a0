"""Event triggers: Pub/Sub messages (Cloud Storage notifications among them)
that become operations. `longrun-trigger` runs them as a process of its own
that creates operations through the server's Jobs.CreateJob (see
docs/triggers.md).

* config.py: the TOML file of triggers (`--triggers-file`).
* events.py: one message -> a decision (create, filtered, malformed), pure.
* runner.py: the pull loop, CreateJob calls, acks, dead letters, counters.
* cli.py: the `longrun-trigger` command.
"""

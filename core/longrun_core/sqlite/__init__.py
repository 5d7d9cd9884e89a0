"""Embedded default backends: an SQLite operation store and an SQLite-backed
task queue in one database file, safe across processes on one machine (WAL,
busy timeout, guarded writes), with change notification between processes
over Unix datagram sockets (`notify.py`)."""

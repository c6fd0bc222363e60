"""Helpers for testing and benchmarking changefeed (and applications built on it) against real
servers started on the spot: free ports, temporary directories, stopped by their own PID."""

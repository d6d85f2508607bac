"""Test data helpers: a local HTTP image server and the bad-input corpus generator."""

"""Tests of the storage adapters: one contract every adapter passes, run against real servers."""

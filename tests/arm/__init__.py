"""Tests of the Batch AI 2018-05-01 surface under /arm, driven by Azure's own clients."""

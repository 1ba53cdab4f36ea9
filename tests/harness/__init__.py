"""Test helpers that run real services (an S3 endpoint) in-process."""

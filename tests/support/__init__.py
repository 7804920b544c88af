"""Test doubles that are real servers, run inside the test process."""

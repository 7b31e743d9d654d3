"""Test doubles for services fleet talks to (kept standalone so they can run in containers)."""

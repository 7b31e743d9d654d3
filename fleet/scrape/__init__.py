"""Scraping: guarded fetch, extraction, the browser path; nothing here knows NATS."""

"""Rendering with Chromium: when a page needs it (assess, policy), and the pool that does it."""

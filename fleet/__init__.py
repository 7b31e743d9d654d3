"""fleet: a streaming scraper fleet over NATS JetStream."""

__version__ = "0.1.0"

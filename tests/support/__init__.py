"""Test helpers: real brokers, cameras, media, models, web harnesses (imported as `support.<module>`)."""

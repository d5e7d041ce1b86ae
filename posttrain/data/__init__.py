"""Data: sources (hub or local files), row formats, and the SFT collator with exact prompt masking."""

"""1. Reading and cleaning: transcripts in (JSONL, help-desk CSV, plain text), each rejected line
reported with its file and line, PII redacted; conversations out (``prepare.load_conversations``)."""

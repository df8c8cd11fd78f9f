"""steadyscribe: audio folders and buckets to Whisper transcripts with word timestamps, as Parquet."""

__version__ = "0.1.0"

SAMPLE_RATE = 16_000

"""The Hugging Face Hub as a source: revisions pinned to commits, LFS hashes reused."""

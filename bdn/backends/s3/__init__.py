"""Amazon S3 and S3-compatible servers (R2 too): client, credentials, store and source."""

"""Google Cloud Storage: client, credentials, store and source."""

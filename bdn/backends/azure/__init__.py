"""Azure Blob Storage: ``azure://account/container[/prefix]`` as a weights source and a store."""

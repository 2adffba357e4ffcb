"""A Hugging Face Hub-compatible read endpoint over the store and the node cache.

Unmodified model code (``from_pretrained``, ``snapshot_download``,
``hf_hub_download``) pulls mirrored weights through BDN with
``HF_ENDPOINT=http://HOST:PORT/hf``: :mod:`bdn.hub.app` answers the Hub's
download API, :mod:`bdn.hub.revisions` maps (repo, revision) to mirrored
manifests, :mod:`bdn.hub.blobs` streams blobs while the node cache fills, and
:mod:`bdn.hub.serve` is ``bdn serve`` (one machine, no agent). The node agent
mounts the same app on its ``--hf-listen`` port. Daemon-side: the library
never imports this package.
"""

"""The consistent hash ring that gives every chunk an owner node.

See docs/DESIGN.md, "The three tiers".

Pure: no I/O, no clock. Membership comes from outside (the agent's peer list
or DNS); a change of members moves about 1/N of the chunks, so a node joining
or leaving does not send the whole cluster back to origin. The hashing itself
is ``uhashring``'s ketama continuum; this module only fixes what a key is and
how replicas are chosen.

>>> ring = Ring(["10.0.0.1:7070", "10.0.0.2:7070", "10.0.0.3:7070"])
>>> d = Digest("ab" * 32)
>>> ring.owner(d, 0) in ring.members
True
>>> len(Ring(["a", "b", "c"], RingConfig(replicas=2)).owners(d, 5))
2
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from uhashring import HashRing

from bdn.digest import Digest


@dataclass(frozen=True, slots=True)
class RingConfig:
    """How chunks map to owners.

    Attributes:
        replicas: owners per chunk; the first is asked first, the others when
            it fails (a replication factor for hot or precious chunks).
        vnodes: points per member on the continuum; more points even out the
            share of each member at the cost of a bigger ring.
    """

    replicas: int = 1
    vnodes: int = 160

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.vnodes < 1:
            raise ValueError("RingConfig.replicas and vnodes must be >= 1")


DEFAULT_RING_CONFIG = RingConfig()


def chunk_key(digest: Digest, index: int) -> str:
    """The ring key of chunk ``index`` of blob ``digest``."""
    return f"{digest.hex}:{index}"


class Ring:
    """An immutable ring over ``members`` (peer addresses such as ``host:port``).

    Thread-safe (read-only after construction). An empty ring owns nothing.
    """

    def __init__(self, members: Iterable[str], config: RingConfig = DEFAULT_RING_CONFIG) -> None:
        self.members = frozenset(members)
        self.config = config
        self._ring: HashRing | None = None
        if self.members:
            self._ring = HashRing(nodes=sorted(self.members), vnodes=config.vnodes)

    def owners(self, digest: Digest, index: int) -> list[str]:
        """Up to ``replicas`` distinct members for the chunk, preferred first."""
        if self._ring is None:
            return []
        want = min(self.config.replicas, len(self.members))
        if want == 1:
            return [str(self._ring.get_node(chunk_key(digest, index)))]
        found: list[str] = []
        for node in self._ring.range(chunk_key(digest, index), want, unique=True):
            found.append(str(node["nodename"] if isinstance(node, dict) else node))
        return found

    def owner(self, digest: Digest, index: int) -> str | None:
        """The preferred owner of the chunk, or ``None`` for an empty ring."""
        owners = self.owners(digest, index)
        return owners[0] if owners else None

    def with_members(self, members: Iterable[str]) -> Ring:
        """A ring with the same config over another member set."""
        return Ring(members, self.config)

    def __repr__(self) -> str:
        return f"Ring({sorted(self.members)!r}, replicas={self.config.replicas})"

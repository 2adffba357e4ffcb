"""The PNG of ``bdn simulate --plot``: time-to-ready against fleet size, one line per policy.

matplotlib is optional: it is imported only here, only when a plot is asked
for, and its absence is a one-line error naming the package to install. The
file appears whole or not at all (written beside its target, then renamed).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bdn.errors import ConfigError
from bdn.simulate.report import Result, assumptions
from bdn.simulate.scenario import POLICY_NAMES

__all__ = ["write_plot"]

_STYLE = {"naive": "tab:red", "ring": "tab:blue", "fanout": "tab:green"}
"""One colour per policy, the same in every plot."""


def write_plot(results: Sequence[Result], path: Path) -> None:
    """Draw p50 (solid) and p99 (dashed) time-to-ready against N per policy into ``path``.

    Raises:
        ConfigError: matplotlib is missing, or ``path``'s folder cannot be written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib; pip install matplotlib",
                          field="--plot") from None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for policy in POLICY_NAMES:
        rows = sorted((r for r in results if r.scenario.policy == policy),
                      key=lambda r: r.scenario.nodes)
        if not rows:
            continue
        xs = [r.scenario.nodes for r in rows]
        colour = _STYLE[policy]
        ax.plot(xs, [r.p50_s for r in rows], "o-", color=colour, label=f"{policy} p50")
        ax.plot(xs, [r.p99_s for r in rows], "s--", color=colour, alpha=0.7,
                label=f"{policy} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes pulling at once")
    ax.set_ylabel("time-to-ready per node (s)")
    if results:
        s = results[0].scenario
        ax.set_title(f"bdn simulate: {s.model_bytes / 1e9:g} GB model, "
                     f"{s.chunks} chunks, fan-out {s.fanout}", fontsize=11)
        fig.text(0.01, 0.01, assumptions(s), fontsize=6.5, alpha=0.8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                   dir=target.parent if str(target.parent) else ".")
    except OSError as err:
        plt.close(fig)
        raise ConfigError(f"cannot write {target}: {err.strerror}; pick a writable folder",
                          field="--plot") from None
    try:
        with os.fdopen(fd, "wb") as out:
            fig.savefig(out, format="png")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is for the temp name, not the result.
        os.replace(tmp, target)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write {target}: {err.strerror}; pick another file",
                          field="--plot") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)

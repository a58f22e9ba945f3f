"""The one loud warning printed wherever a submission's code runs without a sandbox: ``hygieia run
--sandbox none`` (or with neither Docker nor bubblewrap usable), and ingestion run outside a container.
"""

from __future__ import annotations

import sys

NO_SANDBOX_WARNING = """\
WARNING: no sandbox: the submission's code runs as a plain process of this machine's user.
WARNING: it can read this machine's files (reference data included), use the network, use all of
WARNING: its memory and disk, and leave processes behind. Do not run untrusted code this way: run
WARNING: it in the competition's Docker image, or through `hygieia run` with bubblewrap installed
WARNING: (apt-get install bubblewrap)."""


def warn_no_sandbox(program: str, why: str, file=None) -> None:
    """Print ``why`` and the warning, each line prefixed with ``program:``, to stderr."""
    file = file or sys.stderr
    lines = [f"WARNING: {why}"] + NO_SANDBOX_WARNING.splitlines()
    print("\n".join(f"{program}: {line}" for line in lines), file=file, flush=True)

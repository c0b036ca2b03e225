"""What XLA's SPMD partitioner logs while a sharded program compiles, and its full
rematerialisations.

When the partitioner cannot turn one sharding of a tensor into another with collectives
on the shards, it replicates the whole tensor on every device and slices it again, and
says so: ``[SPMD] Involuntary full rematerialization. The compiler cannot go from
sharding A to B efficiently for HLO operation ...``. That line is the only trace of it:
it comes from C++ (absl logging, straight to the process's file descriptor 2) at compile
time, so it reaches neither Python's ``logging`` nor ``warnings``, and the compiled HLO
does not mark it (the all-gather and dynamic-slice it emits are the ops every FSDP weight
gather uses too, so reading them from the HLO would be a guess).

``capture()`` points file descriptor 2 at a temporary file while its block runs (compile
inside it), then writes what it caught back to the real stderr, so nothing is lost;
``full_rematerializations`` picks the partitioner's warnings out of it. File descriptors
belong to the process: anything any thread writes to stderr meanwhile is caught too.

Only a compile that XLA runs logs: a program read back from JAX's persistent compilation
cache (``JAX_COMPILATION_CACHE_DIR``; JAX decides once per process whether to read it) or
one this process has compiled before is not partitioned again, and a process whose XLA log
level is raised above warnings (``TF_CPP_MIN_LOG_LEVEL`` >= 2) prints nothing. A check
built on this should run where neither holds and first see the warning from a program
known to cause it (``tests/parallel/test_full_remat.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import tempfile
from typing import Iterator

FULL_REMAT = "Involuntary full rematerialization"
_LINE = re.compile(r"^.*" + re.escape(FULL_REMAT) + r".*$", re.MULTILINE)


@dataclasses.dataclass
class Log:
    """What file descriptor 2 received inside ``capture`` (filled in when it closes)."""

    text: str = ""

    def full_rematerializations(self) -> list[str]:
        return full_rematerializations(self.text)


def full_rematerializations(text: str) -> list[str]:
    """The partitioner's "involuntary full rematerialization" lines in ``text``, one per
    tensor it replicated (each names the sharding it could not leave, the one it wanted,
    and the HLO operation, with the jaxpr equation in its metadata)."""
    return _LINE.findall(text)


@contextlib.contextmanager
def capture() -> Iterator[Log]:
    """Catch this process's file descriptor 2 (XLA's C++ log) while the block runs."""
    log = Log()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield log
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            raw = f.read()
            with open(2, "wb", closefd=False) as err:  # back to the real stderr, all of it
                err.write(raw)
            log.text = raw.decode(errors="replace")


__all__ = ["FULL_REMAT", "Log", "capture", "full_rematerializations"]

"""The device mesh (``data``, ``fsdp``, ``tensor``) and multi-host start-up.

``MeshConfig`` gives one size per axis; ``-1`` means "the devices left over" (at most
one axis may say so). ``DistributedConfig`` says whether and how to call
``jax.distributed.initialize``: ``auto`` does it when the environment is a
multi-process job (SLURM with several tasks, a TPU pod that exports its worker
list, or ``JAX_COORDINATOR_ADDRESS``), ``on`` always does it (JAX then detects TPU
pods, SLURM, Open MPI, Kubernetes itself), ``off`` never does. An explicit
``coordinator_address`` with ``num_processes`` and ``process_id`` overrides detection.
``initialize_distributed`` must run before anything else touches JAX devices.
Both are typed: the jobs build them from ``c.mesh`` and ``c.distributed``
(``jobs.sharding``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh

from seam_jax.errors import ConfigError

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes (-1: the rest of the devices), the rules preset, and whether
    a training job runs sharded (``use``: auto | on | off, ``sharded.wants_sharding``)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    rules: str = "fsdp_tp"
    use: str = "auto"

    def __post_init__(self) -> None:
        if self.use not in ("auto", "on", "off"):
            raise ConfigError(f"mesh.use={self.use!r}; choose auto, on or off")

    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)


def resolve_sizes(sizes: Sequence[int], num_devices: int, names: Sequence[str] = AXES) -> tuple[int, ...]:
    """Replace a single -1 by ``num_devices / prod(other sizes)``; check the product.

    Raises:
      ConfigError: more than one -1, a size below 1, or sizes that do not multiply to
        ``num_devices``.
    """
    sizes = tuple(int(s) for s in sizes)
    desc = ", ".join(f"{n}={s}" for n, s in zip(names, sizes))
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ConfigError(f"mesh ({desc}): only one axis may be -1 (the rest of the devices)")
    if any(s < 1 for i, s in enumerate(sizes) if i not in free):
        raise ConfigError(f"mesh ({desc}): axis sizes must be positive, or -1 for the rest")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(f"mesh ({desc}): {num_devices} devices do not divide by the fixed "
                              f"axes' product {fixed}")
        sizes = tuple(num_devices // fixed if s == -1 else s for s in sizes)
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh ({desc}) has {math.prod(sizes)} devices but {num_devices} are "
                          f"in use; set one axis to -1 or make the product {num_devices}")
    return sizes


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (default: all devices of all hosts).

    ``jax.make_mesh`` orders the devices for the physical topology (ICI rings on TPU)
    and host-major, so ``tensor`` (the last, fastest-varying axis) stays within a host.
    Axes are ``Auto``: jit's sharding propagation (GSPMD) places what we do not.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_sizes(cfg.sizes(), len(devices))
    mesh = jax.make_mesh(sizes, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), len(devices), devices[0].platform)
    return mesh


# ------------------------------------------------------------------ multi-host
@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """``c.distributed``: mode auto | on | off, and an optional explicit coordinator."""

    mode: str = "auto"
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    local_device_ids: str = ""  # comma-separated, for one process per GPU on a host
    init_timeout: float = 60.0  # seconds for the coordinator and every process to join
    # Seconds without a heartbeat after which a process counts as gone and the others stop
    # (JAX's default is 100).
    heartbeat_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "on", "off"):
            raise ConfigError(f"distributed.mode={self.mode!r}; choose auto, on or off")


def multiprocess_environment(env: Mapping[str, str] | None = None) -> str | None:
    """Name of the multi-process launcher the environment shows, or None for one process."""
    env = os.environ if env is None else env
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    ntasks = env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS")
    if env.get("SLURM_JOB_ID") and ntasks and int(ntasks) > 1:
        return "SLURM"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "TPU pod"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "TPU multislice"
    return None


def distributed_kwargs(cfg: DistributedConfig, env: Mapping[str, str] | None = None
                       ) -> dict[str, Any] | None:
    """The arguments for ``jax.distributed.initialize``, or None when it should not be called.

    An empty dict means "let JAX detect the cluster" (TPU pod, SLURM, Open MPI, ...).
    """
    env = os.environ if env is None else env
    if cfg.mode == "off":
        return None
    kw: dict[str, Any] = {}
    address = cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
    if address:
        nproc = cfg.num_processes or int(env.get("JAX_NUM_PROCESSES", "0"))
        pid = cfg.process_id if cfg.process_id >= 0 else int(env.get("JAX_PROCESS_ID", "-1"))
        if nproc < 1 or pid < 0:
            raise ConfigError(
                f"coordinator {address} is set but the process count or id is not: set "
                f"distributed.num_processes and distributed.process_id (or JAX_NUM_PROCESSES "
                f"and JAX_PROCESS_ID)")
        kw = dict(coordinator_address=address, num_processes=nproc, process_id=pid)
    if cfg.local_device_ids:
        kw["local_device_ids"] = [int(x) for x in cfg.local_device_ids.split(",")]
    if cfg.mode == "auto" and not kw and multiprocess_environment(env) is None:
        return None
    return kw


def initialize_distributed(cfg: DistributedConfig) -> bool:
    """Call ``jax.distributed.initialize`` if ``cfg`` and the environment ask for it.

    Returns whether it was called. Must run before the first use of JAX devices.
    """
    kw = distributed_kwargs(cfg)
    if kw is None:
        log.info("single process (distributed.mode=%s, no multi-process launcher found)", cfg.mode)
        return False
    log.info("jax.distributed.initialize(%s) [%s]", kw or "auto-detect",
             multiprocess_environment() or "explicit")
    _initialize_within(kw, float(cfg.init_timeout), float(cfg.heartbeat_timeout))
    log.info("process %d of %d; %d local and %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    _watch_processes(float(cfg.heartbeat_timeout))
    return True


def lost_processes_line(missing: Sequence[int], count: int, heartbeat: float) -> str:
    """The one line a process prints when others of its job are gone."""
    who = ", ".join(str(i) for i in missing)
    return (f"seam_jax: error: process {who} of {count} stopped (no heartbeat within "
            f"{heartbeat:g} s, distributed.heartbeat_timeout), so process {jax.process_index()} "
            f"stops too; the checkpoints written so far are kept: start every process again "
            f"with the same command to resume")


def _watch_processes(heartbeat: float) -> None:
    """A daemon thread that asks the coordinator which processes are alive, every
    ``heartbeat / 10`` s (at most 1 s), and exits this process (code 2) with one line when
    one is gone. Without it a process whose peer was killed either waits in a collective,
    or is aborted by the distributed client with a C++ stack trace; it also skips the
    shutdown barrier at exit, which would wait for the lost process."""
    import sys
    import threading
    import time

    from jax._src import distributed

    client = distributed.global_state.client
    count = jax.process_count()
    if client is None or count < 2 or not hasattr(client, "get_live_nodes"):
        return
    ids = list(range(count))
    period = min(max(heartbeat / 10, 0.2), 1.0)

    def watch() -> None:
        while True:
            time.sleep(period)
            try:
                live = client.get_live_nodes(ids)
            except Exception:  # the coordinator itself is gone (process 0 was killed)
                missing = [0]
            else:
                missing = [i for i in ids if i not in live]
            if missing:
                print(lost_processes_line(missing, count, heartbeat), file=sys.stderr, flush=True)
                os._exit(2)

    threading.Thread(target=watch, name="seam_jax-process-watch", daemon=True).start()


def _initialize_within(kw: dict[str, Any], timeout: float, heartbeat: float = 100.0) -> None:
    """``jax.distributed.initialize(**kw)``, failing within ``timeout`` seconds with one line.

    JAX's own timeout aborts the process (SIGABRT and a C++ stack trace) after 300 s by
    default. So a process other than the coordinator first waits, in Python, until the
    coordinator's port accepts a connection (DistributedError naming the address if it
    never does); then a watchdog prints one line and exits with code 2 shortly before
    JAX's deadline, if the other processes never join.
    """
    import sys
    import threading
    import time

    from seam_jax.errors import DistributedError

    address = kw.get("coordinator_address")
    where = f"the coordinator at {address}" if address else "the auto-detected coordinator"
    deadline = time.monotonic() + timeout
    if address and kw.get("process_id", 0) != 0:
        _wait_for_port(address, deadline, timeout)
    remaining = max(deadline - time.monotonic(), 1.0)
    line = (f"seam_jax: error: {where} did not bring up all "
            f"{kw.get('num_processes', 'the')} processes within {timeout:g} s "
            f"(distributed.init_timeout): start every process, check "
            f"distributed.coordinator_address (or JAX_COORDINATOR_ADDRESS), or raise the timeout")

    def give_up() -> None:  # runs while initialize blocks in C++, which releases the GIL
        print(line, file=sys.stderr, flush=True)
        os._exit(2)

    watchdog = threading.Timer(remaining, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        # JAX's deadline a little after ours, so that the watchdog speaks first.
        jax.distributed.initialize(**kw, initialization_timeout=int(remaining) + 10,
                                   heartbeat_timeout_seconds=max(int(heartbeat), 1))
    except Exception as e:  # a bad address string, a port in use, a second initialize, ...
        raise DistributedError(f"jax.distributed.initialize with {where} failed: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    finally:
        watchdog.cancel()


def _wait_for_port(address: str, deadline: float, timeout: float) -> None:
    """Return once ``address`` ("host:port") accepts a TCP connection; DistributedError
    naming it if it does not before ``deadline`` (``time.monotonic`` seconds)."""
    import socket
    import time

    from seam_jax.errors import DistributedError

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        port_number = int(port)
    except ValueError:
        raise ConfigError(f"distributed.coordinator_address={address!r}; give host:port") from None
    last: OSError | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.create_connection((host, port_number), timeout=min(left, 2.0)):
                return
        except OSError as e:
            last = e
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
    why = f" ({last.strerror or last})" if last is not None else ""
    raise DistributedError(
        f"cannot reach the coordinator at {address} within {timeout:g} s{why}: start process 0 "
        f"there first, check distributed.coordinator_address (or JAX_COORDINATOR_ADDRESS), or "
        f"raise distributed.init_timeout")
